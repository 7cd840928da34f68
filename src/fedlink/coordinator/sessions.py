"""The coordinator's view of connected nodes: one open stream each, with calls multiplexed over it
(:class:`NodeSession`), and the roster of registered nodes whose live sessions every call fans out to
(:class:`NodeRoster`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import BinaryIO

from fedlink.coordinator.config import RegisteredNode
from fedlink.coordinator.revocation import raise_if_call_revoked
from fedlink.errors import FedlinkError, NodeUnavailable, Timeout
from fedlink.plan.catalogue import FederationCatalogue, NodeCatalogue, NodeStatus
from fedlink.protocol import rpc
from fedlink.protocol.fedlink_pb2 import Frame
from fedlink.protocol.transport import Message, Reassembler, frames, new_call_id

_CLOSE = object()
#: What :meth:`NodeSession._to_sink` returns for a frame written to a file that is not a reply's last.
_WRITTEN = Message("", "", b"")


class NodeSession:
    """A live node: its announced catalogue, an outbound queue of tasks and the calls awaiting replies."""

    def __init__(self, name: str, catalogue: NodeCatalogue) -> None:
        self.name = name
        self.catalogue = catalogue
        self._outbound: queue.Queue[object] = queue.Queue()
        self._pending: dict[str, Future[Message]] = {}
        #: Calls whose reply is written to a file frame by frame (None: a reply given up on, discarded).
        self._sinks: dict[str, BinaryIO | None] = {}
        self._lock = threading.Lock()
        self.closed = threading.Event()
        #: Why the session was ended by a revocation of the node's certificate (None: it was not).
        self.revoked: str | None = None

    def outbound_frames(self) -> Iterator[Frame]:
        while True:
            item = self._outbound.get()
            if item is _CLOSE:
                return
            assert isinstance(item, Message)
            yield from frames(item)

    def send(self, message: Message) -> None:
        self._outbound.put(message)

    def call(self, kind: str, body: bytes, timeout_s: float, sink: Path | None = None) -> Message:
        """Send a task and wait for its reply; errors from the node are re-raised here.

        With ``sink``, the reply's body is written to that file as its frames arrive (never held whole
        in memory: a node's encodings run to gigabytes nationally), and the reply returned has an
        empty body."""
        call_id = new_call_id()
        future: Future[Message] = Future()
        handle = sink.open("wb") if sink is not None else None
        with self._lock:
            if self.closed.is_set():
                if handle is not None:
                    handle.close()
                raise NodeUnavailable(f"node '{self.name}' disconnected; restart it with `fedlink node serve`")
            self._pending[call_id] = future
            if handle is not None:
                self._sinks[call_id] = handle
        self._outbound.put(Message(call_id, kind, body))
        try:
            reply = future.result(timeout=timeout_s)
        except FutureTimeout as exc:
            raise Timeout(
                f"node '{self.name}' did not answer within {timeout_s:g} s; check its log, or raise query_timeout_s"
            ) from exc
        finally:
            with self._lock:
                self._pending.pop(call_id, None)
                if handle is not None:
                    if call_id in self._sinks:  # given up on mid-reply: later frames are dropped
                        self._sinks[call_id] = None
                    handle.close()
        if sink is not None and reply.kind == rpc.ERROR:  # an error's body is small: read it back
            reply = Message(reply.call_id, reply.kind, sink.read_bytes())
        return rpc.raise_if_error(reply)

    def read_replies(self, inbound: Iterator[Frame]) -> None:
        """Deliver the node's replies to waiting calls until its stream ends."""
        reassembler = Reassembler()
        try:
            for frame in inbound:
                message = self._to_sink(frame)
                if message is _WRITTEN:
                    continue
                if message is None:
                    message = reassembler.feed(frame)
                    if message is None:
                        continue
                with self._lock:
                    future = self._pending.get(message.call_id)
                if future is not None and not future.done():
                    future.set_result(message)
        except Exception:  # the stream broke: the node is gone, handled by close()
            pass
        finally:
            self.close()

    def _to_sink(self, frame: Frame) -> Message | None:
        """Write a frame of a call answered into a file; on its last frame, the reply (body empty).
        None for a frame of any other call (and for a frame written, or dropped, before the last)."""
        with self._lock:
            if frame.call_id not in self._sinks:
                return None
            handle = self._sinks[frame.call_id]
            if handle is not None:
                handle.write(frame.data)
            if not frame.last:
                return _WRITTEN
            del self._sinks[frame.call_id]
            if handle is not None:
                handle.flush()
        return Message(frame.call_id, frame.kind, b"")

    def close(self) -> None:
        self._end(NodeUnavailable(f"node '{self.name}' disconnected during the query; nothing was released"))

    def revoke(self, reason: str) -> None:
        """End the session because the node's certificate was revoked (``reason`` says so)."""
        self.revoked = reason
        self._end(NodeUnavailable(f"node '{self.name}' was cut off during the query: {reason}; nothing was released"))

    def _end(self, error: NodeUnavailable) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
            pending = list(self._pending.values())
        for future in pending:
            if not future.done():
                future.set_exception(error)
        self._outbound.put(_CLOSE)


#: What settles a query: still sent for an analyst revoked mid-call (an abort, or the commit of a query
#: already decided, whose result is then kept).
_SETTLING = frozenset({rpc.ABORT, rpc.COMMIT, rpc.SETTLE, rpc.PENDING})


class NodeRoster:
    """The registered nodes, the live session and last catalogue of each, and calls to them in parallel.

    ``refresh_revocations`` is called before a query picks its nodes, so that a node revoked a moment
    ago takes part in nothing more; ``timeout_s`` bounds a call to a node unless the caller says more.
    """

    def __init__(
        self, registered: Iterable[RegisteredNode], refresh_revocations: Callable[[], object], timeout_s: float
    ) -> None:
        self.registered = {n.name: n for n in registered}
        self.timeout_s = timeout_s
        self._refresh = refresh_revocations
        self._sessions: dict[str, NodeSession] = {}
        self._catalogues: dict[str, NodeCatalogue] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fanout")

    def attach(self, session: NodeSession) -> NodeSession | None:
        """Make ``session`` its node's live session; returns the one it replaces (for the caller to close)."""
        with self._lock:
            previous = self._sessions.get(session.name)
            self._sessions[session.name] = session
            self._catalogues[session.name] = session.catalogue
        return previous

    def live(self, nodes: Iterable[str] | None = None) -> dict[str, NodeSession]:
        """The open sessions of ``nodes`` (default: every node), skipping those that are down."""
        with self._lock:
            names = list(self._sessions) if nodes is None else list(nodes)
            found = {n: self._sessions.get(n) for n in names}
        return {n: s for n, s in found.items() if s is not None and not s.closed.is_set()}

    def live_nodes(self) -> set[str]:
        return set(self.live())

    def catalogue(self) -> FederationCatalogue:
        """Every registered node, whether it is live, and the catalogue it last announced."""
        live = self.live_nodes()
        with self._lock:
            statuses = tuple(
                NodeStatus(node=name, live=name in live, catalogue=self._catalogues.get(name))
                for name in self.registered
            )
        return FederationCatalogue(nodes=statuses)

    def sessions_for(self, nodes: Iterable[str], needed_for: str = "") -> dict[str, NodeSession]:
        """The live session of every node in ``nodes``, or NodeUnavailable naming those that are down
        (``needed_for`` says why they are needed, e.g. "holding table 't'")."""
        self._refresh()  # a node revoked a moment ago takes part in nothing more
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

    def call_each(
        self,
        calls: Mapping[str, tuple[NodeSession, bytes]],
        kind: str,
        timeout_s: float | None = None,
        sinks: Mapping[str, Path] | None = None,
    ) -> dict[str, Message | FedlinkError]:
        """Call every node of ``calls`` (its session and body) in parallel; each answer is a reply or
        that node's error. A node named in ``sinks`` has its reply's body written to that file as it
        arrives (see :meth:`NodeSession.call`). Nothing more is asked of any node for an analyst revoked
        mid-call, but what settles a query still goes out."""
        if kind not in _SETTLING:
            raise_if_call_revoked()
        timeout = timeout_s or self.timeout_s
        futures = {
            name: self._pool.submit(s.call, kind, body, timeout, (sinks or {}).get(name))
            for name, (s, body) in calls.items()
        }
        answers: dict[str, Message | FedlinkError] = {}
        for name, future in futures.items():
            try:
                answers[name] = future.result()
            except FedlinkError as exc:
                answers[name] = exc
        return answers

    def fan_out(self, sessions: Mapping[str, NodeSession], kind: str, body: bytes) -> dict[str, Message | FedlinkError]:
        """Call every node of ``sessions`` in parallel with the same body."""
        return self.call_each({name: (session, body) for name, session in sessions.items()}, kind)

    def notify(self, sessions: Mapping[str, NodeSession], kind: str, body: bytes) -> None:
        """Send ``body`` to every node of ``sessions`` without waiting for the answers (a tidy-up)."""
        for session in sessions.values():
            self._pool.submit(session.call, kind, body, self.timeout_s)

    def close(self) -> None:
        """End every session and stop calling nodes."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
