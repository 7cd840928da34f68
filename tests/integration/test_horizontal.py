"""Horizontal queries over a real federation (mTLS gRPC on loopback), checked against DuckDB run
directly on the same files: the federated answer must equal the plaintext computation exactly."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pytest

import fedlink
from fedlink.errors import AccessDenied, Fault, NodeUnavailable, QueryError, Timeout
from fedlink.node.data import NodeData
from fedlink.query.plan import AggregatePlan
from fedlink.query.results import PartialAggregates

from ..conftest import NODES, InProcessFederation, node_config, start_federation

pytestmark = pytest.mark.usefixtures("workdir")
CHARITIES = ["charity_north", "charity_south"]


def analyst(fed: InProcessFederation, workdir: Path, name: str = "alice", pki_dir: str = "pki") -> fedlink.Federation:
    d = workdir / pki_dir
    return fedlink.connect(
        fed.address,
        cert=d / f"analyst-{name}.crt",
        key=d / f"analyst-{name}.key",
        ca=workdir / "pki" / "ca.crt",
    )


def plaintext(workdir: Path, nodes: list[str], table: str, sql: str) -> list[tuple]:
    files = ", ".join(f"'{workdir / 'data' / n / table}.parquet'" for n in nodes)
    return duckdb.sql(sql.replace("DATA", f"read_parquet([{files}])")).fetchall()


def test_catalogue_shows_every_node_and_only_metadata(federation: InProcessFederation, workdir: Path) -> None:
    cat = analyst(federation, workdir).catalog()
    assert {s.node for s in cat.raw.nodes if s.live} == set(NODES)
    assert cat.tables()["support_episodes"] == CHARITIES
    pupils = next(s for s in cat.raw.nodes if s.node == "dfe").catalogue.table("pupils")
    exact = plaintext(workdir, ["dfe"], "pupils", "SELECT COUNT(*) FROM DATA")[0][0]
    assert pupils.rows_rounded % 100 == 0 and abs(pupils.rows_rounded - exact) <= 50
    first_name = pupils.column("first_name")
    assert first_name.kind == "identifier" and first_name.categories is None
    assert 0.0 < first_name.completeness <= 1.0
    assert pupils.column("attainment8").bounds == (0.0, 90.0)


def test_grouped_count_sum_avg_equal_plaintext(federation: InProcessFederation, workdir: Path) -> None:
    res = analyst(federation, workdir).query(
        "SELECT region, COUNT(*) AS n, SUM(duration_days) AS days, AVG(duration_days) AS mean "
        "FROM support_episodes GROUP BY region"
    )
    assert res.nodes == tuple(CHARITIES)
    expected = {
        r[0]: r[1:]
        for r in plaintext(
            workdir,
            CHARITIES,
            "support_episodes",
            "SELECT region, COUNT(*), SUM(LEAST(GREATEST(duration_days, 1), 1095)), "
            "AVG(LEAST(GREATEST(duration_days, 1), 1095)) FROM DATA GROUP BY region",
        )
    }
    rows = res.rows()
    assert len(rows) == 9  # every declared region, empty ones included
    for row in rows:
        n, days, mean = expected.get(row["region"], (0, 0, None))
        assert row["n"] == n and row["days"] == pytest.approx(days)
        assert (row["mean"] is None and mean is None) or row["mean"] == pytest.approx(mean)


def test_where_predicates_equal_plaintext(federation: InProcessFederation, workdir: Path) -> None:
    where = (
        "start_year BETWEEN 2015 AND 2022 AND (episode_type IN ('rough_sleeping', 'hostel') OR NOT outcome = 'housed') "
        "AND region != 'London' AND duration_days >= 30"
    )
    res = analyst(federation, workdir).query(
        f"SELECT outcome, COUNT(*) FROM support_episodes WHERE {where} GROUP BY outcome"
    )
    expected = dict(
        plaintext(
            workdir,
            CHARITIES,
            "support_episodes",
            f"SELECT outcome, COUNT(*) FROM DATA WHERE {where} GROUP BY 1",
        )
    )
    assert {r["outcome"]: r["count(*)"] for r in res.rows()} == {
        k: expected.get(k, 0) for k in ("housed", "not_housed", "lost_contact")
    }


def test_histogram_equals_numpy(federation: InProcessFederation, workdir: Path) -> None:
    res = analyst(federation, workdir).query("SELECT HISTOGRAM(attainment8) FROM pupils WHERE fsm = 1")
    values = np.array(
        [
            r[0]
            for r in plaintext(
                workdir,
                ["dfe"],
                "pupils",
                "SELECT attainment8 FROM DATA WHERE fsm = 1 AND attainment8 IS NOT NULL",
            )
        ]
    )
    edges = np.arange(0, 100, 10, dtype=float)
    expected, _ = np.histogram(np.clip(values, 0, 90), bins=edges)
    assert [r["histogram(attainment8)"] for r in res.rows()] == expected.tolist()
    assert res.rows()[0]["attainment8_bin"] == "[0, 10)" and res.rows()[-1]["attainment8_bin"] == "[80, 90]"


def test_node_qualified_table_uses_one_node(federation: InProcessFederation, workdir: Path) -> None:
    res = analyst(federation, workdir).query("SELECT COUNT(*) FROM charity_south.support_episodes")
    assert res.nodes == ("charity_south",)
    assert (
        res.rows()[0]["count(*)"]
        == plaintext(workdir, ["charity_south"], "support_episodes", "SELECT COUNT(*) FROM DATA")[0][0]
    )


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT first_name, COUNT(*) FROM pupils GROUP BY first_name", "identifier"),
        ("SELECT * FROM pupils", "SELECT * would release rows"),
        ("SELECT COUNT(*) FROM prisons", "unknown table 'prisons'"),
        ("SELECT COUNT(*) FROM pupils WHERE shoe_size > 3", "unknown column 'shoe_size'"),
        ("SELECT COUNT(*) FROM pupils WHERE", "malformed SQL"),
    ],
)
def test_bad_queries_are_refused_by_the_coordinator(
    federation: InProcessFederation, workdir: Path, sql: str, message: str
) -> None:
    with pytest.raises(QueryError, match=re.escape(message)):
        analyst(federation, workdir).query(sql)


def test_certificates_decide_who_may_do_what(federation: InProcessFederation, workdir: Path) -> None:
    with pytest.raises(Fault, match="cannot reach the coordinator"):  # TLS handshake fails: wrong CA
        analyst(federation, workdir, pki_dir="other-ca").catalog()
    as_node = fedlink.Federation(federation.address, node_config("dfe", federation.address).tls_files())
    with pytest.raises(AccessDenied, match="may not call the analyst interface"):
        as_node.catalog()
    with pytest.raises(fedlink.ConfigError, match="analysts need one"):
        fedlink.connect(
            federation.address,
            cert=workdir / "pki/node-dfe.crt",
            key=workdir / "pki/node-dfe.key",
            ca=workdir / "pki/ca.crt",
        )
    with pytest.raises(fedlink.ConfigError, match="needs cert, key"):
        fedlink.connect(federation.address)


def test_unregistered_node_is_refused(federation: InProcessFederation, workdir: Path) -> None:
    config = node_config("dfe", federation.address)
    intruder = config.model_copy(
        update={
            "node": config.node.model_copy(update={"name": "intruder"}),
            "tls": config.tls.model_copy(
                update={
                    "cert": str(workdir / "pki/node-intruder.crt"),
                    "key": str(workdir / "pki/node-intruder.key"),
                }
            ),
        }
    )
    from fedlink.node.agent import NodeAgent

    agent = NodeAgent(intruder, NodeData(config))
    with pytest.raises(AccessDenied, match="not registered"):
        agent.serve(retry_s=0.05)
    agent.stop()


def test_revoked_analyst_is_refused(workdir: Path) -> None:
    fed = start_federation([])
    try:
        from fedlink.wire import pki

        pki.issue(workdir / "pki", "analyst", "bob")
        bob = analyst(fed, workdir, name="bob")
        assert bob.catalog().raw.nodes
        pki.revoke(workdir / "pki", workdir / "pki" / "analyst-bob.crt")
        with pytest.raises(AccessDenied, match="revoked"):
            bob.catalog()
    finally:
        fed.stop()


def test_node_down_then_rejoining(workdir: Path) -> None:
    fed = start_federation(CHARITIES)
    try:
        client = analyst(fed, workdir)
        before = client.query("SELECT COUNT(*) FROM support_episodes").rows()
        fed.stop_node("charity_south")
        with pytest.raises(NodeUnavailable, match="'charity_south' holding table 'support_episodes' is not connected"):
            client.query("SELECT COUNT(*) FROM support_episodes")
        assert {s.node: s.live for s in client.catalog().raw.nodes}["charity_south"] is False
        fed.start_node("charity_south")
        assert client.query("SELECT COUNT(*) FROM support_episodes").rows() == before
    finally:
        fed.stop()


class StalledData(NodeData):
    """A node whose data access never finishes in time (a stand-in for a hung database)."""

    def aggregate(self, plan: AggregatePlan) -> PartialAggregates:
        import threading

        threading.Event().wait(3)
        return super().aggregate(plan)


def test_a_node_that_does_not_answer_times_out(workdir: Path) -> None:
    fed = start_federation(["charity_north"], timeout_s=0.5)
    try:
        fed.start_node("charity_south", data=StalledData(node_config("charity_south", fed.address)))
        with pytest.raises(Timeout, match=r"node 'charity_south' did not answer within 0\.5 s"):
            analyst(fed, workdir).query("SELECT COUNT(*) FROM support_episodes")
    finally:
        fed.stop()
