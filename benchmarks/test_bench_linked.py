"""Cost of a linked query: ``COUNT(*) ... GROUP BY region`` over people linked across three nodes,
through the encrypted chain (BFV ciphertexts passed node to node, noise under encryption, zero-sum
masks), next to DuckDB doing the same three-way join and group-by on the same Parquet files in
plaintext (what a trusted third party holding every department's rows would run), in the same run.

The spine is built outside the timed part, as the goal states ("spine already built"): every node
holds all N people (one row each) with its own record ids, and the benchmark writes the node's
linkage state (record -> person, person -> slot) and the coordinator's spine record exactly as
``fedlink link`` would leave them; linkage itself is measured in ``test_bench_match.py``. The
Parquet files also carry the slot as a hidden identifier column ``link_key``, which only the
plaintext floor uses (a trusted third party would join on it).

Default sizes: 1e3, 1e4 and 1e5 people; ``FEDLINK_BENCH_LARGE=1`` adds 1e6 (the goal: within 15x DuckDB)::

    pytest benchmarks/test_bench_linked.py --benchmark-only
    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_linked.py --benchmark-only -k 1000000
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from federation import ANALYST, HUGE_CAP, MAX_NODES, REPORT, make_pki
from test_bench_horizontal import MACHINE
from timing import timed

import fedlink
from fedlink.coordinator.config import CoordinatorConfig
from fedlink.coordinator.linkage import SpineMeta
from fedlink.coordinator.server import Coordinator
from fedlink.node.agent import NodeAgent
from fedlink.node.config import NodeConfig

LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"
SIZES = (1_000, 10_000, 100_000, 1_000_000)
PROJECT = "bench-linked"
REGIONS = [f"region-{i}" for i in range(9)]
#: (node, table, share of people with flag = 1)
TABLES = (("n01", "pupils", 0.3), ("n02", "claims", 0.4), ("n03", "diagnoses", 0.5))
SQL = (
    "SELECT n01.pupils.region, COUNT(*) AS n FROM n01.pupils LINK n02.claims, n03.diagnoses "
    "WHERE n01.pupils.flag = 1 AND n02.claims.flag = 1 AND n03.diagnoses.flag = 1 GROUP BY n01.pupils.region"
)
FLOOR_SQL = (
    "SELECT p.region, COUNT(*) FROM read_parquet('{pupils}') p "
    "JOIN read_parquet('{claims}') c ON c.link_key = p.link_key "
    "JOIN read_parquet('{diagnoses}') d ON d.link_key = p.link_key "
    "WHERE p.flag = 1 AND c.flag = 1 AND d.flag = 1 GROUP BY p.region"
)
GOAL_PEOPLE, GOAL_RATIO = 1_000_000, 15.0


def _columns(table: str) -> list[dict[str, Any]]:
    columns: list[dict[str, Any]] = [
        {"name": "record_id", "kind": "identifier"},
        {"name": "link_key", "kind": "identifier"},
        {"name": "flag", "kind": "category", "categories": [0, 1]},
    ]
    if table == "pupils":
        columns.append({"name": "region", "kind": "category", "categories": REGIONS})
    return columns


@dataclass
class LinkedBench:
    people: int
    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    coordinator: Coordinator | None = None
    agents: list[NodeAgent] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    analyst: fedlink.Federation | None = None

    def write(self, seed: int = 5) -> None:
        """Each node's table and its linkage state; the coordinator's spine record."""
        rng = np.random.default_rng(seed)
        slot_of_person = rng.permutation(self.people)  # the same people at every node
        for node, table, share in TABLES:
            folder = self.root / node
            order = rng.permutation(self.people)  # each node lists its people in its own order
            columns: dict[str, Any] = {
                "record_id": pa.array([f"{node}-{i}" for i in range(self.people)]),
                "link_key": pa.array(slot_of_person[order]),
                "flag": pa.array((rng.random(self.people) < share).astype(np.int64)),
            }
            if table == "pupils":
                columns["region"] = pa.array(np.asarray(REGIONS)[rng.integers(0, len(REGIONS), self.people)])
            path = folder / f"{table}.parquet"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(columns), path)
            self.files[table] = path
            state = folder / "state" / "linkage" / PROJECT
            state.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                pa.table(
                    {
                        "source_table": pa.array([table] * self.people),
                        "record_id": columns["record_id"],
                        "person": pa.array(np.arange(self.people)),
                    }
                ),
                state / "records.parquet",
            )
            np.save(state / "slots.npy", slot_of_person[order].astype(np.int64), allow_pickle=False)
            (state / "spine.json").write_text(json.dumps({"spine_id": "bench-spine"}))
        spines = self.root / "coordinator" / "state" / "spines"
        spines.mkdir(parents=True, exist_ok=True)
        meta = SpineMeta(project=PROJECT, spine_id="bench-spine", size=self.people, nodes=tuple(n for n, *_ in TABLES))
        (spines / f"{PROJECT}.json").write_text(meta.model_dump_json())

    def start(self, pki_dir: Path) -> None:
        folder = self.root / "coordinator"
        datasets = ", ".join(f'"{n}.{t}"' for n, t, _ in TABLES)
        (folder / "projects.toml").write_text(
            f'[[projects]]\nid = "{PROJECT}"\ntitle = "Benchmark"\npurpose = "Measure linked queries"\n'
            f'analysts = ["{ANALYST}"]\ndatasets = [{datasets}]\nrho = {HUGE_CAP}\n'
        )
        config = CoordinatorConfig.model_validate(
            {
                "coordinator": {
                    "listen": "127.0.0.1:0",
                    "query_timeout_s": 600.0,
                    "projects": "projects.toml",
                    "transparency_register": "state/register.jsonl",
                    "test_mode": True,
                },
                "tls": {
                    "cert": str(pki_dir / "coordinator-coordinator.crt"),
                    "key": str(pki_dir / "coordinator-coordinator.key"),
                    "ca": str(pki_dir / "ca.crt"),
                },
                "nodes": [{"name": n} for n, *_ in TABLES],
                "source": str(folder / "coordinator.toml"),
            }
        )
        self.coordinator = Coordinator(config)
        self.coordinator.start()
        address = f"127.0.0.1:{self.coordinator.port}"
        for node, table, _ in TABLES:
            node_config = NodeConfig.model_validate(
                {
                    "node": {"name": node, "coordinator": address},
                    "tls": {
                        "cert": str(pki_dir / f"node-{node}.crt"),
                        "key": str(pki_dir / f"node-{node}.key"),
                        "ca": str(pki_dir / "ca.crt"),
                    },
                    "privacy": {
                        "ledger": "state/ledger.sqlite",
                        "transparency_register": "state/register.jsonl",
                        "allow_test_mode": True,
                    },
                    "approvals": [{"project": PROJECT, "rho": HUGE_CAP}],
                    "tables": [{"name": table, "source": str(self.files[table]), "columns": _columns(table)}],
                    "source": str(self.root / node / "node.toml"),
                }
            )
            agent = NodeAgent(node_config)
            thread = threading.Thread(target=agent.serve, kwargs={"retry_s": 0.1}, daemon=True)
            thread.start()
            self.agents.append(agent)
            self.threads.append(thread)
            if not agent.connected.wait(60):
                raise RuntimeError(f"benchmark node {node} did not connect")
        self.analyst = fedlink.connect(
            address,
            cert=pki_dir / f"analyst-{ANALYST}.crt",
            key=pki_dir / f"analyst-{ANALYST}.key",
            ca=pki_dir / "ca.crt",
            timeout_s=900.0,
        )

    def query(self, noiseless: bool = False) -> fedlink.Result:
        assert self.analyst is not None
        if noiseless:
            return self.analyst.query(SQL, project=PROJECT, noiseless=True)
        return self.analyst.query(SQL, project=PROJECT, epsilon=1.0)

    def floor(self, con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
        return con.execute(FLOOR_SQL.format(**{k: str(v) for k, v in self.files.items()})).fetchall()

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        for thread in self.threads:
            thread.join(10)
        if self.coordinator is not None:
            self.coordinator.stop(grace=0.2)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("bench-linked-pki"), MAX_NODES)


_live: dict[int, LinkedBench] = {}
_medians: dict[tuple[int, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    for bench in _live.values():
        bench.stop()
    _live.clear()


def _bench(people: int, pki_dir: Path, root: Path) -> LinkedBench:
    if people not in _live:
        for other in list(_live):
            _live.pop(other).stop()
        bench = LinkedBench(people, root / f"people-{people}")
        bench.write()
        bench.start(pki_dir)
        _live[people] = bench
    return _live[people]


def _params() -> Iterator[Any]:
    large = pytest.mark.skipif(not LARGE, reason="1e6 people: FEDLINK_BENCH_LARGE=1")
    for people in SIZES:
        for path in ("he+dp", "duckdb"):
            marks = large if people >= 1_000_000 else ()
            yield pytest.param(people, path, id=f"{people}-{path}", marks=marks)


@pytest.mark.parametrize(("people", "path"), list(_params()))
def test_linked_count_group_by(
    benchmark: Any, pki_dir: Path, tmp_path_factory: pytest.TempPathFactory, people: int, path: str
) -> None:
    bench = _bench(people, pki_dir, tmp_path_factory.getbasetemp() / "bench-linked")
    benchmark.group = f"linked COUNT GROUP BY, 3 nodes x {people} people"
    benchmark.extra_info.update(
        {"pet": path, "linked": True, "people": people, "nodes": 3, "groups": len(REGIONS), "machine": MACHINE}
    )
    rounds = 3 if people >= 1_000_000 else 5
    with duckdb.connect() as con:
        if path == "duckdb":
            rows = benchmark.pedantic(bench.floor, args=(con,), rounds=rounds * 2, iterations=1, warmup_rounds=1)
            assert len(rows) == len(REGIONS)
        else:
            answer = benchmark.pedantic(bench.query, rounds=rounds, iterations=1, warmup_rounds=1)
            assert len(answer.rows()) == len(REGIONS)
            # outside the timed rounds: the noiseless encrypted answer equals DuckDB's join exactly
            exact = {r["region"]: r["n"] for r in bench.query(noiseless=True).rows()}
            assert exact == {region: float(n) for region, n in bench.floor(con)}
    if (stats := timed(benchmark)) is None:
        return
    _medians[(people, path)] = float(stats.median)
    other = _medians.get((people, "duckdb" if path == "he+dp" else "he+dp"))
    if other is not None:
        he, floor = (_medians[(people, "he+dp")], _medians[(people, "duckdb")])
        ratio = he / floor
        benchmark.extra_info["ratio_he_over_duckdb"] = round(ratio, 2)
        line = f"linked: {people:,} people x 3 nodes, he+dp {he:.3f} s vs DuckDB join {floor:.3f} s = {ratio:.1f}x"
        if people == GOAL_PEOPLE:
            line += f" (goal: within {GOAL_RATIO:g}x: {'met' if ratio <= GOAL_RATIO else 'NOT met'})"
        REPORT.lines.append(f"{line}; {MACHINE}")
        print(line)
