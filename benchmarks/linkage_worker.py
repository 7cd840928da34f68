"""One linkage path on three synthetic departments, in a process of its own so that its peak memory is
its own: ``python benchmarks/linkage_worker.py FOLDER clk|probabilistic`` prints one JSON line.

``clk`` is the record-level path (normalise, exact match keys, salted XOR-folded CLKs, Dice, clustering:
linkage schema version 1, the default before probabilistic matching); ``probabilistic`` is the default
spec's path (normalise concepts, field-level encodings, exact fast path, blocking, comparison levels,
u from random pairs, EM, posteriors, one-to-one, clustering, and the label-free quality estimate).
Both time encode + link on the same records, read from Parquet beforehand.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

IDENTIFIERS = ("first_name", "last_name", "dob", "sex", "postcode")
DEPARTMENTS = ["dfe/pupils", "dwp/claims", "nhs/*"]
SECRET = b"benchmark link secret of 32 byte"


def department_people(
    root: Path, tables: list[str] = DEPARTMENTS
) -> tuple[list[dict[str, list[Any]]], list[np.ndarray]]:
    """One record per distinct identifier tuple of each department (as a node builds its person list),
    and the true person of each."""
    columns, truths = [], []
    records = f"read_parquet('{root / 'truth' / 'records.parquet'}')"
    for table in tables:
        rows = duckdb.execute(
            f"""SELECT {", ".join(f"d.{c}" for c in IDENTIFIERS)}, min(t.person_id)
                FROM read_parquet('{root / table}.parquet') d JOIN {records} t USING (record_id)
                GROUP BY ALL ORDER BY hash(min(t.person_id))"""
        ).fetchall()
        columns.append({c: [row[i] for row in rows] for i, c in enumerate(IDENTIFIERS)})
        truths.append(np.array([row[-1] for row in rows], np.int64))
    return columns, truths


def peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def main(folder: Path, path: str) -> dict[str, Any]:
    from fedlink.linkage.quality import pairwise_quality

    columns, truths = department_people(folder)
    loaded = peak_mib()
    out: dict[str, Any] = {"path": path, "records": [len(t) for t in truths]}
    started = time.perf_counter()
    if path == "clk":
        from fedlink.linkage.cluster import cluster
        from fedlink.linkage.encode import derive_keys, encode
        from fedlink.linkage.normalise import normalise
        from fedlink.linkage.schema import load_schema

        schema = load_schema()
        keys = derive_keys(SECRET, "bench", schema)
        parties = [encode(normalise(c), schema, keys) for c in columns]
        encoded = time.perf_counter()
        entity = cluster(parties).entity
    else:
        from fedlink.linkage.concepts import normalise_concepts
        from fedlink.linkage.estimate import estimate_quality
        from fedlink.linkage.fields import derive_spec_keys, encode_spec
        from fedlink.linkage.probabilistic import link_probabilistic
        from fedlink.linkage.spec import load_spec

        spec = load_spec().resolve(set(IDENTIFIERS))
        keys = derive_spec_keys(SECRET, "bench", spec)
        parties = [encode_spec(normalise_concepts(c), spec, keys) for c in columns]
        encoded = time.perf_counter()
        linked = link_probabilistic(parties, spec)
        entity = linked.spine.entity
        estimate = estimate_quality(entity, linked.scored)
        out.update(stages={k: round(v, 2) for k, v in linked.seconds.items()}, estimated_f1=estimate.overall.f1)
        out["candidates"] = sum(s.candidates for s in linked.scored)
    done = time.perf_counter()
    quality = pairwise_quality(entity, truths)
    out.update(
        seconds=done - started,
        encode_seconds=encoded - started,
        link_seconds=done - encoded,
        peak_mib=peak_mib(),
        loaded_mib=loaded,
        f1=quality.f1,
        precision=quality.precision,
        recall=quality.recall,
    )
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2])))
