"""The coordinator: accepts nodes' outbound sessions and analysts' calls, plans and routes queries.

It holds the node and project registries, the live sessions (:class:`~fedlink.coordinator.sessions.NodeRoster`),
its transparency register and its query journal; it never holds raw data or noiseless aggregates: nodes
add DP noise before anything reaches it.

Every query, whatever its kind (:mod:`fedlink.coordinator.horizontal`, :mod:`fedlink.coordinator.linked_query`,
:mod:`fedlink.coordinator.model_fit`), runs through one lifecycle, a two-phase commit
(:mod:`fedlink.coordinator.lifecycle`), so that nothing paid for is ever lost.
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from pydantic import ValidationError

from fedlink.coordinator.applications import ApplicationStore
from fedlink.coordinator.config import CoordinatorConfig
from fedlink.coordinator.horizontal import finish_horizontal, run_query
from fedlink.coordinator.journal import Finished, JournalEntry, QueryJournal
from fedlink.coordinator.lifecycle import QueryLifecycle
from fedlink.coordinator.projects import load_projects, today
from fedlink.coordinator.publications import PublicationStore, publish
from fedlink.coordinator.revocation import RevocationWatch
from fedlink.coordinator.sessions import NodeRoster, NodeSession
from fedlink.errors import AccessDenied, BadInput, Fault, FedlinkError, PolicyRefused
from fedlink.language.linked_query import is_linked
from fedlink.pki import Identity
from fedlink.plan.catalogue import FederationCatalogue, NodeCatalogue
from fedlink.protocol import rpc
from fedlink.protocol.fedlink_pb2 import Frame
from fedlink.protocol.linkage import LinkCall, LinkMode, LinkReport
from fedlink.protocol.projects import (
    NodeDecision,
    NodeDecisions,
    ProjectApplication,
    ProjectList,
    ProjectRecord,
    ProjectRef,
)
from fedlink.protocol.publication import CATALOGUE_KIND, CatalogueRecord, Publication, PublishRequest
from fedlink.protocol.tasks import BudgetLineInfo, BudgetReport, ModelRequest, QueryRequest, TaskRef
from fedlink.protocol.transport import Message, frames, make_server, messages, peer_identity
from fedlink.transparency.records import refusals_recorded
from fedlink.transparency.register import Register

log = logging.getLogger("fedlink.coordinator")


def _finish_linked(entry: JournalEntry, answers: dict[str, tuple[str, bytes]]) -> Finished:
    from fedlink.coordinator.linked_query import finish_linked  # the chain's HE stack loads on first use

    return finish_linked(entry, answers)


def _finish_model(entry: JournalEntry, answers: dict[str, tuple[str, bytes]]) -> Finished:
    from fedlink.coordinator.model_fit import finish_model

    return finish_model(entry, answers)


class Coordinator:
    """A running coordinator; :meth:`start` binds the port, :meth:`stop` ends every session."""

    def __init__(self, config: CoordinatorConfig, roster: NodeRoster | None = None) -> None:
        """``roster``: the nodes' sessions when they are reached through another runtime (e.g. Flower's)."""
        self.config = config
        self._lock = threading.Lock()
        timeout = config.coordinator.query_timeout_s
        self.roster = roster or NodeRoster(config.nodes, lambda: self.revocations.refresh(), timeout)
        self.registered = self.roster.registered
        self.register = Register(config.register_path(), config.coordinator.name)
        self.applications = ApplicationStore(config.applications_path(), self.register)
        self.applications.retire_due()
        self.projects = load_projects(config.projects_path(), config.applications_path())
        self._register_projects()
        self.queries = QueryLifecycle(
            self.roster,
            QueryJournal(config.register_path().parent / "queries.sqlite"),
            self.register,
            {"horizontal": finish_horizontal, "linked": _finish_linked, "model": _finish_model},
            timeout_s=timeout,
            test_mode=config.coordinator.test_mode,
        )
        self.queries.recover()
        self.publications = PublicationStore(config.register_path().parent / "publications.sqlite")
        self.publications.recover(self.register.entries())
        self.revocations = RevocationWatch(config.revoked_path(), self.register)
        self._server: grpc.Server | None = None
        self.port = 0

    def _register_projects(self) -> None:
        """Put the registered nodes, every project (once per version of it) and test mode on the public
        record. `fedlink register verify` expects a register from each node recorded as joined."""
        entries = self.register.entries()
        self._joined = {str(e.fields.get("node")) for e in entries if e.kind == "node_joined"}
        self.register.append("startup", {"nodes": sorted(self.registered)})
        self._register_new_projects()
        self._retired = {str(e.fields.get("project")) for e in entries if e.kind == "project_retired"}
        self._retire_due()
        if self.config.coordinator.test_mode:
            log.warning("TEST MODE: noiseless queries are possible where nodes allow them; never use with real data")
            self.register.append("test_mode", {"enabled": True})

    def start(self) -> int:
        """Listen for nodes and analysts (mTLS gRPC). A coordinator whose nodes are attached over
        another runtime (:meth:`attach`, e.g. Flower's) is used without starting it."""
        self._server, self.port = make_server(
            self.config.listen,
            self.config.tls_files(),
            {
                "NodeSession": self._node_session,
                "Analyst": self.revocations.guard(self._analyst, lambda context: self._identify(context, "analyst")),
            },
        )
        self._server.start()
        self.revocations.start()
        log.info("coordinator listening on port %d with mTLS; %d nodes registered", self.port, len(self.registered))
        return self.port

    def stop(self, grace: float = 1.0) -> None:
        self.revocations.stop()
        self.roster.close()
        if self._server is not None:
            self._server.stop(grace).wait()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def attach(self, session: NodeSession) -> None:
        """Take a node session made outside this coordinator's own server (another runtime's transport)."""
        previous = self.roster.attach(session)
        if previous is not None:
            previous.close()
        self._record_join(session.name)

    def _record_join(self, node: str) -> None:
        """Record a node's first session ever: from then on its register is expected to exist."""
        with self._lock:
            first = node not in self._joined
            self._joined.add(node)
        if first:
            self.register.append("node_joined", {"node": node})

    # --- identities -------------------------------------------------------------------------------
    def _identify(self, context: grpc.ServicerContext, role: str) -> Identity:
        try:
            identity = peer_identity(context, self.revocations.refresh())
        except AccessDenied as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.message)
            raise
        if identity.role != role:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity} may not call the {role} interface; use a {role} certificate",
            )
        return identity

    # --- nodes ------------------------------------------------------------------------------------
    def live_nodes(self) -> set[str]:
        return self.roster.live_nodes()

    def _node_session(self, inbound: Iterator[Frame], context: grpc.ServicerContext) -> Iterator[Frame]:
        identity = self._identify(context, "node")
        if identity.name not in self.registered:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node '{identity.name}' is not registered; add it to [[nodes]] in the coordinator config",
            )
        stream = messages(inbound)
        hello = next(stream, None)
        if hello is None or hello.kind != rpc.HELLO:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a node session must start with its catalogue")
        assert hello is not None
        catalogue = NodeCatalogue.model_validate_json(hello.body)
        if catalogue.node != identity.name:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate says node '{identity.name}' but the catalogue says '{catalogue.node}'",
            )
        session = NodeSession(identity.name, catalogue)
        self.attach(session)
        context.add_callback(session.close)
        context.add_callback(self.revocations.track(identity, session.revoke))
        threading.Thread(target=session.read_replies, args=(inbound,), daemon=True, name=f"from-{session.name}").start()
        log.info("node '%s' connected with %d tables", session.name, len(catalogue.tables))
        session.send(Message(hello.call_id, rpc.WELCOME, b""))
        settle = threading.Thread(target=self.queries.settle, args=(session,), daemon=True, name="pending")
        settle.start()
        threading.Thread(target=self._sync_quietly, args=([session.name],), daemon=True, name="projects").start()
        yield from session.outbound_frames()
        if session.revoked is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, session.revoked)
        log.info("node '%s' disconnected", session.name)

    # --- projects as a workflow (:mod:`fedlink.coordinator.applications`) ---------------------------
    def _retire_due(self) -> None:
        """Retire applications and registered projects whose end date has passed (recorded once each)."""
        changed = bool(self.applications.retire_due())
        for project in self.projects.projects:
            if project.end_date is not None and today() > project.end_date and project.id not in self._retired:
                self._retired.add(project.id)
                if self.applications.get(project.id) is None:  # an application's retirement is recorded already
                    reason = f"its end date {project.end_date.isoformat()} has passed"
                    self.register.append("project_retired", {"project": project.id, "reason": reason})
        if changed:
            self._reload_projects()

    def _reload_projects(self) -> None:
        """The registry with the applications' current states; newly active projects go on the register."""
        self.projects = load_projects(self.config.projects_path(), self.config.applications_path())
        self._register_new_projects()

    def apply_project(self, application: ProjectApplication, analyst: str) -> ProjectRecord:
        """Store ``analyst``'s application as pending once every node holding its datasets has checked
        its claims (those nodes must be connected), and send it to them for their decision."""

        def check(record: ProjectRecord) -> None:
            nodes = record.application.nodes
            live = self.roster.sessions_for(nodes, f"named by project '{record.id}'")
            body = record.model_dump_json().encode()
            for answer in self.roster.fan_out(live, rpc.PROJECT_CHECK, body).values():
                if isinstance(answer, FedlinkError):
                    raise answer

        registered = {p.id: p for p in self.projects.projects}
        record = self.applications.apply(application, analyst, registered, set(self.registered), check)
        self._reload_projects()
        self._sync(record.approvers)
        return self.applications.get(record.id) or record

    def project_status(self, project: str = "") -> ProjectList:
        """Every application (or ``project``'s), after asking its live approvers for their decisions."""
        records = self.applications.records()
        if project:
            records = [r for r in records if r.id == project]
            if not records:
                raise BadInput(f"no application '{project}' at this coordinator; see `fedlink project status`")
        self._sync({n for r in records for n in r.approvers})
        wanted = {r.id for r in records}
        return ProjectList(projects=tuple(r for r in self.applications.records() if r.id in wanted))

    def _refresh_project(self, project: str | None) -> None:
        """Before a query: retire what is due, and ask a pending application's approvers again."""
        self._retire_due()
        record = self.applications.get(project) if project else None
        if record is not None and record.state == "pending":
            self._sync(record.approvers)

    def _sync(self, nodes: set[str] | list[str] | tuple[str, ...]) -> None:
        """Send each live node of ``nodes`` the applications naming it, take its decisions, move the
        applications on (activate, reject) and reload the registry if any changed state."""
        self._retire_due()
        records = self.applications.records()
        live = self.roster.live([n for n in nodes if n in self.registered])
        calls = {
            node: (session, ProjectList(projects=tuple(r for r in records if node in r.approvers)))
            for node, session in live.items()
        }
        decisions: dict[str, dict[str, NodeDecision]] = {}
        bodies = {node: (session, listed.model_dump_json().encode()) for node, (session, listed) in calls.items()}
        for node, answer in self.roster.call_each(bodies, rpc.PROJECT_SYNC).items():
            if isinstance(answer, FedlinkError):
                log.warning("node '%s' did not report its project decisions: %s", node, answer.message)
                continue
            for project, decision in NodeDecisions.model_validate_json(answer.body).decisions.items():
                if decision.node == node:  # a node speaks for itself only
                    decisions.setdefault(project, {})[node] = decision
        before = {r.id: r for r in records}
        changed = False
        for project, by_node in decisions.items():
            if project in before:  # a new decision or state changes why a query is refused, too
                changed |= self.applications.decided(project, by_node) != before[project]
        if changed:
            self._reload_projects()

    def _sync_quietly(self, nodes: list[str]) -> None:
        try:
            self._sync(nodes)
        except FedlinkError as exc:
            log.warning("could not ask %s about projects: %s", ", ".join(nodes), exc.message)

    def _register_new_projects(self) -> None:
        """Record every project of the registry not yet on the register as it is now (once per version)."""
        seen = {json.dumps(e.fields, sort_keys=True) for e in self.register.entries() if e.kind == "project"}
        for project in self.projects.projects:
            fields = project.model_dump(mode="json", exclude_none=True)
            if json.dumps(fields, sort_keys=True) not in seen:
                self.register.append("project", fields)

    # --- analysts ---------------------------------------------------------------------------------
    def catalogue(self) -> FederationCatalogue:
        return self.roster.catalogue()

    def run_link(
        self,
        project_id: str,
        analyst: str,
        progress: Callable[[str, int, int], None],
        mode: LinkMode = "secret",
    ) -> LinkReport:
        """Build the project's link spine across the nodes that hold its datasets (``mode``: a shared
        link secret, or ECDH PSI with no shared secret)."""
        self._refresh_project(project_id)
        project = self.projects.get(project_id)
        project.check(analyst, [])
        self._check_linkage_service()
        nodes = sorted({dataset.split(".", 1)[0] for dataset in project.datasets})
        live = self.roster.sessions_for(nodes)
        # wildcards (every id: concept...) resolve to the concepts at least two of the project's nodes map
        holders: dict[str, set[str]] = {}
        for status in self.catalogue().nodes:
            if status.node in nodes and status.catalogue is not None:
                for table in status.catalogue.tables:
                    for concept in table.linkage:
                        holders.setdefault(concept.concept, set()).add(status.node)
        mapped = {concept for concept, held in holders.items() if len(held) >= 2}
        spec = self.projects.spec(project).resolve(mapped)
        # linkage moves whole encodings: allow it far longer than a query
        timeout = max(self.config.coordinator.query_timeout_s, 600.0)
        from fedlink.coordinator.linkage import LinkageUnit  # the matching stack loads only when linking
        from fedlink.coordinator.linkage_spark import linkage_engine

        unit = LinkageUnit(
            lambda bodies, kind, sinks=None: self.roster.call_each(
                {n: (live[n], b) for n, b in bodies.items()}, kind, timeout, sinks
            ),
            self.spines_path(),
            self.config.coordinator.link_quality_epsilon,
            linkage_engine(self.config.linkage),
        )
        try:
            report = unit.run(project.id, analyst, nodes, progress, mode, spec)
        except FedlinkError as exc:
            self.register.append(
                "link",
                {
                    "project": project.id,
                    "analyst": analyst,
                    "nodes": nodes,
                    "mode": mode,
                    "status": "failed",
                    "reason": exc.message,
                    "spec_hash": spec.hash,
                },
            )
            raise
        self.register.append(
            "link",
            {
                "project": project.id,
                "analyst": analyst,
                "nodes": nodes,
                "mode": mode,
                "status": "built",
                "spec_hash": spec.hash,
            },
        )
        return report

    def _check_linkage_service(self) -> None:
        if not self.config.coordinator.linkage_service:
            raise PolicyRefused(
                f"coordinator '{self.config.coordinator.name}' offers no linkage service (linkage_service = false "
                "in its config): nothing is linked across nodes here; ask a horizontal query (one table, no LINK)"
            )

    def result_for(self, query_id: str, analyst: str) -> tuple[str, bytes]:
        """A stored result, for the analyst who ran the query only (completing it if a node is back)."""
        entry = self.queries.journal.get(query_id)
        if entry is None:
            raise BadInput(f"no query {query_id[:8]} at this coordinator; check the id (`fedlink result list`)")
        if entry.analyst != analyst:
            raise AccessDenied(f"query {query_id[:8]} belongs to another analyst; only its analyst may collect it")
        return self.queries.deliver(query_id)

    def spines_path(self) -> Path:
        """Where the linkage unit keeps each project's spine (never sent to anyone)."""
        return self.config.register_path().parent / "spines"

    def run_query(self, request: QueryRequest, analyst: str = "analyst") -> tuple[str, bytes]:
        """Run a horizontal query (:mod:`fedlink.coordinator.horizontal`); returns the reply kind and body."""
        self._refresh_project(request.project)
        return run_query(self.queries, self.projects, request, analyst)

    def run_linked_query(self, request: QueryRequest, analyst: str) -> tuple[str, bytes]:
        """Run a LINK query (:mod:`fedlink.coordinator.linked_query`); returns the reply kind and body."""
        from fedlink.coordinator.linked_query import run_linked_query  # the chain's HE stack loads on first use

        self._check_linkage_service()
        self._refresh_project(request.project)
        return run_linked_query(
            self.queries,
            self.projects,
            self.spines_path(),
            request,
            analyst,
            self.config.coordinator.linked_window_chunks,
        )

    def fit_model(self, request: ModelRequest, analyst: str) -> tuple[str, bytes]:
        """Fit a federated model (:mod:`fedlink.coordinator.model_fit`); returns the reply kind and body."""
        from fedlink.coordinator.model_fit import fit_model

        self._refresh_project(request.project)
        return fit_model(self.queries, self.projects, request, analyst)

    def publish(self, request: PublishRequest, analyst: str) -> Publication:
        """Publish an analyst's summary of project outputs (:mod:`fedlink.coordinator.publications`)."""
        return publish(request, analyst, self.projects, self.queries.journal, self.publications, self.register)

    def record_catalogue(self, record: CatalogueRecord, analyst: str) -> int:
        """Record a public catalogue export on the register (its files' digests and datasets); the entry's
        sequence number. Every dataset it lists must be one a registered node declares."""
        declared = {
            f"{status.node}.{table.name}"
            for status in self.catalogue().nodes
            if status.catalogue is not None
            for table in status.catalogue.tables
        }
        unknown = sorted(set(record.datasets) - declared)
        if unknown:
            raise BadInput(
                f"the catalogue lists {', '.join(unknown[:3])}, which no live node declares; export it again"
            )
        return self.register.append(CATALOGUE_KIND, {"analyst": analyst, **record.model_dump(mode="json")}).seq

    def public_register(self) -> bytes:
        """The coordinator's register (public by design) with its verification report, as JSON."""
        report = self.register.verify()
        return json.dumps(
            {
                "party": self.config.coordinator.name,
                "verified": report.ok,
                "problems": list(report.problems),
                "entries": [e.to_json() for e in self.register.entries()],
            }
        ).encode()

    def budget(self, analyst: str) -> BudgetReport:
        """Budget lines of every live node, for the projects this analyst is registered on."""
        projects = {p.id for p in self.projects.of_analyst(analyst)}
        lines: list[BudgetLineInfo] = []
        for _, answer in sorted(self.roster.fan_out(self.roster.live(), rpc.BUDGET, b"").items()):
            if isinstance(answer, FedlinkError):
                raise answer
            report = BudgetReport.model_validate_json(answer.body)
            lines.extend(line for line in report.lines if line.project in projects)
        return BudgetReport(lines=tuple(lines))

    def _with_progress(self, request: Message, analyst: str) -> Iterator[Frame]:
        """Run a long call in a thread, streaming its progress to the analyst, then its answer."""
        updates: queue.Queue[Message] = queue.Queue()

        def progress(stage: str, done: int, total: int) -> None:
            body = json.dumps({"stage": stage, "done": done, "total": total}).encode()
            updates.put(Message(request.call_id, rpc.PROGRESS, body))

        def work() -> None:
            try:
                with refusals_recorded(self.register, analyst, request.kind, request.body):
                    call = LinkCall.model_validate_json(request.body)
                    report = self.run_link(call.project, analyst, progress, call.mode)
                updates.put(Message(request.call_id, rpc.RESULT, report.model_dump_json().encode()))
            except FedlinkError as exc:
                updates.put(rpc.error_message(request.call_id, exc))
            except Exception as exc:
                log.exception("linkage failed")
                updates.put(
                    rpc.error_message(request.call_id, Fault(f"linkage failed ({type(exc).__name__}); see the log"))
                )

        # in the call's context, so that the linkage stops asking nodes for work once the analyst is revoked
        threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True, name="linkage").start()
        while True:
            update = updates.get()
            yield from frames(update)
            if update.kind != rpc.PROGRESS:
                return

    def _answer(self, request: Message, analyst: str) -> Message:
        """The reply to an analyst's call (every kind but LINK, which streams its progress)."""
        if request.kind == rpc.CATALOGUE:
            return Message(request.call_id, rpc.RESULT, self.catalogue().model_dump_json().encode())
        if request.kind == rpc.QUERY and is_linked(QueryRequest.model_validate_json(request.body).sql):
            kind, body = self.run_linked_query(QueryRequest.model_validate_json(request.body), analyst)
            return Message(request.call_id, kind, body)
        if request.kind == rpc.MODEL:
            kind, body = self.fit_model(ModelRequest.model_validate_json(request.body), analyst)
            return Message(request.call_id, kind, body)
        if request.kind == rpc.QUERY:
            kind, body = self.run_query(QueryRequest.model_validate_json(request.body), analyst)
            return Message(request.call_id, kind, body)
        if request.kind == rpc.RESULT_GET:
            kind, body = self.result_for(TaskRef.model_validate_json(request.body).query_id, analyst)
            return Message(request.call_id, kind, body)
        if request.kind == rpc.BUDGET:
            return Message(request.call_id, rpc.RESULT, self.budget(analyst).model_dump_json().encode())
        if request.kind == rpc.PROJECT_APPLY:
            record = self.apply_project(ProjectApplication.model_validate_json(request.body), analyst)
            return Message(request.call_id, rpc.RESULT, record.model_dump_json().encode())
        if request.kind == rpc.PROJECT_STATUS:
            found = self.project_status(ProjectRef.model_validate_json(request.body).project)
            return Message(request.call_id, rpc.RESULT, found.model_dump_json().encode())
        if request.kind == rpc.REGISTER:
            return Message(request.call_id, rpc.RESULT, self.public_register())
        if request.kind == rpc.PUBLISH:
            publication = self.publish(PublishRequest.model_validate_json(request.body), analyst)
            return Message(request.call_id, rpc.RESULT, publication.model_dump_json().encode())
        if request.kind == rpc.CATALOGUE_PUBLISHED:
            seq = self.record_catalogue(CatalogueRecord.model_validate_json(request.body), analyst)
            return Message(request.call_id, rpc.RESULT, json.dumps({"seq": seq}).encode())
        raise BadInput(f"unknown request '{request.kind}'; upgrade the analyst client")

    def _analyst(self, inbound: Iterator[Frame], context: grpc.ServicerContext) -> Iterator[Frame]:
        identity = self._identify(context, "analyst")
        request = next(messages(inbound), None)
        if request is None:
            return
        if request.kind == rpc.LINK:
            yield from self._with_progress(request, identity.name)
            return
        try:
            with refusals_recorded(self.register, identity.name, request.kind, request.body):
                reply = self._answer(request, identity.name)
        except FedlinkError as exc:
            reply = rpc.error_message(request.call_id, exc)
        except ValidationError as exc:
            reply = rpc.error_message(request.call_id, BadInput(f"malformed request ({exc.errors()[0]['msg']})"))
        except Exception as exc:  # never leak a traceback to a client
            log.exception("analyst call failed")
            reply = rpc.error_message(
                request.call_id, Fault(f"the coordinator failed ({type(exc).__name__}); see its log")
            )
        yield from frames(reply)
