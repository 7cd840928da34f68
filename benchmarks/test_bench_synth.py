"""Cost of ``fedlink synth`` as the population grows: wall time and peak memory.

Sizes 1e3, 1e4 and 1e5 run by default; 1e6 runs only with ``FEDLINK_BENCH_LARGE=1``. Each large
size runs once (synthesis is deterministic, and one run of 1e6 takes seconds). Peak memory is the
process's high-water mark of resident memory (``ru_maxrss``), which only grows, so it describes a size
exactly when that size runs in a process of its own or is the largest run so far::

    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_synth.py -k 1000000 --benchmark-only
"""

from __future__ import annotations

import itertools
import os
import resource
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fedlink_tools.synth import SynthSummary, synthesize

LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"

SIZES = [
    1_000,
    10_000,
    100_000,
    pytest.param(
        1_000_000,
        marks=pytest.mark.skipif(not LARGE, reason="1e6 people take ~10 s and ~0.6 GB; set FEDLINK_BENCH_LARGE=1"),
    ),
]


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


@pytest.mark.parametrize("people", SIZES)
def test_synthesize(benchmark: Any, tmp_path: Path, people: int) -> None:
    outputs = (tmp_path / f"run-{n}" for n in itertools.count())

    def arguments() -> tuple[tuple[()], dict[str, Any]]:
        return (), {"people": people, "seed": 1, "out": next(outputs), "progress": False}

    rounds = 3 if people <= 10_000 else 1
    summary: SynthSummary = benchmark.pedantic(synthesize, setup=arguments, rounds=rounds, iterations=1)

    rows = sum(count for _, _, count in summary.row_counts)
    benchmark.extra_info.update(
        {
            "people": people,
            "department_rows": rows,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "arrow_pool_peak_mib": round(pa.default_memory_pool().max_memory() / 2**20, 1),
            "cpu_count": os.cpu_count(),
        }
    )
    assert summary.people == people and rows > people
