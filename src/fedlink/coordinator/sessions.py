"""The coordinator's view of connected nodes: one open stream each, with calls multiplexed over it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from fedlink.errors import NodeUnavailable, Timeout
from fedlink.query.catalogue import NodeCatalogue
from fedlink.wire import rpc
from fedlink.wire.fedlink_pb2 import Frame
from fedlink.wire.transport import Message, frames, messages, new_call_id

_CLOSE = object()


class NodeSession:
    """A live node: its announced catalogue, an outbound queue of tasks and the calls awaiting replies."""

    def __init__(self, name: str, catalogue: NodeCatalogue) -> None:
        self.name = name
        self.catalogue = catalogue
        self._outbound: queue.Queue[object] = queue.Queue()
        self._pending: dict[str, Future[Message]] = {}
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

    def call(self, kind: str, body: bytes, timeout_s: float) -> Message:
        """Send a task and wait for its reply; errors from the node are re-raised here."""
        call_id = new_call_id()
        future: Future[Message] = Future()
        with self._lock:
            if self.closed.is_set():
                raise NodeUnavailable(f"node '{self.name}' disconnected; restart it with `fedlink node serve`")
            self._pending[call_id] = future
        self._outbound.put(Message(call_id, kind, body))
        try:
            return rpc.raise_if_error(future.result(timeout=timeout_s))
        except FutureTimeout as exc:
            raise Timeout(
                f"node '{self.name}' did not answer within {timeout_s:g} s; check its log, or raise query_timeout_s"
            ) from exc
        finally:
            with self._lock:
                self._pending.pop(call_id, None)

    def read_replies(self, inbound: Iterator[Frame]) -> None:
        """Deliver the node's replies to waiting calls until its stream ends."""
        try:
            for message in messages(inbound):
                with self._lock:
                    future = self._pending.get(message.call_id)
                if future is not None and not future.done():
                    future.set_result(message)
        except Exception:  # the stream broke: the node is gone, handled by close()
            pass
        finally:
            self.close()

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
