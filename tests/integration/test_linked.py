"""Linked statistics over a real federation: the encrypted chain over the link spine gives, in test
mode, exactly what a plaintext join on the same spine gives; with noise, every node pays its own
budget and the answer lies within its stated interval; nothing but ciphertexts crosses the wire."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from fedlink.query.linked import plan_linked
from fedlink.query.reference import reference_totals

from ..conftest import InProcessFederation, connect_analyst, node_config, start_federation

pytestmark = [pytest.mark.usefixtures("workdir"), pytest.mark.slow]
ALL = ["dfe", "dwp", "nhs", "hmps", "pnc", "charity_north", "charity_south"]
DEPRIVATION = "deprivation-mental-health"
HOMELESSNESS = "homelessness-outcomes"
JUSTICE = "justice-attainment"


@pytest.fixture(scope="module")
def fed(workdir: Path):
    federation = start_federation(ALL, timeout_s=120)
    analyst = connect_analyst(federation.address, workdir)
    for project in (DEPRIVATION, HOMELESSNESS, JUSTICE):
        analyst.link(project)
    yield federation
    federation.stop()


def spine_keys(fed: InProcessFederation, project: str, plan, con: duckdb.DuckDBPyConnection):
    """Relations (record_id -> slot) from what each node kept at linkage: an independent join path."""
    tables, keys = {}, {}
    for source in plan.sources:
        for node in source.nodes:
            config = node_config(node, fed.address, fed.state)
            folder = config.ledger_path().parent / "linkage" / project
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
    return tables, keys


def exact(fed: InProcessFederation, workdir: Path, project: str, sql: str):
    analyst = connect_analyst(fed.address, workdir)
    result = analyst.query(sql, project=project, noiseless=True)
    plan = plan_linked(sql, fed.coordinator.catalogue())
    con = duckdb.connect()
    tables, keys = spine_keys(fed, project, plan, con)
    return result, plan, tables, keys, con


QUERIES = [
    (
        DEPRIVATION,
        "SELECT dfe.pupils.region, COUNT(*) AS n FROM dfe.pupils LINK dwp.claims, nhs.diagnoses "
        "WHERE dfe.pupils.fsm = 1 AND dwp.claims.parent_disability = 1 AND nhs.diagnoses.severe = 1 "
        "GROUP BY dfe.pupils.region",
    ),
    (
        DEPRIVATION,
        "SELECT nhs.diagnoses.severe, COUNT(*) AS n, AVG(dfe.pupils.attainment8) AS att, "
        "SUM(nhs.diagnoses.age_at_diagnosis) AS age FROM dfe.pupils LINK nhs.diagnoses "
        "WHERE nhs.diagnoses.year BETWEEN 2006 AND 2009 GROUP BY nhs.diagnoses.severe",
    ),
    (JUSTICE, "SELECT HISTOGRAM(dfe.pupils.attainment8) FROM dfe.pupils LINK hmps.prisoner_children"),
    (
        JUSTICE,
        "SELECT dfe.pupils.ks4_year, AVG(attainment8) AS att FROM pupils LINK prisoner_children "
        "WHERE dfe.pupils.ks4_year BETWEEN 2014 AND 2023 GROUP BY dfe.pupils.ks4_year",
    ),
    (
        HOMELESSNESS,
        "SELECT dwp.claims.employment, COUNT(*) AS n FROM support_episodes LINK dwp.claims, nhs.diagnoses "
        "WHERE dwp.claims.start_year >= 2007 AND nhs.diagnoses.diagnosis = 'depression_anxiety' "
        "GROUP BY dwp.claims.employment",
    ),
]


@pytest.mark.parametrize(("project", "sql"), QUERIES, ids=["groups", "sum-avg", "histogram", "years", "union"])
def test_noiseless_linked_totals_equal_a_plaintext_join_on_the_same_spine(
    fed: InProcessFederation, workdir: Path, project: str, sql: str
) -> None:
    result, plan, tables, keys, con = exact(fed, workdir, project, sql)
    totals = reference_totals(plan, tables, keys, connection=con)
    rows = result.rows()
    assert len(rows) == plan.cells
    cohort = totals[plan.components[0].key]
    assert cohort.sum() > 0, "the query must select somebody for the comparison to mean anything"
    for i, row in enumerate(rows):
        for agg in plan.aggregates:
            value = row[agg.label]
            if agg.func in ("count", "histogram"):
                assert value == totals[agg.components[0].key][i]
            elif agg.func == "sum":
                assert value == pytest.approx(totals[agg.components[0].key][i], abs=1e-6)
            else:
                total, count = (totals[c.key][i] for c in agg.components)
                assert (value is None and count == 0) or value == pytest.approx(total / count, rel=1e-9)
