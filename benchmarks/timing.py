"""The timings of a finished benchmark, for the suites that turn them into figures of their own, and the
CPU they were taken on (the records of the scale suite and of the Spark linkage unit)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def timed(benchmark: Any) -> Any | None:
    """pytest-benchmark's statistics of ``benchmark`` (``.min``, ``.median`` in seconds), or None when
    it ran untimed (``--benchmark-disable``, as in ``fedlink bench run --smoke``): the suite then
    records no figure but still makes every assertion."""
    metadata = getattr(benchmark, "stats", None)
    return None if metadata is None else metadata.stats


def cpu() -> dict[str, Any]:
    """The CPU's model and the flags that matter to the kernels (popcount, AVX2, AVX-512)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("popcnt", "avx2", "avx512f", "avx512_vpopcntdq", "bmi2")
    return {"model": model, "cpus": os.cpu_count(), "flags": [f for f in wanted if f in flags]}
