"""Tools around fedlink, not part of the library: the demo federation (:mod:`.demo`), synthetic
departments (:mod:`.synth`), research scenarios on the demo (:mod:`.scenarios`) and the benchmark
runner and report (:mod:`.bench`).

They ship in the same wheel because the ``fedlink demo``, ``synth``, ``scenario`` and ``bench``
commands run them; the library (``fedlink``, but for its command line) never imports them, which
import-linter checks (``[tool.importlinter]`` in pyproject.toml).
"""
