"""The coordinator's store of project applications (``applications.toml`` beside its register): each
application, its state and every node's last known decision.

The state machine: an application is ``pending`` until every node it needs (those holding its datasets
and, when it reuses another project's link spine, every node of that spine) has approved it, then
``active``; a node's rejection makes it ``rejected``; its end date passing makes it ``retired``.
``rejected`` and ``retired`` are final. Every change goes on the coordinator's register. The store is
written whole and atomically by the coordinator alone; ``projects.toml`` stays hand-written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path

from pydantic import ValidationError

from fedlink.coordinator.projects import Project, today
from fedlink.errors import BadInput, ConfigError
from fedlink.linkage.concepts import concept_name
from fedlink.protocol.projects import NodeDecision, ProjectApplication, ProjectList, ProjectRecord
from fedlink.tomlstore import read_store, write_store
from fedlink.transparency.register import Register


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def application_fields(record: ProjectRecord) -> dict[str, object]:
    """What the register records of an application (all of it is public by design)."""
    app = record.application
    return {
        "project": app.id,
        "title": app.title,
        "purposes": list(app.purposes),
        "public_benefit": app.public_benefit,
        "applicant": record.applicant,
        "analysts": list(app.analysts),
        "datasets": {c.dataset: c.legal_gateway for c in app.datasets},
        "identifiers": list(app.identifiers),
        "outputs": list(app.outputs),
        "end_date": app.end_date.isoformat(),
        "rho": app.rho,
        "spine_of": app.spine_of,
        "approvers": list(record.approvers),
    }


def _rejection(decision: NodeDecision) -> str:
    return f"rejected by node '{decision.node}'" + (f" ({decision.reason})" if decision.reason else "")


class ApplicationStore:
    """The applications in ``path``; changes are recorded on ``register`` (when given)."""

    def __init__(self, path: Path, register: Register | None = None, clock: Callable[[], date] | None = None) -> None:
        """``clock``: today's date (default: the UTC date, looked up at each call)."""
        self.path = path
        self.register = register
        self._clock = clock
        self._lock = threading.Lock()

    def _today(self) -> date:
        return self._clock() if self._clock is not None else today()

    def records(self) -> list[ProjectRecord]:
        try:
            return list(ProjectList.model_validate(read_store(self.path)).projects)
        except ValidationError as exc:
            raise ConfigError(f"{self.path}: {exc.errors()[0]['msg']}; restore it from a backup") from exc

    def get(self, project: str) -> ProjectRecord | None:
        return next((r for r in self.records() if r.id == project), None)

    def _save(self, records: list[ProjectRecord]) -> None:
        write_store(self.path, ProjectList(projects=tuple(records)).model_dump(mode="json", exclude_none=True))

    def _record(self, kind: str, fields: Mapping[str, object]) -> None:
        if self.register is not None:
            self.register.append(kind, fields)

    def projects(self) -> tuple[tuple[Project, ...], dict[str, str]]:
        """The active applications as registry projects, and why each other one is refused."""
        active, closed = [], {}
        for record in self.records():
            app = record.application
            if record.state == "active":
                active.append(
                    Project(
                        id=app.id,
                        title=app.title,
                        purpose=app.purpose,
                        analysts=app.analysts,
                        datasets=tuple(c.dataset for c in app.datasets),
                        rho=app.rho,
                        end_date=app.end_date,
                        spine_of=app.spine_of,
                    )
                )
            elif record.state == "pending":
                closed[app.id] = (
                    f"project '{app.id}' is not active yet: it awaits the approval of node(s) "
                    f"{', '.join(record.outstanding())}; see `fedlink project status {app.id}`"
                )
            else:
                closed[app.id] = f"project '{app.id}' is {record.state}: {record.reason}; its queries are refused"
        return tuple(active), closed

    def apply(
        self,
        application: ProjectApplication,
        applicant: str,
        registered: Mapping[str, Project],
        nodes: set[str],
        check: Callable[[ProjectRecord], None],
    ) -> ProjectRecord:
        """Store a new pending application after checking it: its id is new, its nodes are registered,
        its identifiers are concepts, its end date is ahead, a reused spine's project exists; ``check``
        asks the nodes about their datasets (a gateway they do not declare is refused there)."""
        app = application
        if app.id in registered or self.get(app.id) is not None:
            raise BadInput(f"project id '{app.id}' is taken; choose another `id`")
        unknown = sorted(set(app.nodes) - nodes)
        if unknown:
            raise BadInput(f"no node {', '.join(unknown)} in this federation; check `datasets` (node.table)")
        try:
            identifiers = tuple(concept_name(i) for i in app.identifiers)
        except BadInput as exc:
            raise BadInput(f"`identifiers`: {exc.message}") from None
        if app.end_date < self._today():
            raise BadInput(f"`end_date` {app.end_date.isoformat()} has passed; give a date ahead")
        approvers = set(app.nodes)
        if app.spine_of is not None:
            approvers |= set(self._spine_nodes(app.spine_of, registered))
        analysts = app.analysts if applicant in app.analysts else (applicant, *app.analysts)
        now = _now()
        record = ProjectRecord(
            application=app.model_copy(update={"identifiers": identifiers, "analysts": analysts}),
            applicant=applicant,
            applied_at=now,
            changed_at=now,
            approvers=tuple(sorted(approvers)),
        )
        check(record)
        with self._lock:
            records = self.records()
            if any(r.id == app.id for r in records):
                raise BadInput(f"project id '{app.id}' is taken; choose another `id`")
            self._record("project_applied", application_fields(record))
            self._save([*records, record])
        return record

    def _spine_nodes(self, project: str, registered: Mapping[str, Project]) -> list[str]:
        found = registered.get(project)
        if found is not None:
            return sorted({d.split(".", 1)[0] for d in found.datasets})
        record = self.get(project)
        if record is None:
            raise BadInput(f"`spine_of` names project '{project}', which is not registered; name an existing project")
        return list(record.application.nodes)

    def decided(self, project: str, decisions: Mapping[str, NodeDecision]) -> ProjectRecord:
        """Take nodes' current decisions on ``project`` and move it on: active once every approver has
        approved, rejected once one has rejected (final states do not move)."""
        with self._lock:
            records = self.records()
            index = next((i for i, r in enumerate(records) if r.id == project), None)
            if index is None:
                raise BadInput(f"no application '{project}' at this coordinator")
            record = records[index]
            if record.state in ("rejected", "retired"):
                return record
            known = {d.node: d for d in record.decisions}
            for node, decision in decisions.items():
                if node not in record.approvers:
                    continue
                before = known.get(node)
                changed = before is None or before.decision != decision.decision
                if changed and decision.decision != "pending":
                    self._record(
                        "project_decision",
                        {
                            "project": project,
                            "node": node,
                            "decision": decision.decision,
                            "decided_at": decision.decided_at,
                            "reason": decision.reason,
                            "conditions": decision.public_conditions(),
                        },
                    )
                known[node] = decision
            updated = record.model_copy(update={"decisions": tuple(known[n] for n in sorted(known))})
            updated = self._transition(updated)
            if updated != record:
                records[index] = updated
                self._save(records)
            return updated

    def _transition(self, record: ProjectRecord) -> ProjectRecord:
        rejected = [d for d in record.decisions if d.decision == "rejected"]
        if rejected:
            reason = "; ".join(_rejection(d) for d in rejected)
            self._record("project_rejected", {"project": record.id, "reason": reason})
            return record.model_copy(update={"state": "rejected", "reason": reason, "changed_at": _now()})
        if record.state == "pending" and not record.outstanding():
            fields: dict[str, object] = {"project": record.id, "approvers": list(record.approvers)}
            self._record("project_activated", fields)
            if record.application.spine_of is not None:
                self._record(
                    "spine_reuse",
                    {
                        "project": record.id,
                        "spine_of": record.application.spine_of,
                        "approved_by": list(record.approvers),
                    },
                )
            return record.model_copy(update={"state": "active", "changed_at": _now()})
        return record

    def retire_due(self) -> list[ProjectRecord]:
        """Retire every application whose end date has passed (recorded once each)."""
        today_ = self._today()
        with self._lock:
            records = self.records()
            retired = []
            for i, record in enumerate(records):
                if record.state in ("pending", "active") and today_ > record.application.end_date:
                    reason = f"its end date {record.application.end_date.isoformat()} has passed"
                    self._record("project_retired", {"project": record.id, "reason": reason})
                    records[i] = record.model_copy(update={"state": "retired", "reason": reason, "changed_at": _now()})
                    retired.append(records[i])
            if retired:
                self._save(records)
        return retired
