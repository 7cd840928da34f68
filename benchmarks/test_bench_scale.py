"""Scale suite: every stage of linking three departments and querying them, each in a process of its own
(``scale_worker.py``) so that each peak memory is its own, at growing populations, next to DuckDB.

Stages: synthesis; encoding at each node (DfE, DWP, NHS; streamed to disk in the node's batches);
transfer (the wire format written and unpacked into the linkage unit's spill folder; no network);
link (the bounded-memory linkage unit, :mod:`fedlink.linkage.streaming`: encodings memory-mapped,
candidate pairs spilled, EM, scoring, clustering, the label-free estimate, slots); DuckDB's plaintext
three-way join of the same departments on the true person; a he+dp linked ``COUNT ... GROUP BY`` over
three nodes of N people (spine already built) and DuckDB's join of the same files; a he+dp horizontal
``COUNT ... GROUP BY`` over three nodes of N rows and DuckDB's query of the same files.

By default one quick size (5,000 people: seconds, for the CI smoke run). Larger sizes are opt-in, and each
writes its figures to ``benchmarks/scale/people-<N>.json`` as stages finish (so a run cut short keeps
what it measured); ``benchmarks/scale_report.py`` plots them and projects larger populations::

    pytest benchmarks/test_bench_scale.py --benchmark-only
    FEDLINK_BENCH_SCALE=1e6,3e6 nice pytest benchmarks/test_bench_scale.py --benchmark-only -s

``FEDLINK_BENCH_SCALE_DATA=DIR`` reuses ``DIR/p<N>`` (a federation ``fedlink synth`` made with seed 3)
instead of synthesising again; synthesis is then not measured in that run.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from timing import cpu

WORKER = Path(__file__).parent / "scale_worker.py"
RESULTS = Path(__file__).parent / "scale"
QUICK = 5_000
NODES = ("dfe", "dwp", "nhs")


def _sizes() -> list[int]:
    chosen = os.environ.get("FEDLINK_BENCH_SCALE", "")
    return [int(float(s)) for s in chosen.split(",") if s.strip()] or [QUICK]


#: A stage whose resident memory passes this is stopped (the machine is shared): FEDLINK_BENCH_SCALE_MAX_GIB.
MAX_RSS_GIB = float(os.environ.get("FEDLINK_BENCH_SCALE_MAX_GIB", "15"))


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def stage(*args: str) -> dict[str, Any]:
    """One stage in a worker process; its figures, or the error and the point it was stopped at."""
    with subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=WORKER.parent,
    ) as worker:
        highest = 0.0
        while True:
            try:
                out, err = worker.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                highest = max(highest, _rss_gib(worker.pid))
                if highest > MAX_RSS_GIB:
                    worker.kill()
                    worker.communicate()
                    return {"error": f"stopped at {highest:.1f} GiB resident (limit {MAX_RSS_GIB:g} GiB)"}
    if worker.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {worker.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def run_scale(people: int, folder: Path, record: Path | None) -> dict[str, Any]:
    """Every stage at ``people``, in order; the figures so far written to ``record`` after each stage."""
    measured: dict[str, Any] = {
        "people": people,
        "date": datetime.date.today().isoformat(),
        "machine": cpu(),
        "stages": {},
    }

    def keep(name: str, figures: dict[str, Any]) -> None:
        measured["stages"][name] = figures
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(measured, indent=1))

    reuse = os.environ.get("FEDLINK_BENCH_SCALE_DATA")
    if reuse and (Path(reuse) / f"p{people}").is_dir():
        (folder / "federation").symlink_to(Path(reuse) / f"p{people}")
    else:
        keep("synthesis", stage("synth", str(people), str(folder)))
    for node in NODES:
        keep(f"encode {node}", stage("encode", str(folder), node))
    for node in NODES:
        keep(f"transfer {node}", stage("transfer", str(folder), node))
        for leftover in (folder / f"node-{node}").glob("*.npy"):  # the node's copy: not the unit's to hold
            leftover.unlink()
    keep("link", stage("link", str(folder)))
    keep("duckdb join", stage("join", str(folder)))
    keep("namesakes", stage("namesakes", str(folder)))
    keep("linked query", stage("linked", str(people), str(folder)))
    keep("horizontal query", stage("horizontal", str(people), str(folder)))
    if os.environ.get("FEDLINK_BENCH_SCALE"):  # sizes chosen: also the whole of it over gRPC (minutes)
        keep("federation over gRPC", stage("federation", str(folder)))
    return measured


@pytest.mark.parametrize("people", _sizes())
def test_scale(benchmark: Any, tmp_path: Path, people: int) -> None:
    record = RESULTS / f"people-{people}.json" if people != QUICK else None
    measured: dict[str, Any] = {}
    benchmark.pedantic(lambda: measured.update(run_scale(people, tmp_path, record)), rounds=1, iterations=1)
    stages = measured["stages"]
    link = stages["link"]
    assert link["records"] == [stages[f"encode {n}"]["people"] for n in NODES]
    assert link["f1"] >= 0.98 and abs(link["estimated_f1"] - link["f1"]) <= 0.01, link
    assert stages["linked query"]["groups"] > 0 and stages["horizontal query"]["groups"] > 0
    if "federation over gRPC" in stages:
        grpc = stages["federation over gRPC"]
        assert grpc.get("linked_groups", 0) > 0 and grpc.get("horizontal_groups", 0) > 0, grpc
    benchmark.extra_info.update(
        {
            "people": people,
            **{f"{name} s": figures["seconds"] for name, figures in stages.items()},
            **{f"{name} peak MiB": figures["peak_rss_mib"] for name, figures in stages.items()},
            "f1": link["f1"],
        }
    )
