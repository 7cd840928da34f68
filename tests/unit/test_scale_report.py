"""The scale report's Spark costs (benchmarks/scale_report.py): the line through the Spark linkage unit's
local-mode runs recovers a known fixed cost and cost per pair, and says nothing from one size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_report", ROOT / "benchmarks" / "scale_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    return module


def _run(folder: Path, people: int, pairs: int, seconds: float, cores: int = 2) -> None:
    info = {"people": people, "pairs_compared": pairs, "spark_seconds": seconds, "cores": cores, "date": "d"}
    (folder / f"spark-people-{people}.json").write_text(json.dumps(info))


def test_fixed_cost_and_rate_per_core_from_two_or_more_sizes(report: ModuleType, tmp_path: Path) -> None:
    fixed, per_pair = 150.0, 1 / 4_000  # 4,000 pairs/s over 2 cores: 2,000 a core
    for people, pairs in ((100_000, 180_000), (300_000, 1_400_000), (1_000_000, 17_000_000)):
        _run(tmp_path, people, pairs, fixed + pairs * per_pair)
    _run(tmp_path, 50_000, 90_000, 999.0, cores=8)  # another machine's run is left out, not averaged in
    costs = report.spark_costs()
    assert costs["cores"] == 2 and [r["people"] for r in costs["runs"]] == [100_000, 300_000, 1_000_000]
    assert costs["fixed_s"] == pytest.approx(fixed)
    assert costs["pairs_per_s_per_core"] == pytest.approx(2_000)


def test_one_size_or_a_falling_line_gives_no_figure(report: ModuleType, tmp_path: Path) -> None:
    assert report.spark_costs() is None
    _run(tmp_path, 100_000, 180_000, 300.0)
    assert report.spark_costs() is None  # one size cannot tell fixed cost from cost per pair
    _run(tmp_path, 300_000, 1_400_000, 250.0)
    assert report.spark_costs() is None  # more pairs in less time: noise, not a cost
