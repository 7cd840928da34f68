"""Verifying a federation's registers together: each one's chain, that none is missing, that none was
rewritten since it was published, and that the coordinator and the nodes agree on every query.

Which registers are expected:

- ``config`` (the coordinator's ``coordinator.toml``): the coordinator and every ``[[nodes]]`` entry;
- ``published`` (a ``register.json`` written by :func:`fedlink.governance.export_register`): every party
  it holds, each with the head hash it had then;
- the coordinator's register among those given (the one recording a ``startup`` entry with ``nodes``,
  which the coordinator writes each time it starts, or else the one kept by a party named
  ``coordinator``): the coordinator itself and every node it records as joined (``node_joined``, written
  at a node's first session) or as taking part in a query or linkage.

A node the config or the coordinator's startup entry registers but that the coordinator's register shows
never joined and never took part has nothing to record: its missing register is a note, not a problem.
Every other expected register that is missing is a problem. Without a config, a published copy or the
coordinator's register, nothing says which registers to expect, and the report says so.

The cross-check (:func:`cross_check`) reads every ``query`` entry by query id. A node's ``released``
means it committed budget; the coordinator's last entry for the query is its outcome. They agree when:
the coordinator released the query (or withheld its result by disclosure control after the commit:
``suppressed``) and every node in its
``privacy_loss`` whose register is given released it too, with the same privacy loss; or the
coordinator refused or failed it and no node committed; or the coordinator's outcome is still
``pending`` (awaiting a node or collection). A node's query entry the coordinator has no record of is
a disagreement too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlink.errors import BadInput
from fedlink.transparency.register import RegisterEntry, read_register

#: The name the coordinator's section gives it unless configured otherwise.
DEFAULT_COORDINATOR = "coordinator"
#: The coordinator's outcome for a query still under way: nodes' commitments are not yet disagreements.
PENDING = "pending"
#: The coordinator's outcomes of a query every node committed to: its result released, or withheld by
#: disclosure control after the commit ("suppressed": paid for, and kept from the analyst).
RELEASED = ("released", "suppressed")


@dataclass(frozen=True)
class Expected:
    """The parties whose registers a federation should have, and where that list came from."""

    coordinator: str | None
    nodes: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class PartyCheck:
    """One given register: its keeper, file, entry count and every problem found in it."""

    party: str
    path: Path
    entries: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class CrossCheck:
    """The query-by-query comparison of the coordinator's and the nodes' registers."""

    queries: int
    released: int
    refused_by_coordinator: int
    refused_by_nodes: int
    failed: int
    pending: int
    disagreements: tuple[str, ...]
    #: Query ids found only in nodes' registers while no coordinator register was given.
    unchecked: int = 0

    def summary(self) -> str:
        if self.queries and self.unchecked == self.queries:
            return (
                f"{self.queries} queries, all recorded by nodes only: not cross-checked without the "
                "coordinator's register"
            )
        refused = self.refused_by_coordinator + self.refused_by_nodes
        parts = [
            f"{self.released} released",
            f"{refused} refused ({self.refused_by_coordinator} by the coordinator, {self.refused_by_nodes} by a node)",
            f"{self.failed} failed",
        ]
        if self.pending:
            parts.append(f"{self.pending} pending")
        agreed = self.queries - len(self.disagreements) - self.unchecked
        text = f"{self.queries} queries; the registers agree on {agreed} ({', '.join(parts)})"
        if self.disagreements:
            text += f"; {len(self.disagreements)} disagree"
        if self.unchecked:
            text += f"; {self.unchecked} recorded only by nodes, not checked (no coordinator register given)"
        return text


@dataclass(frozen=True)
class FederationReport:
    """Everything :func:`verify_federation` found; ``ok`` when there is no problem of any kind."""

    parties: tuple[PartyCheck, ...]
    missing: tuple[str, ...]
    crosscheck: CrossCheck
    notes: tuple[str, ...] = field(default=())

    @property
    def broken(self) -> tuple[PartyCheck, ...]:
        return tuple(p for p in self.parties if not p.ok)

    @property
    def ok(self) -> bool:
        return not self.broken and not self.missing and not self.crosscheck.disagreements

    def problem_summary(self) -> str:
        """One line counting the problems, e.g. for an error message."""
        parts = []
        if self.broken:
            parts.append(f"{len(self.broken)} register(s) failed verification")
        if self.missing:
            parts.append(f"{len(self.missing)} register(s) missing")
        if self.crosscheck.disagreements:
            parts.append(f"{len(self.crosscheck.disagreements)} query outcome(s) disagree between registers")
        return "; ".join(parts)


def expected_from_config(path: Path) -> Expected:
    """The coordinator and every node registered in the coordinator config at ``path``."""
    from fedlink.coordinator.config import load_coordinator_config  # the roles' config: only when asked

    config = load_coordinator_config(Path(path))
    return Expected(config.coordinator.name, tuple(n.name for n in config.nodes), f"the coordinator config {path}")


def published_heads(path: Path) -> dict[str, tuple[int, str] | None]:
    """``{party: (seq, hash) or None}`` from a published ``register.json``."""
    from fedlink.governance.export import FORMAT

    try:
        document = json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        raise BadInput(f"no published register at {path}; give the register.json of a published export") from None
    except (UnicodeDecodeError, ValueError):
        raise BadInput(f"{path} is not JSON; give the register.json of a published export") from None
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or not isinstance(document.get("registers"), list)
    ):
        raise BadInput(f"{path} is not a published register export ({FORMAT}); give its register.json")
    heads: dict[str, tuple[int, str] | None] = {}
    for item in document["registers"]:
        party = item.get("party") if isinstance(item, dict) else None
        if not isinstance(party, str):
            raise BadInput(f"{path} holds a register without a party; give an unedited register.json")
        head = item.get("head")
        valid = isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)
        heads[party] = (head["seq"], head["hash"]) if valid else None
    return heads


def verify_federation(
    registers: Sequence[tuple[str, Path]], *, config: Path | None = None, published: Path | None = None
) -> FederationReport:
    """Verify the ``(party, path)`` registers as one federation's (see the module's docstring).

    A register's keeper is the party its first entry names (the folder name when it has none)."""
    loaded: dict[str, tuple[Path, tuple[RegisterEntry, ...], tuple[str, ...]]] = {}
    for folder_name, path in registers:
        entries, report = read_register(Path(path))
        party = entries[0].party if entries else folder_name
        if party in loaded:
            raise BadInput(f"two registers are kept by '{party}' ({loaded[party][0]} and {path}); give each once")
        loaded[party] = (Path(path), entries, report.problems)

    configured = expected_from_config(config) if config is not None else None
    heads = published_heads(published) if published is not None else {}
    coordinator = _coordinator_of(loaded, configured)
    coordinator_entries = loaded[coordinator][1] if coordinator in loaded else None

    parties = []
    for party, (path, entries, problems) in loaded.items():
        extra = _against_published(entries, heads[party]) if party in heads else []
        parties.append(PartyCheck(party, path, len(entries), (*problems, *extra)))

    missing, notes = _missing(loaded, configured, heads, coordinator, coordinator_entries, published)
    nodes = {party: entries for party, (_, entries, _) in loaded.items() if party != coordinator}
    crosscheck = cross_check(coordinator_entries, nodes, coordinator or DEFAULT_COORDINATOR)
    return FederationReport(tuple(parties), tuple(missing), crosscheck, tuple(notes))


def _coordinator_of(
    loaded: Mapping[str, tuple[Path, tuple[RegisterEntry, ...], tuple[str, ...]]], configured: Expected | None
) -> str | None:
    """The coordinator's party name: from the config, or the given register that records a coordinator's
    startup (its registered nodes), or the one kept by the default coordinator name."""
    if configured is not None:
        return configured.coordinator
    for party, (_, entries, _) in loaded.items():
        if any(e.kind == "startup" and "nodes" in e.fields for e in entries):
            return party
    return DEFAULT_COORDINATOR if DEFAULT_COORDINATOR in loaded else None


def _against_published(entries: Sequence[RegisterEntry], head: tuple[int, str] | None) -> list[str]:
    """Problems of a register against the head it had when published: its chain must pass through it."""
    if head is None:
        return []
    seq, digest = head
    at = next((e for e in entries if e.seq == seq), None)
    if at is None:
        return [
            f"published head: the published copy ends at seq {seq} but this register has no entry {seq}: "
            "entries were removed since it was published"
        ]
    if at.hash != digest:
        return [
            f"published head: entry {seq} is {at.hash[:12]}… but the published head is {digest[:12]}…: "
            "the register was rewritten since it was published"
        ]
    return []


def _participants(entries: Sequence[RegisterEntry]) -> dict[str, str]:
    """``{node: evidence}`` for every node the coordinator's register shows joining or taking part."""
    joined: dict[str, str] = {}
    queries: dict[str, int] = {}
    for entry in entries:
        if entry.kind == "node_joined" and isinstance(entry.fields.get("node"), str):
            joined.setdefault(entry.fields["node"], f"joining at seq {entry.seq}")
        elif entry.kind == "query" and isinstance(entry.fields.get("privacy_loss"), dict):
            for node in entry.fields["privacy_loss"]:
                queries[str(node)] = queries.get(str(node), 0) + 1
        elif entry.kind == "link" and isinstance(entry.fields.get("nodes"), list):
            for node in entry.fields["nodes"]:
                joined.setdefault(str(node), f"in a linkage at seq {entry.seq}")
    evidence = dict(joined)
    for node, count in queries.items():
        also = f"in {count} query entr{'y' if count == 1 else 'ies'}"
        evidence[node] = f"{evidence[node]} and {also}" if node in evidence else also
    return evidence


def _missing(
    loaded: Mapping[str, Any],
    configured: Expected | None,
    heads: Mapping[str, tuple[int, str] | None],
    coordinator: str | None,
    coordinator_entries: Sequence[RegisterEntry] | None,
    published: Path | None,
) -> tuple[list[str], list[str]]:
    """One line per expected register that is missing, and notes on what was expected and why."""
    sources: dict[str, list[str]] = {}

    def expect(party: str, source: str) -> None:
        sources.setdefault(party, []).append(source)

    if configured is not None:
        if configured.coordinator:
            expect(configured.coordinator, configured.source)
        for node in configured.nodes:
            expect(node, configured.source)
    for party in heads:
        expect(party, f"the published copy {published}")
    if coordinator_entries is not None and coordinator is not None:
        expect(coordinator, "the coordinator's register")
        startups = [e for e in coordinator_entries if e.kind == "startup" and isinstance(e.fields.get("nodes"), list)]
        for node in startups[-1].fields["nodes"] if startups else ():
            expect(str(node), "the coordinator's register")
    participants = _participants(coordinator_entries or ())
    for node in participants:
        if node != coordinator:
            expect(node, "the coordinator's register")

    notes: list[str] = []
    if not sources:
        notes.append(
            "expected parties unknown: no coordinator register among those given; give the coordinator's config "
            "or a published register.json to check that none is missing"
        )
        return [], notes
    nodes = sorted(p for p in sources if p != coordinator)
    notes.append(f"expected: {coordinator or 'the coordinator'} and {len(nodes)} node(s) ({', '.join(nodes) or '-'})")
    missing: list[str] = []
    for party in sorted(sources):
        if party in loaded:
            continue
        where = " and ".join(dict.fromkeys(sources[party]))
        evidence = participants.get(party)
        never_took_part = (
            coordinator_entries is not None and party != coordinator and evidence is None and party not in heads
        )
        if never_took_part:
            notes.append(
                f"{party}: no register, and none expected: registered ({where}) but the coordinator's register "
                "shows it never joined"
            )
            continue
        why = f"; the coordinator's register records it {evidence}" if evidence else ""
        missing.append(f"{party}: no register (expected from {where}{why})")
    return missing, notes


def cross_check(
    coordinator: Sequence[RegisterEntry] | None,
    nodes: Mapping[str, Sequence[RegisterEntry]],
    coordinator_name: str = DEFAULT_COORDINATOR,
) -> CrossCheck:
    """Compare the outcome of every query id across the coordinator's register (None if not given) and
    the nodes' registers given (``{node: entries}``); one line per query whose outcomes disagree."""
    outcome: dict[str, RegisterEntry] = {}
    order: list[str] = []
    for entry in coordinator or ():
        qid = _query_id(entry)
        if qid is None:
            continue
        if qid not in outcome:
            order.append(qid)
        outcome[qid] = entry  # the last entry for a query is its outcome
    at_nodes: dict[str, dict[str, list[RegisterEntry]]] = {}
    for node, entries in nodes.items():
        for entry in entries:
            qid = _query_id(entry)
            if qid is not None:
                at_nodes.setdefault(qid, {}).setdefault(node, []).append(entry)
    order += sorted(qid for qid in at_nodes if qid not in outcome)

    counts = {"released": 0, "coordinator": 0, "nodes": 0, "failed": 0, "pending": 0, "unchecked": 0}
    disagreements: list[str] = []
    for qid in order:
        seen = at_nodes.get(qid, {})
        status = {node: _node_status(entries) for node, entries in seen.items()}
        final = outcome.get(qid)
        if final is None:
            if coordinator is None:
                counts["unchecked"] += 1
                continue
            disagreements.append(
                f"query {qid}: {_statuses(None, status, coordinator_name)}: the coordinator has no record of it"
            )
            continue
        said = str(final.fields.get("status"))
        problem = _disagreement(final, said, seen, status, set(nodes))
        if problem:
            shown = {**{n: "no entry" for n in _counted(final) if n in nodes}, **status}
            disagreements.append(f"query {qid}: {_statuses(said, shown, coordinator_name)}: {problem}")
        elif said in RELEASED:
            counts["released"] += 1
        elif said == "refused":
            counts["nodes" if "refused" in status.values() else "coordinator"] += 1
        elif said == PENDING:
            counts["pending"] += 1
        else:
            counts["failed"] += 1
    return CrossCheck(
        queries=len(order),
        released=counts["released"],
        refused_by_coordinator=counts["coordinator"],
        refused_by_nodes=counts["nodes"],
        failed=counts["failed"],
        pending=counts["pending"],
        disagreements=tuple(disagreements),
        unchecked=counts["unchecked"],
    )


def _disagreement(
    final: RegisterEntry,
    said: str,
    seen: Mapping[str, list[RegisterEntry]],
    status: Mapping[str, str],
    given: set[str],
) -> str | None:
    """Why the coordinator's outcome ``final`` and the nodes' entries (``seen``, from the registers of
    ``given`` nodes) disagree, or None if they agree. A node whose register is not given is not
    checked here: a missing register is reported on its own."""
    committed = sorted(node for node, s in status.items() if s == "released")
    loss = final.fields.get("privacy_loss")
    counted = _counted(final)
    if said == PENDING:
        return None
    if said not in RELEASED:
        if committed:
            return f"{_names(committed)} committed budget for a query the coordinator did not release"
        return None
    problems = []
    uncommitted = sorted(node for node in counted if node in status and status[node] != "released")
    if uncommitted:
        problems.append(f"the coordinator released it but {_names(uncommitted)} did not commit")
    silent = sorted(node for node in counted if node in given and node not in seen)
    if silent:
        problems.append(f"the coordinator released it but the register of {_names(silent)} has no entry for it")
    outside = sorted(node for node in committed if node not in counted)
    if outside:
        problems.append(f"{_names(outside)} committed budget the coordinator does not count")
    for node in sorted(n for n in committed if n in counted):
        own = _own_loss(seen[node], node)
        if own is not None and isinstance(loss, dict) and own != loss.get(node):
            problems.append(f"{node} recorded privacy loss {own} but the coordinator {loss.get(node)}")
    return "; ".join(problems) or None


def _counted(entry: RegisterEntry) -> set[str]:
    """The nodes whose privacy loss an entry records."""
    loss = entry.fields.get("privacy_loss")
    return {str(node) for node in loss} if isinstance(loss, dict) else set()


def _query_id(entry: RegisterEntry) -> str | None:
    qid = entry.fields.get("query_id") if entry.kind == "query" else None
    return qid if isinstance(qid, str) else None


def _node_status(entries: Sequence[RegisterEntry]) -> str:
    """A node's outcome for one query: released if it ever committed (a commitment is never undone),
    else its last entry's status."""
    statuses = [str(e.fields.get("status")) for e in entries]
    return "released" if "released" in statuses else statuses[-1]


def _own_loss(entries: Sequence[RegisterEntry], node: str) -> Any:
    released = [e for e in entries if e.fields.get("status") == "released"]
    loss = released[-1].fields.get("privacy_loss") if released else None
    return loss.get(node) if isinstance(loss, dict) else None


def _statuses(coordinator: str | None, nodes: Mapping[str, str], coordinator_name: str) -> str:
    said = coordinator if coordinator is not None else "no entry"
    return ", ".join([f"{coordinator_name} {said}", *(f"{n} {s}" for n, s in sorted(nodes.items()))])


def _names(nodes: Sequence[str]) -> str:
    return ", ".join(nodes)
