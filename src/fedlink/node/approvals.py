"""A node's decisions on project applications: the operator reviews what the coordinator forwarded,
approves with conditions or rejects, and the node's runtime honours the decision at once.

Two machine-written files sit beside the node's ledger (its state folder, not its hand-written
``node.toml``):

- ``applications.toml``: the applications naming this node, as the coordinator last sent them (the
  operator's inbox for ``fedlink project review``);
- ``approvals.toml``: this node's decisions, one per project, each with its conditions (an
  :class:`~fedlink.node.config.Approval`: budget cap, minimum cohort, tables, identifier concepts).

An approval written by hand in ``node.toml`` keeps working and wins over the store; a decision is made
once (a project approved in ``node.toml`` cannot be decided again here). Every decision is recorded on
the node's register; the coordinator learns of it the next time it asks (on a status call, a query,
or the node's next session) and activates the project once every node it needs has approved.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from fedlink.config import ConfigModel
from fedlink.errors import BadInput, ConfigError
from fedlink.linkage.concepts import concept_name
from fedlink.node.config import Approval, NodeConfig
from fedlink.protocol.projects import (
    ContactTeam,
    NodeContacts,
    NodeDecision,
    NodeDecisions,
    ProjectApplication,
    ProjectList,
    ProjectRecord,
)
from fedlink.tomlstore import read_store, write_store
from fedlink.transparency.register import Register


class StoredDecision(ConfigModel):
    """One line of ``approvals.toml``."""

    project: str
    decision: Literal["approved", "rejected"]
    decided_at: str
    reason: str = ""
    #: The approval and its conditions (approved only).
    approval: Approval | None = None


_CACHE: dict[Path, tuple[tuple[int, int], tuple[StoredDecision, ...]]] = {}
_CACHE_LOCK = threading.Lock()


def stored_decisions(path: Path) -> tuple[StoredDecision, ...]:
    """The decisions in ``path`` (re-read only when the file changed: the runtime asks on every query)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ()
    key = (stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
    raw = read_store(path).get("decisions", [])
    try:
        decisions = tuple(StoredDecision.model_validate(d) for d in raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc.errors()[0]['msg']}; restore the file from a backup") from exc
    with _CACHE_LOCK:
        _CACHE[path] = (key, decisions)
    return decisions


def decided_approvals(path: Path, skip: set[str]) -> tuple[Approval, ...]:
    """The approvals in the store at ``path``, less those of the projects in ``skip``."""
    return tuple(d.approval for d in stored_decisions(path) if d.approval is not None and d.project not in skip)


def inbox_path(config: NodeConfig) -> Path:
    return config.ledger_path().with_name("applications.toml")


def inbox(config: NodeConfig) -> list[ProjectRecord]:
    """The applications naming this node, as the coordinator last sent them."""
    return list(ProjectList.model_validate(read_store(inbox_path(config))).projects)


def _contacts(config: NodeConfig) -> NodeContacts:
    c = config.contacts
    return NodeContacts(
        node=config.name,
        description=config.node.description,
        inbox=c.inbox,
        how_to_apply=c.how_to_apply,
        teams=tuple(ContactTeam(**t.model_dump()) for t in c.teams),
    )


def check_claims(config: NodeConfig, application: ProjectApplication) -> None:
    """Refuse (BadInput) an application that names a table this node does not have, or claims a legal
    gateway the table does not declare."""
    tables = {t.name: t for t in config.tables}
    for claim in application.datasets:
        if claim.node != config.name:
            continue
        table = tables.get(claim.table)
        if table is None:
            raise BadInput(
                f"node '{config.name}' has no table '{claim.table}' (its tables: {', '.join(sorted(tables))}); "
                "fix `datasets`"
            )
        if claim.legal_gateway not in table.legal_gateways:
            declared = "; ".join(table.legal_gateways) or "none"
            raise BadInput(
                f"dataset {claim.dataset} declares no legal gateway {claim.legal_gateway!r} (it declares: "
                f"{declared}); claim one of those in `datasets`"
            )


def decision_of(config: NodeConfig, record: ProjectRecord) -> NodeDecision:
    """This node's decision on ``record`` with its public conditions, contacts and declared gateways."""
    tables = {t.name: t for t in config.tables}
    gateways = {
        name: tables[name].legal_gateways for name in record.application.tables_at(config.name) if name in tables
    }
    common: dict[str, object] = {"node": config.name, "contacts": _contacts(config), "gateways": gateways}
    by_hand = next((a for a in config.approvals if a.project == record.id), None)
    stored = next((d for d in stored_decisions(config.approvals_path()) if d.project == record.id), None)
    if by_hand is not None:
        return NodeDecision.model_validate(
            {**common, "decision": "approved", "decided_at": "node.toml", **_conditions(by_hand)}
        )
    if stored is None:
        return NodeDecision.model_validate({**common, "decision": "pending"})
    conditions = _conditions(stored.approval) if stored.approval is not None else {}
    return NodeDecision.model_validate(
        {**common, "decision": stored.decision, "decided_at": stored.decided_at, "reason": stored.reason, **conditions}
    )


def _conditions(approval: Approval) -> dict[str, object]:
    return {
        "min_cohort": approval.min_cohort,
        "tables": approval.tables,
        "identifiers": approval.linkage_concepts,
        "spine_of": approval.spine_of,
    }


def sync(config: NodeConfig, projects: ProjectList) -> NodeDecisions:
    """The coordinator's current applications naming this node: kept as the operator's inbox; the
    answer is this node's decision on each."""
    write_store(inbox_path(config), projects.model_dump(mode="json", exclude_none=True))
    return NodeDecisions(decisions={r.id: decision_of(config, r) for r in projects.projects})


def pending(config: NodeConfig, everything: bool = False) -> list[tuple[ProjectRecord, NodeDecision]]:
    """The applications awaiting this node's decision (``everything``: all it was told about)."""
    found = [(r, decision_of(config, r)) for r in inbox(config)]
    return found if everything else [(r, d) for r, d in found if d.decision == "pending" and r.state == "pending"]


def decide(
    config: NodeConfig,
    project: str,
    approve: bool,
    *,
    rho: float | None = None,
    min_cohort: int | None = None,
    identifiers: tuple[str, ...] | None = None,
    tables: tuple[str, ...] | None = None,
    analysts: tuple[str, ...] | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> StoredDecision:
    """Approve (with conditions) or reject ``project`` at this node: written to ``approvals.toml`` and
    recorded on the node's register. Refused (nothing written) for a project this node was not asked
    about, one already decided, or conditions that ask for more than the application does."""
    record = next((r for r in inbox(config) if r.id == project), None)
    if record is None:
        raise BadInput(
            f"node '{config.name}' holds no application '{project}'; list them with `fedlink project review` "
            "(the node receives applications while it is connected to the coordinator)"
        )
    if record.state != "pending":
        raise BadInput(f"project '{project}' is {record.state}; only a pending application can be decided")
    current = decision_of(config, record)
    if current.decision != "pending":
        where = "in node.toml" if current.decided_at == "node.toml" else f"on {current.decided_at}"
        raise BadInput(f"project '{project}' was already {current.decision} at node '{config.name}' {where}")
    app = record.application
    asked = app.tables_at(config.name)
    approval = None
    if approve:
        if tables is not None:
            extra = sorted(set(tables) - set(asked))
            if extra:
                raise BadInput(
                    f"`tables` names {', '.join(extra)}, which project '{project}' did not ask for at this node "
                    f"(it asks for: {', '.join(asked) or 'none'})"
                )
        if identifiers is not None:
            try:
                identifiers = tuple(concept_name(i) for i in identifiers)
            except BadInput as exc:
                raise BadInput(f"`identifiers`: {exc.message}") from None
            extra = sorted(set(identifiers) - set(app.identifiers))
            if extra:
                raise BadInput(
                    f"`identifiers` names {', '.join(extra)}, which project '{project}' did not ask to link on "
                    f"(it asks for: {', '.join(app.identifiers) or 'none'})"
                )
        cap = app.rho if rho is None else rho
        if cap < 0 or cap > app.rho:
            raise BadInput(f"`rho` must be between 0 and the {app.rho} the project asked for, not {cap}")
        approval = Approval(
            project=project,
            rho=cap,
            tables=tables if tables is not None else asked,
            analysts=analysts,
            linkage_concepts=identifiers if identifiers is not None else app.identifiers,
            min_cohort=min_cohort,
            spine_of=app.spine_of,
        )
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    stored = StoredDecision(
        project=project, decision="approved" if approve else "rejected", decided_at=at, reason=reason, approval=approval
    )
    register = Register(config.register_path(), config.name)
    register.check_appendable()  # a decision that cannot be recorded is not made
    path = config.approvals_path()
    kept = [d.model_dump(mode="json", exclude_none=True) for d in stored_decisions(path)]
    write_store(path, {"decisions": [*kept, stored.model_dump(mode="json", exclude_none=True)]})
    fields: dict[str, object] = {"project": project, "reason": reason}
    if approval is not None:
        # the budget cap stays private to the node, as in its startup entry
        fields.update(
            {
                "min_cohort": approval.min_cohort,
                "tables": list(approval.tables or ()),
                "identifiers": list(approval.linkage_concepts or ()),
                "spine_of": approval.spine_of,
            }
        )
    register.append("project_approved" if approve else "project_rejected", fields)
    return stored
