"""Link-secret agreement: only nodes of the federation can open the envelopes, and a relay that
swaps keys or certificates is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlink import pki
from fedlink.errors import AccessDenied
from fedlink.pets.keyagree import NodeKeyAgreement


def _nodes(tmp_path: Path, names: list[str], ca_dir: str = "pki") -> dict[str, NodeKeyAgreement]:
    folder = tmp_path / ca_dir
    if not (folder / "ca.crt").exists():
        pki.init_ca(folder)
    out = {}
    for name in names:
        issued = pki.issue(folder, "node", name)
        out[name] = NodeKeyAgreement(
            name,
            tmp_path / "state" / ca_dir / name,
            issued.cert_path.read_bytes(),
            issued.key_path.read_bytes(),
            (folder / "ca.crt").read_bytes(),
        )
    return out


def test_every_participant_ends_with_the_same_secret(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, ["dfe", "dwp", "nhs"])
    cards = [n.card() for n in nodes.values()]
    envelopes = nodes["dfe"].initiate("p1", cards)
    assert sorted(e.recipient for e in envelopes) == ["dwp", "nhs"]
    for envelope in envelopes:
        nodes[envelope.recipient].store("p1", nodes[envelope.recipient].open(envelope))
    secrets = {name: node.secret("p1") for name, node in nodes.items()}
    assert len(set(secrets.values())) == 1 and len(secrets["dfe"] or b"") == 32
    assert (tmp_path / "state/pki/dfe/link-secrets/p1.key").stat().st_mode & 0o777 == 0o600
    again = nodes["dfe"].initiate("p2", cards)  # a new project gets a new secret
    assert nodes["dwp"].open(next(e for e in again if e.recipient == "dwp")) != secrets["dwp"]


def test_an_envelope_opens_only_for_its_recipient(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, ["a", "b", "c"])
    envelope = next(e for e in nodes["a"].initiate("p", [n.card() for n in nodes.values()]) if e.recipient == "b")
    with pytest.raises(AccessDenied, match="an envelope for 'b' reached 'c'"):
        nodes["c"].open(envelope)
    with pytest.raises(AccessDenied, match="failed authentication"):
        nodes["c"].open(envelope.model_copy(update={"recipient": "c"}))
    with pytest.raises(AccessDenied, match="failed authentication"):
        nodes["b"].open(envelope.model_copy(update={"project": "other"}))


def test_a_relay_that_swaps_keys_or_certificates_is_caught(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, ["a", "b"])
    outsiders = _nodes(tmp_path, ["b"], ca_dir="rogue-ca")
    honest = nodes["b"].card()
    forged_key = honest.model_copy(update={"x25519": outsiders["b"].card().x25519})
    with pytest.raises(AccessDenied, match="not signed by its certificate"):
        nodes["a"].seal_for("p", b"x" * 32, [forged_key])
    with pytest.raises(AccessDenied, match="not from this federation's CA"):
        nodes["a"].seal_for("p", b"x" * 32, [outsiders["b"].card()])
    impostor = honest.model_copy(update={"node": "c"})
    with pytest.raises(AccessDenied, match="carries the certificate of node 'b'"):
        nodes["a"].seal_for("p", b"x" * 32, [impostor])
