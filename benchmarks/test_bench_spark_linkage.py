"""The linkage unit on Spark next to the in-process unit, on the same encodings (issue 22).

Three synthetic departments (the default spec's probabilistic path) are linked in process
(:func:`fedlink.linkage.probabilistic.link_probabilistic`, one thread per core) and on Spark in
local mode (:func:`fedlink.linkage.spark_unit.link_probabilistic_on_spark`, ``local[N]``); the two
spines must be equal. The figure is pairs scored (exact-tier pairs and blocked candidates) per second
per core, for both. The quick size (``FEDLINK_BENCH_SPARK_PEOPLE``, default 1,000 people) checks
equality in CI's smoke run; ``FEDLINK_BENCH_SPARK_PEOPLE=100000`` to ``3000000`` are the
measurements of the report, which ``benchmarks/scale_report.py`` turns into Spark's cost per pair and
fixed cost for its projection.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedlink.linkage.concepts import normalise_concepts
from fedlink.linkage.fields import derive_spec_keys, encode_spec
from fedlink.linkage.probabilistic import link_probabilistic
from fedlink.linkage.spec import load_spec
from fedlink_tools.synth import synthesize

pytest.importorskip("pyspark")
from linkage_worker import DEPARTMENTS, IDENTIFIERS, SECRET, department_people
from timing import cpu

PEOPLE = int(os.environ.get("FEDLINK_BENCH_SPARK_PEOPLE", "1000"))
#: From this many people a run is a measurement: its figures go to ``benchmarks/scale/spark-people-N.json``,
#: where ``benchmarks/scale_report.py`` fits Spark's per-pair cost and fixed cost over two or more sizes.
RECORDED_FROM = 10_000
CORES = int(os.environ.get("FEDLINK_BENCH_SPARK_CORES", "2"))
SUMMARY: list[str] = []


def _record(info: dict[str, Any]) -> None:
    out = Path(__file__).parent / "scale" / f"spark-people-{PEOPLE}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "date": time.strftime("%Y-%m-%d"), "machine": cpu()}, indent=1) + "\n")


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    from fedlink.linkage.spark_unit import spark_session

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs a Java runtime")
    spark = spark_session(
        f"local[{CORES}]",
        {"spark.driver.memory": "6g", "spark.sql.shuffle.partitions": str(4 * CORES)},
        "fedlink-bench-spark-linkage",
    )
    yield spark
    spark.stop()


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not SUMMARY:
        return
    machine = cpu()
    flags = " ".join(machine["flags"])
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.section(f"fedlink: linkage unit on Spark (local[{CORES}]; CPU {machine['model']}, flags {flags})")
        for line in SUMMARY:
            reporter.write_line(line)


def test_spark_spine_equals_in_process(benchmark: Any, session: Any, tmp_path: Path) -> None:
    from fedlink.linkage.spark_unit import link_probabilistic_on_spark

    root = tmp_path / "federation"
    synthesize(PEOPLE, 7, root, progress=False)
    columns, _ = department_people(root, DEPARTMENTS)
    spec = load_spec().resolve(set(IDENTIFIERS))
    keys = derive_spec_keys(SECRET, "bench", spec)
    parties = [encode_spec(normalise_concepts(c), spec, keys) for c in columns]

    started = time.perf_counter()
    here = link_probabilistic(parties, spec, workers=CORES)
    in_process = time.perf_counter() - started
    found: dict[str, Any] = {}

    def on_spark() -> None:
        mark = time.perf_counter()
        found["linked"] = link_probabilistic_on_spark(parties, spec, session, tmp_path / "work", partitions=4 * CORES)
        found["seconds"] = time.perf_counter() - mark

    benchmark.pedantic(on_spark, rounds=1, iterations=1)
    there = found["linked"]
    assert there.spine.entities == here.spine.entities
    assert all(np.array_equal(a, b) for a, b in zip(here.spine.entity, there.spine.entity, strict=True))
    assert there.threshold == here.threshold
    for mine, theirs in zip(here.scored, there.scored, strict=True):  # every scored pair, bit for bit
        for name in ("ia", "ib", "posterior", "via", "assigned"):
            assert np.array_equal(getattr(mine, name), getattr(theirs, name)), (mine.p, mine.q, name)

    pairs = sum(len(s.ia) for s in here.scored)  # pairs at or above the posterior floor, for the record
    compared = sum(s.candidates for s in here.scored)  # blocked candidate pairs, the bulk of the work
    info = {
        "people": PEOPLE,
        "records": [p.count for p in parties],
        "cores": CORES,
        "pairs_compared": compared,
        "pairs_kept": pairs,
        "in_process_seconds": in_process,
        "spark_seconds": found["seconds"],
        "in_process_pairs_per_s_per_core": compared / in_process / CORES,
        "spark_pairs_per_s_per_core": compared / found["seconds"] / CORES,
        "entities": int(here.spine.entities),
    }
    benchmark.extra_info.update(info)
    if PEOPLE >= RECORDED_FROM:  # a measuring size: kept for the scale report's projection
        _record(info)
    SUMMARY.append(
        f"{PEOPLE:,} people ({', '.join(f'{c:,}' for c in info['records'])} records), {compared:,} pairs compared: "
        f"in process {in_process:.1f} s ({info['in_process_pairs_per_s_per_core']:,.0f} pairs/s/core), Spark "
        f"local[{CORES}] {found['seconds']:.1f} s ({info['spark_pairs_per_s_per_core']:,.0f} pairs/s/core); "
        f"spines equal ({here.spine.entities:,} entities)"
    )
