"""The benchmark report from a small hand-made pytest-benchmark JSON (no benchmark runs here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedlink.errors import BadInput
from fedlink_tools.bench.report import ReportResult, write_report
from fedlink_tools.bench.runner import machine_info

pytest.importorskip("matplotlib", reason="the report's plots need matplotlib")


def stats(median: float, rounds: int = 5) -> dict[str, Any]:
    return {
        "min": median * 0.9,
        "max": median * 1.2,
        "mean": median * 1.02,
        "stddev": median * 0.05,
        "median": median,
        "iqr": median * 0.1,
        "q1": median * 0.95,
        "q3": median * 1.05,
        "rounds": rounds,
        "iterations": 1,
        "ops": 1 / median,
    }


def bench(fullname: str, median: float, params: dict[str, Any] | None, extra: dict[str, Any], group: str | None = None):
    return {
        "group": group,
        "name": fullname.split("::")[1],
        "fullname": fullname,
        "params": params,
        "param": None,
        "extra_info": extra,
        "options": {},
        "stats": stats(median),
    }


def horizontal(nodes: int, groups: int, path: str, median: float) -> dict[str, Any]:
    return bench(
        f"benchmarks/test_bench_horizontal.py::test_horizontal_count[{nodes}n-{groups}g-{path}]",
        median,
        {"nodes": nodes, "groups": groups, "path": path},
        {"pet": path, "aggregate": "COUNT", "nodes": nodes, "groups": groups},
        group=f"horizontal COUNT {nodes} nodes x {groups} groups",
    )


RESULTS = {
    "machine_info": {"python_version": "3.11.7", "system": "Linux", "cpu": {"brand_raw": "Test CPU", "count": 2}},
    "commit_info": {"id": "0123456789abcdef", "dirty": False},
    "datetime": "2026-01-01T00:00:00",
    "version": "5.3.1",
    "fedlink": {
        "mode": "quick",
        "seconds": 61.0,
        "machine": {
            "cpu": "Test CPU 9000",
            "cores": 2,
            "usable_cores": 2,
            "memory_gib": 23.5,
            "os": "Linux-6.1-x86_64",
            "python": "3.11.7",
            "versions": {"numpy": "2.4.6", "tenseal": "0.3.18", "opendp": "0.16.0", "duckdb": "2.0.1"},
        },
        "suites": [
            {
                "suite": "test_bench_synth.py",
                "returncode": 0,
                "seconds": 3.0,
                "benchmarks": 2,
                "skipped": [{"cases": 1, "reason": "1e6 people take ~10 s; set FEDLINK_BENCH_LARGE=1"}],
            }
        ],
    },
    "benchmarks": [
        horizontal(2, 10, "he+dp", 0.130),
        horizontal(2, 10, "dp", 0.026),
        horizontal(2, 10, "duckdb", 0.001),
        horizontal(2, 1000, "he+dp", 0.170),
        horizontal(2, 1000, "dp", 0.050),
        horizontal(2, 1000, "duckdb", 0.0012),
        bench("benchmarks/test_bench_synth.py::test_synthesize[1000]", 0.034, {"people": 1000}, {"people": 1000}),
        bench(
            "benchmarks/test_bench_synth.py::test_synthesize[10000]",
            0.090,
            {"people": 10000},
            {"people": 10000, "peak_rss_mib": 321.5},
        ),
        bench("benchmarks/test_bench_encode.py::test_normalise[1000]", 0.0066, {"records": 1000}, {"records": 1000}),
        bench(
            "benchmarks/test_bench_encode.py::test_encode[1000]",
            0.0198,
            {"records": 1000},
            {"records": 1000, "encode_only_records_per_s": 77555},
        ),
        bench(
            "benchmarks/test_bench_encode.py::test_clkhash_peer[1000]",
            0.0135,
            {"records": 1000},
            {"records": 1000, "clkhash_records_per_s": 29812, "fedlink_over_clkhash": 2.58},
        ),
        {"name": "broken", "fullname": "benchmarks/x.py::broken", "stats": None},
    ],
}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results" / "bench-quick.json"
    path.parent.mkdir()
    path.write_text(json.dumps(RESULTS), encoding="utf-8")
    return path


def report_of(tmp_path: Path, benchmarks: list[dict[str, Any]]) -> tuple[ReportResult, str]:
    """The report written from one results file holding ``benchmarks``: what write_report returns, and its text."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({**RESULTS, "benchmarks": benchmarks}), encoding="utf-8")
    out = tmp_path / "REPORT.md"
    result = write_report(path, out)
    return result, out.read_text(encoding="utf-8")


def test_the_report_states_machine_tables_ratios_and_writes_plots(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench" / "REPORT.md"
    result = write_report(results.parent, out)  # a folder: its newest JSON
    text = out.read_text(encoding="utf-8")

    assert result.path == out and result.benchmarks == 11
    assert "**Machine:** Test CPU 9000, 2 cores, 23.5 GiB memory" in text
    assert "numpy 2.4.6, tenseal 0.3.18, opendp 0.16.0, duckdb 2.0.1" in text
    # per group: a table with median, IQR, min, max and rounds
    assert "### horizontal COUNT 2 nodes x 10 groups" in text
    assert (
        "| `test_horizontal_count[2n-10g-he+dp]` | nodes=2, groups=10, path=he+dp | 130 | 13.0 | 117 | 156 | 5 |"
        in text
    )
    assert "| `test_synthesize[10000]` | people=10,000 | 90.0 |" in text
    # ratios of the same run: he+dp / dp = 0.130 / 0.026 = 5.00, dp / DuckDB = 26; PET / plaintext encode = 3.00
    assert "| COUNT | 2 | 10 | 130 ms | 26.0 ms | 1.00 ms | 5.00× | 26× | 130× |" in text
    assert "| 1,000 | 6.60 ms | 19.8 ms | 3.00× | 77,555 | 29,812 | 2.58× |" in text
    assert "costs 3.40× to 5.00× the clear DP path" in text
    assert "1 entries without statistics were left out" in text
    assert "quick run (the suites' default sizes)" in text
    assert "- `test_bench_synth.py`, 1 case: 1e6 people take ~10 s; set FEDLINK_BENCH_LARGE=1" in text
    # the missing suites are named, not invented
    for missing in ("PSI", "Flower deployment round trip", "Linked queries", "DP release alone"):
        assert missing in text
    # plots: written, non-empty PNGs, linked from the report
    names = sorted(p.name for p in result.plots)
    assert names == ["encoding.png", "horizontal.png", "synthesis.png"]  # no matching benchmarks: no matching plot
    for plot in result.plots:
        assert plot.parent == out.parent / "plots"
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000
        assert f"](plots/{plot.name})" in text


def linked(people: int, path: str, median: float) -> dict[str, Any]:
    return bench(
        f"benchmarks/test_bench_linked.py::test_linked_count_group_by[{people}-{path}]",
        median,
        {"people": people, "path": path},
        {"pet": path, "linked": True, "people": people, "nodes": 3, "groups": 9},
        group=f"linked COUNT GROUP BY, 3 nodes x {people} people",
    )


def primitive(kind: str, size: int, path: str, median: float) -> dict[str, Any]:
    return bench(
        f"benchmarks/test_bench_pets.py::test_{kind}[{size}-{path}]",
        median,
        {"size": size, "path": path},
        {"primitive": kind, "path": path, "size": size},
        group=f"{kind}, {size:,} values",
    )


def test_linked_queries_and_pet_primitives_get_their_ratios_goal_and_plots(tmp_path: Path) -> None:
    benchmarks = [
        linked(100_000, "he+dp", 0.6),
        linked(100_000, "duckdb", 0.02),
        linked(1_000_000, "he+dp", 3.0),
        linked(1_000_000, "duckdb", 0.12),
        primitive("dp_release", 1000, "dp", 0.02),
        primitive("dp_release", 1000, "plain", 0.0001),
        primitive("he_chain", 10000, "he", 0.2),
        primitive("he_chain", 10000, "plain", 0.0002),
    ]
    result, text = report_of(tmp_path, benchmarks)
    assert "| 1,000,000 | 3.00 s | 120 ms | 25× |" in text and "| 100,000 | 600 ms | 20.0 ms | 30× |" in text
    assert "Linked COUNT GROUP BY over 1,000,000 people: 25× DuckDB (goal 15x: NOT met)." in text
    assert "| 1,000 | 20.0 ms | 100 µs | 200× |" in text and "| 10,000 | 200 ms | 200 µs | 1,000× |" in text
    assert "Linked queries (statistics" not in text and "DP release alone" not in text, "both have suites now"
    assert sorted(p.name for p in result.plots) == ["linked.png", "primitives.png"]


def test_psi_gets_its_group_table_peer_ratio_and_goal(tmp_path: Path) -> None:
    benchmarks = [
        bench(
            "benchmarks/test_bench_psi.py::test_group[a]",
            0.1,
            {"group": "a"},
            {"psi_group": "secp256k1 (fedlink)", "multiplications_per_s": 20000},
        ),
        bench(
            "benchmarks/test_bench_psi.py::test_group[b]",
            0.2,
            {"group": "b"},
            {"psi_group": "P-256", "multiplications_per_s": 10000},
        ),
        bench(
            "benchmarks/test_bench_psi.py::test_two_party_psi[1000000-psi]",
            150.0,
            {"items": 1000000, "path": "psi"},
            {"psi": True, "path": "psi", "items": 1000000},
        ),
        bench(
            "benchmarks/test_bench_psi.py::test_two_party_psi[1000000-plain]",
            0.5,
            {"items": 1000000, "path": "plain"},
            {"psi": True, "path": "plain", "items": 1000000},
        ),
        bench(
            "benchmarks/test_bench_psi.py::test_openmined_psi_peer[1000000]",
            460.0,
            {"items": 1000000},
            {"psi": True, "path": "openmined-psi", "items": 1000000, "peer_seconds": 450.0},
        ),
    ]
    _, text = report_of(tmp_path, benchmarks)
    assert text.index("| secp256k1 (fedlink) | 20,000 |") < text.index("| P-256 | 10,000 |")
    assert "| 1,000,000 | 150 s | 500 ms | 300× | 450 s | 3.00× |" in text
    assert "Two-party PSI of 1,000,000 x 1,000,000 items: 150 s (goal 60 s: NOT met)." in text
    assert "PSI (private set intersection" not in text, "PSI has a suite now"


def test_node_backends_get_a_table_of_operation_times_and_peak_memory(tmp_path: Path) -> None:
    extra = {"rows": 100000, "load_seconds": 0.2, "query_seconds": 0.014, "encode_seconds": 1.4}
    benchmarks = [
        bench(
            "benchmarks/test_bench_backends.py::test_backend[100000-duckdb]",
            3.3,
            {"rows": 100000, "backend": "duckdb"},
            {**extra, "backend": "duckdb", "encode_people": 43160, "encode_peak_rss_mib": 355.8},
        )
    ]
    _, text = report_of(tmp_path, benchmarks)
    assert "| 100,000 | duckdb | 200 ms | 14.0 ms | 1.40 s | 43,160 | 356 |" in text


def test_the_flower_transport_gets_its_latency_next_to_grpc_and_a_headline(tmp_path: Path) -> None:
    benchmarks = [
        bench(
            f"benchmarks/test_bench_flower.py::test_query_latency[{name}]",
            median,
            {"transport": name},
            {"transport": name, "pet": "he+dp", "nodes": 2},
            group="transport: he+dp query round trip",
        )
        for name, median in (("grpc", 0.3), ("flower", 27.0))
    ]
    _, text = report_of(tmp_path, benchmarks)
    assert "| grpc | 300 ms | 270 ms - 360 ms | 5 |" in text
    assert "| flower | 27.0 s | 24.3 s - 32.4 s | 5 |" in text
    assert "Flower / gRPC: 90×." in text
    assert "A query over Flower's deployment runtime takes 27.0 s, over fedlink's gRPC 300 ms (90×)." in text
    assert "Flower deployment round trip" not in text, "the transport has a suite now"


def test_probabilistic_linkage_gets_its_side_by_side_table_febrl4_and_defences(tmp_path: Path) -> None:
    run = {"seconds": 10.0, "encode_seconds": 6.0, "link_seconds": 4.0, "peak_mib": 2048.0, "f1": 0.9895}
    benchmarks = [
        bench(
            "benchmarks/test_bench_match.py::test_three_departments_side_by_side[1000000]",
            24.0,
            {"people": 1_000_000},
            {
                "people": 1_000_000,
                "clk": run,
                "probabilistic": {**run, "seconds": 12.0, "peak_mib": 2560.0, "f1": 0.9905, "estimated_f1": 0.993},
                "time_ratio": 1.2,
                "memory_ratio": 1.25,
            },
        ),
        bench(
            "benchmarks/test_bench_match.py::test_probabilistic_febrl4[none]",
            0.7,
            {"identifier": "none"},
            {"identifier": "none", "precision": 1.0, "recall": 0.998, "f1": 0.999, "estimated_f1": 0.9998},
        ),
        bench(
            "benchmarks/test_bench_match.py::test_defence_cost[folded, flip 0.01]",
            2.0,
            {"defence": "folded, flip 0.01"},
            {"defence": "folded, flip 0.01", "epsilon_name_filter": 1176.3, "febrl4": 0.9985, "synthetic": 0.9892},
        ),
    ]
    _, text = report_of(tmp_path, benchmarks)
    assert "| 1,000,000 | probabilistic | 12.0 s | 6.0 s | 4.0 s | 2.50 GiB | 0.9905 | 0.9930 |" in text
    assert "time 1.20x, memory 1.25x (goal: within 1.3x, met)" in text
    assert "| none | 1.0000 | 0.9980 | 0.9990 | 0.9998 | 700 ms |" in text
    assert "| folded, flip 0.01 | 1,176 | 0.9985 | 0.9892 |" in text
    assert "without labels or the social security number with F1 0.9990" in text


def test_a_case_in_several_files_is_taken_from_the_last(results: Path, tmp_path: Path) -> None:
    """A quick run combined with a later run of one suite: the later median, each case counted once."""
    later = dict(RESULTS)
    later["benchmarks"] = [horizontal(2, 10, "he+dp", 0.390), horizontal(6, 10, "he+dp", 0.5)]
    synth = {"suite": "test_bench_synth.py", "returncode": 0, "seconds": 9.0, "benchmarks": 3, "skipped": []}
    later["fedlink"] = {**RESULTS["fedlink"], "mode": "full", "suites": [synth]}
    second = tmp_path / "bench-later.json"
    second.write_text(json.dumps(later), encoding="utf-8")
    out = tmp_path / "REPORT.md"
    combined = write_report([results, second], out)
    alone = write_report(results, tmp_path / "alone.md")
    assert combined.benchmarks == alone.benchmarks + 1
    text = out.read_text(encoding="utf-8")
    assert "390 ms" in text and "130 ms" not in text
    # the later run's record of a suite replaces the earlier one's: its skips are gone, its mode said
    assert "`test_bench_synth.py` 3 in 9 s (full run)" in text and "1e6 people take ~10 s" not in text
    assert "130 ms" in (tmp_path / "alone.md").read_text(encoding="utf-8")


def test_the_rows_axis_gets_its_own_table_apart_from_the_shapes(tmp_path: Path) -> None:
    benchmarks = [
        bench(
            f"benchmarks/test_bench_horizontal.py::test_horizontal_count_by_rows[{rows}rows-{path}]",
            median,
            {"rows": rows, "path": path},
            {"pet": path, "aggregate": "COUNT", "nodes": 2, "groups": 10, "rows_axis": True, "rows_per_node": rows},
        )
        for rows, path, median in ((1000, "he+dp", 0.2), (1000, "dp", 0.05), (1000, "duckdb", 0.002),
                                   (100000, "he+dp", 0.3), (100000, "dp", 0.1), (100000, "duckdb", 0.01))
    ]  # fmt: skip
    result, text = report_of(tmp_path, benchmarks)
    assert "| 100,000 | 300 ms | 100 ms | 10.0 ms | 3.00× | 30× |" in text
    assert "| 1,000 | 200 ms | 50.0 ms | 2.00 ms | 4.00× | 100× |" in text
    assert "he+dp COUNT GROUP BY over 2 nodes with 100,000 rows each: 300 ms." in result.headlines
    assert "Encrypted aggregation costs" not in text, "the rows axis is not a shape of the he+dp / dp table"


def test_the_runner_records_the_machine() -> None:
    machine = machine_info()
    assert machine["cpu"] and machine["cores"] >= 1 and machine["python"].count(".") == 2
    assert {"numpy", "tenseal", "opendp", "duckdb"} <= set(machine["versions"])
    assert machine["versions"]["numpy"]


def test_a_pytest_benchmark_file_without_the_runner_record_still_names_the_machine(
    results: Path, tmp_path: Path
) -> None:
    bare = {k: v for k, v in RESULTS.items() if k != "fedlink"}
    results.write_text(json.dumps(bare), encoding="utf-8")
    text = write_report(results, tmp_path / "REPORT.md").path.read_text(encoding="utf-8")
    assert "**Machine:** Test CPU, 2 cores; Linux; Python 3.11.7" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such benchmark results file"),
        ("{not json", "is not valid JSON"),
        ('{"benchmarks": 3}', "no 'benchmarks' list"),
        ('{"benchmarks": []}', "holds no benchmark results with statistics"),
    ],
)
def test_bad_or_missing_input_is_bad_input_in_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(BadInput) as info:
        write_report(path, tmp_path / "REPORT.md")
    assert message in info.value.message and "\n" not in info.value.message
    assert not (tmp_path / "REPORT.md").exists()


def test_an_empty_results_folder_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="run `fedlink bench run` first"):
        write_report(tmp_path, tmp_path / "REPORT.md")
