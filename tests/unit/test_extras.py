"""Features that need an optional package say which extra installs it, and check before they cost
anything: data frames (pandas, polars) and charts (matplotlib, for `fedlink scenario`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedlink
from fedlink.plan.aggregate import Aggregate, AggregatePlan
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.protocol.results import build_result
from fedlink.protocol.tasks import PrivacyLoss


def _result() -> fedlink.Result:
    plan = AggregatePlan(table="t", nodes=("a",), aggregates=(Aggregate(func="count", label="n"),), sql="SELECT 1")
    raw = build_result(
        plan,
        {"rows:*": np.array([120.0])},
        query_id="q",
        project="p",
        pet="dp",
        noise={},
        noiseless=True,
        privacy_loss={"a": PrivacyLoss(epsilon=1.0)},
        policy=DisclosurePolicy(),
    )
    return fedlink.Result(raw)


@pytest.mark.parametrize(("package", "convert"), [("pandas", "to_pandas"), ("polars", "to_polars")])
def test_data_frames_name_their_extra(monkeypatch: pytest.MonkeyPatch, package: str, convert: str) -> None:
    res = _result()
    assert len(getattr(res, convert)()) == 1  # installed here: the real conversion
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(fedlink.BadInput, match=rf"needs {package}, which is not installed; .*'fedlink\[{package}\]'"):
        getattr(res, convert)()


def test_scenario_checks_for_charts_before_it_connects(tmp_path: Path) -> None:
    """`fedlink scenario` without matplotlib: one line naming the extra, before any federation is
    contacted or started (here the profile does not even exist, so anything later would say so)."""
    hidden = tmp_path / "hidden"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "fedlink", "scenario", "homelessness", "--profile", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == (
        "error: fedlink scenario needs matplotlib, which is not installed; "
        "install it with: pip install 'fedlink[charts]'"
    )
