"""Cost of encrypted aggregation: a horizontal ``GROUP BY`` over ``events`` held at every node, with
``pet="he+dp"`` (TenSEAL ciphertexts added by the coordinator) next to ``pet="dp"`` (the same DP
noise, vectors in the clear) and DuckDB reading every node's Parquet file in one process (the
non-federated floor), all measured in the same run; the ratio he+dp / dp goes into each benchmark's
``extra_info`` and into a table printed at the end of the run.

Each (nodes, groups) shape is a real federation on loopback (mTLS gRPC, nodes in threads of this
process), so on a small machine the nodes share its cores: the times are end to end as an analyst
sees them, with every party's CPU work on the same cores. Every query spends epsilon = 1 against caps
so large that no budget runs out.

By default: 2 and 6 nodes x 10 and 1,000 groups, SUM (CKKS) at 6 nodes x 1,000 groups, the goal
(he+dp COUNT GROUP BY over 6 nodes answering in under 0.5 s), and the size axis: 2 nodes x 10 groups
with 1e3, 1e4 and 1e5 rows per node (1e6 with ``FEDLINK_BENCH_LARGE=1``). ``FEDLINK_BENCH_LARGE=1`` adds 20 nodes
and 100 and 10,000 groups; ``FEDLINK_BENCH_ROWS`` sets the rows per node (default 2,000)::

    pytest benchmarks/test_bench_horizontal.py --benchmark-only
    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_horizontal.py --benchmark-only -k "20n-1000g or 6n-10000g"
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from federation import REPORT, BenchFederation, FederationPool, PlaintextFloor
from timing import timed

from fedlink.pets.he import SLOTS

LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"
ROWS = int(os.environ.get("FEDLINK_BENCH_ROWS", "2000"))
NODES = (2, 6, 20)
GROUPS = (10, 100, 1_000, 10_000)
#: Rows per node on the size axis (2 nodes x 10 groups); 1e6 with FEDLINK_BENCH_LARGE=1.
ROW_SIZES = (1_000, 10_000, 100_000, 1_000_000)
DEFAULT_SHAPES = {(2, 10), (2, 1_000), (6, 10), (6, 1_000)}
PATHS = ("he+dp", "dp", "duckdb")
AGGREGATES = {"COUNT": "COUNT(*)", "SUM": "SUM(value)"}
GOAL_NODES, GOAL_GROUPS, GOAL_TARGET_S = 6, 100, 0.5


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


MACHINE = f"{_machine()}, {os.cpu_count()} CPUs"


def _shapes(shapes: list[tuple[int, int]]) -> Iterator[Any]:
    """One case per (nodes, groups, path), the paths of a shape next to each other so that one live
    federation serves all three and the ratio is taken between neighbours in time."""
    large = pytest.mark.skipif(not LARGE, reason="large shape (20 nodes, 100 or 10,000 groups): FEDLINK_BENCH_LARGE=1")
    for nodes, groups in shapes:
        marks = () if (nodes, groups) in DEFAULT_SHAPES else large
        for path in PATHS:
            yield pytest.param(nodes, groups, path, id=f"{nodes}n-{groups}g-{path}", marks=marks)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederationPool]:
    federations = FederationPool(tmp_path_factory.mktemp("bench-horizontal"), ROWS)
    yield federations
    federations.close()


def _rounds(nodes: int, groups: int) -> int:
    return 3 if nodes * groups >= 100_000 else 5


def _check_he_exact(federation: BenchFederation, floor: PlaintextFloor, aggregate: str) -> None:
    """Outside the timed rounds: the decrypted noiseless (test mode) answer equals DuckDB's."""
    expected = dict(floor.query(AGGREGATES[aggregate]))
    result = federation.query(f"SELECT grp, {AGGREGATES[aggregate]} FROM events GROUP BY grp", "he+dp", True)
    column = result.columns[-1]
    for row in result.rows():
        want = expected.get(row["grp"])
        if aggregate == "COUNT":
            assert row[column] == (want or 0), row  # BFV is exact
        elif want is None:
            assert row[column] is None or row[column] == pytest.approx(0.0, abs=1e-6), row
        else:
            assert row[column] == pytest.approx(want, rel=1e-6), row  # CKKS: about 1e-12 relative error


def _measure(
    benchmark: Any,
    federation: BenchFederation,
    floor: PlaintextFloor,
    aggregate: str,
    path: str,
    rows: int | None = None,
) -> None:
    """Benchmark one path of one shape; record its median for the ratio; check what came back. With
    ``rows``, the case is one point of the rows-per-node axis (its own group and report table)."""
    nodes, groups = federation.nodes, federation.groups
    shape = (
        f"{nodes} nodes x {groups} groups"
        if rows is None
        else f"by rows: {rows:,} rows per node, {nodes} nodes x {groups} groups"
    )
    benchmark.group = f"horizontal {aggregate} {shape}"  # pairs the paths in the report
    benchmark.extra_info.update(
        {
            "pet": path,
            "aggregate": aggregate,
            "nodes": nodes,
            "groups": groups,
            "cells": groups,
            "ciphertexts_per_node": math.ceil(groups / SLOTS) if path == "he+dp" else 0,
            "rows_per_node": rows or ROWS,
            "machine": MACHINE,
        }
    )
    if rows is not None:
        benchmark.extra_info.update({"rows_axis": True, "rows": rows * nodes})
    select = AGGREGATES[aggregate]
    if path == "duckdb":
        floor_rows = benchmark.pedantic(floor.query, args=(select,), rounds=20, iterations=1, warmup_rounds=2)
        assert len(floor_rows) <= groups
    else:
        sql = f"SELECT grp, {select} FROM events GROUP BY grp"
        pet = "he+dp" if path == "he+dp" else "dp"
        answer = benchmark.pedantic(
            federation.query, args=(sql, pet), rounds=_rounds(nodes, groups), iterations=1, warmup_rounds=1
        )
        assert len(answer.rows()) == groups  # every declared group comes back, empty ones included
    if rows is None and (stats := timed(benchmark)) is not None:
        REPORT.record(aggregate, nodes, groups, path, float(stats.median), benchmark.extra_info)
    if path == "he+dp":
        _check_he_exact(federation, floor, aggregate)


@pytest.mark.parametrize(("nodes", "groups", "path"), list(_shapes([(n, g) for n in NODES for g in GROUPS])))
def test_horizontal_count(benchmark: Any, pool: FederationPool, nodes: int, groups: int, path: str) -> None:
    federation = pool.get(nodes, groups)
    with PlaintextFloor(federation.files) as floor:
        _measure(benchmark, federation, floor, "COUNT", path)


def _rows_cases() -> Iterator[Any]:
    large = pytest.mark.skipif(not LARGE, reason="1e6 rows per node: FEDLINK_BENCH_LARGE=1")
    for rows in ROW_SIZES:
        for path in PATHS:
            yield pytest.param(rows, path, id=f"{rows}rows-{path}", marks=large if rows >= 1_000_000 else ())


@pytest.fixture(scope="module")
def row_pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, FederationPool]]:
    pools: dict[int, FederationPool] = {}
    yield pools
    for federations in pools.values():
        federations.close()


@pytest.mark.parametrize(("rows", "path"), list(_rows_cases()))
def test_horizontal_count_by_rows(
    benchmark: Any,
    pool: FederationPool,
    row_pools: dict[int, FederationPool],
    tmp_path_factory: pytest.TempPathFactory,
    rows: int,
    path: str,
) -> None:
    """The size axis: he+dp COUNT GROUP BY at 2 nodes x 10 groups with 1e3 to 1e6 rows per node (the
    nodes' DuckDB scan grows with rows; the ciphertexts do not), next to dp and DuckDB."""
    pool.close()  # one live federation at a time
    for other in [r for r in row_pools if r != rows]:
        row_pools[other].close()
    if rows not in row_pools:
        row_pools[rows] = FederationPool(tmp_path_factory.mktemp(f"bench-rows-{rows}"), rows)
    federation = row_pools[rows].get(2, 10)
    with PlaintextFloor(federation.files) as floor:
        _measure(benchmark, federation, floor, "COUNT", path, rows=rows)


@pytest.mark.parametrize("path", PATHS)
def test_horizontal_sum_ckks(benchmark: Any, pool: FederationPool, path: str) -> None:
    """SUM(value) travels as a CKKS vector (real numbers), at 6 nodes x 1,000 groups."""
    federation = pool.get(6, 1_000)
    with PlaintextFloor(federation.files) as floor:
        _measure(benchmark, federation, floor, "SUM", path)


def test_goal_6_nodes_count_group_by(benchmark: Any, pool: FederationPool) -> None:
    """The performance goal: a horizontal he+dp COUNT(*) GROUP BY over 6 nodes on loopback answering in
    under 0.5 s end to end. Reported, not asserted (timed assertions are flaky by nature)."""
    federation = pool.get(GOAL_NODES, GOAL_GROUPS)
    sql = "SELECT grp, COUNT(*) FROM events GROUP BY grp"
    benchmark.group = "goal: he+dp COUNT GROUP BY, 6 nodes"
    answer = benchmark.pedantic(lambda: federation.query(sql, "he+dp"), rounds=10, iterations=1, warmup_rounds=1)
    assert len(answer.rows()) == GOAL_GROUPS
    benchmark.extra_info.update(
        {"pet": "he+dp", "nodes": GOAL_NODES, "groups": GOAL_GROUPS, "target_s": GOAL_TARGET_S, "machine": MACHINE}
    )
    if (stats := timed(benchmark)) is not None:
        median = float(stats.median)
        benchmark.extra_info.update({"median_s": round(median, 4), "meets_target": median < GOAL_TARGET_S})
        line = f"goal: median {median:.3f} s (target < {GOAL_TARGET_S} s)"
        REPORT.lines.append(f"{line}: he+dp COUNT GROUP BY, {GOAL_NODES} nodes x {GOAL_GROUPS} groups; {MACHINE}")
        print(line)
