"""Revocation bites: revoking a node's or an analyst's certificate ends its live session within
seconds (the coordinator watches the revocation list), the party takes part in nothing more and
spends nothing, it cannot come back, and the coordinator's register records the revocation.

Each test issues its own certificates from the federation's CA in a folder of its own, with its own
revocation list, so that revoking them leaves the session's certificates alone.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import fedlink
from fedlink import pki
from fedlink.coordinator.revocation import RevocationWatch
from fedlink.errors import AccessDenied, ConfigError, FedlinkError, NodeUnavailable
from fedlink.node.agent import NodeAgent
from fedlink.node.config import NodeConfig
from fedlink.node.data import NodeData
from fedlink.protocol import rpc
from fedlink.protocol.transport import Message
from fedlink.transparency.register import Register, RegisterEntry

from ..conftest import ANALYST, InProcessFederation, connect_analyst, node_config, start_federation

PROJECT = "homelessness-outcomes"
SQL = "SELECT region, COUNT(*) AS n FROM support_episodes GROUP BY region"
#: A bound on waits for events that happen within about a second; generous for a loaded machine.
WAIT_S = 60


@pytest.fixture
def own_pki(workdir: Path, tmp_path: Path) -> Path:
    """The federation's CA in a folder whose certificates and revocation list are this test's own."""
    folder = tmp_path / "pki"
    folder.mkdir()
    for name in (pki.CA_CERT, pki.CA_KEY):
        shutil.copy2(workdir / "pki" / name, folder / name)
    return folder


class WatchedAgent(NodeAgent):
    """A real node that says when it is asked for ``stall`` (held there until ``resume``) and for an
    abort."""

    def __init__(self, config: NodeConfig, stall: str | None = None) -> None:
        super().__init__(config, NodeData(config))
        self.stall = stall
        self.stalled = threading.Event()
        self.resume = threading.Event()
        self.aborted = threading.Event()
        self.error: FedlinkError | None = None

    def _handle(self, message: Message) -> Message:
        if message.kind == self.stall:
            self.stalled.set()
            self.resume.wait(WAIT_S)
        reply = super()._handle(message)
        if message.kind == rpc.ABORT:
            self.aborted.set()
        return reply

    def run(self) -> None:
        try:
            self.serve(retry_s=0.1)
        except FedlinkError as exc:
            self.error = exc


def serve(fed: InProcessFederation, agent: WatchedAgent) -> threading.Thread:
    """Start ``agent`` in a thread, wait until it joined, and leave stopping it to ``fed.stop()``."""
    thread = threading.Thread(target=agent.run, daemon=True, name=f"agent-{agent.config.name}")
    thread.start()
    assert agent.connected.wait(WAIT_S), f"node {agent.config.name} did not connect"
    fed.agents[agent.config.name], fed.threads[agent.config.name] = agent, thread
    return thread


def with_certificate(config: NodeConfig, issued: pki.IssuedCertificate) -> NodeConfig:
    tls = config.tls.model_copy(update={"cert": str(issued.cert_path), "key": str(issued.key_path)})
    return config.model_copy(update={"tls": tls})


def ledger_states(agents: list[NodeAgent]) -> dict[str, dict[str, int]]:
    """Per node, how many rows of its budget ledger are reserved, committed (spent) and released."""
    out = {}
    for agent in agents:
        with closing(sqlite3.connect(agent.runtime.ledger.path)) as db:
            rows = db.execute("SELECT state, COUNT(*) FROM reservation GROUP BY state").fetchall()
        out[agent.config.name] = dict(rows)
    return out


def revocations_on_register(fed: InProcessFederation) -> list[dict[str, object]]:
    return [dict(e.fields) for e in fed.coordinator.register.entries() if e.kind == "revocation"]


def test_revoking_a_connected_node_ends_its_session_and_it_spends_nothing(workdir: Path, own_pki: Path) -> None:
    issued = pki.issue(own_pki, "node", "charity_south")
    fed = start_federation(["charity_north"], revoked=own_pki / pki.REVOKED)
    try:
        config = with_certificate(node_config("charity_south", fed.address, fed.state), issued)
        south = WatchedAgent(config)
        thread = serve(fed, south)
        analyst = connect_analyst(fed.address, workdir)
        analyst.query(SQL, project=PROJECT, epsilon=0.5)  # both nodes answer: the session is live
        agents = [fed.agents["charity_north"], south]
        spent = ledger_states(agents)
        assert spent == {"charity_north": {"committed": 1}, "charity_south": {"committed": 1}}

        pki.revoke(own_pki, issued.cert_path)
        thread.join(WAIT_S)  # the coordinator ends the node's stream, and the node stops
        assert not thread.is_alive(), "the revoked node's live session was not ended"
        assert isinstance(south.error, AccessDenied) and "has been revoked" in south.error.message
        assert "charity_south" not in fed.coordinator.live_nodes()

        with pytest.raises(NodeUnavailable) as refused:
            analyst.query(SQL, project=PROJECT, epsilon=0.5)
        assert refused.value.message == (
            "node 'charity_south' holding table 'support_episodes' cannot take part: the certificate of node "
            "'charity_south' has been revoked; ask the federation for a new one"
        )
        assert ledger_states(agents) == spent  # nothing more reserved or spent anywhere

        (entry,) = revocations_on_register(fed)
        assert {k: entry[k] for k in ("serial", "role", "name")} == {
            "serial": f"{issued.identity.serial:x}",
            "role": "node",
            "name": "charity_south",
        }
        assert isinstance(entry["revoked_at"], str) and entry["revoked_at"].endswith("Z")

        again = WatchedAgent(config)  # the same certificate cannot rejoin
        with pytest.raises(AccessDenied, match="has been revoked"):
            again.serve(retry_s=0.05)
        again.stop()
    finally:
        fed.stop()


def test_revoking_an_analyst_ends_its_call_in_flight_and_nothing_is_spent(workdir: Path, own_pki: Path) -> None:
    issued = pki.issue(own_pki, "analyst", ANALYST)
    fed = start_federation([], revoked=own_pki / pki.REVOKED)
    north = WatchedAgent(node_config("charity_north", fed.address, fed.state))
    south = WatchedAgent(node_config("charity_south", fed.address, fed.state), stall=rpc.RESERVE)
    try:
        serve(fed, north)
        serve(fed, south)
        analyst = fedlink.connect(fed.address, cert=issued.cert_path, key=issued.key_path, ca=own_pki / pki.CA_CERT)
        outcome: list[object] = []

        def ask() -> None:
            try:
                outcome.append(analyst.query(SQL, project=PROJECT, epsilon=0.5))
            except FedlinkError as exc:
                outcome.append(exc)

        call = threading.Thread(target=ask, daemon=True)
        call.start()
        assert south.stalled.wait(WAIT_S)  # the query is in flight, held at charity_south's reserve
        pki.revoke(own_pki, issued.cert_path)
        call.join(WAIT_S)
        assert not call.is_alive(), "the revoked analyst's call in flight was not ended"
        (error,) = outcome
        assert isinstance(error, AccessDenied)
        assert error.message == (
            f"the certificate of analyst '{ANALYST}' has been revoked; ask the federation for a new one"
        )

        south.resume.set()  # the query's work goes on without the analyst: it must release, not execute
        assert north.aborted.wait(WAIT_S) and south.aborted.wait(WAIT_S)
        assert ledger_states([north, south]) == {"charity_north": {"released": 1}, "charity_south": {"released": 1}}
        (entry,) = revocations_on_register(fed)
        assert (entry["role"], entry["name"], entry["serial"]) == ("analyst", ANALYST, f"{issued.identity.serial:x}")
        with pytest.raises(AccessDenied, match="has been revoked"):
            analyst.catalog()
        assert connect_analyst(fed.address, workdir).catalog().raw.nodes  # the session's own certificate still works
    finally:
        south.resume.set()
        fed.stop()


def test_revoking_an_analyst_mid_linkage_ends_the_call_and_the_linkage_asks_no_more(
    workdir: Path, own_pki: Path
) -> None:
    issued = pki.issue(own_pki, "analyst", ANALYST)
    fed = start_federation(["charity_north", "dwp", "nhs"], revoked=own_pki / pki.REVOKED)
    south = WatchedAgent(node_config("charity_south", fed.address, fed.state), stall=rpc.LINK_CARD)
    logged = threading.Event()
    append = fed.coordinator.register.append

    def append_and_tell(kind: str, fields: Mapping[str, Any]) -> RegisterEntry:
        entry = append(kind, fields)
        if kind == "link":
            logged.set()
        return entry

    fed.coordinator.register.append = append_and_tell  # type: ignore[method-assign]
    try:
        serve(fed, south)
        analyst = fedlink.connect(fed.address, cert=issued.cert_path, key=issued.key_path, ca=own_pki / pki.CA_CERT)
        outcome: list[object] = []

        def link() -> None:
            try:
                outcome.append(analyst.link(PROJECT))
            except FedlinkError as exc:
                outcome.append(exc)

        call = threading.Thread(target=link, daemon=True)
        call.start()
        assert south.stalled.wait(WAIT_S)  # the linkage is under way, held at charity_south's key card
        pki.revoke(own_pki, issued.cert_path)
        call.join(WAIT_S)
        assert not call.is_alive(), "the revoked analyst's linkage call was not ended"
        (error,) = outcome
        assert isinstance(error, AccessDenied) and "has been revoked" in error.message

        south.resume.set()  # the linkage goes on without the analyst: it must stop before the next step
        assert logged.wait(WAIT_S)
        (entry,) = [e.fields for e in fed.coordinator.register.entries() if e.kind == "link"]
        assert entry["status"] == "failed" and "revoked during the call" in entry["reason"]
        agents = [fed.agents[n] for n in ("charity_north", "dwp", "nhs")] + [south]
        assert ledger_states(agents) == {a.config.name: {} for a in agents}  # no match rates were paid for
        kinds = {e.kind for a in agents for e in a.runtime.register.entries()}
        assert not kinds & {"link_secret", "link_encode", "link_spine", "link_quality"}
    finally:
        south.resume.set()
        fed.stop()


def test_the_watch_records_each_revocation_once_and_ends_what_it_tracks(own_pki: Path, tmp_path: Path) -> None:
    node = pki.issue(own_pki, "node", "dfe").identity
    analyst = pki.issue(own_pki, "analyst", "alice").identity
    listed = own_pki / pki.REVOKED
    register = Register(tmp_path / "state" / "register.jsonl", "coordinator")
    watch = RevocationWatch(listed, register, poll_s=3600)
    ended: list[str] = []
    watch.track(node, ended.append)
    watch.track(analyst, ended.append)
    assert watch.refresh() == frozenset() and ended == []

    pki.revoke(own_pki, own_pki / "node-dfe.crt")
    assert watch.refresh() == {node.serial}
    assert ended == ["the certificate of node 'dfe' has been revoked; ask the federation for a new one"]
    watch.refresh()
    assert len(ended) == 1  # ended once

    # a coordinator restarted on the same register does not record it twice, and ends a revoked
    # certificate's session as soon as it is tracked
    restarted = RevocationWatch(listed, register, poll_s=3600)
    restarted.track(node, ended.append)
    assert len(ended) == 2
    assert [e.fields["name"] for e in register.entries() if e.kind == "revocation"] == ["dfe"]

    # a list damaged while running keeps what was learned; damaged at start-up, the coordinator refuses
    with listed.open("a", encoding="utf-8") as handle:
        handle.write("not-a-serial node x\n")
    assert restarted.refresh() == {node.serial}
    with pytest.raises(ConfigError, match="line 2 of the revocation list"):
        RevocationWatch(listed, register)
