"""The benchmark runner end to end: it runs pytest-benchmark suites as subprocesses (tens of seconds),
so it sits here rather than in the unit tier next to the report's tests (tests/unit/test_bench_report.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fedlink
from fedlink_tools.bench.runner import run


def test_the_runner_merges_the_suites_and_fails_when_pytest_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tiny suites in a scratch repository: one passes, one fails; the run writes what it measured,
    records the machine, and raises Fault (exit code 1) naming the failed suite."""
    # Under pytest-xdist the suites' pytest would inherit PYTEST_XDIST_WORKER, and pytest-benchmark in it
    # would then take itself for a worker and measure nothing; `fedlink bench run` is never run that way.
    for name in [n for n in os.environ if n.startswith("PYTEST_XDIST_")]:
        monkeypatch.delenv(name)
    suites = tmp_path / "benchmarks"
    suites.mkdir()
    (suites / "test_bench_ok.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('people', [10, 20])\n"
        "def test_sum(benchmark, people):\n"
        "    benchmark.extra_info['people'] = people\n"
        "    benchmark.pedantic(sum, args=(range(people),), rounds=2, iterations=1)\n",
        encoding="utf-8",
    )
    (suites / "test_bench_bad.py").write_text(
        "def test_broken(benchmark):\n    benchmark(lambda: None)\n    assert False, 'broken on purpose'\n",
        encoding="utf-8",
    )
    out = tmp_path / "results"
    with pytest.raises(fedlink.Fault) as info:
        run(out, quick=True, root=tmp_path)
    assert "test_bench_bad.py" in info.value.message and "\n" not in info.value.message
    (written,) = out.glob("bench-*-quick.json")
    data = json.loads(written.read_text(encoding="utf-8"))
    assert sorted(b["name"] for b in data["benchmarks"] if "sum" in b["name"]) == ["test_sum[10]", "test_sum[20]"]
    suites_run = {s["suite"]: s["returncode"] for s in data["fedlink"]["suites"]}
    assert suites_run["test_bench_ok.py"] == 0 and suites_run["test_bench_bad.py"] != 0
    assert data["fedlink"]["machine"]["cores"] >= 1 and data["fedlink"]["mode"] == "quick"
    assert (out / written.name.replace(".json", ".log")).read_text(encoding="utf-8").count("=====") >= 2
    assert not list(out.glob(".*.json"))  # the per-suite files were merged and removed
