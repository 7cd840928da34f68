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


#: A smoke suite: waits until its partner suite has started too (so it passes only when two suites run
#: at once), then checks that its benchmarked function ran once, untimed.
_PARTNER = """import pathlib, time

def test_{me}(benchmark):
    folder = pathlib.Path({folder!r})
    (folder / "{me}").touch()
    deadline = time.monotonic() + 120
    while not (folder / "{partner}").exists():
        assert time.monotonic() < deadline, "{partner} never started alongside {me}"
        time.sleep(0.05)
    calls = []
    benchmark.pedantic(calls.append, args=(1,), rounds=5, warmup_rounds=2, iterations=1)
    assert calls == [1] and benchmark.stats is None
    print("{me} done")
"""


def test_a_smoke_run_runs_each_benchmark_once_two_suites_at_a_time_and_records_no_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("PYTEST_XDIST_")]:
        monkeypatch.delenv(name)
    suites = tmp_path / "benchmarks"
    suites.mkdir()
    folder = tmp_path / "started"
    folder.mkdir()
    for me, partner in (("a", "b"), ("b", "a")):
        text = _PARTNER.format(me=me, partner=partner, folder=str(folder))
        (suites / f"test_bench_{me}.py").write_text(text, encoding="utf-8")
    (suites / "test_bench_bad.py").write_text(
        "def test_broken(benchmark):\n    benchmark(lambda: None)\n    assert False, 'broken on purpose'\n",
        encoding="utf-8",
    )
    out = tmp_path / "results"
    with pytest.raises(fedlink.Fault) as info:
        run(out, smoke=True, root=tmp_path)
    assert "test_bench_bad.py" in info.value.message and "test_bench_a.py" not in info.value.message
    assert [p.name for p in out.iterdir()] == [p.name for p in out.glob("bench-*-smoke.log")]  # the log only
    log = next(out.glob("bench-*-smoke.log")).read_text(encoding="utf-8")
    # each suite's output in one piece under its own command line, and a closing line per suite
    pieces = {piece.split()[2].removeprefix("benchmarks/"): piece for piece in log.split("\n===== python ")[1:]}
    assert sorted(pieces) == ["test_bench_a.py", "test_bench_b.py", "test_bench_bad.py"]
    assert all(piece.count("test session starts") == 1 for piece in pieces.values())
    for me in ("a", "b"):
        piece = pieces[f"test_bench_{me}.py"]
        assert "--benchmark-disable" in piece and f"test_bench_{me}.py ." in piece and "1 passed" in piece
    assert "test_bench_a.py: ok, 1 benchmarks" in log and "test_bench_bad.py: FAILED" in log

    result = run(out, smoke=True, root=tmp_path, only=["a", "b"])
    assert result.json_path is None and result.mode == "smoke" and not result.failed
    assert result.benchmarks == 2 and [s.suite for s in result.suites] == ["test_bench_a.py", "test_bench_b.py"]
    assert not list(out.glob("*.json"))
