"""Linked statistics over a real federation: the encrypted chain over the link spine gives, in test
mode, exactly what a plaintext join on the same spine gives; with noise, every node pays its own
budget and the answer lies within its stated interval; nothing but ciphertexts crosses the wire."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from fedlink.language.linked_query import plan_linked
from fedlink.node.engines.reference import reference_totals
from fedlink.protocol.results import LinkedEncryptedResult
from fedlink.protocol.tasks import LinkedOutput, LinkedStep

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


def test_linkage_quality_is_released_with_dp_and_paid_for_by_every_node(
    fed: InProcessFederation, workdir: Path
) -> None:
    analyst = connect_analyst(fed.address, workdir)
    result = analyst.query(QUERIES[0][1], project=DEPRIVATION, noiseless=True)
    quality = result.linkage
    epsilon = fed.coordinator.config.coordinator.link_quality_epsilon  # the demo federation's: 1.0
    assert quality is not None and quality.epsilon == pytest.approx(epsilon) and epsilon > 0
    assert {frozenset((p.a, p.b)) for p in quality.pairs} == {
        frozenset(p) for p in (("dfe", "dwp"), ("dfe", "nhs"), ("dwp", "nhs"))
    }
    pair = quality.pair("dfe", "nhs")
    assert pair is not None and pair.rate_a is not None and 0 < pair.rate_a <= 1
    lines = {(r["node"], r["dataset"]): r for r in analyst.budget().rows() if r["project"] == DEPRIVATION}
    for node in ("dfe", "dwp", "nhs"):
        assert lines[(node, f"{node}.linkage")]["rho_spent"] == pytest.approx(epsilon**2 / 2)


def test_a_noisy_linked_query_spends_at_every_node_and_lies_within_its_intervals(
    fed: InProcessFederation, workdir: Path
) -> None:
    analyst = connect_analyst(fed.address, workdir)
    sql = QUERIES[0][1]

    def spent() -> dict[tuple[str, str], float]:
        rows = analyst.budget().rows()
        return {(r["node"], r["dataset"]): r["rho_spent"] for r in rows if r["project"] == DEPRIVATION}

    before = spent()
    noisy = analyst.query(sql, project=DEPRIVATION, epsilon=1.0)
    after = spent()
    for dataset in ("dfe.pupils", "dwp.claims", "nhs.diagnoses"):
        node = dataset.split(".")[0]
        assert after[(node, dataset)] - before[(node, dataset)] == pytest.approx(0.5)  # epsilon 1
    assert noisy.privacy_loss == {n: {"epsilon": 1.0, "rho": 0.0} for n in ("dwp", "nhs", "dfe")}
    # SDC may suppress small cells; with no noise and no SDC, compare the released ones with the truth
    _, plan, tables, keys, con = exact(fed, workdir, DEPRIVATION, sql)
    truth = reference_totals(plan, tables, keys, connection=con)["rows:*"]
    released = [(r["n"], r["n_lower"], r["n_upper"], truth[i]) for i, r in enumerate(noisy.rows())]
    # Each released interval covers the truth with 95% (before rounding to 5, which only widens it).
    # Nine independent cells: five or more misses has probability < 1e-4, so this cannot flake.
    misses = sum(1 for v, lo, hi, t in released if v is not None and not lo <= t <= hi)
    assert misses <= 4
    assert all(v is None or v % 5 == 0 for v, *_ in released), "counts are rounded to 5"


def test_nothing_but_ciphertexts_crosses_the_wire(fed: InProcessFederation, workdir: Path, monkeypatch) -> None:
    from fedlink.analyst import client
    from fedlink.pets.chain import ChainKeys
    from fedlink.pets.sealed import open_sealed
    from fedlink.protocol import audit
    from fedlink.protocol.blobs import unpack
    from fedlink.protocol.fedlink_pb2 import Frame
    from fedlink.protocol.transport import Reassembler

    from ..conftest import find_leaks, identifier_values

    made: list[ChainKeys] = []

    class Recorded(ChainKeys):
        def __init__(self, params, secret=None) -> None:
            super().__init__(params, secret)
            made.append(self)

    monkeypatch.setattr(client, "ChainKeys", Recorded)
    analyst = connect_analyst(fed.address, workdir)
    with audit.recording() as captured:
        result = analyst.query(QUERIES[4][1], project=HOMELESSNESS, epsilon=0.5)
    reassembler, bodies = Reassembler(), []
    for direction, data in captured:
        if direction == "sent":
            message = reassembler.feed(Frame.FromString(data))
            if message is not None:
                bodies.append((message.kind, message.body))
    steps = [b for k, b in bodies if k == "linked_step"]
    assert len(steps) == 4, "north, south, dwp, nhs each ran one step"
    binary = [b for _, b in bodies if b[:4] == b"FLB1"]
    assert len(binary) == 8  # 4 steps out, 3 middle answers back, the last node's cells at its commit
    sealed = [b for k, b in bodies if k == "linked_result"]
    assert len(sealed) == 1 and sealed[0][:4] == b"FLS1"  # the analyst's copy is sealed to its result key
    stored = analyst.keystore.load(result.query_id)
    binary.append(open_sealed(stored.result_key, stored.query_id, sealed[0]))
    from fedlink.pets.chain import ChainEvaluator

    evaluator = ChainEvaluator(made[0].params, made[0].public_key())
    for body in binary:
        header, blobs = unpack(body)
        # headers are one of three typed models that carry shapes, noise specs and plans, never vectors
        assert any(_validates(model, header) for model in (LinkedStep, LinkedOutput, LinkedEncryptedResult))
        for blob in blobs:
            evaluator.load(blob)  # every blob is a ciphertext under this query's parameters
    secret = made[0].secret_key_bytes()
    wire = b"".join(b for _, b in bodies)
    assert secret[100:164] not in wire
    text = [b for _, b in bodies if b[:4] != b"FLB1"]
    assert find_leaks(text, identifier_values(workdir)) == []


def _validates(model, header: bytes) -> bool:
    from pydantic import ValidationError

    try:
        model.model_validate_json(header)
    except ValidationError:
        return False
    return True


def test_registers_record_the_query_at_every_node_without_values(fed: InProcessFederation, workdir: Path) -> None:
    import json

    analyst = connect_analyst(fed.address, workdir)
    result = analyst.query(QUERIES[0][1], project=DEPRIVATION, epsilon=0.5)
    for node in ("dfe", "dwp", "nhs"):
        config = node_config(node, fed.address, fed.state)
        entries = [json.loads(line) for line in config.register_path().read_text().splitlines()]
        mine = [e for e in entries if e.get("fields", {}).get("query_id") == result.query_id]
        assert [e["fields"]["status"] for e in mine] == ["released"]
        assert all(e["fields"]["released"] is None and "LINK" in e["fields"]["query"] for e in mine)


def test_linked_queries_refuse_clearly_and_spend_nothing(fed: InProcessFederation, workdir: Path) -> None:
    from fedlink.errors import BadInput, QueryError

    analyst = connect_analyst(fed.address, workdir)
    before = analyst.budget().rows()
    with pytest.raises(BadInput, match="always run encrypted"):
        analyst.query(QUERIES[0][1], project=DEPRIVATION, epsilon=1.0, pet="dp")
    with pytest.raises(QueryError, match="exactly one table"):
        analyst.query(
            "SELECT COUNT(*) FROM dfe.pupils LINK nhs.diagnoses WHERE dfe.pupils.fsm = 1 OR nhs.diagnoses.severe = 1",
            project=DEPRIVATION,
            epsilon=1.0,
        )
    from fedlink.errors import PolicyRefused

    with pytest.raises(PolicyRefused, match=r"not registered for dataset pnc\.convictions"):
        analyst.query("SELECT COUNT(*) FROM dfe.pupils LINK pnc.convictions", project=DEPRIVATION, epsilon=1.0)
    assert analyst.budget().rows() == before


def test_with_perfect_identifiers_linked_counts_equal_the_ground_truth(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No identifier corruption: the spine is the truth, so noiseless linked counts are the true ones."""
    import shutil

    from fedlink_tools.synth import synthesize
    from fedlink_tools.synth.config import CorruptionRates, rate_names

    from ..conftest import SEED

    perfect = tmp_path / "perfect"
    shutil.copytree(workdir / "pki", perfect / "pki")
    synthesize(3000, SEED, perfect / "data", rates=CorruptionRates(**dict.fromkeys(rate_names(), 0.0)), progress=False)
    monkeypatch.setenv("FEDLINK_WORKDIR", str(perfect))
    federation = start_federation(["dfe", "dwp", "nhs"])
    try:
        analyst = connect_analyst(federation.address, perfect)
        analyst.link(DEPRIVATION)
        con = duckdb.connect()
        con.execute(f"CREATE VIEW truth AS SELECT * FROM read_parquet('{perfect / 'data/truth/records.parquet'}')")
        for _, sql in QUERIES[:2]:
            result = analyst.query(sql, project=DEPRIVATION, noiseless=True)
            plan = plan_linked(sql, federation.coordinator.catalogue())
            tables, keys = {}, {}
            for source in plan.sources:
                node = source.nodes[0]
                name = f"truth_{node}_{source.table}"
                con.execute(
                    f"CREATE OR REPLACE VIEW {name} AS SELECT record_id, person_id AS key FROM truth "
                    f"WHERE node = '{node}' AND \"table\" = '{source.table}'"
                )
                tables[(node, source.table)] = perfect / "data" / node / f"{source.table}.parquet"
                keys[(node, source.table)] = name
            true_counts = reference_totals(plan, tables, keys, connection=con)["rows:*"]
            assert true_counts.sum() > 0
            assert [row["n"] for row in result.rows()] == true_counts.tolist()
    finally:
        federation.stop()
