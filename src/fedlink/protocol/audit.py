"""Wire audit: a record of every message that crosses between parties.

Every serialised :class:`Frame` passes through :func:`record` on the way out of and into a process
(see :mod:`fedlink.protocol.transport`), before TLS encrypts it. Tests install a sink in-process with
:func:`recording`, or set ``FEDLINK_WIRE_AUDIT=DIR`` so that every fedlink process (coordinator,
nodes, analyst) appends what it sends and receives to ``DIR/<pid>.audit``; they then prove that no
identifier or row-level value ever appeared in any of it.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

Sink = Callable[[str, bytes], None]
_sinks: list[Sink] = []
#: The sinks :func:`install_from_env` added (a forked child inherits its parent's, which it keeps).
_env_sinks: set[Sink] = set()
_lock = threading.Lock()
ENV = "FEDLINK_WIRE_AUDIT"


def record(direction: str, data: bytes) -> None:
    """Hand one serialised message (``direction`` is ``sent`` or ``received``) to every sink."""
    for sink in _sinks:
        sink(direction, data)


@contextmanager
def recording() -> Iterator[list[tuple[str, bytes]]]:
    """Collect every message this process sends or receives while the block runs."""
    captured: list[tuple[str, bytes]] = []

    def sink(direction: str, data: bytes) -> None:
        with _lock:
            captured.append((direction, data))

    _sinks.append(sink)
    try:
        yield captured
    finally:
        _sinks.remove(sink)


def install_from_env() -> None:
    """Append to ``$FEDLINK_WIRE_AUDIT/<pid>.audit`` when that variable is set (once per process)."""
    folder = os.environ.get(ENV)
    if not folder or any(s in _sinks for s in _env_sinks):
        return
    path = Path(folder) / f"{os.getpid()}.audit"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab", buffering=0)

    def sink(direction: str, data: bytes) -> None:
        header = struct.pack(">cI", direction[0].encode(), len(data))
        with _lock:
            handle.write(header + data)

    _env_sinks.add(sink)
    _sinks.append(sink)


def read_folder(folder: Path) -> list[bytes]:
    """Every message recorded under ``folder`` by processes run with ``FEDLINK_WIRE_AUDIT``."""
    messages = []
    for path in sorted(folder.glob("*.audit")):
        blob = path.read_bytes()
        offset = 0
        while offset + 5 <= len(blob):
            _, size = struct.unpack(">cI", blob[offset : offset + 5])
            messages.append(blob[offset + 5 : offset + 5 + size])
            offset += 5 + size
    return messages
