"""Horizontal queries over a real federation (mTLS gRPC on loopback), checked against DuckDB run
directly on the same files: in the federation's explicit test mode the answer must equal the
plaintext computation exactly."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

import fedlink
from fedlink import pki
from fedlink.errors import AccessDenied, Fault, NodeUnavailable, QueryError
from fedlink.node.agent import NodeAgent
from fedlink.node.data import NodeData
from fedlink.plan.aggregate import AggregatePlan
from fedlink.protocol.results import PartialAggregates

from ..conftest import ANALYST, NODES, InProcessFederation, connect_analyst, node_config, start_federation

pytestmark = pytest.mark.usefixtures("workdir")
CHARITIES = ["charity_north", "charity_south"]
HOMELESSNESS = "homelessness-outcomes"
DEPRIVATION = "deprivation-mental-health"


class Exact:
    """An analyst in the federation's explicit test mode: exact answers to compare with DuckDB."""

    def __init__(self, fed: InProcessFederation, workdir: Path, name: str = ANALYST, pki_dir: str = "pki") -> None:
        self.client = connect_analyst(fed.address, workdir, name, pki_dir)

    def query(self, sql: str, project: str = HOMELESSNESS) -> fedlink.Result:
        return self.client.query(sql, project=project, noiseless=True)

    def catalog(self) -> fedlink.Catalogue:
        return self.client.catalog()


def plaintext(workdir: Path, nodes: list[str], table: str, sql: str) -> list[tuple]:
    files = ", ".join(f"'{workdir / 'data' / n / table}.parquet'" for n in nodes)
    return duckdb.sql(sql.replace("DATA", f"read_parquet([{files}])")).fetchall()


def test_catalogue_shows_every_node_and_only_metadata(federation: InProcessFederation, workdir: Path) -> None:
    cat = Exact(federation, workdir).catalog()
    assert {s.node for s in cat.raw.nodes if s.live} == set(NODES)
    assert cat.tables()["support_episodes"] == CHARITIES
    dfe = next(s for s in cat.raw.nodes if s.node == "dfe").catalogue
    pupils = dfe.table("pupils")
    exact = plaintext(workdir, ["dfe"], "pupils", "SELECT COUNT(*) FROM DATA")[0][0]
    assert pupils.rows_rounded % 100 == 0 and abs(pupils.rows_rounded - exact) <= 50
    first_name = pupils.column("first_name")
    assert first_name.kind == "identifier" and first_name.categories is None
    assert 0.0 < first_name.completeness <= 1.0
    assert pupils.column("attainment8").bounds == (0.0, 90.0)
    assert dfe.disclosure.suppress_below == 10 and DEPRIVATION in dfe.projects


def test_grouped_count_sum_avg_equal_plaintext(federation: InProcessFederation, workdir: Path) -> None:
    res = Exact(federation, workdir).query(
        "SELECT region, COUNT(*) AS n, SUM(duration_days) AS days, AVG(duration_days) AS mean "
        "FROM support_episodes GROUP BY region"
    )
    assert res.nodes == tuple(CHARITIES) and res.raw.noiseless
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
        # days is a CKKS sum (he+dp by default): within 1e-6 relative, and 1e-6 absolute for empty cells
        assert row["n"] == n and row["days"] == pytest.approx(days, rel=1e-6, abs=1e-6)
        assert (row["mean"] is None and mean is None) or row["mean"] == pytest.approx(mean)


def test_two_group_columns_and_a_grouped_histogram_equal_plaintext(
    federation: InProcessFederation, workdir: Path
) -> None:
    exact = Exact(federation, workdir)
    res = exact.query(
        "SELECT fsm, sen, region, COUNT(*), AVG(attainment8) FROM pupils GROUP BY fsm, sen, region", DEPRIVATION
    )
    expected = {
        r[:3]: r[3:]
        for r in plaintext(
            workdir, ["dfe"], "pupils", "SELECT fsm, sen, region, COUNT(*), AVG(attainment8) FROM DATA GROUP BY ALL"
        )
    }
    assert len(res.rows()) == 2 * 2 * 9
    for row in res.rows():
        n, mean = expected.get((row["fsm"], row["sen"], row["region"]), (0, None))
        assert row["count(*)"] == n
        assert (mean is None and row["avg(attainment8)"] is None) or row["avg(attainment8)"] == pytest.approx(mean)
    hist = exact.query("SELECT fsm, HISTOGRAM(attainment8) FROM pupils GROUP BY fsm", DEPRIVATION)
    for fsm in (0, 1):
        values = np.array(
            [r[0] for r in plaintext(workdir, ["dfe"], "pupils", f"SELECT attainment8 FROM DATA WHERE fsm = {fsm}")]
        )
        counts, _ = np.histogram(np.clip(values, 0, 90), bins=np.arange(0, 100, 10, dtype=float))
        got = [r["histogram(attainment8)"] for r in hist.rows() if r["fsm"] == fsm]
        assert got == counts.tolist()


def test_where_predicates_equal_plaintext(federation: InProcessFederation, workdir: Path) -> None:
    where = (
        "start_year BETWEEN 2015 AND 2022 AND (episode_type IN ('rough_sleeping', 'hostel') OR NOT outcome = 'housed') "
        "AND region != 'London' AND duration_days >= 30"
    )
    res = Exact(federation, workdir).query(
        f"SELECT outcome, COUNT(*) FROM support_episodes WHERE {where} GROUP BY outcome"
    )
    expected = dict(
        plaintext(
            workdir, CHARITIES, "support_episodes", f"SELECT outcome, COUNT(*) FROM DATA WHERE {where} GROUP BY 1"
        )
    )
    assert {r["outcome"]: r["count(*)"] for r in res.rows()} == {
        k: expected.get(k, 0) for k in ("housed", "not_housed", "lost_contact")
    }


def test_histogram_equals_numpy(federation: InProcessFederation, workdir: Path) -> None:
    res = Exact(federation, workdir).query("SELECT HISTOGRAM(attainment8) FROM pupils WHERE fsm = 1", DEPRIVATION)
    values = np.array(
        [
            r[0]
            for r in plaintext(
                workdir, ["dfe"], "pupils", "SELECT attainment8 FROM DATA WHERE fsm = 1 AND attainment8 IS NOT NULL"
            )
        ]
    )
    expected, _ = np.histogram(np.clip(values, 0, 90), bins=np.arange(0, 100, 10, dtype=float))
    assert [r["histogram(attainment8)"] for r in res.rows()] == expected.tolist()
    assert res.rows()[0]["attainment8_bin"] == "[0, 10)" and res.rows()[-1]["attainment8_bin"] == "[80, 90]"


def test_contribution_bound_is_enforced_per_person(federation: InProcessFederation, workdir: Path) -> None:
    """claims declares max_rows_per_person = 3 with a person key: a person's 4th row never counts."""
    res = Exact(federation, workdir).query("SELECT COUNT(*) FROM claims", DEPRIVATION)
    bounded = plaintext(
        workdir,
        ["dwp"],
        "claims",
        "SELECT COUNT(*) FROM (SELECT * FROM DATA "
        "QUALIFY ROW_NUMBER() OVER (PARTITION BY first_name, last_name, dob) <= 3)",
    )[0][0]
    assert res.rows()[0]["count(*)"] == bounded


def test_node_qualified_table_uses_one_node(federation: InProcessFederation, workdir: Path) -> None:
    res = Exact(federation, workdir).query("SELECT COUNT(*) FROM charity_south.support_episodes")
    assert res.nodes == ("charity_south",)
    expected = plaintext(workdir, ["charity_south"], "support_episodes", "SELECT COUNT(*) FROM DATA")[0][0]
    assert res.rows()[0]["count(*)"] == expected


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
        Exact(federation, workdir).query(sql, DEPRIVATION)


def test_certificates_decide_who_may_do_what(federation: InProcessFederation, workdir: Path) -> None:
    with pytest.raises(AccessDenied, match="not issued by the CA"):  # refused before any handshake: wrong CA
        Exact(federation, workdir, pki_dir="other-ca").catalog()
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
    config = node_config("dfe", federation.address, federation.state / "intruder")
    intruder = config.model_copy(
        update={
            "node": config.node.model_copy(update={"name": "intruder"}),
            "tls": config.tls.model_copy(
                update={"cert": str(workdir / "pki/node-intruder.crt"), "key": str(workdir / "pki/node-intruder.key")}
            ),
        }
    )
    agent = NodeAgent(intruder, NodeData(config))
    with pytest.raises(AccessDenied, match="not registered"):
        agent.serve(retry_s=0.05)
    agent.stop()


def test_revoked_analyst_is_refused(workdir: Path) -> None:
    fed = start_federation([])
    try:
        pki.issue(workdir / "pki", "analyst", "bob")
        bob = connect_analyst(fed.address, workdir, name="bob")
        assert bob.catalog().raw.nodes
        pki.revoke(workdir / "pki", workdir / "pki" / "analyst-bob.crt")
        with pytest.raises(AccessDenied, match="revoked"):
            bob.catalog()
    finally:
        fed.stop()


def test_node_down_then_rejoining(workdir: Path) -> None:
    fed = start_federation(CHARITIES)
    try:
        client = Exact(fed, workdir)
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
    """A node whose data access does not finish until the test lets it (a stand-in for a hung database)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.done = threading.Event()

    def aggregate(self, plan: AggregatePlan) -> PartialAggregates:
        self.release.wait(30)
        try:
            return super().aggregate(plan)
        finally:
            self.done.set()


def test_a_node_that_does_not_answer_times_out_and_nothing_is_released(workdir: Path) -> None:
    # 3 s: the healthy node answers in about 0.1 s, so a loaded CI machine leaves it a wide margin
    fed = start_federation(["charity_north"], timeout_s=3.0)
    stalled = StalledData(node_config("charity_south", fed.address, fed.state))
    try:
        fed.start_node("charity_south", data=stalled)
        with pytest.raises(Fault, match=r"node 'charity_south' failed during the query .*did not answer within 3 s"):
            Exact(fed, workdir).query("SELECT COUNT(*) FROM support_episodes")
        entries = fed.coordinator.register.entries()
        assert entries[-1].fields["status"] == "failed" and entries[-1].fields["released"] is None
    finally:
        stalled.release.set()
        stalled.done.wait(30)  # the late aggregate finishes before its database is closed
        fed.stop()
