"""Encrypted aggregation over a real federation: the coordinator only ever holds ciphertexts and
public contexts, the analyst's secret key never leaves its process, and in test mode the decrypted
BFV results equal DuckDB exactly (CKKS within 1e-6 relative)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import tenseal as ts

import fedlink
from fedlink.pets import he
from fedlink.protocol import audit, rpc
from fedlink.protocol.fedlink_pb2 import Frame
from fedlink.protocol.results import EncryptedPartial
from fedlink.protocol.transport import Reassembler

from ..conftest import InProcessFederation, connect_analyst, start_federation

pytestmark = pytest.mark.usefixtures("workdir")
CHARITIES = ["charity_north", "charity_south"]
PROJECT = "homelessness-outcomes"


def plaintext(workdir: Path, nodes: list[str], table: str, sql: str) -> list[tuple]:
    files = ", ".join(f"'{workdir / 'data' / n / table}.parquet'" for n in nodes)
    return duckdb.sql(sql.replace("DATA", f"read_parquet([{files}])")).fetchall()


def messages_of(captured: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Every logical message (kind, body) on record, reassembled from the audited frames."""
    out, reassembler = [], Reassembler()
    for direction, data in captured:
        if direction != "sent":  # each message is recorded by its sender and its receiver: count it once
            continue
        message = reassembler.feed(Frame.FromString(data))
        if message is not None:
            out.append((message.kind, message.body))
    return out


def test_bfv_counts_and_histograms_equal_duckdb_exactly(federation: InProcessFederation, workdir: Path) -> None:
    fed = connect_analyst(federation.address, workdir)
    res = fed.query(
        "SELECT region, outcome, COUNT(*) AS n FROM support_episodes GROUP BY region, outcome",
        project=PROJECT,
        noiseless=True,
        pet="he+dp",
    )
    assert res.raw.pet == "he+dp, TEST MODE (no noise)"
    expected = {
        (r, o): n
        for r, o, n in plaintext(
            workdir, CHARITIES, "support_episodes", "SELECT region, outcome, COUNT(*) FROM DATA GROUP BY ALL"
        )
    }
    assert {(r["region"], r["outcome"]): r["n"] for r in res.rows()} == {
        (r["region"], r["outcome"]): expected.get((r["region"], r["outcome"]), 0) for r in res.rows()
    }
    # 9 regions x 15 years x 2 x 2 x 9 bins = 4,860 cells: more than one ciphertext per vector
    big = fed.query(
        "SELECT region, ks4_year, fsm, sen, HISTOGRAM(attainment8) FROM pupils GROUP BY region, ks4_year, fsm, sen",
        project="deprivation-mental-health",
        noiseless=True,
    )
    assert len(big.rows()) == 4860 > he.SLOTS
    truth = plaintext(
        workdir,
        ["dfe"],
        "pupils",
        "SELECT region, ks4_year, fsm, sen, LEAST(CAST(FLOOR(attainment8 / 10) AS INTEGER), 8) AS b, COUNT(*) "
        "FROM DATA WHERE attainment8 IS NOT NULL GROUP BY ALL",
    )
    expected_bins = {(r, y, f, s, b): n for r, y, f, s, b, n in truth}
    labels = [f"[{10 * i}, {10 * i + 10})" for i in range(8)] + ["[80, 90]"]
    for row in big.rows():
        key = (row["region"], row["ks4_year"], row["fsm"], row["sen"], labels.index(row["attainment8_bin"]))
        assert row["histogram(attainment8)"] == expected_bins.get(key, 0)


def test_ckks_sums_within_1e_6_relative(federation: InProcessFederation, workdir: Path) -> None:
    res = connect_analyst(federation.address, workdir).query(
        "SELECT region, SUM(duration_days) AS days, AVG(duration_days) AS mean FROM support_episodes GROUP BY region",
        project=PROJECT,
        noiseless=True,
    )
    expected = {
        r: (s, m)
        for r, s, m in plaintext(
            workdir,
            CHARITIES,
            "support_episodes",
            "SELECT region, SUM(LEAST(GREATEST(duration_days, 1), 1095)), AVG(LEAST(GREATEST(duration_days, 1), 1095)) "
            "FROM DATA GROUP BY 1",
        )
    }
    for row in res.rows():
        days, mean = expected.get(row["region"], (0.0, None))
        assert row["days"] == pytest.approx(days, rel=1e-6, abs=1e-6)
        assert (mean is None and row["mean"] is None) or row["mean"] == pytest.approx(mean, rel=1e-6)


def test_only_ciphertexts_and_public_keys_leave_their_owners(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[bool] = []
    original = ts.context_from

    def recording_context_from(data: bytes, *args: object, **kwargs: object) -> object:
        context = original(data, *args, **kwargs)
        loaded.append(context.is_private() or context.has_secret_key())
        return context

    monkeypatch.setattr(ts, "context_from", recording_context_from)
    keys_made: list[he.AnalystKeys] = []
    real_keys = he.AnalystKeys

    class RecordingKeys(real_keys):  # type: ignore[misc, valid-type]
        def __init__(self, schemes: list[he.Scheme]) -> None:
            super().__init__(schemes)
            keys_made.append(self)

    monkeypatch.setattr(fedlink.analyst.client, "AnalystKeys", RecordingKeys)
    with audit.recording() as captured:
        fed = start_federation(CHARITIES)
        try:
            client = connect_analyst(fed.address, workdir)
            noisy = client.query(
                "SELECT outcome, COUNT(*), AVG(duration_days) FROM support_episodes GROUP BY outcome",
                project=PROJECT,
                epsilon=1.0,
            )
            exact = client.query(
                "SELECT outcome, COUNT(*) FROM support_episodes GROUP BY outcome", project=PROJECT, noiseless=True
            )
        finally:
            fed.stop()
    assert noisy.raw.pet == "he+dp" and len(keys_made) == 2
    # every context any other party deserialised was public
    assert loaded and not any(loaded)
    messages = messages_of(captured)
    blobs = b"".join(body for _, body in messages)
    for keys in keys_made:
        for secret in keys.secret_key_bytes():
            probe = secret[1024 : 1024 + 192]  # key material, past the format header
            assert probe not in blobs
            encoded_probes = [base64.b64encode(probe[shift:])[4:-4] for shift in range(3)]
            assert not any(e in blobs for e in encoded_probes)  # nor base64-encoded, at any alignment
            assert any(e in base64.b64encode(secret) for e in encoded_probes)  # control: the probe does detect it
    queries = [json.loads(body) for kind, body in messages if kind == "query"]
    assert len(queries) == 2
    for request in queries:
        for scheme, encoded in request["contexts"].items():
            context = he.load_public_context(scheme, encoded).context
            assert not context.is_private() and not context.has_galois_keys() and not context.has_relin_keys()
            assert len(encoded) * 3 / 4 < 3_000_000  # public key only, well under 3 MB
    # nodes sent only ciphertexts: no plaintext vectors crossed, even the exact ones of test mode
    kinds = [kind for kind, _ in messages]
    assert "partial" not in kinds and kinds.count("encrypted_partial") == 2 * len(CHARITIES)
    for kind, body in messages:
        if kind == "encrypted_partial":
            partial = json.loads(body)
            assert "vectors" not in partial and set(partial["ciphertexts"]) >= {"rows:*"}
    exact_counts = [r["count(*)"] for r in exact.rows()]
    per_node = [
        [
            n
            for _, n in sorted(
                plaintext(workdir, [node], "support_episodes", "SELECT outcome, COUNT(*) FROM DATA GROUP BY 1")
            )
        ]
        for node in CHARITIES
    ]
    assert sum(exact_counts) == sum(sum(v) for v in per_node)
    for kind, body in messages:
        if kind in ("encrypted_partial", "encrypted_result"):
            assert json.dumps([float(x) for x in per_node[0]]).replace(" ", "").encode() not in body


def test_every_ciphertext_a_node_sends_decrypts_under_the_analysts_key(workdir: Path) -> None:
    """What the wire audit masks as opaque payloads are real ciphertexts for this query's key."""
    from fedlink.language.sql import plan_query
    from fedlink.node.runtime import NodeRuntime
    from fedlink.plan.catalogue import FederationCatalogue, NodeStatus
    from fedlink.protocol.tasks import PrivacyLoss, QueryTask

    from ..conftest import node_config

    config = node_config("charity_north", "127.0.0.1:1", workdir / "he-state")
    runtime = NodeRuntime(config)
    try:
        plan = plan_query(
            "SELECT outcome, SUM(duration_days) FROM support_episodes GROUP BY outcome",
            FederationCatalogue(nodes=(NodeStatus(node="charity_north", live=True, catalogue=runtime.catalogue),)),
        )
        keys = he.AnalystKeys(["bfv", "ckks"])
        task = QueryTask(
            query_id="he-1",
            plan=plan,
            analyst="demo-analyst",
            project=PROJECT,
            loss=PrivacyLoss(),
            noiseless=True,
            pet="he+dp",
        )
        runtime.reserve(task)
        runtime.execute("he-1", keys.public_contexts())  # prepared: the answer waits in the outbox
        kind, body = runtime.commit("he-1")  # what the node sends once the coordinator decides
        assert kind == rpc.ENCRYPTED_PARTIAL
        partial = EncryptedPartial.model_validate_json(body)
        exact = runtime.data.aggregate(plan)
        for key, chunks in partial.ciphertexts.items():
            scheme = "ckks" if key.startswith("sum") else "bfv"
            np.testing.assert_allclose(
                keys.decrypt(scheme, chunks, plan.cells), exact.vectors[key], rtol=1e-9, atol=1e-6
            )
    finally:
        runtime.close()


def test_pet_is_on_the_register(federation: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(federation.address, workdir)
    client.query("SELECT COUNT(*) FROM support_episodes", project=PROJECT, epsilon=0.5, pet="dp")
    client.query("SELECT COUNT(*) FROM support_episodes", project=PROJECT, epsilon=0.5)
    queries = client.register().entries("query")
    assert [q["fields"]["pet"] for q in queries[-2:]] == ["dp", "he+dp"]
    assert queries[-1]["fields"]["encrypted_for"] == "demo-analyst" and queries[-1]["fields"]["released"] is None
    assert queries[-2]["fields"]["released"]["rows"]
    with pytest.raises(fedlink.BadInput, match="unknown `pet`"):
        client.query("SELECT COUNT(*) FROM support_episodes", project=PROJECT, epsilon=0.5, pet="none")  # type: ignore[arg-type]
