"""A benchmark federation built in a temporary folder: a PKI, per-node Parquet tables of ``events``,
configs built in memory, a real coordinator and real nodes in threads talking mTLS gRPC on loopback.

Every node holds the same table ``events`` (a horizontal partition), so a query over ``events`` runs at
all of them and their aggregates are added: in the clear (``pet="dp"``) or under the analyst's
TenSEAL keys (``pet="he+dp"``). The categories of ``grp`` must be declared identically at every node,
so each number of groups gets its own data and its own federation; :class:`FederationPool` keeps one
federation live at a time and switches when a benchmark asks for another shape.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import fedlink
from fedlink import pki
from fedlink.coordinator.config import CoordinatorConfig
from fedlink.coordinator.server import Coordinator
from fedlink.node.agent import NodeAgent
from fedlink.node.config import NodeConfig
from fedlink.protocol.tasks import Pet

PROJECT = "bench"
ANALYST = "bench-analyst"
TABLE = "events"
MAX_NODES = 20
#: Per-node and per-project caps so large that the benchmarks never exhaust a budget.
HUGE_CAP = 1e9


def node_name(index: int) -> str:
    return f"n{index:02d}"


def categories(groups: int) -> list[str]:
    return [f"g{i:05d}" for i in range(groups)]


def write_events(path: Path, rows: int, groups: int, seed: int) -> None:
    """One node's ``events``: a declared category ``grp``, a value in [0, 100] and an identifier ``name``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(categories(groups))
    table = pa.table(
        {
            "name": pa.array([f"person-{seed}-{i}" for i in range(rows)]),
            "grp": pa.array(labels[rng.integers(0, groups, rows)]),
            "value": pa.array(rng.uniform(0.0, 100.0, rows)),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def make_pki(root: Path, nodes: int = MAX_NODES) -> Path:
    """A CA and certificates for the coordinator, ``nodes`` nodes and the benchmark analyst."""
    pki_dir = root / "pki"
    pki.init_ca(pki_dir, name="fedlink benchmark CA")
    pki.issue(pki_dir, "coordinator", "coordinator")
    for index in range(1, nodes + 1):
        pki.issue(pki_dir, "node", node_name(index))
    pki.issue(pki_dir, "analyst", ANALYST)
    return pki_dir


def node_config(name: str, address: str, pki_dir: Path, data: Path, groups: int, folder: Path) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "node": {"name": name, "coordinator": address},
            "tls": {
                "cert": str(pki_dir / f"node-{name}.crt"),
                "key": str(pki_dir / f"node-{name}.key"),
                "ca": str(pki_dir / "ca.crt"),
            },
            "privacy": {
                "ledger": "state/ledger.sqlite",
                "transparency_register": "state/register.jsonl",
                "allow_test_mode": True,
            },
            "approvals": [{"project": PROJECT, "rho": HUGE_CAP}],
            "tables": [
                {
                    "name": TABLE,
                    "source": str(data),
                    "columns": [
                        {"name": "name", "kind": "identifier"},
                        {"name": "grp", "kind": "category", "categories": categories(groups)},
                        {"name": "value", "kind": "numeric", "bounds": [0.0, 100.0]},
                    ],
                }
            ],
            "source": str(folder / "node.toml"),
        }
    )


def coordinator_config(nodes: list[str], pki_dir: Path, folder: Path) -> CoordinatorConfig:
    folder.mkdir(parents=True, exist_ok=True)
    datasets = ", ".join(f'"{n}.{TABLE}"' for n in nodes)
    (folder / "projects.toml").write_text(
        f'[[projects]]\nid = "{PROJECT}"\ntitle = "Benchmark"\npurpose = "Measure the cost of encrypted aggregation"\n'
        f'analysts = ["{ANALYST}"]\ndatasets = [{datasets}]\nrho = {HUGE_CAP}\n',
        encoding="utf-8",
    )
    return CoordinatorConfig.model_validate(
        {
            "coordinator": {
                "listen": "127.0.0.1:0",
                "query_timeout_s": 300.0,
                "projects": "projects.toml",
                "transparency_register": "state/register.jsonl",
                "test_mode": True,
            },
            "tls": {
                "cert": str(pki_dir / "coordinator-coordinator.crt"),
                "key": str(pki_dir / "coordinator-coordinator.key"),
                "ca": str(pki_dir / "ca.crt"),
            },
            "nodes": [{"name": n} for n in nodes],
            "source": str(folder / "coordinator.toml"),
        }
    )


@dataclass
class BenchFederation:
    """A live federation of ``nodes`` nodes whose ``events`` tables declare ``groups`` categories."""

    nodes: int
    groups: int
    coordinator: Coordinator
    analyst: fedlink.Federation
    files: list[Path]
    agents: list[NodeAgent] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def query(self, sql: str, pet: Pet, noiseless: bool = False) -> fedlink.Result:
        """``sql`` for the benchmark project at epsilon = 1, or exactly (logged test mode) if ``noiseless``."""
        if noiseless:
            return self.analyst.query(sql, project=PROJECT, noiseless=True, pet=pet)
        return self.analyst.query(sql, project=PROJECT, epsilon=1.0, pet=pet)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        for thread in self.threads:
            thread.join(10)
        self.coordinator.stop(grace=0.2)


def start_federation(root: Path, pki_dir: Path, data: list[Path], groups: int, run: int) -> BenchFederation:
    """Coordinator and one node per file in ``data``, state under ``root/run-<run>``."""
    names = [node_name(i) for i in range(1, len(data) + 1)]
    folder = root / f"run-{run:03d}-{len(data)}n-{groups}g"
    coordinator = Coordinator(coordinator_config(names, pki_dir, folder / "coordinator"))
    coordinator.start()
    address = f"127.0.0.1:{coordinator.port}"
    analyst = fedlink.connect(
        address,
        cert=pki_dir / f"analyst-{ANALYST}.crt",
        key=pki_dir / f"analyst-{ANALYST}.key",
        ca=pki_dir / "ca.crt",
        timeout_s=600.0,
    )
    federation = BenchFederation(len(data), groups, coordinator, analyst, data)
    try:
        for name, path in zip(names, data, strict=True):
            config = node_config(name, address, pki_dir, path, groups, folder / name)
            agent = NodeAgent(config)
            thread = threading.Thread(target=agent.serve, kwargs={"retry_s": 0.1}, daemon=True, name=f"agent-{name}")
            thread.start()
            federation.agents.append(agent)
            federation.threads.append(thread)
            if not agent.connected.wait(60):
                raise RuntimeError(f"benchmark node {name} did not connect to the coordinator")
    except BaseException:
        federation.stop()
        raise
    return federation


@dataclass
class FederationPool:
    """Shared PKI and data under ``root``; one live federation at a time, switched on demand."""

    root: Path
    rows: int
    pki_dir: Path | None = None
    current: BenchFederation | None = None
    runs: int = 0

    def data(self, nodes: int, groups: int) -> list[Path]:
        files = []
        for index in range(1, nodes + 1):
            path = self.root / "data" / f"g{groups}" / f"{node_name(index)}.parquet"
            if not path.exists():
                write_events(path, self.rows, groups, seed=1000 * groups + index)
            files.append(path)
        return files

    def get(self, nodes: int, groups: int) -> BenchFederation:
        current = self.current
        if current is not None and (current.nodes, current.groups) == (nodes, groups):
            return current
        self.close()
        if self.pki_dir is None:
            self.pki_dir = make_pki(self.root)
        self.runs += 1
        self.current = start_federation(self.root, self.pki_dir, self.data(nodes, groups), groups, self.runs)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


class PlaintextFloor:
    """The non-federated floor: one DuckDB process reading every node's Parquet file at once."""

    def __init__(self, files: list[Path]) -> None:
        self._connection = duckdb.connect(":memory:")
        listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
        self._source = f"read_parquet([{listed}])"

    def query(self, select: str) -> list[tuple[Any, ...]]:
        return self._connection.execute(f"SELECT grp, {select} FROM {self._source} GROUP BY grp").fetchall()

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> PlaintextFloor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class OverheadRow:
    """The medians of one shape's paths, measured in the same run, and the HE overhead ratio."""

    aggregate: str
    nodes: int
    groups: int
    medians: dict[str, float] = field(default_factory=dict)
    extra_infos: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        he, dp = self.medians.get("he+dp"), self.medians.get("dp")
        return he / dp if he is not None and dp else None


@dataclass
class OverheadReport:
    """Collects medians per (aggregate, nodes, groups) and writes the ratio into every paired benchmark's
    ``extra_info`` as soon as both the ``he+dp`` and ``dp`` paths of a shape have run."""

    rows: dict[tuple[str, int, int], OverheadRow] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def record(self, aggregate: str, nodes: int, groups: int, path: str, median: float, extra: dict[str, Any]) -> None:
        row = self.rows.setdefault((aggregate, nodes, groups), OverheadRow(aggregate, nodes, groups))
        row.medians[path] = median
        row.extra_infos.append(extra)
        for info in row.extra_infos:
            info.update({f"median_s_{p}": round(m, 6) for p, m in row.medians.items()})
            if row.ratio is not None:
                info["ratio_he_dp_over_dp"] = round(row.ratio, 3)

    def table(self) -> list[str]:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:10.1f}"

        out = [
            "HE overhead (medians in ms, measured in this run; ratio = he+dp / dp)",
            f"{'aggregate':>9} {'nodes':>5} {'groups':>6} {'he+dp':>10} {'dp':>10} {'duckdb':>10} {'ratio':>7}",
        ]
        for key in sorted(self.rows):
            row = self.rows[key]
            ratio = "-" if row.ratio is None else f"{row.ratio:7.2f}"
            out.append(
                f"{row.aggregate:>9} {row.nodes:>5} {row.groups:>6} {fmt(row.medians.get('he+dp'))} "
                f"{fmt(row.medians.get('dp'))} {fmt(row.medians.get('duckdb'))} {ratio:>7}"
            )
        return out


REPORT = OverheadReport()
