"""Cost of encoding identifiers for privacy-preserving record linkage, on one core.

Records are the distinct identifier tuples of every department of a synthetic population (what a
node encodes), shuffled. Sizes 1e3, 1e4 and 1e5 run by default; 1e6 only with
``FEDLINK_BENCH_LARGE=1``. The process is pinned to one CPU while these benchmarks run (Linux), so
records/s is a single-core figure on the machine named in ``extra_info``.

``test_normalise`` is the plaintext path (identifiers cleaned, nothing keyed); ``test_encode`` is the
PET path (normalise, then match keys, salted XOR-folded Bloom filters and blocking keys under the
default schema) and reports, from the same run, normalise-only and encode-only records/s and the
ratio of PET to plaintext time. ``test_clkhash_peer`` compares the keyed Bloom encoding alone with
clkhash's on the same normalised records, when a separate virtual environment holding clkhash
exists (``FEDLINK_PEERS_PYTHON``, default ``/tmp/peers-venv/bin/python``; see
``benchmarks/peers/clkhash_encode.py``)::

    pytest benchmarks/test_bench_encode.py --benchmark-only
    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_encode.py --benchmark-only -k 1000000
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from timing import timed

from fedlink.linkage.encode import derive_keys, encode
from fedlink.linkage.normalise import IDENTIFIER_COLUMNS, normalise
from fedlink.linkage.schema import load_schema
from fedlink_tools.synth import synthesize

LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"
PEER_PYTHON = Path(os.environ.get("FEDLINK_PEERS_PYTHON", "/tmp/peers-venv/bin/python"))
PEER_SCRIPT = Path(__file__).parent / "peers" / "clkhash_encode.py"
PEER_COLUMNS = ("first_formal", "last", "dob_day", "dob_month", "sex", "postcode_sector", "postcode")
#: A synthetic person gives about 1.3 distinct identifier tuples across departments.
PEOPLE_PER_RECORD = 0.8
SIZES = [
    1_000,
    10_000,
    100_000,
    pytest.param(
        1_000_000,
        marks=pytest.mark.skipif(not LARGE, reason="1e6 records take ~70 s and ~2 GB; set FEDLINK_BENCH_LARGE=1"),
    ),
]
SCHEMA = load_schema()
KEYS = derive_keys(bytes(range(32)), "benchmark", SCHEMA)

Columns = dict[str, list[str | None]]


def machine() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line), ""
        )
    return f"{model or platform.processor()} ({platform.system()}, Python {platform.python_version()})"


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def fastest(run: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


@pytest.fixture(scope="module", autouse=True)
def one_core() -> Iterator[None]:
    """Pin this process (and the peer subprocess it starts) to one CPU while the module runs."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Columns:
    """Distinct identifier tuples of every department, shuffled, enough for the largest size."""
    largest = 1_000_000 if LARGE else 100_000
    root = tmp_path_factory.mktemp("encode-bench") / "data"
    synthesize(int(largest * PEOPLE_PER_RECORD) + 1000, 5, root, progress=False)
    identifiers = ", ".join(IDENTIFIER_COLUMNS)
    tables = " UNION ALL ".join(
        f"SELECT '{path.parent.name}' AS node, {identifiers} FROM '{path}'"
        for path in sorted(root.glob("*/*.parquet"))
        if path.parent.name != "truth"
    )
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT DISTINCT * FROM ({tables}) ORDER BY hash(node, {identifiers})").fetchall()
    assert len(rows) >= largest, f"synthetic pool has {len(rows)} records, fewer than {largest}"
    return {column: [row[i + 1] for row in rows] for i, column in enumerate(IDENTIFIER_COLUMNS)}


def first(pool: Columns, records: int) -> Columns:
    return {column: values[:records] for column, values in pool.items()}


def rounds_for(records: int) -> int:
    return 5 if records <= 10_000 else 3 if records <= 100_000 else 1


@pytest.mark.parametrize("records", SIZES)
def test_normalise(benchmark: Any, pool: Columns, records: int) -> None:
    raw = first(pool, records)
    out = benchmark.pedantic(normalise, args=(raw,), rounds=rounds_for(records), iterations=1)
    assert len(out["first"]) == records
    if (stats := timed(benchmark)) is not None:
        benchmark.extra_info.update(
            {"records": records, "records_per_s": round(records / stats.min), "machine": machine(), "cores": 1}
        )


@pytest.mark.parametrize("records", SIZES)
def test_encode(benchmark: Any, pool: Columns, records: int) -> None:
    raw = first(pool, records)

    def normalise_and_encode() -> Any:
        return encode(normalise(raw), SCHEMA, KEYS)

    encoded = benchmark.pedantic(normalise_and_encode, rounds=rounds_for(records), iterations=1)
    assert encoded.count == records and encoded.blooms.shape == (records, SCHEMA.bits // 64)
    if (stats := timed(benchmark)) is None:
        return
    total = stats.min
    normalised = normalise(raw)
    normalise_only = fastest(lambda: normalise(raw), rounds_for(records))
    encode_only = fastest(lambda: encode(normalised, SCHEMA, KEYS), rounds_for(records))
    benchmark.extra_info.update(
        {
            "records": records,
            "records_per_s": round(records / total),
            "normalise_records_per_s": round(records / normalise_only),
            "encode_only_records_per_s": round(records / encode_only),
            "pet_over_plaintext": round(total / normalise_only, 2),
            "schema": {"bits": SCHEMA.bits, "xor_fold": SCHEMA.xor_fold, "salt_field": SCHEMA.salt_field},
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "machine": machine(),
            "cores": 1,
        }
    )


@pytest.mark.parametrize("records", SIZES)
def test_clkhash_peer(benchmark: Any, pool: Columns, records: int, tmp_path: Path) -> None:
    if not PEER_PYTHON.exists():
        pytest.skip(f"no peer environment at {PEER_PYTHON}; see benchmarks/peers/clkhash_encode.py to create one")
    normalised = normalise(first(pool, records))
    path = tmp_path / "normalised.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PEER_COLUMNS)
        writer.writerows(zip(*(normalised[c].tolist() for c in PEER_COLUMNS), strict=True))
    peer = subprocess.run([str(PEER_PYTHON), str(PEER_SCRIPT), str(path)], capture_output=True, text=True, check=False)
    if peer.returncode != 0:
        pytest.fail(f"clkhash peer failed: {peer.stderr.strip().splitlines()[-1:]}")
    clkhash = json.loads(peer.stdout.strip().splitlines()[-1])

    encoded = benchmark.pedantic(encode, args=(normalised, SCHEMA, KEYS), rounds=rounds_for(records), iterations=1)
    assert clkhash["records"] == records == encoded.count
    if (stats := timed(benchmark)) is None:
        return
    ours = records / stats.min
    benchmark.extra_info.update(
        {
            "records": records,
            "fedlink_encode_records_per_s": round(ours),
            "clkhash_records_per_s": round(clkhash["records_per_s"]),
            "fedlink_over_clkhash": round(ours / clkhash["records_per_s"], 2),
            "clkhash_version": clkhash["clkhash"],
            "note": "encoding of normalised values only; fedlink adds salting, XOR folding, match and blocking keys",
            "machine": machine(),
            "cores": 1,
        }
    )
