"""The timings of a finished benchmark, for the suites that turn them into figures of their own."""

from __future__ import annotations

from typing import Any


def timed(benchmark: Any) -> Any | None:
    """pytest-benchmark's statistics of ``benchmark`` (``.min``, ``.median`` in seconds), or None when
    it ran untimed (``--benchmark-disable``, as in ``fedlink bench run --smoke``): the suite then
    records no figure but still makes every assertion."""
    metadata = getattr(benchmark, "stats", None)
    return None if metadata is None else metadata.stats
