"""The node's side of the federation: it dials out to the coordinator and answers tasks.

Departments open no inbound port. The node keeps one mutually authenticated gRPC stream to the
coordinator, announces its catalogue, then runs only the fixed operators it is asked for, returning
additive aggregates, never rows. If the coordinator goes away the node reconnects with back-off; a
coordinator that refuses the node (a revoked certificate) or that the node cannot trust (another
federation's CA, an expired certificate) stops it with an error instead.
"""

from __future__ import annotations

import base64
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc

from fedlink.errors import AccessDenied, ConfigError, Fault, FedlinkError
from fedlink.node.config import NodeConfig
from fedlink.node.data import NodeData
from fedlink.node.runtime import NodeRuntime
from fedlink.protocol.linkage import (
    EnvelopeCall,
    Envelopes,
    InitiateCall,
    LinkCall,
    PsiCall,
    PsiStarted,
    QualityCall,
    SlotsCall,
)

if TYPE_CHECKING:
    from fedlink.node.linkage import LinkRequest
from fedlink.protocol import rpc
from fedlink.protocol.blobs import pack, unpack
from fedlink.protocol.fedlink_pb2 import Frame
from fedlink.protocol.projects import ProjectList, ProjectRecord
from fedlink.protocol.tasks import ExecuteTask, LinkedStep, ModelStep, QueryTask, TaskRef
from fedlink.protocol.transport import (
    NODE_SESSION,
    Message,
    connection_error,
    frames,
    messages,
    new_call_id,
    secure_channel,
    stream_method,
)

log = logging.getLogger("fedlink.node")
_CLOSE = object()


def _request(call: LinkCall) -> LinkRequest:
    from fedlink.node.linkage import LinkRequest as Request  # the linkage stack loads only when linking

    return Request(call.project, call.analyst, call.spec, call.spec_hash)


def _link_card(runtime: NodeRuntime, message: Message) -> Message:
    return Message(message.call_id, rpc.RESULT, runtime.linkage.card().model_dump_json().encode())


def _link_initiate(runtime: NodeRuntime, message: Message) -> Message:
    call = InitiateCall.model_validate_json(message.body)
    envelopes = runtime.linkage.initiate(_request(call), list(call.cards))
    runtime.register.append(
        "link_secret",
        {
            "project": call.project,
            "role": "initiator",
            "for": [e.recipient for e in envelopes],
            "spec_hash": call.spec_hash,
        },
    )
    return Message(message.call_id, rpc.RESULT, Envelopes(envelopes=tuple(envelopes)).model_dump_json().encode())


def _link_envelope(runtime: NodeRuntime, message: Message) -> Message:
    call = EnvelopeCall.model_validate_json(message.body)
    runtime.linkage.receive(_request(call), call.envelope)
    runtime.register.append(
        "link_secret",
        {"project": call.project, "role": "recipient", "from": call.envelope.sender, "spec_hash": call.spec_hash},
    )
    return Message(message.call_id, rpc.ACK, b"")


def _link_encode(runtime: NodeRuntime, message: Message) -> Message:
    call = LinkCall.model_validate_json(message.body)
    wire = runtime.linkage.encode(_request(call))
    runtime.register.append(
        "link_encode", {"project": call.project, "analyst": call.analyst, "spec_hash": call.spec_hash}
    )
    return Message(message.call_id, rpc.RESULT, b"", file=wire)


def _link_psi_start(runtime: NodeRuntime, message: Message) -> Message:
    call = PsiCall.model_validate_json(message.body)
    count, tiers = runtime.linkage.psi_start(_request(call), call.run)
    runtime.register.append(
        "link_encode", {"project": call.project, "analyst": call.analyst, "mode": "psi", "spec_hash": call.spec_hash}
    )
    header = PsiStarted(count=count, distinct={t: n for t, (n, _) in tiers.items()}).model_dump_json().encode()
    return Message(message.call_id, rpc.RESULT, pack(header, [i.astype("<i8").tobytes() for _, i in tiers.values()]))


def _link_psi_points(runtime: NodeRuntime, message: Message) -> Message:
    call = PsiCall.model_validate_json(message.body)
    blob = runtime.linkage.psi_points(_request(call), call.run, call.tier, call.start, call.stop)
    return Message(message.call_id, rpc.RESULT, pack(b"{}", [blob]))


def _link_psi_blind(runtime: NodeRuntime, message: Message) -> Message:
    header, blobs = unpack(message.body)
    call = PsiCall.model_validate_json(header)
    out = runtime.linkage.psi_blind(_request(call), call.run, blobs, call.final)
    return Message(message.call_id, rpc.RESULT, pack(b"{}", out))


def _link_slots(runtime: NodeRuntime, message: Message) -> Message:
    call = SlotsCall.model_validate_json(message.body)
    runtime.linkage.store_slots(_request(call), base64.b64decode(call.slots), call.spine_id)
    runtime.register.append(
        "link_spine", {"project": call.project, "analyst": call.analyst, "spec_hash": call.spec_hash}
    )
    return Message(message.call_id, rpc.ACK, b"")


def _link_quality(runtime: NodeRuntime, message: Message) -> Message:
    call = QualityCall.model_validate_json(message.body)
    runtime.spend_on_link_quality(call)
    labels = runtime.linkage.subgroup_labels(_request(call), call.subgroup_codes)
    return Message(message.call_id, rpc.RESULT, labels.model_dump_json().encode())


def _linked_step(runtime: NodeRuntime, message: Message) -> Message:
    header, blobs = unpack(message.body)
    answer = runtime.linked_step(LinkedStep.model_validate_json(header), blobs)
    if answer is None:  # the last node: its cells wait for the commit
        return Message(message.call_id, rpc.ACK, b"")
    output, out_blobs = answer
    return Message(message.call_id, rpc.RESULT, pack(output.model_dump_json().encode(), out_blobs))


def _projects(runtime: NodeRuntime, message: Message) -> Message:
    from fedlink.node import approvals

    if message.kind == rpc.PROJECT_CHECK:
        approvals.check_claims(runtime.config, ProjectRecord.model_validate_json(message.body).application)
        return Message(message.call_id, rpc.ACK, b"")
    decisions = approvals.sync(runtime.config, ProjectList.model_validate_json(message.body))
    return Message(message.call_id, rpc.RESULT, decisions.model_dump_json().encode())


LINK_HANDLERS: dict[str, Callable[[NodeRuntime, Message], Message]] = {
    rpc.LINK_QUALITY: _link_quality,
    rpc.LINKED_STEP: _linked_step,
    rpc.LINK_CARD: _link_card,
    rpc.LINK_INITIATE: _link_initiate,
    rpc.LINK_ENVELOPE: _link_envelope,
    rpc.LINK_ENCODE: _link_encode,
    rpc.LINK_SLOTS: _link_slots,
    rpc.LINK_PSI_START: _link_psi_start,
    rpc.LINK_PSI_POINTS: _link_psi_points,
    rpc.LINK_PSI_BLIND: _link_psi_blind,
}


def answer(runtime: NodeRuntime, message: Message) -> Message:
    """This node's answer to one coordinator message (any transport: fedlink's stream, Flower's messages)."""
    if message.kind == rpc.RESERVE:
        task = QueryTask.model_validate_json(message.body)
        runtime.reserve(task)
        log.info("query %s: reserved budget for project '%s' on '%s'", task.query_id[:8], task.project, task.plan.table)
        return Message(message.call_id, rpc.ACK, b"")
    if message.kind == rpc.EXECUTE:
        execute = ExecuteTask.model_validate_json(message.body)
        runtime.execute(execute.query_id, execute.contexts)
        return Message(message.call_id, rpc.ACK, b"")
    if message.kind == rpc.COMMIT:
        kind, body = runtime.commit(TaskRef.model_validate_json(message.body).query_id)
        return Message(message.call_id, kind, body)
    if message.kind == rpc.SETTLE:
        runtime.settle(TaskRef.model_validate_json(message.body).query_id)
        return Message(message.call_id, rpc.ACK, b"")
    if message.kind == rpc.PENDING:
        return Message(message.call_id, rpc.RESULT, runtime.pending().model_dump_json().encode())
    if message.kind == rpc.ABORT:
        runtime.abort(TaskRef.model_validate_json(message.body).query_id)
        return Message(message.call_id, rpc.ACK, b"")
    if message.kind == rpc.MODEL_STEP:
        stats = runtime.model_step(ModelStep.model_validate_json(message.body))
        return Message(message.call_id, rpc.ACK, b"") if stats is None else Message(message.call_id, rpc.RESULT, stats)
    if message.kind in LINK_HANDLERS:
        return LINK_HANDLERS[message.kind](runtime, message)
    if message.kind == rpc.BUDGET:
        return Message(message.call_id, rpc.RESULT, runtime.budget().model_dump_json().encode())
    if message.kind in (rpc.PROJECT_CHECK, rpc.PROJECT_SYNC):
        return _projects(runtime, message)
    raise Fault(f"node '{runtime.name}' does not run operator '{message.kind}'")


def _untrusted_coordinator(exc: grpc.RpcError) -> str | None:
    """OpenSSL's reason when the TLS handshake failed on the coordinator's certificate (gRPC reports it
    as UNAVAILABLE, like a coordinator that is down), else None."""
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if "handshake failed" not in details.lower():
        return None
    reason = re.search(r"OPENSSL_internal:[A-Z_]+: ([^:]+)", details)
    return reason.group(1).strip() if reason else "TLS handshake failed"


class NodeAgent:
    """Runs one node: loads its data, connects out, serves tasks until :meth:`stop`."""

    def __init__(self, config: NodeConfig, data: NodeData | None = None) -> None:
        """Load and check the node's data, ledger and register (``data`` lets tests inject a store)."""
        self.config = config
        self.tls = config.tls_files()
        identity = self.tls.checked()  # expired, another CA's, a wrong key: refused at start, by name
        if identity.role != "node" or identity.name != config.name:
            raise ConfigError(
                f"{self.tls.cert} is a certificate for {identity}, not node '{config.name}'; point [tls] at "
                f"the node's own certificate (`fedlink pki issue --role node --name {config.name}`)"
            )
        self.runtime = NodeRuntime(config, data)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"node-{config.name}")
        self._call: grpc.Future | None = None

    @property
    def connected(self) -> threading.Event:
        return self._connected

    def serve(
        self,
        on_connected: Callable[[], None] | None = None,
        retry_s: float = 0.5,
        on_disconnected: Callable[[], None] | None = None,
    ) -> None:
        """Connect and serve until stopped; reconnect with back-off after a lost connection
        (``on_connected`` runs at every join, ``on_disconnected`` whenever the connection is lost)."""
        delay = retry_s
        while not self._stop.is_set():
            try:
                self._session(on_connected)
                delay = retry_s
            except (AccessDenied, ConfigError):
                raise
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.PERMISSION_DENIED or code == grpc.StatusCode.UNAUTHENTICATED:
                    raise AccessDenied(f"the coordinator refused node '{self.config.name}': {exc.details()}") from exc
                untrusted = _untrusted_coordinator(exc)
                if untrusted is not None:  # another federation's coordinator, or an expired one: retrying cannot help
                    raise ConfigError(
                        f"node '{self.config.name}' cannot trust the coordinator at {self.config.coordinator_address}: "
                        f"its certificate failed verification against this node's federation CA {self.tls.ca} "
                        f"({untrusted}); point [tls] ca at the CA of the coordinator's federation, or renew the "
                        "coordinator's certificate"
                    ) from exc
                # raises if this node's own certificate is the cause (expired, another CA): retrying cannot help
                problem = connection_error(exc, self.config.coordinator_address, self.tls)
                log.warning("%s; retrying in %.1fs", problem.message, delay)
            self._connected.clear()
            self.runtime.abandon_open()
            if on_disconnected:
                on_disconnected()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, 10.0)

    def _session(self, on_connected: Callable[[], None] | None) -> None:
        outbound: queue.Queue[object] = queue.Queue()
        channel = secure_channel(self.config.coordinator_address, self.tls, self.config.node.coordinator_name)

        def requests() -> Iterator[Frame]:
            while True:
                item = outbound.get()
                if item is _CLOSE:
                    return
                assert isinstance(item, Message)
                yield from frames(item)

        hello = Message(new_call_id(), rpc.HELLO, self.runtime.catalogue.model_dump_json().encode())
        outbound.put(hello)
        call = stream_method(channel, NODE_SESSION)(requests())
        self._call = call
        try:
            for message in messages(call):
                if message.kind == rpc.WELCOME:
                    log.info(
                        "node '%s' joined the federation at %s",
                        self.config.name,
                        self.config.coordinator_address,
                    )
                    self._connected.set()
                    if on_connected:
                        on_connected()
                elif message.kind == rpc.ERROR:
                    rpc.raise_if_error(message)
                else:
                    self._pool.submit(self._answer, message, outbound)
        finally:
            outbound.put(_CLOSE)
            self._call = None
            channel.close()

    def _handle(self, message: Message) -> Message:
        return answer(self.runtime, message)

    def _answer(self, message: Message, outbound: queue.Queue[object]) -> None:
        started = time.perf_counter()
        try:
            reply = self._handle(message)
            log.info(
                "%s %s answered in %.0f ms", message.kind, message.call_id[:8], 1000 * (time.perf_counter() - started)
            )
        except Exception as exc:
            if self._stop.is_set():  # shutting down: the coordinator sees the session end instead
                return
            if isinstance(exc, FedlinkError):
                log.warning("%s %s refused: %s", message.kind, message.call_id[:8], exc.message)
                outbound.put(rpc.error_message(message.call_id, exc))
                return
            # a bug must not take the node down; report a fault without data
            log.exception("%s %s failed", message.kind, message.call_id[:8])
            reply = rpc.error_message(message.call_id, Fault(f"node '{self.config.name}' failed: {type(exc).__name__}"))
        outbound.put(reply)

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.runtime.close()
