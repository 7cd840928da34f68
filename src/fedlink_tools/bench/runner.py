"""Run the pytest-benchmark suites under ``benchmarks/`` and keep their results with the machine.

Each suite (``benchmarks/test_bench_*.py``) runs in a pytest subprocess of its own::

    python -m pytest benchmarks/test_bench_synth.py --benchmark-only --benchmark-json=<file>

so that a suite's peak-memory figures (``ru_maxrss`` of its process) are not inflated by the suites
before it and progress can say which suite runs. The suites' JSON files are merged into one
pytest-benchmark JSON file, ``bench-<UTC time>-<mode>.json``, whose extra ``"fedlink"`` key records
the machine (CPU model, cores, memory, Python and the versions of numpy, tenseal, opendp and duckdb),
the mode, and per suite its status, duration and skip reasons; pytest's output goes to a ``.log``
file beside it.

Quick mode runs the suites' default sizes (``FEDLINK_BENCH_LARGE`` unset): a few minutes on two
cores. Full mode sets ``FEDLINK_BENCH_LARGE=1`` (1e6 people and records, 1e8 kernel pairs, 20-node
federations and 10,000 groups): tens of minutes and several GB of memory. Smoke mode (CI's) only checks
that the benchmarks still run: the quick sizes under ``--benchmark-disable`` (each benchmarked function
runs once, untimed, and every assertion is made), two suites at a time, and no JSON: its times are
never figures, so ``fedlink bench report`` never sees them.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TextIO

from fedlink.errors import BadInput, Fault

#: The packages whose versions describe a run (PET libraries and the data engine).
VERSIONED = ("fedlink", "numpy", "tenseal", "opendp", "duckdb", "pyarrow", "pytest-benchmark")
#: Extra pytest arguments per suite in quick mode. Every suite's default sizes take seconds to about a
#: minute on two cores, so no suite is narrowed with ``-k``.
QUICK_SELECTION: dict[str, tuple[str, ...]] = {}
#: Suites a smoke run runs at once (each in its own pytest process).
SMOKE_PARALLEL = 2
_PASSED = re.compile(r"\b(\d+) passed\b")
_SKIPPED = re.compile(r"^SKIPPED \[(\d+)\] (?:[^\s:]+:\d+: )?(.+)$")


@dataclass
class SuiteRun:
    """One suite's pytest subprocess."""

    suite: str
    returncode: int
    seconds: float
    benchmarks: int
    args: list[str]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class BenchRun:
    """A finished run: the merged JSON, pytest's log and what each suite did."""

    json_path: Path | None  # None for a smoke run, which measures nothing
    log_path: Path
    mode: str
    seconds: float
    suites: list[SuiteRun]

    @property
    def benchmarks(self) -> int:
        return sum(s.benchmarks for s in self.suites)

    @property
    def failed(self) -> list[SuiteRun]:
        return [s for s in self.suites if not s.ok]


def find_root(start: Path | None = None) -> Path:
    """The repository root holding ``benchmarks/test_bench_*.py``: the working folder or one of its
    parents, else the source checkout this package is installed from (editable installs)."""
    here = (start or Path.cwd()).resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[3]]
    for folder in candidates:
        if any((folder / "benchmarks").glob("test_bench_*.py")):
            return folder
    raise BadInput(
        f"no benchmarks/test_bench_*.py found from {here}: run this from the fedlink repository root "
        "(the benchmark suites are not part of the installed package)"
    )


def suites(root: Path) -> list[Path]:
    return sorted((root / "benchmarks").glob("test_bench_*.py"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            if line.strip().startswith("Model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What a benchmark's absolute times depend on: CPU, cores, memory, OS, Python, library versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in VERSIONED},
    }


def _pytest_args(suite: Path, root: Path, mode: str, json_path: Path | None = None) -> list[str]:
    """pytest's arguments for one suite. A smoke run passes ``--benchmark-disable`` (each benchmarked
    function runs once, untimed; pytest-benchmark refuses it together with ``--benchmark-only``) and
    asks for no JSON: there is nothing to record."""
    args = ["-m", "pytest", str(suite.relative_to(root))]
    if mode == "smoke":
        args.append("--benchmark-disable")
    else:
        args += ["--benchmark-only", f"--benchmark-json={json_path}"]
    args += ["-rs", "--color=no"]
    if mode != "full":
        args += list(QUICK_SELECTION.get(suite.name, ()))
    return args


def _suite_run(
    suite: str, args: list[str], returncode: int, seconds: float, output: str, json_path: Path | None
) -> tuple[SuiteRun, list[dict[str, Any]], dict[str, Any]]:
    """What one suite's pytest did, from its output and (unless a smoke run) its JSON file, which is
    read and removed. A smoke run counts its benchmarks from pytest's summary (``N passed``)."""
    lines = output.splitlines()
    reasons: dict[str, int] = {}
    for line in lines:
        if m := _SKIPPED.match(line.strip()):
            reasons[m.group(2)] = reasons.get(m.group(2), 0) + int(m.group(1))
    skipped = [{"cases": cases, "reason": reason} for reason, cases in reasons.items()]
    summary = next((line.strip(" =") for line in reversed(lines) if line.startswith("=")), "")
    benchmarks: list[dict[str, Any]] = []
    header: dict[str, Any] = {}
    if json_path is None:
        passed = _PASSED.search(summary)
        count = int(passed.group(1)) if passed else 0
    else:
        if json_path.exists():
            try:
                header = json.loads(json_path.read_text(encoding="utf-8"))
                benchmarks = list(header.pop("benchmarks", []))
            except (OSError, ValueError):
                header = {}
            json_path.unlink(missing_ok=True)
        count = len(benchmarks)
    if returncode == 0 and not count and not skipped:
        returncode = 5  # nothing ran and nothing said why: treat like pytest's "no tests collected"
    return SuiteRun(suite, returncode, seconds, count, args[2:], skipped, summary), benchmarks, header


def _pytest(args: list[str], root: Path, env: dict[str, str]) -> tuple[int, float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    return done.returncode, time.perf_counter() - started, done.stdout


def run(
    out_dir: Path | None = None,
    *,
    quick: bool = False,
    smoke: bool = False,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
    only: Sequence[str] = (),
) -> BenchRun:
    """Run the benchmark suites (``only``: suite file names or stems to run, default all) and write
    ``bench-<time>-<quick|full>.json`` and its ``.log`` under ``out_dir`` (default
    ``<root>/benchmarks/results``). Raises :class:`Fault` if any suite's pytest fails, after writing
    what the others measured.

    ``smoke`` (implies ``quick``) checks that the benchmarks still run, for CI: every benchmark runs
    once, untimed, with its assertions, :data:`SMOKE_PARALLEL` suites at a time, and only the log
    (``bench-<time>-smoke.log``) is written, since nothing was measured."""
    if find_spec("pytest_benchmark") is None:
        raise BadInput("pytest-benchmark is not installed in this Python: pip install -e '.[test]'")
    root = find_root(root)
    chosen = suites(root)
    if only:
        wanted = {name.removesuffix(".py") for name in only}
        unknown = wanted - {p.stem for p in chosen} - {p.stem.removeprefix("test_bench_") for p in chosen}
        if unknown:
            raise BadInput(
                f"no benchmark suite named {', '.join(sorted(unknown))}; "
                f"suites: {', '.join(p.stem.removeprefix('test_bench_') for p in chosen)}"
            )
        chosen = [p for p in chosen if p.stem in wanted or p.stem.removeprefix("test_bench_") in wanted]
    out_dir = out_dir if out_dir is not None else root / "benchmarks" / "results"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    mode = "smoke" if smoke else "quick" if quick else "full"
    started_at = datetime.now(UTC)
    stem = f"bench-{started_at:%Y%m%d-%H%M%S}-{mode}"
    json_path, log_path = out_dir / f"{stem}.json", out_dir / f"{stem}.log"
    env = dict(os.environ)
    env.pop("FEDLINK_BENCH_LARGE", None)
    if mode == "full":
        env["FEDLINK_BENCH_LARGE"] = "1"
    say = progress or (lambda _message: None)
    total = len(chosen)
    # one suite's output goes to the log in one piece and progress lines stay whole, whichever thread
    # finishes first
    lock = threading.Lock()
    done: dict[int, tuple[SuiteRun, list[dict[str, Any]], dict[str, Any]]] = {}

    def one(index: int, suite: Path, log: TextIO) -> None:
        part = None if mode == "smoke" else out_dir / f".{stem}-{suite.stem}.json"
        args = _pytest_args(suite, root, mode, part)
        with lock:
            say(f"[{index}/{total}] {suite.name} ({mode}) ...")
        returncode, seconds, output = _pytest(args, root, env)
        suite_run, found, header = _suite_run(suite.name, args, returncode, seconds, output, part)
        status = "ok" if suite_run.ok else f"FAILED (pytest exit {suite_run.returncode})"
        with lock:
            log.write(f"\n===== {' '.join(['python', *args])}\n{output}")
            log.flush()
            done[index] = suite_run, found, header
            say(
                f"[{index}/{total}] {suite.name}: {suite_run.benchmarks} benchmarks in "
                f"{suite_run.seconds:.0f} s, {status}"
            )

    clock = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        # a smoke run's times are never figures, so its suites may share the cores; a measuring run's
        # suites run alone, one after another
        with ThreadPoolExecutor(max_workers=SMOKE_PARALLEL if mode == "smoke" else 1) as pool:
            for future in [pool.submit(one, index, suite, log) for index, suite in enumerate(chosen, 1)]:
                future.result()
        seconds = time.perf_counter() - clock
        runs = [done[index][0] for index in sorted(done)]
        log.write(f"\n===== fedlink bench: {mode} run of {total} suite(s) in {seconds:.0f} s\n")
        for r in runs:
            status = "ok" if r.ok else f"FAILED (pytest exit {r.returncode})"
            log.write(f"{r.suite}: {status}, {r.benchmarks} benchmarks in {r.seconds:.0f} s ({r.summary})\n")
    if mode == "smoke":
        result = BenchRun(None, log_path, mode, seconds, runs)
        if result.failed:
            names = ", ".join(f"{r.suite} ({r.summary or f'exit {r.returncode}'})" for r in result.failed)
            raise Fault(f"benchmark suite(s) failed: {names}; see {log_path}")
        return result
    merged: dict[str, Any] = {}
    benchmarks: list[dict[str, Any]] = []
    for index in sorted(done):
        _, found, header = done[index]
        benchmarks += found
        for key, value in header.items():
            merged.setdefault(key, value)
    merged["benchmarks"] = benchmarks
    merged["fedlink"] = {
        "mode": mode,
        "large": mode == "full",
        "started": started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": machine_info(),
        "suites": [
            {
                "suite": r.suite,
                "returncode": r.returncode,
                "seconds": round(r.seconds, 1),
                "benchmarks": r.benchmarks,
                "pytest_args": r.args,
                "skipped": r.skipped,
                "summary": r.summary,
            }
            for r in runs
        ],
    }
    json_path.write_text(json.dumps(merged, indent=1, default=str), encoding="utf-8")
    result = BenchRun(json_path, log_path, mode, seconds, runs)
    if result.failed:
        names = ", ".join(f"{r.suite} ({r.summary or f'exit {r.returncode}'})" for r in result.failed)
        raise Fault(f"benchmark suite(s) failed: {names}; see {log_path} (the others are in {json_path})")
    return result
