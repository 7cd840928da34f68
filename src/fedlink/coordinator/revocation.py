"""Revocation that bites: the coordinator watches the federation's revocation list and, within
seconds of `fedlink pki revoke`, ends every live session of a revoked certificate (a node's stream,
an analyst's call in flight) and records the revocation on its register.

A node's session is one long stream and an analyst's call (a linkage, a linked query) can run for
minutes, so checking the list only when a call starts lets a revoked party go on answering and
spending. The list is a small file that only grows, so polling its metadata every :data:`POLL_S`
seconds (and again at every new call and every query) is enough; no file-watching dependency.
A revocation, once learned, holds until the coordinator stops, even if the line is later removed.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedlink.errors import AccessDenied, ConfigError, FedlinkError
from fedlink.pki import Identity, Revocation, revocations, revoked_message
from fedlink.protocol.fedlink_pb2 import Frame
from fedlink.protocol.transport import StreamHandler
from fedlink.transparency.register import Register

log = logging.getLogger("fedlink.coordinator")
#: Seconds between two looks at the revocation list.
POLL_S = 1.0
#: Set, in the thread that serves an analyst's call, once that analyst's certificate is revoked.
_CALL_REVOKED: ContextVar[threading.Event | None] = ContextVar("fedlink_call_revoked", default=None)
_DONE = object()


@dataclass(frozen=True)
class _Ended:
    """Relayed to an analyst's call to end it: why."""

    reason: str


def raise_if_call_revoked() -> None:
    """Refuse to go on with the current analyst call if its certificate was revoked while it ran: the
    coordinator checks before every call to the nodes (an abort excepted) and after reserving, so a
    revoked analyst's work asks no node for more and spends nothing."""
    revoked = _CALL_REVOKED.get()
    if revoked is not None and revoked.is_set():
        raise AccessDenied("the analyst's certificate was revoked during the call; nothing was released")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class RevocationWatch:
    """The revocation list as the coordinator knows it, and the live sessions it would end.

    ``path`` is the list ``fedlink pki revoke`` writes (None: revocation is not configured). Reading a
    malformed list at start-up raises :class:`ConfigError`; later, the last good list is kept and the
    problem logged.
    """

    def __init__(self, path: Path | None, register: Register, poll_s: float = POLL_S) -> None:
        self.path = path
        self._register = register
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._revoked: dict[int, Revocation] = {}
        self._recorded = {str(e.fields.get("serial")) for e in register.entries() if e.kind == "revocation"}
        self._tracked: dict[int, tuple[Identity, Callable[[str], None]]] = {}
        self._tokens = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        with self._lock:
            self._load()

    def _load(self) -> None:
        """Re-read the list if the file changed, and put every revocation new to the register on it
        (call with the lock held)."""
        if self.path is None:
            return
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        listed = revocations(self.path)
        self._stamp = stamp
        for revocation in listed:
            if revocation.serial in self._revoked:
                continue
            self._revoked[revocation.serial] = revocation
            serial = f"{revocation.serial:x}"
            if serial not in self._recorded:
                self._register.append(
                    "revocation",
                    {
                        "serial": serial,
                        "role": revocation.role,
                        "name": revocation.name,
                        "revoked_at": revocation.revoked_at or None,
                    },
                )
                self._recorded.add(serial)
                log.warning("learned that the certificate of %s '%s' is revoked", revocation.role, revocation.name)

    def refresh(self) -> frozenset[int]:
        """Look at the list now, end the tracked sessions of every revoked certificate, and return the
        revoked serials."""
        with self._lock:
            try:
                self._load()
            except ConfigError as exc:
                self._stamp = _stamp(self.path) if self.path is not None else None  # log once per change
                log.error("%s; keeping the revocations read before", exc.message)
            revoked = frozenset(self._revoked)
            ended = [token for token, (identity, _) in self._tracked.items() if identity.serial in revoked]
            ending = [self._tracked.pop(token) for token in ended]
        for identity, end in ending:
            log.warning("ending the live session of %s: its certificate has been revoked", identity)
            end(revoked_message(identity))
        return revoked

    def track(self, identity: Identity, end: Callable[[str], None]) -> Callable[[], None]:
        """Call ``end(reason)`` once if ``identity``'s certificate is revoked while tracked; returns the
        function that stops tracking it. A certificate revoked already is ended at once."""
        with self._lock:
            token = next(self._tokens)
            self._tracked[token] = (identity, end)

        def untrack() -> None:
            with self._lock:
                self._tracked.pop(token, None)

        self.refresh()  # a revocation may have landed since the call was identified
        return untrack

    def start(self) -> None:
        """Watch the list in the background until :meth:`stop`."""
        if self.path is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, daemon=True, name="revocations")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.refresh()
            except FedlinkError as exc:  # e.g. the register cannot be appended: keep watching
                log.error("revocation watch: %s", exc.message)

    def guard(self, handler: StreamHandler, identify: Callable[[grpc.ServicerContext], Identity]) -> StreamHandler:
        """``handler`` (an analyst's call) made revocable: it runs in a thread of its own while this
        one relays its frames, so that a revocation ends the call at once with PERMISSION_DENIED and
        the analyst's certificate named; the work left behind finds the call revoked
        (:func:`raise_if_call_revoked`) before it spends anything."""

        def guarded(inbound: Iterator[Frame], context: grpc.ServicerContext) -> Iterator[Frame]:
            identity = identify(context)
            items: queue.Queue[object] = queue.Queue()
            revoked = threading.Event()

            def end(reason: str) -> None:
                revoked.set()
                items.put(_Ended(reason))

            def relay() -> None:
                _CALL_REVOKED.set(revoked)
                try:
                    for frame in handler(inbound, context):
                        items.put(frame)
                    items.put(_DONE)
                except BaseException as exc:  # re-raised in the call's own thread, where gRPC handles it
                    items.put(exc)

            context.add_callback(self.track(identity, end))
            threading.Thread(target=relay, daemon=True, name=f"call-{identity.name}").start()
            while True:
                item = items.get()
                if item is _DONE:
                    return
                if isinstance(item, _Ended):
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, item.reason)
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Frame)
                yield item

        return guarded
