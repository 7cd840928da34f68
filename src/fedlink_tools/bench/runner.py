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
federations and 10,000 groups): tens of minutes and several GB of memory.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fedlink.errors import BadInput, Fault

#: The packages whose versions describe a run (PET libraries and the data engine).
VERSIONED = ("fedlink", "numpy", "tenseal", "opendp", "duckdb", "pyarrow", "pytest-benchmark")
#: Extra pytest arguments per suite in quick mode. Every suite's default sizes take seconds to about a
#: minute on two cores, so no suite is narrowed with ``-k``.
QUICK_SELECTION: dict[str, tuple[str, ...]] = {}
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

    json_path: Path
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


def _pytest_args(suite: Path, root: Path, json_path: Path, quick: bool) -> list[str]:
    args = [
        "-m",
        "pytest",
        str(suite.relative_to(root)),
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        "-rs",
        "--color=no",
    ]
    if quick:
        args += list(QUICK_SELECTION.get(suite.name, ()))
    return args


def _run_suite(
    suite: Path, root: Path, json_path: Path, quick: bool, env: dict[str, str], log: Any
) -> tuple[SuiteRun, list[dict[str, Any]], dict[str, Any]]:
    args = _pytest_args(suite, root, json_path, quick)
    log.write(f"\n===== {' '.join(['python', *args])}\n")
    log.flush()
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
    seconds = time.perf_counter() - started
    log.write(done.stdout)
    log.flush()
    lines = done.stdout.splitlines()
    reasons: dict[str, int] = {}
    for line in lines:
        if m := _SKIPPED.match(line.strip()):
            reasons[m.group(2)] = reasons.get(m.group(2), 0) + int(m.group(1))
    skipped = [{"cases": cases, "reason": reason} for reason, cases in reasons.items()]
    summary = next((line.strip(" =") for line in reversed(lines) if line.startswith("=")), "")
    benchmarks: list[dict[str, Any]] = []
    header: dict[str, Any] = {}
    if json_path.exists():
        try:
            header = json.loads(json_path.read_text(encoding="utf-8"))
            benchmarks = list(header.pop("benchmarks", []))
        except (OSError, ValueError):
            header = {}
        json_path.unlink(missing_ok=True)
    returncode = done.returncode
    if returncode == 0 and not benchmarks and not skipped:
        returncode = 5  # nothing ran and nothing said why: treat like pytest's "no tests collected"
    run = SuiteRun(suite.name, returncode, seconds, len(benchmarks), args[2:], skipped, summary)
    return run, benchmarks, header


def run(
    out_dir: Path | None = None,
    *,
    quick: bool = False,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
    only: Sequence[str] = (),
) -> BenchRun:
    """Run the benchmark suites (``only``: suite file names or stems to run, default all) and write
    ``bench-<time>-<quick|full>.json`` and its ``.log`` under ``out_dir`` (default
    ``<root>/benchmarks/results``). Raises :class:`Fault` if any suite's pytest fails, after writing
    what the others measured."""
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
    mode = "quick" if quick else "full"
    started_at = datetime.now(UTC)
    stem = f"bench-{started_at:%Y%m%d-%H%M%S}-{mode}"
    json_path, log_path = out_dir / f"{stem}.json", out_dir / f"{stem}.log"
    env = dict(os.environ)
    env.pop("FEDLINK_BENCH_LARGE", None)
    if not quick:
        env["FEDLINK_BENCH_LARGE"] = "1"
    say = progress or (lambda _message: None)
    merged: dict[str, Any] = {}
    benchmarks: list[dict[str, Any]] = []
    runs: list[SuiteRun] = []
    clock = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        for index, suite in enumerate(chosen, 1):
            say(f"[{index}/{len(chosen)}] {suite.name} ({mode}) ...")
            part = out_dir / f".{stem}-{suite.stem}.json"
            suite_run, found, header = _run_suite(suite, root, part, quick, env, log)
            runs.append(suite_run)
            benchmarks += found
            for key, value in header.items():
                merged.setdefault(key, value)
            status = "ok" if suite_run.ok else f"FAILED (pytest exit {suite_run.returncode})"
            say(
                f"[{index}/{len(chosen)}] {suite.name}: {suite_run.benchmarks} benchmarks in "
                f"{suite_run.seconds:.0f} s, {status}"
            )
    seconds = time.perf_counter() - clock
    merged["benchmarks"] = benchmarks
    merged["fedlink"] = {
        "mode": mode,
        "large": not quick,
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
