"""The coordinator: accepts nodes' outbound sessions and analysts' calls, plans and routes queries.

It holds the node and project registries, the live sessions and its transparency register; it never
holds raw data or noiseless aggregates: nodes add DP noise before anything reaches it. A query runs in
two phases (reserve at every node, then execute at every node) so that one node's refusal costs no
other node any budget, and a node failing mid-query means nothing is released.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from pydantic import ValidationError

from fedlink.coordinator.config import CoordinatorConfig
from fedlink.coordinator.projects import load_projects
from fedlink.coordinator.sessions import NodeSession
from fedlink.errors import AccessDenied, BadInput, Fault, FedlinkError, NodeUnavailable
from fedlink.governance.register import Register
from fedlink.linkage.messages import LinkCall, LinkMode, LinkReport
from fedlink.pets.he import PublicContext, Scheme, add, load_public_context
from fedlink.query.catalogue import FederationCatalogue, NodeCatalogue, NodeStatus
from fedlink.query.disclosure import DisclosurePolicy
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
    PrivacyLoss,
    QueryRequest,
    QueryTask,
    TaskRef,
)
from fedlink.wire import rpc
from fedlink.wire.fedlink_pb2 import Frame
from fedlink.wire.pki import Identity, revoked_serials
from fedlink.wire.transport import Message, frames, make_server, messages, new_call_id, peer_identity

log = logging.getLogger("fedlink.coordinator")


class Coordinator:
    """A running coordinator; :meth:`start` binds the port, :meth:`stop` ends every session."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.registered = {n.name: n for n in config.nodes}
        self._sessions: dict[str, NodeSession] = {}
        self._catalogues: dict[str, NodeCatalogue] = {}
        self._lock = threading.Lock()
        self._fanout = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fanout")
        self._revoked_path = config.revoked_path()
        self.projects = load_projects(config.projects_path())
        self.register = Register(config.register_path(), config.coordinator.name)
        self._register_projects()
        self._server: grpc.Server | None = None
        self.port = 0

    def _register_projects(self) -> None:
        """Put every project (and test mode) on the public record, once per version of it."""
        seen = {json.dumps(e.fields, sort_keys=True) for e in self.register.entries() if e.kind == "project"}
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
            {"NodeSession": self._node_session, "Analyst": self._analyst},
        )
        self._server.start()
        log.info("coordinator listening on port %d with mTLS; %d nodes registered", self.port, len(self.registered))
        return self.port

    def stop(self, grace: float = 1.0) -> None:
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

    # --- identities -------------------------------------------------------------------------------
    def _identify(self, context: grpc.ServicerContext, role: str) -> Identity:
        try:
            # Read on every call, so `fedlink pki revoke` takes effect without a restart.
            revoked = revoked_serials(self._revoked_path) if self._revoked_path else frozenset()
            identity = peer_identity(context, revoked)
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
        context.add_callback(session.close)
        threading.Thread(target=session.read_replies, args=(inbound,), daemon=True, name=f"from-{session.name}").start()
        log.info("node '%s' connected with %d tables", session.name, len(catalogue.tables))
        session.send(Message(hello.call_id, rpc.WELCOME, b""))
        yield from session.outbound_frames()
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
        with self._lock:
            sessions = {name: self._sessions.get(name) for name in nodes}
        down = sorted(name for name, s in sessions.items() if s is None or s.closed.is_set())
        if down:
            why = f" {needed_for}" if needed_for else ""
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
            self._abort({n: sessions[n] for n in reserved if n not in refusals}, task.query_id)
            first = next(iter(refusals.values()))
            self._log_query(task, "refused", first.message, None)
            raise first

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
        released = None
        if result is not None:
            released = {
                "columns": [*result.key_columns, *result.value_columns],
                "rows": [[*r.keys, *(c.value for c in r.cells)] for r in result.rows],
            }
        fields = task.register_fields(task.plan.nodes, status, reason, released, encrypted_for)
        self.register.append("query", fields)

    def run_query(self, request: QueryRequest, analyst: str = "analyst") -> QueryResult | EncryptedResult:
        """Plan, reserve at every node, execute, combine, and release.

        For ``dp`` the coordinator adds the nodes' noisy vectors, applies disclosure control and returns
        the table. For ``he+dp`` it only ever holds ciphertexts: it adds them and returns the sums to the
        analyst, whose client decrypts and applies the same disclosure control.
        """
        started = time.perf_counter()
        project = self.projects.get(request.project)
        self._check_loss(request.loss, request.noiseless, self.config.coordinator.test_mode)
        plan = plan_query(request.sql, self.catalogue())
        project.check(analyst, [f"{n}.{plan.table}" for n in plan.nodes])
        if request.pet == "he+dp":
            missing = sorted({scheme_of(c) for c in plan.components} - set(request.contexts))
            if missing:
                raise BadInput(f"he+dp needs the analyst's public {', '.join(m.upper() for m in missing)} context")
            # loaded once per query; refuses a context that carries a secret key
            contexts = {scheme: load_public_context(scheme, encoded) for scheme, encoded in request.contexts.items()}
        sessions = self._sessions_for(plan.nodes, f"holding table '{plan.table}'")
        task = QueryTask(
            query_id=new_call_id(),
            plan=plan,
            analyst=analyst,
            project=project.id,
            purpose=project.purpose,
            loss=request.loss,
            noiseless=request.noiseless,
            pet=request.pet,
        )
        self._reserve(sessions, task)
        execute = ExecuteTask(query_id=task.query_id, contexts=request.contexts if task.pet == "he+dp" else {})
        executed = self._fan_out(sessions, rpc.EXECUTE, execute.model_dump_json().encode())
        failures = {n: a for n, a in executed.items() if isinstance(a, FedlinkError)}
        if failures:
            self._abort({n: sessions[n] for n in failures}, task.query_id)
            name, error = next(iter(failures.items()))
            reason = f"node '{name}' failed during the query ({error.message}); nothing was released"
            self._log_query(task, "failed", reason, None)
            raise Fault(reason)
        replies = [a for a in executed.values() if isinstance(a, Message)]
        policy = DisclosurePolicy.strictest(s.catalogue.disclosure for s in sessions.values())
        result: QueryResult | EncryptedResult
        if task.pet == "he+dp":
            result = self._add_encrypted(task, contexts, replies, policy)
            self._log_query(task, "released", None, None, encrypted_for=analyst)
        else:
            partials = [PartialAggregates.model_validate_json(m.body) for m in replies if m.kind == rpc.PARTIAL]
            noiseless = self._agreed_noiseless(task, [p.noiseless for p in partials], len(replies))
            result = build_result(
                plan,
                combine(plan, partials),
                query_id=task.query_id,
                project=project.id,
                pet=task.pet_label,
                noise={} if noiseless else dict(partials[0].noise),
                noiseless=noiseless,
                privacy_loss={n: request.loss for n in plan.nodes},
                policy=policy,
            )
            self._log_query(task, "released", None, result)
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
        return result

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

        threading.Thread(target=work, daemon=True, name="linkage").start()
        while True:
            update = updates.get()
            yield from frames(update)
            if update.kind != rpc.PROGRESS:
                return

    def _analyst(self, inbound: Iterator[Frame], context: grpc.ServicerContext) -> Iterator[Frame]:
        identity = self._identify(context, "analyst")
        request = next(messages(inbound), None)
        if request is None:
            return
        try:
            if request.kind == rpc.CATALOGUE:
                reply = Message(request.call_id, rpc.RESULT, self.catalogue().model_dump_json().encode())
            elif request.kind == rpc.QUERY and is_linked(QueryRequest.model_validate_json(request.body).sql):
                from fedlink.coordinator.linked import run_linked_query  # the chain's HE stack loads on first use

                body = run_linked_query(self, QueryRequest.model_validate_json(request.body), identity.name)
                reply = Message(request.call_id, rpc.LINKED_RESULT, body)
            elif request.kind == rpc.MODEL:
                from fedlink.coordinator.models import fit_model

                fitted = fit_model(self, ModelRequest.model_validate_json(request.body), identity.name)
                reply = Message(request.call_id, rpc.RESULT, fitted.model_dump_json().encode())
            elif request.kind == rpc.QUERY:
                result = self.run_query(QueryRequest.model_validate_json(request.body), identity.name)
                kind = rpc.ENCRYPTED_RESULT if isinstance(result, EncryptedResult) else rpc.RESULT
                reply = Message(request.call_id, kind, result.model_dump_json().encode())
            elif request.kind == rpc.BUDGET:
                reply = Message(request.call_id, rpc.RESULT, self.budget(identity.name).model_dump_json().encode())
            elif request.kind == rpc.REGISTER:
                reply = Message(request.call_id, rpc.RESULT, self.public_register())
            elif request.kind == rpc.LINK:
                yield from self._with_progress(request, identity.name)
                return
            else:
                raise BadInput(f"unknown request '{request.kind}'; upgrade the analyst client")
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
