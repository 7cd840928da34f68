"""Node data backends at scale: a horizontal query (the node's fixed operator: COUNT and a clamped SUM
by group) and the linkage encoding pass (people streamed out in batches, normalised and encoded), over
the same table as a Parquet file read by DuckDB, in PostgreSQL (a private cluster started from the
installed binaries, loaded with COPY) and in Spark (local mode). Each measurement runs in a process of
its own (``backend_worker.py``) so that its peak resident memory is its own: the evidence that a node
never holds a whole table in Python memory. 1e5 rows by default; 1e7 with ``FEDLINK_BENCH_LARGE=1``::

    pytest benchmarks/test_bench_backends.py --benchmark-only
    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_backends.py --benchmark-only -k 10000000
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedlink import pki
from fedlink.node.config import NodeConfig, PostgresBackend, SparkBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import PostgresServer, spark_unavailable

LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"
WORKER = Path(__file__).parent / "backend_worker.py"
GROUPS = [f"g{i}" for i in range(10)]
FIRST = [f"name{i}" for i in range(3000)]
LAST = [f"family{i}" for i in range(8000)]


def _sizes() -> list[Any]:
    large = pytest.mark.skipif(not LARGE, reason="1e7 rows take minutes and GBs on disk: FEDLINK_BENCH_LARGE=1")
    return [100_000, pytest.param(10_000_000, marks=large)]


def write_events(path: Path, rows: int, seed: int = 9) -> None:
    """``events``: identifiers (about two records per person), a group and a value, in Parquet."""
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        person = rng.integers(0, max(rows // 2, 1), n)
        days = (person * 7919) % 25_000
        dob = (np.datetime64("1940-01-01") + days.astype("timedelta64[D]")).astype(str)
        table = pa.table(
            {
                "record_id": pa.array(np.char.add("r", np.arange(start, start + n).astype(str))),
                "first_name": pa.array(np.asarray(FIRST)[person % len(FIRST)]),
                "last_name": pa.array(np.asarray(LAST)[(person // 7) % len(LAST)]),
                "dob": pa.array(dob),
                "sex": pa.array(np.where(person % 2 == 0, "F", "M")),
                "postcode": pa.array(np.char.add("LS", ((person % 90) + 1).astype(str))),
                "grp": pa.array(np.asarray(GROUPS)[rng.integers(0, len(GROUPS), n)]),
                "value": pa.array(rng.uniform(0.0, 100.0, n)),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def base_config(name: str, source: str, folder: Path, pki_dir: Path) -> dict[str, Any]:
    identifiers = [
        {"name": c, "kind": "identifier"} for c in ("record_id", "first_name", "last_name", "dob", "sex", "postcode")
    ]
    return {
        "node": {"name": name, "coordinator": "127.0.0.1:1"},
        "tls": {
            "cert": str(pki_dir / f"node-{name}.crt"),
            "key": str(pki_dir / f"node-{name}.key"),
            "ca": str(pki_dir / "ca.crt"),
        },
        "privacy": {"ledger": str(folder / "ledger.sqlite"), "transparency_register": str(folder / "register.jsonl")},
        "approvals": [{"project": "bench", "rho": 1.0}],
        "tables": [
            {
                "name": "events",
                "source": source,
                "columns": [
                    *identifiers,
                    {"name": "grp", "kind": "category", "categories": GROUPS},
                    {"name": "value", "kind": "numeric", "bounds": [0.0, 100.0]},
                ],
            }
        ],
        "source": str(folder / "node.toml"),
    }


@pytest.fixture(scope="module")
def setups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, dict[str, Path]]]:
    """Per size: the node config (JSON) of each available backend over the same events."""
    root = tmp_path_factory.mktemp("backends")
    pki_dir = root / "pki"
    pki.init_ca(pki_dir, name="fedlink backend benchmark CA")
    pki.issue(pki_dir, "node", "bench")
    out: dict[int, dict[str, Path]] = {}
    server = None if PostgresServer.unavailable() else PostgresServer.start()
    try:
        for size in [100_000, *([10_000_000] if LARGE else [])]:
            folder = root / str(size)
            folder.mkdir()
            events = folder / "events.parquet"
            write_events(events, size)
            configs = {"duckdb": base_config("bench", str(events), folder, pki_dir)}
            if server is not None:
                csv = folder / "events.csv"
                duckdb.execute(f"COPY (SELECT * FROM read_parquet('{events}')) TO '{csv}' (HEADER)")
                relation = f"events_{size}"
                server.sql(
                    f"CREATE TABLE {relation} (record_id text, first_name text, last_name text, dob text, sex text, "
                    "postcode text, grp text, value double precision)"
                )
                server.copy_csv(relation, csv)
                backend = PostgresBackend(
                    kind="postgresql", port=server.port, host="127.0.0.1", database=server.database,
                    user=server.user, password_file=str(server.password_file),
                )  # fmt: skip
                config = base_config("bench", relation, folder, pki_dir)
                config["backends"] = {"db": backend.model_dump()}
                config["tables"][0]["backend"] = "db"
                configs["postgresql"] = config
            if spark_unavailable() is None:
                config = base_config("bench", str(events), folder, pki_dir)
                spark = SparkBackend(kind="spark", master="local[2]", conf={"spark.driver.memory": "4g"})
                config["backends"] = {"lake": spark.model_dump()}
                config["tables"][0]["backend"] = "lake"
                configs["spark"] = config
            out[size] = {}
            for backend_name, config in configs.items():
                path = folder / f"{backend_name}.json"
                path.write_text(NodeConfig.model_validate(config).model_dump_json())
                out[size][backend_name] = path
        yield out
    finally:
        if server is not None:
            server.stop()


@pytest.mark.parametrize("backend", ["duckdb", "postgresql", "spark"])
@pytest.mark.parametrize("rows", _sizes())
def test_backend(benchmark: Any, setups: dict, rows: int, backend: str) -> None:
    """The timed round is the whole worker (start-up included); the operations' own seconds and the
    peak memory after each are in extra_info, and in the report."""
    config = setups[rows].get(backend)
    if config is None:
        reason = PostgresServer.unavailable() if backend == "postgresql" else spark_unavailable()
        pytest.skip(f"{backend} is not available here: {reason}")
    reports: list[dict[str, Any]] = []

    def measure() -> None:
        done = subprocess.run([sys.executable, str(WORKER), str(config)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))

    benchmark.group = f"node backends, {rows:,} rows"
    benchmark.pedantic(measure, rounds=1, iterations=1)
    report = reports[0]
    assert report["query_rows"] == rows, "every row is counted once"
    assert rows // 3 < report["encode_people"] <= rows, "people: distinct identifier tuples"
    benchmark.extra_info.update({"backend": backend, "rows": rows, **{k: round(v, 3) for k, v in report.items()}})
