"""The benchmark runner's bookkeeping without running any suite: the pytest arguments each mode passes
and what a suite's output and JSON file say (the runs themselves: tests/integration/test_bench_runner.py)."""

from __future__ import annotations

import json
from pathlib import Path

from fedlink_tools.bench.runner import _pytest_args, _suite_run

SUITE = "test_bench_synth.py"
SMOKE_OUTPUT = f"""============================= test session starts ==============================
collected 4 items

benchmarks/{SUITE} ...s                                            [100%]

=========================== short test summary info ============================
SKIPPED [1] benchmarks/{SUITE}:44: 1e6 people take ~10 s; set FEDLINK_BENCH_LARGE=1
========================= 3 passed, 1 skipped in 4.10s =========================
"""


def test_a_smoke_run_disables_timing_and_asks_for_no_json(tmp_path: Path) -> None:
    suite = tmp_path / "benchmarks" / SUITE
    smoke = _pytest_args(suite, tmp_path, "smoke")
    assert smoke[:3] == ["-m", "pytest", f"benchmarks/{SUITE}"] and "--benchmark-disable" in smoke
    # pytest-benchmark refuses --benchmark-only with --benchmark-disable; a smoke run writes no JSON
    assert not [a for a in smoke if a.startswith(("--benchmark-only", "--benchmark-json"))]
    quick = _pytest_args(suite, tmp_path, "quick", tmp_path / "part.json")
    assert "--benchmark-only" in quick and f"--benchmark-json={tmp_path / 'part.json'}" in quick
    assert "--benchmark-disable" not in quick
    assert "--benchmark-only" in _pytest_args(suite, tmp_path, "full", tmp_path / "part.json")


def test_a_smoke_suite_counts_its_benchmarks_from_pytest_summary() -> None:
    args = ["-m", "pytest", f"benchmarks/{SUITE}", "--benchmark-disable"]
    run, benchmarks, header = _suite_run(SUITE, args, 0, 4.2, SMOKE_OUTPUT, None)
    assert run.ok and run.benchmarks == 3 and (benchmarks, header) == ([], {})
    assert run.skipped == [{"cases": 1, "reason": "1e6 people take ~10 s; set FEDLINK_BENCH_LARGE=1"}]
    assert run.summary == "3 passed, 1 skipped in 4.10s" and run.args == args[2:]
    failed, _, _ = _suite_run(SUITE, args, 1, 4.2, SMOKE_OUTPUT.replace("3 passed", "1 failed, 2 passed"), None)
    assert not failed.ok and failed.benchmarks == 2


def test_a_suite_that_ran_nothing_and_said_nothing_fails() -> None:
    empty = "============================ no tests ran in 0.01s =============================\n"
    run, _, _ = _suite_run(SUITE, ["-m", "pytest", SUITE], 0, 0.5, empty, None)
    assert run.returncode == 5 and not run.ok


def test_a_measuring_suite_counts_the_benchmarks_in_its_json_and_removes_the_file(tmp_path: Path) -> None:
    part = tmp_path / ".part.json"
    part.write_text(json.dumps({"machine_info": {"node": "x"}, "benchmarks": [{"name": "a"}, {"name": "b"}]}))
    run, benchmarks, header = _suite_run(SUITE, ["-m", "pytest", SUITE], 0, 4.2, SMOKE_OUTPUT, part)
    assert run.benchmarks == 2 and [b["name"] for b in benchmarks] == ["a", "b"]
    assert header == {"machine_info": {"node": "x"}} and not part.exists()
