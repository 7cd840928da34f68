"""The public surface: ``fedlink`` exports the analyst's objects, with real types a type checker sees,
and importing it (or the command line) loads no operator, demo or benchmark code."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mypy.api
import pytest

import fedlink

SRC = Path(fedlink.__file__).parent.parent

ANALYST_OBJECTS = {
    "connect",
    "Federation",
    "FlowerFederation",
    "Result",
    "ModelResult",
    "LinkReport",
    "Publication",
    "Catalogue",
    "Budget",
    "RegisterView",
}


def test_fedlink_exports_the_analysts_objects_and_errors() -> None:
    exported = {name: getattr(fedlink, name) for name in fedlink.__all__}
    errors = {n for n, value in exported.items() if isinstance(value, type) and issubclass(value, Exception)}
    assert set(fedlink.__all__) == ANALYST_OBJECTS | errors
    assert fedlink.FedlinkError in {getattr(fedlink, n) for n in errors}
    for name in fedlink.__all__:
        value = getattr(fedlink, name)
        assert inspect.isclass(value) or inspect.isfunction(value), f"fedlink.{name} is {type(value).__name__}"
    assert "__getattr__" not in vars(fedlink), "names resolved at run time are Any to a type checker"


def test_the_package_is_marked_typed() -> None:
    assert (SRC / "fedlink" / "py.typed").is_file()


def _loaded_by(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys, json; print(json.dumps(sorted(sys.modules)))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("code", ["import fedlink", "import fedlink.cli.main"])
def test_importing_fedlink_loads_no_operator_demo_or_benchmark_code(code: str) -> None:
    loaded = _loaded_by(code)
    assert "fedlink.analyst.client" in loaded  # the positive control: the analyst's client is there
    operators = ["fedlink.services", "fedlink.node", "fedlink.coordinator", "fedlink_tools.demo", "fedlink_tools.synth"]
    tooling = ["fedlink_tools.bench"]
    libraries = ["tenseal", "opendp", "flwr"]  # loaded when a query first needs them
    unwanted = operators + tooling + libraries
    assert not {m for m in loaded for u in unwanted if m == u or m.startswith(u + ".")}


CLIENT = """
import fedlink

def counts(fed: fedlink.Federation) -> fedlink.Result:
    return fed.query("SELECT COUNT(*) FROM t", project="p", epsilon=1.0)

wrong: int = fedlink.connect(profile="analyst.toml").query("SELECT COUNT(*) FROM t", project="p", epsilon=1.0)
"""


def test_a_type_checker_sees_the_result_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mypy on an analyst's script: the query's result is a ``fedlink.Result`` (were it ``Any``, the
    wrong assignment would pass unnoticed)."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    monkeypatch.setenv("MYPYPATH", str(SRC))  # this checkout's fedlink, not an installed one
    cache = SRC.parent / ".mypy_cache"  # shared with `mypy src`, so that a warm run takes seconds
    stdout, _, status = mypy.api.run([str(script), "--cache-dir", str(cache), "--no-error-summary"])
    problems = stdout.strip().splitlines()
    assert status == 1 and len(problems) == 1, stdout
    # the shared cache may name the same script's earlier copy (another tmp folder), whose content it hashed
    assert re.search(r"client\.py:7: error: Incompatible types in assignment", problems[0]), problems[0]
    assert 'expression has type "Result", variable has type "int"' in problems[0]
