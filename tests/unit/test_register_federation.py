"""Verifying a federation's registers together: expected parties (from the coordinator's own register, its
config, or a published export), the query-by-query cross-check of coordinator and nodes, and a register
rewritten whole (every hash recomputed) caught by the other registers or by a published head."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fedlink.errors import BadInput
from fedlink.governance import Register, export_register
from fedlink.governance.federation import cross_check, expected_from_config, verify_federation
from fedlink.transparency.register import GENESIS, canonical, entry_hash, head_path, read_register

from .test_register import stepping_clock

NODES = ("dfe", "dwp", "nhs")
PROJECT = "p-early-support"


class Federation:
    """A coordinator's and nodes' registers written as the query path writes them, with a fixed clock."""

    def __init__(self, root: Path, joined: tuple[str, ...] = NODES) -> None:
        self.root = root
        clock = stepping_clock(datetime(2025, 3, 1, 9, 0, tzinfo=UTC), timedelta(minutes=5))
        self.coordinator = Register(root / "coordinator" / "register.jsonl", "coordinator", clock=clock)
        self.nodes = {n: Register(root / n / "register.jsonl", n, clock=clock) for n in joined}
        self.coordinator.append("startup", {"nodes": list(NODES)})
        for name, register in self.nodes.items():
            register.append("startup", {"tables": ["t"], "approved_projects": [PROJECT], "allow_test_mode": False})
            self.coordinator.append("node_joined", {"node": name})

    def query(self, query_id: str, coordinator: str | None, nodes: dict[str, str], epsilon: float = 0.5) -> None:
        """One query: ``coordinator``'s outcome (None: no entry) and each node's own entry."""
        for node, status in nodes.items():
            self.nodes[node].append("query", fields(query_id, status, {node: loss(epsilon)}))
        if coordinator is not None:
            self.coordinator.append("query", fields(query_id, coordinator, {n: loss(epsilon) for n in nodes}))

    def registers(self) -> list[tuple[str, Path]]:
        return [("coordinator", self.coordinator.path), *((n, r.path) for n, r in self.nodes.items())]


def loss(epsilon: float) -> dict[str, float]:
    return {"epsilon": epsilon, "rho": 0.0}


def fields(query_id: str, status: str, privacy_loss: dict[str, Any]) -> dict[str, Any]:
    return {
        "query_id": query_id,
        "analyst": "alice",
        "project": PROJECT,
        "purpose": "why",
        "query": "SELECT COUNT(*) FROM t",
        "pet": "dp",
        "privacy_loss": privacy_loss,
        "status": status,
        "reason": None if status in ("released", "pending") else f"{status} for a reason",
        "released": None,
        "encrypted_for": None,
    }


def entries(federation: Federation) -> tuple[list[Any], dict[str, list[Any]]]:
    return federation.coordinator.entries(), {n: r.entries() for n, r in federation.nodes.items()}


@pytest.fixture
def federation(tmp_path: Path) -> Federation:
    fed = Federation(tmp_path / "state")
    fed.query("q-released", "released", {"dfe": "released", "dwp": "released"})
    fed.query("q-refused-at-node", "refused", {"dfe": "refused", "dwp": "refused"})
    fed.query("q-failed", "failed", {"nhs": "failed"})
    fed.query("q-refused-before", "refused", {})  # refused by the coordinator before reserving
    return fed


def test_registers_that_agree(federation: Federation) -> None:
    report = verify_federation(federation.registers())
    assert report.ok, (report.missing, report.crosscheck.disagreements)
    check = report.crosscheck
    assert (check.queries, check.released, check.failed, check.pending) == (4, 1, 1, 0)
    assert (check.refused_by_nodes, check.refused_by_coordinator) == (1, 1)
    assert check.summary() == (
        "4 queries; the registers agree on 4 (1 released, 2 refused (1 by the coordinator, 1 by a node), 1 failed)"
    )
    assert report.notes[0] == "expected: coordinator and 3 node(s) (dfe, dwp, nhs)"


def test_a_node_that_committed_what_the_coordinator_failed_is_reported(federation: Federation) -> None:
    # the probe's stalled node: it resumed after the coordinator had given up, executed and committed
    federation.query("q-stalled", "failed", {"dfe": "failed", "dwp": "released"})
    report = verify_federation(federation.registers())
    assert not report.ok and report.missing == ()
    assert report.crosscheck.disagreements == (
        "query q-stalled: coordinator failed, dfe failed, dwp released: dwp committed budget for a query the "
        "coordinator did not release",
    )
    assert report.problem_summary() == "1 query outcome(s) disagree between registers"


def test_a_release_a_node_did_not_commit_or_did_not_record_is_reported(federation: Federation) -> None:
    federation.query("q-half", "released", {"dfe": "released", "dwp": "refused"})
    federation.coordinator.append("query", fields("q-unrecorded", "released", {"dfe": loss(1), "nhs": loss(1)}))
    federation.nodes["dfe"].append("query", fields("q-unrecorded", "released", {"dfe": loss(1)}))
    lines = cross_check(*entries(federation)).disagreements
    assert lines == (
        "query q-half: coordinator released, dfe released, dwp refused: the coordinator released it but dwp did "
        "not commit",
        "query q-unrecorded: coordinator released, dfe released, nhs no entry: the coordinator released it but "
        "the register of nhs has no entry for it",
    )


def test_a_node_entry_the_coordinator_never_recorded_is_reported(federation: Federation) -> None:
    federation.query("q-orphan", None, {"nhs": "released"})
    assert cross_check(*entries(federation)).disagreements == (
        "query q-orphan: coordinator no entry, nhs released: the coordinator has no record of it",
    )


def test_a_different_privacy_loss_is_reported(federation: Federation) -> None:
    federation.nodes["dfe"].append("query", fields("q-loss", "released", {"dfe": loss(0.1)}))
    federation.coordinator.append("query", fields("q-loss", "released", {"dfe": loss(1.0)}))
    (line,) = cross_check(*entries(federation)).disagreements
    assert line.startswith("query q-loss: coordinator released, dfe released: dfe recorded privacy loss")
    assert "'epsilon': 0.1" in line and "'epsilon': 1.0" in line


def test_pending_then_released_agrees_and_pending_alone_is_open(federation: Federation) -> None:
    federation.coordinator.append("query", fields("q-later", "pending", {"dfe": loss(0.5)}))
    federation.nodes["dfe"].append("query", fields("q-later", "released", {"dfe": loss(0.5)}))
    federation.coordinator.append("query", fields("q-later", "released", {"dfe": loss(0.5)}))
    federation.query("q-open", "pending", {"dwp": "released"})
    check = cross_check(*entries(federation))
    assert check.disagreements == () and (check.released, check.pending) == (2, 1)


def test_a_deleted_node_register_is_missing(federation: Federation) -> None:
    path = federation.nodes["dwp"].path
    path.unlink()
    head_path(path).unlink()
    registers = [r for r in federation.registers() if r[0] != "dwp"]
    report = verify_federation(registers)
    assert not report.ok and report.crosscheck.disagreements == ()  # its absence is reported once, here
    assert report.missing == (
        "dwp: no register (expected from the coordinator's register; the coordinator's register records it "
        "joining at seq 3 and in 2 query entries)",
    )
    assert report.problem_summary() == "1 register(s) missing"


def test_a_registered_node_that_never_joined_needs_no_register(tmp_path: Path) -> None:
    fed = Federation(tmp_path / "state", joined=("dfe", "dwp"))
    fed.query("q-1", "released", {"dfe": "released", "dwp": "released"})
    report = verify_federation(fed.registers())
    assert report.ok
    assert report.notes[-1] == (
        "nhs: no register, and none expected: registered (the coordinator's register) but the coordinator's "
        "register shows it never joined"
    )


def test_without_the_coordinator_register_nothing_is_expected_and_node_entries_are_unchecked(
    federation: Federation,
) -> None:
    report = verify_federation([("dfe", federation.nodes["dfe"].path)])
    assert report.ok and report.missing == ()
    assert report.notes[0].startswith("expected parties unknown")
    assert report.crosscheck.unchecked == 2
    assert report.crosscheck.summary() == (
        "2 queries, all recorded by nodes only: not cross-checked without the coordinator's register"
    )


def test_config_names_the_expected_parties(federation: Federation, tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(
        '[coordinator]\nname = "coordinator"\ntransparency_register = "state/coordinator/register.jsonl"\n'
        '[tls]\ncert = "c.crt"\nkey = "c.key"\nca = "ca.crt"\n'
        + "".join(f'[[nodes]]\nname = "{n}"\n' for n in (*NODES, "hmrc"))
    )
    expected = expected_from_config(config)
    assert (expected.coordinator, expected.nodes) == ("coordinator", (*NODES, "hmrc"))
    # hmrc is registered in the config but never joined: nothing to record, so a note
    report = verify_federation(federation.registers(), config=config)
    assert report.ok and any(n.startswith("hmrc: no register, and none expected") for n in report.notes)
    # without the coordinator's register, the config alone expects every party's
    only_nodes = [r for r in federation.registers() if r[0] != "coordinator"]
    report = verify_federation(only_nodes, config=config)
    assert [m.split(":")[0] for m in report.missing] == ["coordinator", "hmrc"]


def rewrite_whole(path: Path, change: dict[int, dict[str, Any]]) -> None:
    """Rewrite a register from its first entry with ``change`` (seq -> fields to update) applied and every
    hash recomputed, head file included: the attack a register cannot detect on its own."""
    records, _ = read_register(path)
    prev, out = GENESIS, []
    for entry in records:
        new_fields = {**entry.fields, **change.get(entry.seq, {})}
        digest = entry_hash(entry.seq, entry.time, entry.party, entry.kind, new_fields, prev)
        out.append(canonical({**entry.to_json(), "fields": new_fields, "prev_hash": prev, "hash": digest}) + b"\n")
        prev = digest
    path.write_bytes(b"".join(out))
    head_path(path).write_bytes(canonical({"seq": records[-1].seq, "hash": prev}) + b"\n")


def test_a_register_rewritten_whole_is_caught_by_the_cross_check(federation: Federation) -> None:
    dwp = federation.nodes["dwp"]
    released = next(e for e in dwp.entries() if e.fields.get("query_id") == "q-released")
    rewrite_whole(dwp.path, {released.seq: {"status": "refused", "reason": "never ran"}})
    report = verify_federation(federation.registers())
    assert report.broken == ()  # every chain verifies on its own...
    assert report.crosscheck.disagreements == (  # ...but the coordinator's register says otherwise
        "query q-released: coordinator released, dfe released, dwp refused: the coordinator released it but dwp "
        "did not commit",
    )


def test_published_heads_catch_a_rewrite_and_a_deleted_register(federation: Federation, tmp_path: Path) -> None:
    _, published = export_register(federation.registers(), tmp_path / "public")
    assert verify_federation(federation.registers(), published=published).ok
    federation.query("q-after", "released", {"nhs": "released"})  # appending after publication is fine
    assert verify_federation(federation.registers(), published=published).ok

    # the coordinator's register rewritten from its start to hide a query: it still chains, and its
    # nodes' registers alone cannot show what the coordinator released, but the published head can
    first = federation.coordinator.entries()[0]
    rewrite_whole(federation.coordinator.path, {first.seq: {"nodes": ["dfe", "dwp", "nhs"], "note": "edited"}})
    report = verify_federation(federation.registers(), published=published)
    (broken,) = report.broken
    assert broken.party == "coordinator" and broken.problems[0].startswith("published head: entry 8 is ")
    assert broken.problems[0].endswith("the register was rewritten since it was published")

    nhs = federation.nodes["nhs"].path
    nhs.unlink()
    report = verify_federation([r for r in federation.registers() if r[0] != "nhs"], published=published)
    assert report.missing == (
        f"nhs: no register (expected from the published copy {published} and the coordinator's register; the "
        "coordinator's register records it joining at seq 4 and in 2 query entries)",
    )


def test_published_copy_must_be_an_export(tmp_path: Path, federation: Federation) -> None:
    bogus = tmp_path / "register.json"
    bogus.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(BadInput, match="is not a published register export"):
        verify_federation(federation.registers(), published=bogus)
    with pytest.raises(BadInput, match="no published register at"):
        verify_federation(federation.registers(), published=tmp_path / "absent.json")
