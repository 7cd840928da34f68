"""Privacy-preserving record linkage over a real federation: nodes agree a link secret the
coordinator never sees, send only keyed encodings, and each receives only its own slots; the spine
links the synthetic departments with high quality against the ground truth."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fedlink.coordinator.config import load_coordinator_config
from fedlink.language.linked_query import plan_linked
from fedlink.protocol import audit
from fedlink.protocol.blobs import unpack
from fedlink.protocol.fedlink_pb2 import Frame
from fedlink.protocol.transport import Reassembler

from ..conftest import ROOT, connect_analyst, find_leaks, identifier_values, start_federation

pytestmark = [pytest.mark.usefixtures("workdir"), pytest.mark.slow]
PROJECT = "deprivation-mental-health"
NODES = ["dfe", "dwp", "nhs"]


def _messages(captured: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    out, reassembler = [], Reassembler()
    for direction, data in captured:
        if direction == "sent":
            message = reassembler.feed(Frame.FromString(data))
            if message is not None:
                out.append((message.kind, message.body))
    return out


@pytest.fixture(scope="module")
def linked(workdir: Path) -> dict[str, object]:
    with audit.recording() as captured:
        fed = start_federation(NODES)
        try:
            stages: list[str] = []
            report = connect_analyst(fed.address, workdir).link(PROJECT, on_progress=lambda s, d, t: stages.append(s))
        finally:
            fed.stop()
    return {"report": report, "stages": stages, "messages": _messages(captured), "state": fed.state}


def test_the_spine_is_built_across_the_projects_nodes(linked: dict) -> None:
    report = linked["report"]
    assert report.project == PROJECT and report.nodes == tuple(NODES)
    assert {"agree secret", "encode", "link", "distribute", "total"} <= set(report.stages)
    assert linked["stages"][0].startswith("agreeing") and linked["stages"][-1] == "done"


def test_nodes_share_a_link_secret_the_coordinator_never_sees(linked: dict) -> None:
    state: Path = linked["state"]
    secrets = {n: (state / n / "keys" / "link-secrets" / f"{PROJECT}.key").read_bytes() for n in NODES}
    assert len(set(secrets.values())) == 1 and len(secrets["dfe"]) == 32
    secret = secrets["dfe"]
    blob = b"".join(body for _, body in linked["messages"])
    assert secret not in blob and secret.hex().encode() not in blob
    for shift in range(3):
        assert base64.b64encode(secret[shift:])[2:-2] not in blob
    assert not (state / "coordinator" / "keys").exists()


def _encodings(messages: list[tuple[str, bytes]]) -> list[tuple[dict, bytes]]:
    """(header, .npz body) of every node's answer with its encodings."""
    found = []
    for kind, body in messages:
        if kind == "result" and body[:4] == b"FLB1":
            header, blobs = unpack(body)
            if blobs and blobs[0][:2] == b"PK":
                found.append((json.loads(header), blobs[0]))
    return found


def test_encodings_travel_through_files_that_are_gone_once_linked(linked: dict) -> None:
    """Each node spools its encodings to disk and sends them from a file; the coordinator writes them
    to disk as they arrive: none of those files outlives the link, on any party."""
    state: Path = linked["state"]
    left = [p for p in state.rglob("*") if p.name.startswith("encodings.") or p.suffix == ".wire"]
    assert left == []
    assert all((state / n / "linkage" / PROJECT / "records.parquet").is_file() for n in NODES)


def test_only_keyed_encodings_cross_and_no_scores_come_back(linked: dict, workdir: Path) -> None:
    messages = linked["messages"]
    encodings = _encodings(messages)
    assert len(encodings) == len(NODES)
    for header, body in encodings:
        assert set(header) == {"count", "concepts", "missing", "valid"}
        assert set(header["concepts"]) == {"first_name", "last_name", "dob", "sex", "postcode"}
        assert all(0 <= share <= 1 for share in header["valid"].values())
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            assert any(name.startswith("field:first_name/") for name in npz.files)
            for name in npz.files:
                assert name in ("blooms", "popcounts") or name.startswith(("key:", "block:", "field:", "subgroup:"))
                assert npz[name].dtype.kind in "uiS", f"{name} must be numbers or digests, not text"
    slot_calls = [json.loads(body) for kind, body in messages if kind == "link_slots"]
    assert len(slot_calls) == len(NODES) and all(
        set(c) == {"project", "analyst", "mode", "slots", "spine_id", "spec_hash", "spec"} for c in slot_calls
    )
    # what comes back from the linkage unit: integer slots to nodes; stage timings and DP match rates
    # (no exact count about people) to the analyst
    for call in slot_calls:
        slots = np.load(io.BytesIO(base64.b64decode(call["slots"])), allow_pickle=False)
        assert slots.dtype == np.int64 and slots.ndim == 1
    reports = [json.loads(body) for kind, body in messages if kind == "result" and body.startswith(b'{"project"')]
    assert len(reports) == 1
    assert set(reports[0]) == {
        "project",
        "nodes",
        "stages",
        "mode",
        "spine_id",
        "quality",
        "quality_refused",
        "spec_hash",
        "matching",
        "warnings",
    }
    assert reports[0]["mode"] == "secret" and reports[0]["matching"] == "probabilistic"
    quality = reports[0]["quality"]
    # half the quality epsilon for the match rates, half for the estimated quality
    epsilon = load_coordinator_config(ROOT / "coordinator" / "coordinator.toml").coordinator.link_quality_epsilon
    assert quality["epsilon"] == epsilon and quality["scale"] == pytest.approx(len(NODES) / (epsilon / 2))
    assert len(quality["pairs"]) == 3
    estimated = quality["estimated"]
    assert estimated["epsilon"] == epsilon / 2 and len(estimated["pairs"]) == 3
    assert set(estimated["subgroups"]) == {"sex", "birth_decade"}
    assert {"female", "male"} <= set(estimated["subgroups"]["sex"])
    text_messages = [body for kind, body in messages if body[:4] != b"FLB1"]
    assert find_leaks(text_messages, identifier_values(workdir)) == []


def test_the_spec_hash_is_on_every_register_entry_of_the_link(linked: dict) -> None:
    state: Path = linked["state"]
    spec_hash = linked["report"].spec_hash
    assert len(spec_hash) == 64
    kinds = {"link", "link_secret", "link_encode", "link_spine", "link_quality"}
    for party in ["coordinator", *NODES]:
        entries = [json.loads(line) for line in (state / party / "register.jsonl").read_text().splitlines()]
        link_entries = [e for e in entries if e["kind"] in kinds]
        assert link_entries, party
        assert all(e["fields"]["spec_hash"] == spec_hash for e in link_entries), party


def test_the_estimated_quality_stays_exact_at_the_linkage_unit_and_close_to_the_truth(
    linked: dict, workdir: Path
) -> None:
    state: Path = linked["state"]
    kept = json.loads((state / "coordinator" / "spines" / f"{PROJECT}.estimate.json").read_text())
    assert kept["spec_hash"] == linked["report"].spec_hash and 0 < kept["threshold"] < 1
    # the encodings and spilled pairs the linkage unit wrote to disk while linking are gone
    assert not (state / "coordinator" / "spines" / f".{PROJECT}.linking").exists()
    measured = _measured(linked, workdir)
    # the demo's small federation (3,000 people): the model's own estimate is within 0.02 of the truth
    assert kept["estimated"]["f1"] == pytest.approx(measured[2], abs=0.02), (kept["estimated"], measured)


def _record_slots(state: Path, node: str) -> dict[str, int]:
    folder = state / node / "linkage" / PROJECT
    slots = np.load(folder / "slots.npy")
    rows = duckdb.sql(f"SELECT record_id, person FROM read_parquet('{folder / 'records.parquet'}')").fetchall()
    return {record: int(slots[person]) for record, person in rows}


def test_the_spine_matches_the_ground_truth(linked: dict, workdir: Path) -> None:
    precision, recall, f1 = _measured(linked, workdir)
    print(f"spine precision {precision:.4f} recall {recall:.4f} F1 {f1:.4f}")
    assert f1 >= 0.99, (precision, recall, f1)  # the goal for three departments (measured: 0.995)


def _measured(linked: dict, workdir: Path) -> tuple[float, float, float]:
    """Precision, recall and F1 of the spine's cross-node record pairs against the ground truth."""
    state: Path = linked["state"]
    truth = dict(
        duckdb.sql(
            f"SELECT record_id, person_id FROM read_parquet('{workdir / 'data' / 'truth' / 'records.parquet'}')"
        ).fetchall()
    )
    people: dict[str, dict[int, int]] = {}
    for node in NODES:
        people[node] = {truth[record]: slot for record, slot in _record_slots(state, node).items()}
    true_pairs = predicted = correct = 0
    for i, a in enumerate(NODES):
        for b in NODES[i + 1 :]:
            common = set(people[a]) & set(people[b])
            true_pairs += len(common)
            slots_b = {}
            for person, slot in people[b].items():
                slots_b.setdefault(slot, set()).add(person)
            for person, slot in people[a].items():
                for other in slots_b.get(slot, ()):
                    predicted += 1
                    correct += other == person
    precision, recall = correct / predicted, correct / true_pairs
    return precision, recall, 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------- PSI mode
LINKED_SQL = (
    "SELECT dfe.pupils.region, COUNT(*) AS n FROM dfe.pupils LINK dwp.claims, nhs.diagnoses "
    "WHERE dfe.pupils.fsm = 1 GROUP BY dfe.pupils.region"
)


@pytest.fixture(scope="module")
def psi_linked(workdir: Path) -> dict[str, object]:
    from fedlink.coordinator import linkage

    with audit.recording() as captured, pytest.MonkeyPatch.context() as patch:
        patch.setattr(linkage, "PSI_BATCH", 400)  # many batches round the ring, so the schedule is exercised
        fed = start_federation(NODES)
        try:
            analyst = connect_analyst(fed.address, workdir)
            report = analyst.link(PROJECT, mode="psi")
            messages = _messages(captured)
            result = analyst.query(LINKED_SQL, project=PROJECT, noiseless=True)
            plan = plan_linked(LINKED_SQL, fed.coordinator.catalogue())
        finally:
            fed.stop()
    return {"report": report, "messages": messages, "state": fed.state, "fed": fed, "result": result, "plan": plan}


def test_psi_mode_builds_a_spine_without_any_shared_secret(psi_linked: dict) -> None:
    report = psi_linked["report"]
    assert report.mode == "psi" and report.nodes == tuple(NODES)
    assert {"prepare", "hash and blind", "link", "distribute"} <= set(report.stages)
    kinds = {kind for kind, _ in psi_linked["messages"]}
    assert {"link_psi_start", "link_psi_points", "link_psi_blind", "link_slots"} <= kinds
    batches = sum(kind == "link_psi_points" for kind, _ in psi_linked["messages"])
    blinds = sum(kind == "link_psi_blind" for kind, _ in psi_linked["messages"])
    assert batches > 3 * 7 and blinds == 2 * batches, "every batch is re-blinded by the two other nodes"
    assert not kinds & {"link_card", "link_initiate", "link_envelope", "link_encode"}, "no secret is agreed"


def _unblinded_points(workdir: Path, state: Path) -> set[bytes]:
    """Every match key of every node hashed to the curve but *not* blinded: what must never travel."""
    from fedlink.linkage.concepts import normalise_concepts
    from fedlink.linkage.encode import match_key_messages
    from fedlink.linkage.fields import complete
    from fedlink.linkage.spec import load_spec
    from fedlink.node.config import LEGACY_CONCEPTS as IDENTIFIERS
    from fedlink.pets import psi

    spec = load_spec().resolve(set(IDENTIFIERS))
    points: set[bytes] = set()
    hasher = psi._Points()
    for node in NODES:
        records = state / node / "linkage" / PROJECT / "records.parquet"
        tables = duckdb.sql(f"SELECT DISTINCT source_table FROM read_parquet('{records}')").fetchall()
        union = " UNION ".join(
            f"SELECT {', '.join(f'CAST({c} AS VARCHAR) AS {c}' for c in IDENTIFIERS)} "
            f"FROM read_parquet('{workdir / 'data' / node / t}.parquet')"
            for (t,) in tables
        )
        rows = duckdb.sql(union).fetchall()
        people = {c: [row[i] for row in rows] for i, c in enumerate(IDENTIFIERS)}
        normalised = complete(normalise_concepts(people), spec.fields)
        for tier, tier_messages in match_key_messages(normalised, spec.schema).items():
            for message in tier_messages.messages():
                hasher.hash_to_point(psi.domain(PROJECT, tier), message)
                raw = hasher.ffi.new("unsigned char[65]")
                size = hasher.ffi.new("size_t *", 65)
                flag = hasher.lib.SECP256K1_EC_UNCOMPRESSED
                hasher.lib.secp256k1_ec_pubkey_serialize(hasher.ctx, raw, size, hasher.point, flag)
                points.add(bytes(hasher.ffi.buffer(raw, 65))[1:])
    return points


def _found(wire: bytes, needles: set[bytes]) -> set[bytes]:
    """The needles (32 random bytes each) that occur in ``wire`` at any byte offset: candidate offsets by
    their first 8 bytes (every offset's 8-byte window, vectorised), then checked in full."""
    data = np.frombuffer(wire, dtype=np.uint8)
    if len(data) < 32:
        return set()
    windows = np.lib.stride_tricks.sliding_window_view(data, 8)[: len(data) - 31].copy().view("<u8").ravel()
    prefixes = {int.from_bytes(n[:8], "little"): n for n in needles}
    hits = np.flatnonzero(np.isin(windows, np.fromiter(prefixes, dtype=np.uint64, count=len(prefixes))))
    return {prefixes[int(windows[i])] for i in hits.tolist() if wire[i : i + 32] == prefixes[int(windows[i])]}


def test_the_wire_carries_no_unblinded_key_and_no_identifier(psi_linked: dict, workdir: Path) -> None:
    messages = psi_linked["messages"]
    wire = b"".join(body for _, body in messages)
    points = _unblinded_points(workdir, psi_linked["state"])
    assert len(points) > 5000
    # neither a point nor its x-coordinate (the only part a digest depends on), at any byte offset
    assert _found(wire, {p[:32] for p in points}) == set()
    sent = next(body for kind, body in messages if kind == "link_psi_blind")
    from fedlink.protocol.blobs import unpack

    blinded = unpack(sent)[1][0][:64]
    assert blinded not in points
    assert _found(wire, {blinded[:32]}) == {blinded[:32]}, "positive control: the scan finds a point that was sent"
    text = [body for _, body in messages if body[:4] != b"FLB1"]
    assert find_leaks(text, identifier_values(workdir)) == []


def test_linked_statistics_run_unchanged_on_a_psi_spine(psi_linked: dict) -> None:
    from fedlink.node.engines.reference import reference_totals

    from .test_linked import spine_keys

    plan = psi_linked["plan"]
    con = duckdb.connect()
    tables, keys = spine_keys(psi_linked["fed"], PROJECT, plan, con)
    totals = reference_totals(plan, tables, keys, connection=con)["rows:*"]
    released = [row["n"] for row in psi_linked["result"].rows()]
    assert released == totals.tolist() and sum(released) > 0
