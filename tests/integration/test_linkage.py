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

from fedlink.wire import audit
from fedlink.wire.fedlink_pb2 import Frame
from fedlink.wire.transport import Reassembler

from ..conftest import connect_analyst, find_leaks, identifier_values, start_federation

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


def test_only_keyed_encodings_cross_and_no_scores_come_back(linked: dict, workdir: Path) -> None:
    messages = linked["messages"]
    encodings = [body for kind, body in messages if kind == "result" and body[:2] == b"PK"]
    assert len(encodings) == len(NODES)
    for body in encodings:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            for name in npz.files:
                assert name in ("blooms", "popcounts") or name.startswith(("key:", "block:"))
                assert npz[name].dtype.kind in "uiS", f"{name} must be numbers or digests, not text"
    slot_calls = [json.loads(body) for kind, body in messages if kind == "link_slots"]
    assert len(slot_calls) == len(NODES) and all(
        set(c) == {"project", "analyst", "slots", "spine_id"} for c in slot_calls
    )
    # what comes back from the linkage unit: integer slots to nodes; stage timings and DP match rates
    # (no exact count about people) to the analyst
    for call in slot_calls:
        slots = np.load(io.BytesIO(base64.b64decode(call["slots"])), allow_pickle=False)
        assert slots.dtype == np.int64 and slots.ndim == 1
    reports = [json.loads(body) for kind, body in messages if kind == "result" and body.startswith(b'{"project"')]
    assert len(reports) == 1
    assert set(reports[0]) == {"project", "nodes", "stages", "spine_id", "quality", "quality_refused"}
    quality = reports[0]["quality"]
    assert quality["epsilon"] == 0.1 and quality["scale"] == pytest.approx(len(NODES) / 0.1)
    assert len(quality["pairs"]) == 3
    text_messages = [body for kind, body in messages if body[:2] != b"PK"]
    assert find_leaks(text_messages, identifier_values(workdir)) == []


def _record_slots(state: Path, node: str) -> dict[str, int]:
    folder = state / node / "linkage" / PROJECT
    slots = np.load(folder / "slots.npy")
    rows = duckdb.sql(f"SELECT record_id, person FROM read_parquet('{folder / 'records.parquet'}')").fetchall()
    return {record: int(slots[person]) for record, person in rows}


def test_the_spine_matches_the_ground_truth(linked: dict, workdir: Path) -> None:
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
    f1 = 2 * precision * recall / (precision + recall)
    print(f"spine precision {precision:.4f} recall {recall:.4f} F1 {f1:.4f}")
    assert f1 >= 0.98, (precision, recall, f1)
