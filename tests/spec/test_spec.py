"""The spec tier, in the manner of ehrQL's spec tests: ONE table of queries (``SPECS``: horizontal SQL,
LINK linked queries, a model fit), each run on every data backend (files through DuckDB, PostgreSQL,
Spark), over every transport (fedlink's own gRPC, Flower) and in every PET mode the product offers for
it, and compared with a plaintext reference computed independently of the nodes' operators:

- horizontal queries and the model with DuckDB over the departments' own files (``Spec.reference``);
- linked queries with the plaintext reference engine (:func:`fedlink.node.engines.reference.reference_totals`)
  joined on the spine the nodes kept at linkage.

In the federation's explicit noiseless test mode the answer equals the reference: counts exactly, sums
and means to floating point (he+dp sums to CKKS's approximation, 1e-6 relative). Under DP every released
count and sum lies within six half-widths of its 95% interval of the truth (a derived bound: for the
heaviest tail used, one node's Laplace noise, the chance of a miss is 20**-6 = 1.6e-8 a value), and the
share of intervals that miss the truth is within what a 95% rate allows (the binomial tail beyond it is
below 1e-6), so a correct release fails these checks by chance in well under one run in 10,000. The
noise is not seeded (OpenDP draws it from the system, as at a node); the data are (``conftest.SEED``).
Specs whose cells are a few dozen rows run in test mode only (``Spec.noisy``): disclosure control
suppresses their noisy release by design. A combination the product does not offer (a linked query in
plain dp, dp over Flower) is refused as bad input; over gRPC, with no budget spent.

Cost: one federation per backend, shared by every spec and mode (a test class per backend with a
class-scoped federation), and one Flower deployment; ``--dist loadscope`` keeps each class on one worker.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pytest

from fedlink.errors import BadInput
from fedlink.language.linked_query import plan_linked
from fedlink.node.data import NodeData
from fedlink.node.engines.reference import reference_totals

from ..conftest import ROOT, InProcessFederation, connect_analyst, node_config, start_federation
from ..servers import PostgresServer, in_postgres, in_spark, spark_unavailable

pytestmark = [pytest.mark.usefixtures("workdir"), pytest.mark.spec]

DEPRIVATION = "deprivation-mental-health"
HOMELESSNESS = "homelessness-outcomes"
CHARITIES = ("charity_north", "charity_south")
TABLES = {
    "dfe": ("pupils",),
    "dwp": ("claims",),
    "nhs": ("diagnoses", "prescriptions"),
    "charity_north": ("support_episodes",),
    "charity_south": ("support_episodes",),
}
EPSILON, RHO = 1.0, 1.0
ROUND_TO = 5  # counts are released rounded to 5 (the demo federation's disclosure policy)
WIDTHS = 6  # the DP bound, in 95% half-widths (see the module's docstring)


@dataclass(frozen=True)
class Spec:
    """One query of the table. ``values`` names each released column's aggregate (count, sum, avg);
    ``reference`` is plaintext DuckDB SQL over ``DATA`` (every holder's rows of ``table``) giving the key
    columns then the values, in order; a linked spec's reference is the reference engine."""

    id: str
    kind: Literal["horizontal", "linked", "model"]
    project: str
    text: str
    table: str = ""
    values: dict[str, str] = field(default_factory=dict)
    reference: str = ""
    #: False where the cells are a few dozen rows: disclosure control suppresses a noisy release of them
    #: by design, so the spec runs in test mode only (the noisy modes use specs with cells of hundreds).
    noisy: bool = True


SPECS = [
    Spec(
        "grouped-count-sum-avg",
        "horizontal",
        HOMELESSNESS,
        "SELECT region, COUNT(*) AS n, SUM(duration_days) AS days, AVG(duration_days) AS mean "
        "FROM support_episodes GROUP BY region",
        "support_episodes",
        {"n": "count", "days": "sum", "mean": "avg"},
        "SELECT region, COUNT(*), SUM(LEAST(GREATEST(duration_days, 1), 1095)), "
        "AVG(LEAST(GREATEST(duration_days, 1), 1095)) FROM DATA GROUP BY region",
        noisy=False,  # 52 episodes in 8 regions at the tests' 3,000 people
    ),
    Spec(
        "where-predicates",
        "horizontal",
        DEPRIVATION,
        "SELECT fsm, COUNT(*) AS n, AVG(attainment8) AS att FROM pupils "
        "WHERE region IN ('London', 'North East', 'North West') OR NOT (sen = 1 AND ks4_year BETWEEN 2014 AND 2019) "
        "GROUP BY fsm",
        "pupils",
        {"n": "count", "att": "avg"},
        "SELECT fsm, COUNT(*), AVG(LEAST(GREATEST(attainment8, 0), 90)) FROM DATA "
        "WHERE region IN ('London', 'North East', 'North West') OR NOT (sen = 1 AND ks4_year BETWEEN 2014 AND 2019) "
        "GROUP BY fsm",
    ),
    Spec(
        "linked-groups",
        "linked",
        DEPRIVATION,
        "SELECT dfe.pupils.fsm, COUNT(*) AS n, AVG(dfe.pupils.attainment8) AS att FROM dfe.pupils "
        "LINK dwp.claims WHERE dwp.claims.start_year >= 2005 GROUP BY dfe.pupils.fsm",
    ),
    Spec(
        "linked-sum",
        "linked",
        DEPRIVATION,
        "SELECT dwp.claims.employment, COUNT(*) AS n, SUM(dfe.pupils.attainment8) AS total FROM dfe.pupils "
        "LINK dwp.claims WHERE dfe.pupils.fsm = 1 GROUP BY dwp.claims.employment",
        noisy=False,
    ),
    Spec(
        "linear-model",
        "model",
        HOMELESSNESS,
        "duration_days ~ episode_type = 'hostel' + start_year",
        "support_episodes",
        reference="SELECT duration_days, CASE WHEN episode_type = 'hostel' THEN 1 ELSE 0 END, start_year FROM DATA",
    ),
]

#: The PET modes: the federation's explicit noiseless test mode (with each protection that has one),
#: and the noisy releases.
MODES = ("test", "test-dp", "dp", "he+dp", "secagg+dp")
OFFERED: dict[tuple[str, str], tuple[str, ...]] = {
    ("horizontal", "grpc"): ("test", "test-dp", "dp", "he+dp"),
    ("linked", "grpc"): ("test", "he+dp"),  # a linked query always runs encrypted
    ("model", "grpc"): ("test", "secagg+dp"),
    ("horizontal", "flower"): ("test", "he+dp"),  # fedlink on Flower aggregates under HE only
    ("model", "flower"): ("test", "secagg+dp"),  # offered; not run here (see FLOWER)
}


def combinations(transport: str) -> list[Any]:
    return [
        pytest.param(spec, mode, id=f"{spec.id}-{mode}")
        for spec in SPECS
        for mode in OFFERED.get((spec.kind, transport), ())
        if spec.noisy or mode.startswith("test")
    ]


# --- the references -------------------------------------------------------------------------------


def holders(spec: Spec) -> list[str]:
    return sorted(n for n, tables in TABLES.items() if spec.table in tables)


def bounded(workdir: Path, spec: Spec) -> str:
    """DATA for ``spec``: every holder's rows, after the contribution bound (three rows a person)
    for a model, as nodes apply it to model statistics."""
    parts = []
    for node in holders(spec):
        source = f"read_parquet('{workdir / 'data' / node / spec.table}.parquet')"
        if spec.kind == "model":
            source = (
                f"(SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY first_name, last_name, dob "
                "ORDER BY record_id, first_name, last_name, dob, sex, postcode, region, episode_type, start_year, "
                "duration_days, outcome) <= 3)"
            )
        parts.append(f"SELECT * FROM {source}")
    return f"({' UNION ALL '.join(parts)})"


def horizontal_truth(workdir: Path, spec: Spec, keys: list[tuple]) -> list[dict[str, float | None]]:
    found = duckdb.sql(spec.reference.replace("DATA", bounded(workdir, spec))).fetchall()
    width = len(found[0]) - len(spec.values) if found else 0
    by_key = {tuple(row[:width]): row[width:] for row in found}
    empty = {"count": 0, "sum": 0.0, "avg": None}
    truth = []
    for key in keys:
        row = by_key.get(key)
        truth.append(
            {label: (row[i] if row is not None else empty[kind]) for i, (label, kind) in enumerate(spec.values.items())}
        )
    assert sum(t[next(iter(spec.values))] or 0 for t in truth) > 0, "the spec must select somebody"
    return truth


def linked_truth(fed: InProcessFederation, spec: Spec) -> tuple[dict[str, str], list[dict[str, float | None]]]:
    """Per released column its aggregate, and per cell the reference engine's totals, joined on the
    spine the nodes kept at linkage (record -> slot), read from their state folders."""
    plan = plan_linked(spec.text, fed.coordinator.catalogue())
    con = duckdb.connect()
    tables, keys = {}, {}
    for source in plan.sources:
        for node in source.nodes:
            config = node_config(node, fed.address, fed.state)  # the files the backends were loaded from
            folder = config.ledger_path().parent / "linkage" / spec.project
            slots = np.load(folder / "slots.npy")
            name = f"k_{node}_{source.table}"
            con.register(f"slots_{name}", {"person": np.arange(len(slots)), "slot": slots})
            con.execute(
                f"CREATE OR REPLACE VIEW {name} AS SELECT r.record_id, s.slot AS key "
                f"FROM read_parquet('{folder / 'records.parquet'}') r JOIN slots_{name} s USING (person) "
                f"WHERE r.source_table = '{source.table}'"
            )
            tables[(node, source.table)] = config.table_path(next(t for t in config.tables if t.name == source.table))
            keys[(node, source.table)] = name
    totals = reference_totals(plan, tables, keys, connection=con)
    assert totals["rows:*"].sum() > 0, "the spec must select somebody"
    kinds = {agg.label: agg.func for agg in plan.aggregates}
    truth = []
    for i in range(plan.cells):
        cell: dict[str, float | None] = {}
        for agg in plan.aggregates:
            parts = [totals[c.key][i] for c in agg.components]
            if agg.func == "avg":
                cell[agg.label] = parts[0] / parts[1] if parts[1] else None
            else:
                cell[agg.label] = float(parts[0])
        truth.append(cell)
    return kinds, truth


def pooled_fit(workdir: Path, spec: Spec) -> np.ndarray:
    """Ordinary least squares on the pooled, contribution-bounded rows."""
    rows = np.asarray(duckdb.sql(spec.reference.replace("DATA", bounded(workdir, spec))).fetchall(), dtype=float)
    x = np.column_stack([np.ones(len(rows)), rows[:, 1:]])
    return np.linalg.solve(x.T @ x, x.T @ rows[:, 0])


# --- the comparison -------------------------------------------------------------------------------


def allowed_misses(n: int, rate: float = 0.05, tail: float = 1e-6) -> int:
    """The most misses of ``n`` independent intervals, each missing with at most ``rate``, short of a
    binomial tail below ``tail``."""
    m = 0
    while sum(math.comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in range(m + 1, n + 1)) >= tail:
        m += 1
    return m


def compare(rows: list[dict[str, Any]], truth: list[dict[str, float | None]], kinds: dict[str, str], mode: str) -> None:
    assert len(rows) == len(truth)
    released = 0
    for label, kind in kinds.items():
        checked = misses = 0
        for row, cell in zip(rows, truth, strict=True):
            value, expected = row[label], cell[label]
            if mode.startswith("test"):
                if kind == "count":
                    assert value == expected, (label, row)
                elif expected is None:
                    assert value is None, (label, row)
                else:  # CKKS sums are approximate; a dp sum is a float sum in another order
                    assert value == pytest.approx(expected, rel=1e-6, abs=1e-6), (label, row)
                continue
            if value is None or expected is None:  # suppressed, or no rows: nothing released to check
                continue
            lower, upper = row[f"{label}_lower"], row[f"{label}_upper"]
            checked += 1
            misses += not lower <= expected <= upper
            if kind != "avg":  # additive noise: the half-width is at least upper - value, less rounding
                base = ROUND_TO if kind == "count" else 0
                assert abs(value - expected) <= WIDTHS * (upper - value + base) + base, (label, row, expected)
        released += checked
        assert misses <= allowed_misses(checked), (label, misses, checked)
    assert mode.startswith("test") or released > 0, ("a noisy spec must release something to compare", rows)


def ask(federation: Any, spec: Spec, mode: str) -> Any:
    if spec.kind == "model":
        return federation.fit(
            spec.text, table=spec.table, project=spec.project, family="gaussian",
            noiseless=mode == "test", **({} if mode == "test" else {"rho": RHO}),
        )  # fmt: skip
    if mode.startswith("test"):
        pet = "dp" if mode == "test-dp" else "he+dp"
        return federation.query(spec.text, project=spec.project, noiseless=True, pet=pet)
    return federation.query(spec.text, project=spec.project, epsilon=EPSILON, pet=mode)


def check(federation: Any, fed: InProcessFederation | None, workdir: Path, spec: Spec, mode: str) -> None:
    answer = ask(federation, spec, mode)
    if spec.kind == "model":
        expected = pooled_fit(workdir, spec)
        assert answer.noiseless == (mode == "test")
        assert answer.pet == ("secagg+dp, TEST MODE (no noise)" if mode == "test" else "secagg+dp")
        if mode == "test":
            np.testing.assert_allclose(answer.coefficients, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-6)
        else:
            assert {n: loss.rho for n, loss in answer.privacy_loss.items()} == dict.fromkeys(CHARITIES, RHO)
            assert np.all(np.isfinite(answer.coefficients)) and len(answer.coefficients) == len(expected)
        return
    assert answer.raw.noiseless == mode.startswith("test")
    assert answer.raw.pet.split(",")[0] == ("dp" if mode in ("dp", "test-dp") else "he+dp")
    rows = answer.rows()
    if spec.kind == "linked":
        assert fed is not None
        kinds, truth = linked_truth(fed, spec)
    else:
        keys = [tuple(row[k] for k in answer.raw.key_columns) for row in rows]
        kinds, truth = spec.values, horizontal_truth(workdir, spec, keys)
    compare(rows, truth, kinds, mode)
    if not mode.startswith("test"):
        assert set(answer.privacy_loss) == set(answer.nodes)
        assert all(loss == {"epsilon": EPSILON, "rho": 0.0} for loss in answer.privacy_loss.values())


# --- the federations ------------------------------------------------------------------------------


def load_postgres(workdir: Path) -> PostgresServer:
    server = PostgresServer.start()
    for node, tables in TABLES.items():
        server.sql(f"CREATE SCHEMA {node}")
        for table in tables:
            server.load_parquet(f"{node}.{table}", workdir / "data" / node / f"{table}.parquet")
    return server


@contextmanager
def backend_federation(backend: str, workdir: Path, scratch: Path) -> Iterator[InProcessFederation]:
    """The nodes of the table's specs, their data in ``backend``, behind one coordinator; the
    deprivation project linked once (dfe, dwp and nhs)."""
    server = None
    if backend == "postgresql":
        if reason := PostgresServer.unavailable():
            pytest.skip(reason)
        server = load_postgres(workdir)
    warm = None
    if backend == "spark":
        if reason := spark_unavailable():
            pytest.skip(reason)
        # Spark's JVM is launched by a fork, which gRPC's threads in this process can break: start it
        # (through one node's data, kept open so that the SparkContext stays) before the coordinator.
        warm = NodeData(in_spark(node_config("dfe", "127.0.0.1:1", scratch)))
    fed = start_federation([], timeout_s=120)
    try:
        for node in TABLES:
            config = node_config(node, fed.address, fed.state)
            if server is not None:
                config = in_postgres(config, server)
            elif backend == "spark":
                config = in_spark(config)
            fed.start_node(node, config=config)
        connect_analyst(fed.address, workdir).link(DEPRIVATION)
        yield fed
    finally:
        fed.stop()
        if server is not None:
            server.stop()
        if warm is not None:
            warm.close()


class OverGrpc:
    """Every spec in every mode over fedlink's own transport, on one backend (a test class per backend:
    ``--dist loadscope`` keeps a class on one worker, so its federation starts once)."""

    backend = ""

    @pytest.fixture(scope="class")
    @classmethod
    def federation(cls, workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessFederation]:
        with backend_federation(cls.backend, workdir, tmp_path_factory.mktemp(f"spec-{cls.backend}")) as fed:
            yield fed

    @pytest.mark.parametrize(("spec", "mode"), combinations("grpc"))
    def test_spec(self, federation: InProcessFederation, workdir: Path, spec: Spec, mode: str) -> None:
        check(connect_analyst(federation.address, workdir), federation, workdir, spec, mode)

    def test_a_linked_query_in_plain_dp_is_refused_and_spends_nothing(
        self, federation: InProcessFederation, workdir: Path
    ) -> None:
        spec = next(s for s in SPECS if s.kind == "linked")
        analyst = connect_analyst(federation.address, workdir)
        before = analyst.budget().rows()
        with pytest.raises(BadInput, match="he\\+dp"):
            ask(analyst, spec, "dp")
        assert analyst.budget().rows() == before


class TestFiles(OverGrpc):
    backend = "files"


class TestPostgreSQL(OverGrpc):
    backend = "postgresql"


class TestSpark(OverGrpc):
    backend = "spark"


#: Over Flower: the two-node spec in test mode and a noisy spec under he+dp. Each ``flwr run`` costs
#: about a minute on 2 cores (a ServerApp and ClientApps started per run), so the model is left to
#: tests/e2e/test_flower.py, which fits one over Flower against the pooled fit.
FLOWER = [p for p in combinations("flower") if p.id in ("grouped-count-sum-avg-test", "where-predicates-he+dp")]
FLOWER_NODES = [*CHARITIES, "dfe"]


class TestFlower:
    """Specs over fedlink on a Flower deployment (a SuperLink, SuperNodes for the charities and dfe;
    files backend)."""

    @pytest.fixture(scope="class")
    @classmethod
    def flower(cls, workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
        pytest.importorskip("flwr", reason="Flower is not installed (pip install 'fedlink[flower]')")
        from fedlink.flower import FlowerFederation

        from ..flower_deploy import FlowerDeployment

        root = tmp_path_factory.mktemp("flower")
        with FlowerDeployment(root, workdir, FLOWER_NODES, configs=ROOT) as deployment:
            yield FlowerFederation(
                deployment.superlink,
                analyst="demo-analyst",
                projects=ROOT / "coordinator" / "projects.toml",
                register=deployment.root / "coordinator" / "register.jsonl",
                insecure=True,
                test_mode=True,
            )

    @pytest.mark.parametrize(("spec", "mode"), FLOWER)
    def test_spec(self, flower: Any, workdir: Path, spec: Spec, mode: str) -> None:
        check(flower, None, workdir, spec, mode)

    def test_plain_dp_over_flower_is_refused(self, flower: Any) -> None:
        with pytest.raises(BadInput, match="he\\+dp"):
            ask(flower, SPECS[0], "dp")
