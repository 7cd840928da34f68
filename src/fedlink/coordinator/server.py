"""The coordinator: accepts nodes' outbound sessions and analysts' calls, plans and routes queries.

It holds the node registry and the live sessions; it never holds raw data. In this horizontal
version it adds the nodes' aggregate vectors (encrypted aggregation and DP noise at the nodes come
with the privacy layer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from fedlink.coordinator.config import CoordinatorConfig
from fedlink.coordinator.sessions import NodeSession
from fedlink.errors import AccessDenied, BadInput, Fault, FedlinkError, NodeUnavailable
from fedlink.query.catalogue import FederationCatalogue, NodeCatalogue, NodeStatus
from fedlink.query.results import PartialAggregates, QueryResult, build_result, combine
from fedlink.query.sql import plan_query
from fedlink.wire import rpc
from fedlink.wire.fedlink_pb2 import Frame
from fedlink.wire.pki import Identity, revoked_serials
from fedlink.wire.transport import Message, frames, make_server, messages, peer_identity

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
        self._server, self.port = make_server(
            config.listen,
            config.tls_files(),
            {"NodeSession": self._node_session, "Analyst": self._analyst},
        )

    def start(self) -> int:
        self._server.start()
        log.info("coordinator listening on port %d with mTLS; %d nodes registered", self.port, len(self.registered))
        return self.port

    def stop(self, grace: float = 1.0) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()
        self._server.stop(grace).wait()
        self._fanout.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        self._server.wait_for_termination()

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

    def run_query(self, sql: str, analyst: str = "analyst") -> QueryResult:
        started = time.perf_counter()
        plan = plan_query(sql, self.catalogue())
        with self._lock:
            sessions = {name: self._sessions.get(name) for name in plan.nodes}
        down = sorted(name for name, s in sessions.items() if s is None or s.closed.is_set())
        if down:
            raise NodeUnavailable(
                f"node {', '.join(repr(d) for d in down)} holding table '{plan.table}' is not connected; start it "
                "with `fedlink node serve --config nodes/<node>/node.toml` and retry"
            )
        body = plan.model_dump_json().encode()
        timeout = self.config.coordinator.query_timeout_s
        futures = {
            name: self._fanout.submit(session.call, rpc.AGGREGATE, body, timeout)  # type: ignore[union-attr]
            for name, session in sessions.items()
        }
        partials = [PartialAggregates.model_validate_json(f.result().body) for f in futures.values()]
        result = build_result(plan, combine(plan, partials))
        log.info(
            "query by analyst '%s' over '%s' at %d nodes (%d cells) answered in %.0f ms",
            analyst,
            plan.table,
            len(plan.nodes),
            plan.cells,
            1000 * (time.perf_counter() - started),
        )
        return result

    def _analyst(self, inbound: Iterator[Frame], context: grpc.ServicerContext) -> Iterator[Frame]:
        identity = self._identify(context, "analyst")
        request = next(messages(inbound), None)
        if request is None:
            return
        try:
            if request.kind == rpc.CATALOGUE:
                reply = Message(request.call_id, rpc.RESULT, self.catalogue().model_dump_json().encode())
            elif request.kind == rpc.QUERY:
                result = self.run_query(request.body.decode("utf-8"), identity.name)
                reply = Message(request.call_id, rpc.RESULT, result.model_dump_json().encode())
            else:
                raise BadInput(f"unknown request '{request.kind}'; upgrade the analyst client")
        except FedlinkError as exc:
            reply = rpc.error_message(request.call_id, exc)
        except Exception as exc:  # never leak a traceback to a client
            log.exception("analyst call failed")
            reply = rpc.error_message(
                request.call_id, Fault(f"the coordinator failed ({type(exc).__name__}); see its log")
            )
        yield from frames(reply)
