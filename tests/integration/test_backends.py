"""Node data backends: the same tables as files (DuckDB), in a real PostgreSQL server (started here from
the installed binaries) and in Spark (local mode) give identical catalogues, identical aggregates for
the same plans, the same people and records for linkage and the same per-slot rows for linked queries;
a backend that is down is a one-line error naming it and costs no budget; credentials come only from
files or environment variables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from fedlink.errors import ConfigError, Fault
from fedlink.language.sql import plan_query
from fedlink.node.config import NodeConfig
from fedlink.node.data import NodeData
from fedlink.plan.catalogue import FederationCatalogue, NodeStatus

from ..conftest import node_config
from ..servers import PostgresServer, in_postgres, in_spark, spark_unavailable

pytestmark = [pytest.mark.usefixtures("workdir"), pytest.mark.slow]
TABLES = {"dfe": ["pupils"], "dwp": ["claims"], "nhs": ["diagnoses", "prescriptions"]}
QUERIES = [
    "SELECT region, COUNT(*) AS n FROM pupils GROUP BY region",
    "SELECT fsm, COUNT(*) AS n, AVG(attainment8) AS att, SUM(attainment8) AS total FROM pupils GROUP BY fsm",
    "SELECT HISTOGRAM(attainment8) FROM pupils WHERE region IN ('London', 'North East') AND fsm = 1",
    "SELECT ks4_year, COUNT(attainment8) AS n FROM pupils WHERE ks4_year BETWEEN 2014 AND 2019 GROUP BY ks4_year",
    "SELECT COUNT(*) AS n FROM pupils WHERE attainment8 IS NULL OR NOT (region = 'London')",
    "SELECT benefit, employment, COUNT(*) AS n FROM claims GROUP BY benefit, employment",
    "SELECT parent_disability, COUNT(*) AS n FROM claims WHERE start_year >= 2010 GROUP BY parent_disability",
]


@pytest.fixture(scope="module")
def postgres(workdir: Path) -> Iterator[PostgresServer]:
    reason = PostgresServer.unavailable()
    if reason:
        pytest.skip(reason)
    server = PostgresServer.start()
    try:
        for node, tables in TABLES.items():
            server.sql(f"CREATE SCHEMA {node}")
            for table in tables:
                server.load_parquet(f"{node}.{table}", workdir / "data" / node / f"{table}.parquet")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nodes(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """Per backend, the dfe and dwp nodes' data."""
    state = tmp_path_factory.mktemp("backend-state")
    base = {node: node_config(node, "127.0.0.1:1", state) for node in TABLES}
    variants: dict[str, dict[str, Any]] = {"files": {}, "postgresql": {}}
    for node, config in base.items():
        variants["files"][node] = NodeData(config)
        variants["postgresql"][node] = NodeData(in_postgres(config, postgres))
    skipped = spark_unavailable()
    if skipped is None:
        variants["spark"] = {node: NodeData(in_spark(config)) for node, config in base.items()}
    yield variants
    for datas in variants.values():
        for data in datas.values():
            data.close()


def test_catalogues_are_the_same_in_every_backend(nodes: dict) -> None:
    files = nodes["files"]
    for backend, datas in nodes.items():
        for node, data in datas.items():
            assert data.catalogue == files[node].catalogue, (backend, node)
    assert "spark" in nodes or spark_unavailable(), "Spark runs wherever pyspark and Java are installed"


@pytest.mark.parametrize("sql", QUERIES)
def test_the_same_plan_gives_the_same_aggregates_in_every_backend(nodes: dict, sql: str) -> None:
    catalogue = FederationCatalogue(
        nodes=tuple(NodeStatus(node=n, live=True, catalogue=d.catalogue) for n, d in nodes["files"].items())
    )
    plan = plan_query(sql, catalogue)
    node = next(n for n, tables in TABLES.items() if plan.table in tables)
    reference = nodes["files"][node].aggregate(plan)
    assert sum(sum(v) for v in reference.vectors.values()) > 0
    for backend, datas in nodes.items():
        answer = datas[node].aggregate(plan)
        for key, expected in reference.vectors.items():
            # counts are exact; clamped sums of floats agree to rounding (engines add in different orders)
            assert np.allclose(answer.vectors[key], expected, rtol=1e-12, atol=1e-9), (backend, key)
            if not key.startswith("sum:"):
                assert answer.vectors[key] == expected, (backend, key)


def test_linkage_streams_the_same_people_and_records_from_every_backend(
    nodes: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedlink.linkage.spec import load_spec
    from fedlink.node import linkage as node_linkage

    spec = load_spec()  # the shipped default, as the coordinator sends it
    monkeypatch.setattr(node_linkage, "PEOPLE_PER_BATCH", 200)  # several batches
    monkeypatch.setattr(node_linkage.secrets, "token_hex", lambda n=16: "00" * n)  # the same order everywhere
    seen: dict[str, tuple[list, Any]] = {}
    for backend, datas in nodes.items():
        data = datas["nhs"]  # two tables, one backend: their streams are read at once and merged
        linkage = node_linkage.NodeLinkage(data.config, data, tmp_path / backend)
        batches: list[dict] = []
        folder = tmp_path / backend / "records"
        folder.mkdir(parents=True)
        request = node_linkage.LinkRequest("deprivation-mental-health", "demo-analyst", spec.text, spec.hash)
        count = linkage._people(linkage._plan(request), folder, batches.append)
        assert count == sum(len(b["first_name"]) for b in batches) > 500 and len(batches) > 2
        records = pq.read_table(folder / "records.parquet").sort_by("record_id").to_pydict()
        assert sorted(set(records["person"])) == list(range(count)), "every person has a record"
        seen[backend] = (batches, records)
    reference = seen["files"]
    for backend, (batches, records) in seen.items():
        assert batches == reference[0] and records == reference[1], backend


def test_linked_rows_come_from_the_link_table_in_each_backend(nodes: dict, tmp_path: Path) -> None:
    import pyarrow as pa

    from fedlink.language.linked_query import plan_linked
    from fedlink.node.linked_query import fetch_rows
    from fedlink.plan.catalogue import FederationCatalogue

    data = nodes["files"]["dfe"]
    records = pq.read_table(data.config.table_path(data.config.tables[0])).column("record_id").to_pylist()
    mapping = tmp_path / "records.parquet"
    pq.write_table(
        pa.table({"source_table": ["pupils"] * len(records), "record_id": records, "person": range(len(records))}),
        mapping,
    )
    slots = np.random.default_rng(3).permutation(len(records)).astype(np.int64)
    catalogue = FederationCatalogue(
        nodes=tuple(NodeStatus(node=n, live=True, catalogue=d.catalogue) for n, d in nodes["files"].items())
    )
    plan = plan_linked(
        "SELECT dfe.pupils.region, COUNT(*) AS n, AVG(dfe.pupils.attainment8) AS att FROM dfe.pupils LINK dwp.claims "
        "WHERE dfe.pupils.fsm = 1 GROUP BY dfe.pupils.region",
        catalogue,
    )
    answers = {}
    for backend, datas in nodes.items():
        node_data = datas["dfe"]
        link = node_data.link_table("p", "spine-1", list(node_data.config.tables), mapping, slots)
        rows = fetch_rows(plan, "dfe", node_data, link)[0]
        order = np.argsort(rows["slot"])
        answers[backend] = {k: np.asarray(v)[order] for k, v in rows.items()}
    reference = answers["files"]
    assert len(reference["slot"]) > 100
    for backend, rows in answers.items():
        assert np.array_equal(rows["slot"].astype(np.int64), reference["slot"].astype(np.int64)), backend
        assert np.array_equal(rows["cell"].astype(np.int64), reference["cell"].astype(np.int64)), backend
        assert np.allclose(rows["v0"].astype(float), reference["v0"].astype(float), equal_nan=True), backend


def test_a_backend_that_is_down_is_one_line_and_costs_no_budget(workdir: Path, tmp_path: Path) -> None:
    from fedlink.node.runtime import NodeRuntime
    from fedlink.protocol.tasks import PrivacyLoss, QueryTask

    server = PostgresServer.start()
    try:
        server.sql("CREATE SCHEMA dfe")
        server.load_parquet("dfe.pupils", workdir / "data" / "dfe" / "pupils.parquet")
        config = in_postgres(node_config("dfe", "127.0.0.1:1", tmp_path), server)
        runtime = NodeRuntime(config)
    finally:
        server.halt()  # the database goes down under a running node
    catalogue = FederationCatalogue(nodes=(NodeStatus(node="dfe", live=True, catalogue=runtime.catalogue),))
    plan = plan_query("SELECT region, COUNT(*) AS n FROM pupils GROUP BY region", catalogue)
    task = QueryTask(
        query_id="q-down", plan=plan, analyst="demo-analyst", project="deprivation-mental-health",
        purpose="test", loss=PrivacyLoss(epsilon=1.0), pet="dp",
    )  # fmt: skip
    runtime.reserve(task)
    with pytest.raises(Fault) as caught:
        runtime.execute("q-down")
    message = caught.value.message
    assert f"PostgreSQL backend 'db' at 127.0.0.1:{server.port}" in message and "\n" not in message
    lines = [line for line in runtime.ledger.lines() if line.dataset == "dfe.pupils"]
    assert all(line.committed == 0 and line.reserved == 0 for line in lines)
    runtime.close()
    with pytest.raises(Fault, match=f"PostgreSQL backend 'db' at 127.0.0.1:{server.port}"):
        NodeData(config)  # a node cannot start on a backend that is down, and says which
    server.stop()


def test_credentials_come_only_from_files_or_the_environment(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedlink.config import load_model

    base = in_postgres(node_config("dfe", "127.0.0.1:1", tmp_path), postgres)
    by_env = base.backends["db"].model_copy(update={"password_file": None, "password_env": "FEDLINK_TEST_PG"})
    monkeypatch.setenv("FEDLINK_TEST_PG", postgres.password)
    data = NodeData(base.model_copy(update={"backends": {"db": by_env}}))
    assert data.catalogue.tables[0].rows_rounded > 0
    data.close()
    monkeypatch.delenv("FEDLINK_TEST_PG")
    with pytest.raises(ConfigError, match="environment variable FEDLINK_TEST_PG is not set"):
        NodeData(base.model_copy(update={"backends": {"db": by_env}}))
    missing = base.backends["db"].model_copy(update={"password_file": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="cannot read its password file"):
        NodeData(base.model_copy(update={"backends": {"db": missing}}))
    inline = tmp_path / "node.toml"
    inline.write_text(
        'tables = []\n[node]\nname = "dfe"\ncoordinator = "x:1"\n[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
        '[privacy]\nledger = "l"\ntransparency_register = "r"\n'
        '[backends.db]\nkind = "postgresql"\ndatabase = "d"\nuser = "u"\npassword = "hunter2"\n'
    )
    with pytest.raises(ConfigError, match="takes no inline password") as caught:
        load_model(inline, NodeConfig, "node")
    assert "hunter2" not in caught.value.message
