"""The benchmark runner and report: ``fedlink bench run`` and ``fedlink bench report``.

:func:`fedlink_tools.bench.runner.run` runs the pytest-benchmark suites under ``benchmarks/`` in
subprocesses and writes one JSON file per run (pytest-benchmark's own format, plus the machine and
the suites run under a ``"fedlink"`` key); :func:`fedlink_tools.bench.report.write_report` turns such a file
into ``benchmarks/REPORT.md`` with tables, overhead ratios and log-log plots of cost against size.
"""
