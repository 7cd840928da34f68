"""A process pool for CPU-bound PET work whose Python bindings hold the GIL (SEAL, libsecp256k1).

One pool per process, started on first use with ``spawn`` (a node runs gRPC threads, which must not
be forked) and sized by ``FEDLINK_HE_WORKERS`` (default: every core). :func:`spread` runs a
module-level function over several jobs in the pool and in this process when there is one job; if
the pool cannot start (a main module without a ``__main__`` guard, say) it logs once and runs the
jobs here, so an answer never depends on the pool.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fedlink.errors import BadInput

log = logging.getLogger("fedlink.pool")
_POOL: ProcessPoolExecutor | None = None
_BROKEN = False  # the pool could not run here once: later work runs in this process, without retrying
_LOCK = threading.Lock()


def workers() -> int:
    """Processes that share CPU-bound PET work: ``FEDLINK_HE_WORKERS``, else every core."""
    configured = os.environ.get("FEDLINK_HE_WORKERS", "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError as exc:
            raise BadInput(f"FEDLINK_HE_WORKERS must be a whole number, not {configured!r}") from exc
    return os.cpu_count() or 1


def split(count: int, parts: int | None = None) -> list[tuple[int, int]]:
    """``count`` items cut into at most ``parts`` (default :func:`workers`) contiguous (start, stop) runs."""
    parts = max(1, min(parts or workers(), count))
    edges = [round(i * count / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _pool() -> ProcessPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(
                max_workers=workers(),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_follow_parent,
                initargs=(os.getpid(),),
            )
            atexit.register(_POOL.shutdown, wait=False, cancel_futures=True)
        return _POOL


#: How often a worker checks that the process that started it is alive.
PARENT_CHECK_S = 1.0


def _follow_parent(parent: int) -> None:
    """In each worker: end when the parent process is gone. A node killed outright (SIGKILL, a crash)
    runs no atexit hook, and its idle workers would otherwise wait on the pool's queue for ever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="fedlink-pool-parent", daemon=True).start()


def _drop(reason: BaseException) -> None:
    global _POOL, _BROKEN
    with _LOCK:
        pool, _POOL, _BROKEN = _POOL, None, True
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    log.warning("the PET worker pool failed (%s); this work runs in one process", type(reason).__name__)


def spread(function: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``[function(*job) for job in jobs]``, in the worker pool when there are several jobs."""
    if len(jobs) > 1 and not _BROKEN:
        try:
            futures = [_pool().submit(function, *job) for job in jobs]
            return [future.result() for future in futures]
        except BrokenProcessPool as exc:
            _drop(exc)
        except RuntimeError as exc:  # e.g. "an attempt has been made to start a new process before ..."
            if "process" not in str(exc):
                raise
            _drop(exc)
    return [function(*job) for job in jobs]
