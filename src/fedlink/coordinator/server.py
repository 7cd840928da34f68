"""The coordinator: accepts nodes' outbound sessions and analysts' calls, plans and routes queries.

It holds the node and project registries, the live sessions, its transparency register and its query
journal (:mod:`fedlink.coordinator.journal`); it never holds raw data or noiseless aggregates: nodes
add DP noise before anything reaches it.

A query runs as a two-phase commit, so that nothing paid for is ever lost: **reserve** at every node
(one node's refusal costs no other node anything), **prepare** at every node (each computes its noisy
answer, keeps it and marks its reservation prepared; every task carries a deadline after which no node
prepares it), then the coordinator **decides** (journaled before any node hears of it) and asks every
node to **commit**: each records the use, commits its budget and only then sends its answer. A failure
before the decision aborts the query everywhere and nothing is spent. After it, every node's answer is
kept as it arrives, the result is stored sealed to the analyst, and a node that crashed or stalled at
the commit delivers its (same) answer when it is back, on reconnection or when the analyst collects
the result with ``fedlink result get ID``; the analyst is told the result is pending, not lost.
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from pydantic import ValidationError

from fedlink.coordinator.config import CoordinatorConfig
from fedlink.coordinator.journal import Finished, JournalEntry, QueryJournal
from fedlink.coordinator.projects import load_projects
from fedlink.coordinator.revocation import RevocationWatch, raise_if_call_revoked
from fedlink.coordinator.sessions import NodeSession
from fedlink.errors import AccessDenied, BadInput, Fault, FedlinkError, NodeUnavailable, ResultPending
from fedlink.faults import failpoint
from fedlink.governance.records import refusals_recorded
from fedlink.governance.register import Register
from fedlink.linkage.messages import LinkCall, LinkMode, LinkReport
from fedlink.pets.he import PublicContext, Scheme, add, load_public_context
from fedlink.pets.sealed import seal
from fedlink.query.catalogue import FederationCatalogue, NodeCatalogue, NodeStatus
from fedlink.query.disclosure import DisclosurePolicy
from fedlink.query.floor import check_informative
from fedlink.query.linked import is_linked
from fedlink.query.plan import AggregatePlan
from fedlink.query.results import (
    EncryptedPartial,
    EncryptedResult,
    PartialAggregates,
    QueryResult,
    build_result,
    combine,
    scheme_of,
)
from fedlink.query.sql import plan_query
from fedlink.query.tasks import (
    BudgetLineInfo,
    BudgetReport,
    ExecuteTask,
    ModelRequest,
    PendingReport,
    PrivacyLoss,
    QueryRequest,
    QueryTask,
    TaskRef,
)
from fedlink.wire import rpc
from fedlink.wire.fedlink_pb2 import Frame
from fedlink.wire.pki import Identity
from fedlink.wire.transport import Message, frames, make_server, messages, new_call_id, peer_identity

log = logging.getLogger("fedlink.coordinator")


def released_table(result: QueryResult) -> dict[str, Any]:
    """A released table as the register records it."""
    return {
        "columns": [*result.key_columns, *result.value_columns],
        "rows": [[*r.keys, *(c.value for c in r.cells)] for r in result.rows],
    }


class Coordinator:
    """A running coordinator; :meth:`start` binds the port, :meth:`stop` ends every session."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.registered = {n.name: n for n in config.nodes}
        self._sessions: dict[str, NodeSession] = {}
        self._catalogues: dict[str, NodeCatalogue] = {}
        self._lock = threading.Lock()
        self._fanout = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fanout")
        self.projects = load_projects(config.projects_path())
        self.register = Register(config.register_path(), config.coordinator.name)
        self.journal = QueryJournal(config.register_path().parent / "queries.sqlite")
        self._pending_logged: set[str] = set()
        self._delivering: dict[str, threading.Lock] = {}
        #: The analyst's public contexts of he+dp queries in flight, loaded once (the journal keeps them too).
        self._loaded: dict[str, dict[Scheme, PublicContext]] = {}
        self._register_projects()
        self._recover()
        self.revocations = RevocationWatch(config.revoked_path(), self.register)
        self._server: grpc.Server | None = None
        self.port = 0

    def _recover(self) -> None:
        """A query the coordinator left running (it stopped before deciding) failed: nothing was spent
        (nodes release a prepared reservation when told; an open one when they restart)."""
        for entry in self.journal.in_state("running"):
            reason = "the coordinator stopped before every node had prepared; nothing was spent"
            if self.journal.fail(entry.query_id, reason):
                task = QueryTask.model_validate_json(entry.task)
                self.register.append("query", task.register_fields(entry.nodes, "failed", reason))

    def _register_projects(self) -> None:
        """Put the registered nodes, every project (once per version of it) and test mode on the public
        record. `fedlink register verify` expects a register from each node recorded as joined."""
        entries = self.register.entries()
        self._joined = {str(e.fields.get("node")) for e in entries if e.kind == "node_joined"}
        self.register.append("startup", {"nodes": sorted(self.registered)})
        seen = {json.dumps(e.fields, sort_keys=True) for e in entries if e.kind == "project"}
        for project in self.projects.projects:
            fields = project.model_dump(mode="json")
            if json.dumps(fields, sort_keys=True) not in seen:
                self.register.append("project", fields)
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
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()
        if self._server is not None:
            self._server.stop(grace).wait()
        self._fanout.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def attach(self, session: NodeSession) -> None:
        """Take a node session made outside this coordinator's own server (another runtime's transport)."""
        with self._lock:
            self._sessions[session.name] = session
            self._catalogues[session.name] = session.catalogue
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
        with self._lock:
            return {name for name, s in self._sessions.items() if not s.closed.is_set()}

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
        with self._lock:
            previous = self._sessions.get(identity.name)
            self._sessions[identity.name] = session
            self._catalogues[identity.name] = catalogue
        if previous is not None:
            previous.close()
        self._record_join(identity.name)
        context.add_callback(session.close)
        context.add_callback(self.revocations.track(identity, session.revoke))
        threading.Thread(target=session.read_replies, args=(inbound,), daemon=True, name=f"from-{session.name}").start()
        log.info("node '%s' connected with %d tables", session.name, len(catalogue.tables))
        session.send(Message(hello.call_id, rpc.WELCOME, b""))
        settle = threading.Thread(target=self._settle_pending, args=(session,), daemon=True, name="pending")
        settle.start()
        yield from session.outbound_frames()
        if session.revoked is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, session.revoked)
        log.info("node '%s' disconnected", session.name)

    # --- analysts ---------------------------------------------------------------------------------
    def catalogue(self) -> FederationCatalogue:
        live = self.live_nodes()
        with self._lock:
            statuses = tuple(
                NodeStatus(node=name, live=name in live, catalogue=self._catalogues.get(name))
                for name in self.registered
            )
        return FederationCatalogue(nodes=statuses)

    def _sessions_for(self, nodes: Sequence[str], needed_for: str = "") -> dict[str, NodeSession]:
        """The live session of every node in ``nodes``, or NodeUnavailable naming those that are down
        (``needed_for`` says why they are needed, e.g. "holding table 't'")."""
        self.revocations.refresh()  # a node revoked a moment ago takes part in nothing more
        with self._lock:
            sessions = {name: self._sessions.get(name) for name in nodes}
        down = sorted(name for name, s in sessions.items() if s is None or s.closed.is_set())
        why = f" {needed_for}" if needed_for else ""
        for name in down:
            session = sessions[name]
            if session is not None and session.revoked is not None:
                raise NodeUnavailable(f"node '{name}'{why} cannot take part: {session.revoked}")
        if down:
            raise NodeUnavailable(
                f"node {', '.join(repr(d) for d in down)}{why} is not connected; start it "
                "with `fedlink node serve --config nodes/<node>/node.toml` and retry"
            )
        return {name: s for name, s in sessions.items() if s is not None}

    def _fan_out(self, sessions: dict[str, NodeSession], kind: str, body: bytes) -> dict[str, Message | FedlinkError]:
        """Call every node in parallel with the same body; each answer is a reply or that node's error."""
        return self._call_each({name: (session, body) for name, session in sessions.items()}, kind)

    def _call_each(
        self, calls: dict[str, tuple[NodeSession, bytes]], kind: str, timeout_s: float | None = None
    ) -> dict[str, Message | FedlinkError]:
        # Nothing more is asked of any node for an analyst revoked mid-call, but what settles a query (an
        # abort, or the commit of one already decided, whose result is then kept) still goes out.
        if kind not in (rpc.ABORT, rpc.COMMIT, rpc.SETTLE, rpc.PENDING):
            raise_if_call_revoked()
        timeout = timeout_s or self.config.coordinator.query_timeout_s
        futures = {name: self._fanout.submit(s.call, kind, body, timeout) for name, (s, body) in calls.items()}
        answers: dict[str, Message | FedlinkError] = {}
        for name, future in futures.items():
            try:
                answers[name] = future.result()
            except FedlinkError as exc:
                answers[name] = exc
        return answers

    def run_link(
        self,
        project_id: str,
        analyst: str,
        progress: Callable[[str, int, int], None],
        mode: LinkMode = "secret",
    ) -> LinkReport:
        """Build the project's link spine across the nodes that hold its datasets (``mode``: a shared
        link secret, or ECDH PSI with no shared secret)."""
        project = self.projects.get(project_id)
        project.check(analyst, [])
        nodes = sorted({dataset.split(".", 1)[0] for dataset in project.datasets})
        live = self._sessions_for(nodes)
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

        unit = LinkageUnit(
            lambda bodies, kind: self._call_each({n: (live[n], b) for n, b in bodies.items()}, kind, timeout),
            self.spines_path(),
            self.config.coordinator.link_quality_epsilon,
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

    def _settle_pending(self, session: NodeSession) -> None:
        """A node (re)joined: settle the answers it holds. Decided queries complete with its answer
        (it sends the same one again); queries never decided are aborted (its reservation is released)."""
        try:
            reply = session.call(rpc.PENDING, b"", self.config.coordinator.query_timeout_s)
            held = PendingReport.model_validate_json(reply.body).answers
        except (FedlinkError, ValidationError) as exc:
            log.warning("could not ask node '%s' for its pending answers: %s", session.name, exc)
            return
        for answer in held:
            entry = self.journal.get(answer.query_id)
            try:
                if entry is None or entry.state == "failed":
                    session.call(rpc.ABORT, TaskRef(query_id=answer.query_id).model_dump_json().encode(), 30.0)
                elif entry.state == "committing":
                    self.deliver(answer.query_id)
                elif entry.state == "released":
                    session.call(rpc.SETTLE, TaskRef(query_id=answer.query_id).model_dump_json().encode(), 30.0)
            except ResultPending:
                continue
            except FedlinkError as exc:
                log.warning("could not settle query %s with node '%s': %s", answer.query_id[:8], session.name, exc)

    # --- the two-phase commit -------------------------------------------------------------------------
    def begin(self, task: QueryTask, kind: str, extra: Mapping[str, Any], recipient: str) -> None:
        """Journal a new query (before anything reaches a node); refuses a reused query id."""
        self.journal.begin(
            task.query_id,
            analyst=task.analyst,
            project=task.project,
            kind=kind,
            nodes=tuple(task.plan.nodes),
            task=task.model_dump_json(),
            extra=json.dumps(extra).encode(),
            recipient=recipient,
        )

    def new_task(self, request: QueryRequest | ModelRequest, **fields: object) -> QueryTask:
        """The task of a request, with its id (the analyst's, or a fresh one) and its deadline."""
        timeout = self.config.coordinator.query_timeout_s
        return QueryTask(
            query_id=request.query_id or new_call_id(),
            deadline=time.time() + timeout + fields.pop("extra_s", 0.0),  # type: ignore[operator]
            **fields,  # type: ignore[arg-type]
        )

    def fail(self, sessions: dict[str, NodeSession], task: QueryTask, reason: str) -> Fault:
        """End a query before its decision: abort it at ``sessions`` (they release, prepared or not),
        journal and register the failure; returns the error to raise."""
        self._abort(sessions, task.query_id)
        self.journal.fail(task.query_id, reason)
        self._log_query(task, "failed", reason, None)
        return Fault(reason)

    def decide(
        self, sessions: dict[str, NodeSession], task: QueryTask, prepared: Mapping[str, object], during: str
    ) -> None:
        """Decide a query from its nodes' answers to the prepare phase: if any node failed, abort it
        everywhere and raise (nothing is spent); else commit, journaled before any node is told, so the
        decision survives a crash."""
        failures = {n: a for n, a in prepared.items() if isinstance(a, FedlinkError)}
        if failures:
            name, error = next(iter(failures.items()))
            raise self.fail(sessions, task, f"node '{name}' failed {during} ({error.message}); nothing was spent")
        self.journal.decide(task.query_id)
        failpoint("coordinator.decided")

    def collect(self, query_id: str) -> dict[str, tuple[str, bytes]]:
        """Ask every live node of a decided query that has not delivered yet to commit, and keep what it
        sends; returns every answer in so far."""
        entry = self.journal.get(query_id)
        if entry is None:
            raise BadInput(f"no query {query_id[:8]} at this coordinator; check the id")
        answers = self.journal.answers(query_id)
        waiting = [n for n in entry.nodes if n not in answers]
        with self._lock:
            live = {n: s for n in waiting if (s := self._sessions.get(n)) is not None and not s.closed.is_set()}
        body = TaskRef(query_id=query_id).model_dump_json().encode()
        for name, answer in self._call_each({n: (s, body) for n, s in live.items()}, rpc.COMMIT).items():
            if isinstance(answer, Message):
                self.journal.add_answer(query_id, name, answer.kind, answer.body)
            else:
                log.warning("node '%s' did not deliver query %s: %s", name, query_id[:8], answer.message)
        return self.journal.answers(query_id)

    def deliver(self, query_id: str) -> tuple[str, bytes]:
        """The result of a decided query: collected from the nodes, finished, sealed to the analyst and
        stored (once); raises :class:`ResultPending` while a node still owes its answer."""
        with self._lock:
            guard = self._delivering.setdefault(query_id, threading.Lock())
        with guard:  # the analyst and a reconnecting node may both complete a query: only one does
            return self._deliver(query_id)

    def _deliver(self, query_id: str) -> tuple[str, bytes]:
        entry = self.journal.get(query_id)
        if entry is None:
            raise BadInput(f"no query {query_id[:8]} at this coordinator; check the id")
        if entry.state == "released":
            assert entry.reply is not None and entry.result is not None
            return entry.reply, entry.result
        if entry.state == "failed":
            raise Fault(f"query {query_id[:8]} failed ({entry.reason}); nothing was released and nothing was spent")
        if entry.state == "running":
            raise ResultPending(f"query {query_id[:8]} is still running; ask again in a moment", query_id)
        answers = self.collect(query_id)
        waiting = [n for n in entry.nodes if n not in answers]
        task = QueryTask.model_validate_json(entry.task)
        if waiting:
            reason = (
                f"the budget is committed but node(s) {', '.join(waiting)} have not delivered their answers; the "
                f"result is kept and completes when they are back: collect it with `fedlink result get {query_id}`"
            )
            if query_id not in self._pending_logged:
                self._pending_logged.add(query_id)
                self._log_query(task, "pending", reason, None)
            raise ResultPending(f"query {query_id}: {reason}", query_id)
        return self.release(entry, self._finisher(entry.kind)(entry, answers))

    def release(self, entry: JournalEntry, finished: Finished) -> tuple[str, bytes]:
        """Store a decided query's finished result sealed to its analyst, record it on the register, tell
        the nodes to drop their kept answers, and return the reply. A result withheld by disclosure control
        (``finished.reply`` is an error) is stored and recorded the same way, as "suppressed"."""
        task = QueryTask.model_validate_json(entry.task)
        refused = finished.reply == rpc.ERROR  # withheld by disclosure control: a message, no data, not sealed
        sealed = finished.body
        if entry.recipient and not refused:
            sealed = seal(entry.recipient, entry.query_id, finished.body)
        self.journal.release(entry.query_id, finished.reply, sealed)
        self._pending_logged.discard(entry.query_id)
        with self._lock:
            self._delivering.pop(entry.query_id, None)
        status, reason = "released", None
        if refused:
            status, reason = "suppressed", str(json.loads(finished.body).get("message", ""))
        self.register.append(
            "query",
            task.register_fields(task.plan.nodes, status, reason, finished.released, finished.encrypted_for),
        )
        with self._lock:
            live = {n: s for n in entry.nodes if (s := self._sessions.get(n)) is not None and not s.closed.is_set()}
        body = TaskRef(query_id=entry.query_id).model_dump_json().encode()
        for session in live.values():  # only tidies the nodes' outboxes: nobody waits for it
            self._fanout.submit(session.call, rpc.SETTLE, body, self.config.coordinator.query_timeout_s)
        return finished.reply, sealed

    def _finisher(self, kind: str) -> Callable[[JournalEntry, dict[str, tuple[str, bytes]]], Finished]:
        """What builds a query's result from its nodes' answers, by kind (their stacks load on first use)."""
        if kind == "linked":
            from fedlink.coordinator.linked import finish_linked

            return lambda entry, answers: finish_linked(self, entry, answers)
        if kind == "model":
            from fedlink.coordinator.models import finish_model

            return lambda entry, answers: finish_model(entry, answers)
        return self._finish_horizontal

    def result_for(self, query_id: str, analyst: str) -> tuple[str, bytes]:
        """A stored result, for the analyst who ran the query only (completing it if a node is back)."""
        entry = self.journal.get(query_id)
        if entry is None:
            raise BadInput(f"no query {query_id[:8]} at this coordinator; check the id (`fedlink result list`)")
        if entry.analyst != analyst:
            raise AccessDenied(f"query {query_id[:8]} belongs to another analyst; only its analyst may collect it")
        return self.deliver(query_id)

    def spines_path(self) -> Path:
        """Where the linkage unit keeps each project's spine (never sent to anyone)."""
        return self.config.register_path().parent / "spines"

    def _abort(self, sessions: dict[str, NodeSession], query_id: str) -> None:
        body = TaskRef(query_id=query_id).model_dump_json().encode()
        for name, answer in self._fan_out(sessions, rpc.ABORT, body).items():
            if isinstance(answer, FedlinkError):
                log.warning("could not abort query %s at node '%s': %s", query_id[:8], name, answer.message)

    def _reserve(self, sessions: dict[str, NodeSession], task: QueryTask) -> None:
        """Reserve ``task`` at every node; if any refuses, release the others, log the refusal, raise it."""
        reserved = self._fan_out(sessions, rpc.RESERVE, task.model_dump_json().encode())
        refusals = {n: a for n, a in reserved.items() if isinstance(a, FedlinkError)}
        if refusals:
            self._abort(sessions, task.query_id)  # every node: one that timed out may have reserved late
            first = next(iter(refusals.values()))
            self.journal.fail(task.query_id, first.message)
            self._log_query(task, "refused", first.message, None)
            raise first
        try:
            raise_if_call_revoked()
        except AccessDenied as exc:
            self._abort(sessions, task.query_id)
            self.journal.fail(task.query_id, exc.message)
            self._log_query(task, "refused", exc.message, None)
            raise
        failpoint("coordinator.reserved")

    @staticmethod
    def _check_loss(loss: PrivacyLoss, noiseless: bool, test_mode: bool) -> None:
        if noiseless and not test_mode:
            raise BadInput("noiseless queries need a federation in test mode; declare --epsilon or --rho instead")
        if loss.is_zero and not noiseless:
            raise BadInput("declare the query's privacy loss: --epsilon E (pure DP) or --rho R (zCDP)")

    def _log_query(
        self,
        task: QueryTask,
        status: str,
        reason: str | None,
        result: QueryResult | None,
        encrypted_for: str | None = None,
    ) -> None:
        released = released_table(result) if result is not None else None
        fields = task.register_fields(task.plan.nodes, status, reason, released, encrypted_for)
        self.register.append("query", fields)

    def run_query(self, request: QueryRequest, analyst: str = "analyst") -> tuple[str, bytes]:
        """Plan, reserve at every node, prepare, decide, commit, combine, store and release; returns the
        reply kind and body (sealed to the analyst when the request carried a result key).

        For ``dp`` the coordinator adds the nodes' noisy vectors, applies disclosure control and returns
        the table. For ``he+dp`` it only ever holds ciphertexts: it adds them and returns the sums to the
        analyst, whose client decrypts and applies the same disclosure control.
        """
        started = time.perf_counter()
        project = self.projects.get(request.project)
        self._check_loss(request.loss, request.noiseless, self.config.coordinator.test_mode)
        catalogue = self.catalogue()
        plan = plan_query(request.sql, catalogue)
        check_informative(request.loss, plan, catalogue)  # before any node reserves
        project.check(analyst, [f"{n}.{plan.table}" for n in plan.nodes])
        loaded: dict[Scheme, PublicContext] = {}
        if request.pet == "he+dp":
            missing = sorted({scheme_of(c) for c in plan.components} - set(request.contexts))
            if missing:
                raise BadInput(f"he+dp needs the analyst's public {', '.join(m.upper() for m in missing)} context")
            # loaded once here to refuse a context that carries a secret key before anything is reserved
            loaded = {scheme: load_public_context(scheme, encoded) for scheme, encoded in request.contexts.items()}
        sessions = self._sessions_for(plan.nodes, f"holding table '{plan.table}'")
        task = self.new_task(
            request,
            plan=plan,
            analyst=analyst,
            project=project.id,
            purpose=project.purpose,
            loss=request.loss,
            noiseless=request.noiseless,
            pet=request.pet,
        )
        policy = DisclosurePolicy.strictest(s.catalogue.disclosure for s in sessions.values())
        contexts = dict(request.contexts) if task.pet == "he+dp" else {}
        self.begin(task, "horizontal", {"policy": policy.model_dump(), "contexts": contexts}, request.result_key)
        self._loaded[task.query_id] = loaded
        try:
            self._reserve(sessions, task)
            execute = ExecuteTask(query_id=task.query_id, contexts=contexts)
            executed = self._fan_out(sessions, rpc.EXECUTE, execute.model_dump_json().encode())
            self.decide(sessions, task, executed, "during the query")
            reply = self.deliver(task.query_id)
        finally:
            self._loaded.pop(task.query_id, None)  # a result completed later loads them from the journal
        log.info(
            "query %s (%s) by analyst '%s' for project '%s' over '%s' at %d nodes (%d cells) answered in %.0f ms",
            task.query_id[:8],
            task.pet_label,
            analyst,
            project.id,
            plan.table,
            len(plan.nodes),
            plan.cells,
            1000 * (time.perf_counter() - started),
        )
        return reply

    def _finish_horizontal(self, entry: JournalEntry, answers: dict[str, tuple[str, bytes]]) -> Finished:
        task = QueryTask.model_validate_json(entry.task)
        assert isinstance(task.plan, AggregatePlan)
        extra = json.loads(entry.extra)
        policy = DisclosurePolicy.model_validate(extra["policy"])
        replies = [Message("", *answers[n]) for n in entry.nodes]
        if task.pet == "he+dp":
            contexts = self._loaded.get(entry.query_id) or {
                scheme: load_public_context(scheme, encoded) for scheme, encoded in extra["contexts"].items()
            }
            encrypted = self._add_encrypted(task, contexts, replies, policy)
            return Finished(rpc.ENCRYPTED_RESULT, encrypted.model_dump_json().encode(), None, task.analyst)
        partials = [PartialAggregates.model_validate_json(m.body) for m in replies if m.kind == rpc.PARTIAL]
        noiseless = self._agreed_noiseless(task, [p.noiseless for p in partials], len(replies))
        result = build_result(
            task.plan,
            combine(task.plan, partials),
            query_id=task.query_id,
            project=task.project,
            pet=task.pet_label,
            noise={} if noiseless else dict(partials[0].noise),
            noiseless=noiseless,
            privacy_loss={n: task.loss for n in task.plan.nodes},
            policy=policy,
        )
        return Finished(rpc.RESULT, result.model_dump_json().encode(), released_table(result), None)

    @staticmethod
    def _agreed_noiseless(task: QueryTask, flags: list[bool], replies: int) -> bool:
        if len(flags) != replies or len(set(flags)) > 1 or (flags and flags[0] != task.noiseless):
            raise Fault("nodes answered inconsistently (test mode or protection); nothing was released")
        return task.noiseless

    def _add_encrypted(
        self, task: QueryTask, contexts: dict[Scheme, PublicContext], replies: list[Message], policy: DisclosurePolicy
    ) -> EncryptedResult:
        assert isinstance(task.plan, AggregatePlan)
        partials = [EncryptedPartial.model_validate_json(m.body) for m in replies if m.kind == rpc.ENCRYPTED_PARTIAL]
        noiseless = self._agreed_noiseless(task, [p.noiseless for p in partials], len(replies))
        sums = {
            c.key: add(contexts[scheme_of(c)], [p.ciphertexts[c.key] for p in partials]) for c in task.plan.components
        }
        return EncryptedResult(
            query_id=task.query_id,
            plan=task.plan,
            project=task.project,
            pet=task.pet_label,
            noiseless=noiseless,
            privacy_loss={n: task.loss for n in task.plan.nodes},
            policy=policy,
            noise={} if noiseless else dict(partials[0].noise),
            ciphertexts=sums,
        )

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
        with self._lock:
            sessions = {n: s for n, s in self._sessions.items() if not s.closed.is_set()}
        lines: list[BudgetLineInfo] = []
        for _, answer in sorted(self._fan_out(sessions, rpc.BUDGET, b"").items()):
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
            from fedlink.coordinator.linked import run_linked_query  # the chain's HE stack loads on first use

            kind, body = run_linked_query(self, QueryRequest.model_validate_json(request.body), analyst)
            return Message(request.call_id, kind, body)
        if request.kind == rpc.MODEL:
            from fedlink.coordinator.models import fit_model

            kind, body = fit_model(self, ModelRequest.model_validate_json(request.body), analyst)
            return Message(request.call_id, kind, body)
        if request.kind == rpc.QUERY:
            kind, body = self.run_query(QueryRequest.model_validate_json(request.body), analyst)
            return Message(request.call_id, kind, body)
        if request.kind == rpc.RESULT_GET:
            kind, body = self.result_for(TaskRef.model_validate_json(request.body).query_id, analyst)
            return Message(request.call_id, kind, body)
        if request.kind == rpc.BUDGET:
            return Message(request.call_id, rpc.RESULT, self.budget(analyst).model_dump_json().encode())
        if request.kind == rpc.REGISTER:
            return Message(request.call_id, rpc.RESULT, self.public_register())
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
