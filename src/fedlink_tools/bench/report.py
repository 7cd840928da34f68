"""Turn pytest-benchmark JSON into ``benchmarks/REPORT.md`` and log-log plots of cost against size.

The report states the machine, then the overhead ratios (each PET path over its plaintext path,
measured in the same run), how cost grows with size (plots under ``benchmarks/plots/`` and a table of
log-log slopes), peak memory, per benchmark group a table of medians and spreads, and which required
measurements have no suite yet. Sizes and ratios come from each benchmark's ``params`` and
``extra_info``; whatever a run lacks (a peer library absent, a large size not run) is left out and
said so, never invented.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlink.errors import BadInput
from fedlink.extras import require

#: Required measurements without a suite so far: (what, words that would name its benchmarks).
PENDING = (
    ("PSI (private set intersection of identifiers across nodes)", ("psi",)),
    ("Linked queries (statistics over a project's link spine)", ("linked_quer", "linked quer", "linked count")),
    ("DP release alone (noise and intervals, without the federation)", ("dp_release", "dp release")),
    ("Flower deployment round trip (a query over Flower next to fedlink's gRPC)", ("flower",)),
)
PLOT_NAMES = ("synthesis.png", "encoding.png", "matching.png", "horizontal.png", "primitives.png", "linked.png")
#: The PET primitives of ``test_bench_pets.py`` (extra_info "primitive"), with what each measures.
PRIMITIVES = (
    ("dp_release", "DP release: OpenDP calibration, discrete Laplace on every cell, exact 95% interval", "dp"),
    ("he_aggregate", "BFV: three vectors encrypted, added as ciphertexts, decrypted", "he"),
    ("he_chain", "linked chain: encrypt, multiply + re-randomise, 9 group products, mask, decrypt", "he"),
)
#: extra_info keys worth showing beside a benchmark's times, with their formats.
NOTE_KEYS = (
    ("records_per_s", "{:,.0f} records/s"),
    ("comparisons_per_s", "{:,.0f} comparisons/s"),
    ("f1", "F1 {:.4f}"),
    ("peak_rss_mib", "peak RSS {:,.0f} MiB"),
    ("ciphertexts_per_node", "{:.0f} ciphertext(s) per node"),
)


@dataclass
class Bench:
    """One benchmark of a run: where it comes from, its parameters and extra_info, its statistics."""

    suite: str
    function: str
    name: str
    group: str
    params: dict[str, Any]
    extra: dict[str, Any]
    stats: dict[str, float]

    def get(self, *keys: str) -> Any:
        """The first of ``keys`` found in extra_info, then in params."""
        for source in (self.extra, self.params):
            for key in keys:
                if source.get(key) is not None:
                    return source[key]
        return None

    def number(self, *keys: str) -> float | None:
        value = self.get(*keys)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    @property
    def median(self) -> float:
        return self.stats["median"]


@dataclass
class Loaded:
    """The benchmarks of one or more JSON files, with what they say about the machine and the run."""

    sources: list[Path]
    benchmarks: list[Bench]
    machine: dict[str, Any] | None
    pytest_machine: dict[str, Any]
    commit: dict[str, Any]
    run: dict[str, Any]
    dropped: int = 0


@dataclass
class ReportResult:
    path: Path
    plots: list[Path]
    benchmarks: int
    headlines: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- input


def _resolve(source: Path) -> Path:
    if source.is_dir():
        found = [p for p in source.glob("*.json") if not p.name.startswith(".")]
        if not found:
            raise BadInput(
                f"no benchmark results (*.json) in {source}: run `fedlink bench run` first, or pass `source=FILE`"
            )
        return max(found, key=lambda p: (p.stat().st_mtime, p.name))
    if not source.exists():
        raise BadInput(f"no such benchmark results file or folder: {source}; run `fedlink bench run` first")
    return source


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not a pytest-benchmark JSON file (not text)") from None
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); pass a --benchmark-json file"
        ) from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BadInput(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return data


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _bench(raw: Any) -> Bench | None:
    if not isinstance(raw, dict):
        return None
    stats = raw.get("stats")
    if not isinstance(stats, dict):
        return None
    numbers = {k: float(v) for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if not all(k in numbers for k in ("median", "min", "max")) or numbers["median"] <= 0:
        return None
    fullname = str(raw.get("fullname") or raw.get("name") or "?")
    name = str(raw.get("name") or fullname.rsplit("::", 1)[-1])
    module = fullname.split("::", 1)[0] if "::" in fullname else ""
    suite = Path(module).stem.removeprefix("test_bench_") if module else "?"
    function = name.split("[", 1)[0]
    params, extra = _dict(raw.get("params")), _dict(raw.get("extra_info"))
    group = str(raw.get("group") or f"{suite}: {function}")
    return Bench(suite, function, name, group, dict(params), dict(extra), numbers)


def load(sources: Sequence[Path]) -> Loaded:
    """Read pytest-benchmark JSON files (a folder means its newest ``*.json``) into one run. A benchmark
    measured in several files (a quick run, then a full run of one suite) is taken from the last file
    that holds it, so a report can combine runs without counting a case twice."""
    if not sources:
        raise BadInput("no benchmark results given: pass `source=FILE_OR_DIR`")
    paths = [_resolve(Path(s)) for s in sources]
    loaded = Loaded(paths, [], None, {}, {}, {})
    latest: dict[tuple[str, str], Bench] = {}
    for path in paths:
        data = _read(path)
        for raw in data["benchmarks"]:
            bench = _bench(raw)
            if bench is None:
                loaded.dropped += 1
            else:
                latest.pop((bench.suite, bench.name), None)  # re-inserted last: the newest file's order
                latest[(bench.suite, bench.name)] = bench
        meta = _dict(data.get("fedlink"))
        if loaded.machine is None and isinstance(meta.get("machine"), dict):
            loaded.machine = meta["machine"]
        if not loaded.run and meta:
            loaded.run = dict(meta)
        elif meta:  # a later run's suites replace the earlier runs' records of the same suites
            merged = {_dict(x).get("suite"): _dict(x) for x in loaded.run.get("suites", [])}
            for suite in meta.get("suites", []):
                merged[_dict(suite).get("suite")] = {**_dict(suite), "mode": meta.get("mode")}
            loaded.run["suites"] = list(merged.values())
        if not loaded.pytest_machine and isinstance(data.get("machine_info"), dict):
            loaded.pytest_machine = data["machine_info"]
        if not loaded.commit and isinstance(data.get("commit_info"), dict):
            loaded.commit = data["commit_info"]
        loaded.run.setdefault("datetime", data.get("datetime"))
    loaded.benchmarks = list(latest.values())
    if not loaded.benchmarks:
        raise BadInput(
            f"{', '.join(str(p) for p in paths)} holds no benchmark results with statistics "
            "(was it written with --benchmark-only, and did any benchmark run?)"
        )
    return loaded


# ---------------------------------------------------------------------------------------------- formatting


def _unit(seconds: Iterable[float]) -> tuple[str, float]:
    smallest = min(seconds, default=1.0)
    if smallest >= 1.0:
        return "s", 1.0
    if smallest >= 1e-3:
        return "ms", 1e3
    return "µs", 1e6


def _t(seconds: float | None, unit: tuple[str, float] | None = None) -> str:
    """A time with an adaptive unit (or the given one)."""
    if seconds is None:
        return "—"
    name, scale = unit or _unit([seconds])
    value = seconds * scale
    text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return f"{text} {name}" if unit is None else text


def _x(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×" if ratio < 10 else f"{ratio:,.0f}×"


def _n(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.3g}"


def _compact(value: float) -> str:
    """A tick label: 1k, 10M, 6."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _threads(workers: Any) -> str:
    count = _n(workers if isinstance(workers, int | float) else 1)
    return f"{count} thread" if count == "1" else f"{count} threads"


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = [":--" if a == "l" else "--:" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out


def _params(bench: Bench) -> str:
    if not bench.params:
        return "—"
    return ", ".join(f"{k}={_n(v) if isinstance(v, int | float) else v}" for k, v in bench.params.items())


def machine_line(loaded: Loaded) -> str:
    """One line naming the machine: from the runner's record, else from pytest-benchmark's."""
    m = loaded.machine
    if m:
        cores = f"{m.get('cores')} cores" if m.get("cores") else "cores unknown"
        if m.get("usable_cores") and m.get("usable_cores") != m.get("cores"):
            cores += f" ({m['usable_cores']} usable)"
        memory = f", {m['memory_gib']:g} GiB memory" if m.get("memory_gib") else ""
        versions = _dict(m.get("versions"))
        listed = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k not in ("fedlink", "pytest-benchmark"))
        return (
            f"**Machine:** {m.get('cpu', 'unknown CPU')}, {cores}{memory}; {m.get('os', '')}; "
            f"Python {m.get('python', '?')}" + (f"; {listed}" if listed else "") + "."
        )
    pm = loaded.pytest_machine
    cpu = _dict(pm.get("cpu"))
    model = cpu.get("brand_raw") or pm.get("processor") or pm.get("machine") or "unknown CPU"
    cores = f", {cpu['count']} cores" if cpu.get("count") else ""
    system = " ".join(str(pm[k]) for k in ("system", "release") if pm.get(k))
    return (
        f"**Machine:** {model}{cores}; {system or 'OS unknown'}; Python {pm.get('python_version', '?')} "
        "(memory and library versions not recorded: run through `fedlink bench run` to record them)."
    )


def _short_machine(loaded: Loaded) -> str:
    m = loaded.machine or {}
    cpu = m.get("cpu") or (loaded.pytest_machine.get("cpu") or {}).get("brand_raw") or ""
    cores = m.get("cores") or (loaded.pytest_machine.get("cpu") or {}).get("count")
    return f"{cpu}, {cores} cores" if cpu and cores else cpu


# ---------------------------------------------------------------------------------------------- series


@dataclass
class Series:
    """Points of cost against size for one line of a plot."""

    label: str
    points: list[tuple[float, Bench]] = field(default_factory=list)

    def sorted(self) -> list[tuple[float, Bench]]:
        return sorted(self.points, key=lambda p: p[0])

    def slope(self) -> float | None:
        """The least-squares slope of log(median) against log(size): 1 is linear growth."""
        pts = {x: b.median for x, b in self.points if x > 0}
        if len(pts) < 2:
            return None
        xs = [math.log(x) for x in pts]
        ys = [math.log(y) for y in pts.values()]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else None


def _collect(benches: Iterable[Bench], size_keys: Sequence[str], label: Any) -> list[Series]:
    """Series of (size, bench): ``label(bench)`` names the line (None leaves the bench out)."""
    series: dict[str, Series] = {}
    for bench in benches:
        size, name = bench.number(*size_keys), label(bench)
        if size is None or size <= 0 or name is None:
            continue
        series.setdefault(name, Series(name)).points.append((size, bench))
    return list(series.values())


def _suite(loaded: Loaded, suite: str) -> list[Bench]:
    return [b for b in loaded.benchmarks if b.suite == suite]


def _horizontal(b: Bench) -> bool:
    return (
        b.get("pet", "path") is not None
        and b.number("nodes") is not None
        and b.number("groups") is not None
        and not b.get("linked")
        and not b.get("rows_axis")
    )


def _linked(b: Bench) -> bool:
    return bool(b.get("linked")) and b.number("people") is not None


@dataclass
class Figure:
    """A PNG: a title and one or more panels (x label, series)."""

    filename: str
    title: str
    panels: list[tuple[str, str, list[Series]]]


def figures(loaded: Loaded) -> list[Figure]:
    synth = _suite(loaded, "synth")
    encode = _suite(loaded, "encode")
    match = _suite(loaded, "match")
    count = [b for b in loaded.benchmarks if _horizontal(b) and b.get("aggregate") == "COUNT"]
    encode_names = {
        "test_normalise": "normalise (plaintext)",
        "test_encode": "normalise + encode (PET)",
        "test_clkhash_peer": "encode only (vs clkhash)",
    }

    def kernel(b: Bench) -> str | None:
        workers = b.get("workers", "threads")
        if b.function.startswith("test_dice_kernel"):  # anonlink's time includes starting its own Python
            kind = "dense block" if "dense" in b.function else "candidate pairs"
            return f"fedlink {kind}, {_threads(workers)}"
        return None

    def pet(b: Bench) -> str:
        return str(b.get("pet", "path"))

    out = [
        Figure(
            "synthesis.png",
            "Synthetic population (fedlink synth)",
            [("people", "synthesis", _collect(synth, ("people",), lambda b: "synthesize"))],
        ),
        Figure(
            "encoding.png",
            "Encoding identifiers for linkage (one core)",
            [("records", "encoding", _collect(encode, ("records",), lambda b: encode_names.get(b.function)))],
        ),
        Figure(
            "matching.png",
            "Linkage matching",
            [
                ("comparisons (pairs)", "Dice kernel", _collect(match, ("pairs", "comparisons"), kernel)),
                (
                    "records per register",
                    "two registers end to end",
                    _collect(
                        [b for b in match if "two_registers" in b.function],
                        ("records_per_party", "size"),
                        lambda b: "normalise, encode, link",
                    ),
                ),
            ],
        ),
        Figure(
            "horizontal.png",
            "Horizontal COUNT GROUP BY (encrypted, clear, DuckDB floor)",
            [
                (
                    "groups",
                    "by groups",
                    _collect(count, ("groups",), lambda b: f"{pet(b)}, {_n(b.number('nodes'))} nodes"),
                ),
                (
                    "nodes",
                    "by nodes",
                    _collect(count, ("nodes",), lambda b: f"{pet(b)}, {_n(b.number('groups'))} groups"),
                ),
            ],
        ),
    ]
    primitives = [b for b in loaded.benchmarks if b.get("primitive")]
    out.append(
        Figure(
            "primitives.png",
            "PET primitives next to their plaintext paths",
            [
                (
                    "values",
                    kind,
                    _collect(
                        [b for b in primitives if b.get("primitive") == kind], ("size",), lambda b: str(b.get("path"))
                    ),
                )
                for kind, _, _ in PRIMITIVES
            ],
        )
    )
    out.append(
        Figure(
            "linked.png",
            "Linked COUNT GROUP BY over 3 nodes (encrypted chain vs DuckDB join)",
            [("people", "linked query", _collect([b for b in loaded.benchmarks if _linked(b)], ("people",), pet))],
        )
    )
    for figure in out:
        figure.panels = [(x, t, s) for x, t, s in figure.panels if any(len(one.points) for one in s)]
    return [f for f in out if f.panels]


def _plot(figure: Figure, folder: Path, machine: str) -> Path:
    require("charts", "the benchmark report").use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    panels = figure.panels
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.8), squeeze=False)
    for ax, (xlabel, title, series) in zip(axes[0], panels, strict=True):
        for one in series:
            pts = one.sorted()
            xs = [x for x, _ in pts]
            ys = [b.median for _, b in pts]
            low = [max(b.median - b.stats["min"], 0.0) for _, b in pts]
            high = [max(b.stats["max"] - b.median, 0.0) for _, b in pts]
            slope = one.slope()
            label = one.label + (f" (slope {slope:.2f})" if slope is not None else "")
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({x for one in series for x, _ in one.points})
        ax.set_xticks(ticks, [_compact(x) for x in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("median time (s); bars: min to max")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{figure.title}\n{machine}" if machine else figure.title, fontsize=11)
    fig.tight_layout()
    path = folder / figure.filename
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- sections


def _horizontal_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    shapes: dict[tuple[str, float, float], dict[str, Bench]] = defaultdict(dict)
    for b in loaded.benchmarks:
        if _horizontal(b) and b.get("aggregate"):
            shapes[(str(b.get("aggregate")), b.number("nodes") or 0, b.number("groups") or 0)][
                str(b.get("pet", "path"))
            ] = b
    goal = [b for b in loaded.benchmarks if b.number("target_s") is not None]
    if not shapes and not goal:
        return []
    lines = ["### Encrypted aggregation: he+dp vs dp vs DuckDB", ""]
    if shapes:
        lines += [
            "A horizontal `GROUP BY` over `events` held at every node (`test_bench_horizontal.py`): `he+dp` "
            "(nodes encrypt their noisy vectors under the analyst's TenSEAL key, the coordinator adds "
            "ciphertexts), `dp` (the same noisy vectors in the clear), and DuckDB reading every node's file "
            "in one process (the non-federated floor). Medians of the same run; the nodes and the coordinator "
            "run in threads on the same cores.",
            "",
        ]
        rows, he_dp = [], []
        for (aggregate, nodes, groups), paths in sorted(shapes.items()):
            med = {p: b.median for p, b in paths.items()}
            ratio = _ratio(med.get("he+dp"), med.get("dp"))
            if ratio is not None:
                he_dp.append((ratio, aggregate, nodes, groups))
            rows.append(
                [
                    aggregate,
                    _n(nodes),
                    _n(groups),
                    _t(med.get("he+dp")),
                    _t(med.get("dp")),
                    _t(med.get("duckdb")),
                    _x(ratio),
                    _x(_ratio(med.get("dp"), med.get("duckdb"))),
                    _x(_ratio(med.get("he+dp"), med.get("duckdb"))),
                ]
            )
        lines += _table(
            ["aggregate", "nodes", "groups", "he+dp", "dp", "DuckDB", "he+dp / dp", "dp / DuckDB", "he+dp / DuckDB"],
            rows,
            "lrrrrrrrr",
        )
        lines.append("")
        if he_dp:
            low, high = min(he_dp), max(he_dp)
            headlines.append(
                f"Encrypted aggregation costs {_x(low[0])} to {_x(high[0])} the clear DP path (he+dp / dp, "
                f"{len(he_dp)} shapes; highest at {high[1]} {_n(high[2])} nodes × {_n(high[3])} groups)."
            )
    for b in goal:
        target = b.number("target_s") or 0.0
        met = b.median < target
        text = (
            f"Goal: {b.get('pet') or 'he+dp'} COUNT GROUP BY over {_n(b.number('nodes'))} nodes × "
            f"{_n(b.number('groups'))} groups answers in a median {_t(b.median)} end to end (target < {_t(target)}, "
            f"{'met' if met else 'NOT met'}; {b.stats.get('rounds', 0):.0f} rounds)."
        )
        lines += [f"**{text}**", ""]
        headlines.append(text)
    return lines


def _encoding_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    by_size: dict[float, dict[str, Bench]] = defaultdict(dict)
    for b in _suite(loaded, "encode"):
        size = b.number("records")
        if size is not None:
            kind = "peer" if b.number("clkhash_records_per_s") is not None else b.function
            by_size[size][kind] = b
    if not by_size:
        return []
    rows = []
    for size, found in sorted(by_size.items()):
        plain, pet, peer = found.get("test_normalise"), found.get("test_encode"), found.get("peer")
        ratio = _ratio(pet.median if pet else None, plain.median if plain else None)
        speed = peer.number("fedlink_over_clkhash") if peer else None
        if speed is None and peer is not None:
            speed = _ratio(peer.number("fedlink_encode_records_per_s"), peer.number("clkhash_records_per_s"))
        rows.append(
            [
                _n(size),
                _t(plain.median) if plain else "—",
                _t(pet.median) if pet else "—",
                _x(ratio),
                _n(pet.number("encode_only_records_per_s")) if pet else "—",
                _n(peer.number("clkhash_records_per_s")) if peer else "—",
                _x(speed),
            ]
        )
    largest = max(by_size)
    lines = [
        "### Encoding identifiers: fedlink vs plaintext normalisation vs clkhash",
        "",
        "`test_bench_encode.py`, pinned to one core. PET / plaintext is the median of normalise + encode "
        "(keyed match keys, salted XOR-folded Bloom filters, blocking keys) over the median of normalising "
        "alone. fedlink / clkhash compares the speed of the Bloom encoding alone on the same normalised "
        "records (above 1: fedlink is faster; clkhash runs in a separate Python, when present).",
        "",
    ]
    lines += _table(
        [
            "records",
            "normalise (plaintext)",
            "normalise + encode (PET)",
            "PET / plaintext",
            "fedlink encode only, records/s",
            "clkhash, records/s",
            "fedlink / clkhash speed",
        ],
        rows,
    )
    lines.append("")
    top = by_size[largest]
    if top.get("test_encode") and top.get("test_normalise"):
        ratio = _ratio(top["test_encode"].median, top["test_normalise"].median)
        headlines.append(f"Encoding {_n(largest)} records costs {_x(ratio)} plain normalisation (PET / plaintext).")
    if top.get("peer"):
        speed = top["peer"].number("fedlink_over_clkhash")
        if speed is not None:
            headlines.append(f"fedlink's Bloom encoding runs at {_x(speed)} clkhash's speed on {_n(largest)} records.")
    return lines


def _matching_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    match = _suite(loaded, "match")
    dense = {int(b.number("workers") or 0): b for b in match if b.function == "test_dice_kernel_on_a_dense_block"}
    anonlink = next((b for b in match if "anonlink" in b.function), None)
    registers = sorted(
        (b for b in match if "two_registers" in b.function and b.number("records_per_party", "size")),
        key=lambda b: b.number("records_per_party", "size") or 0,
    )
    threshold = next((b for b in match if isinstance(b.extra.get("f1_by_threshold"), dict)), None)
    febrl = next((b for b in match if b.function == "test_link_febrl4"), None)
    probabilistic = _probabilistic_lines(match, headlines)
    if not (dense or anonlink or registers or threshold or febrl or probabilistic):
        return []
    lines = ["### Matching: fedlink's Dice kernel vs anonlink, and linking end to end", ""]
    theirs = anonlink.number("comparisons_per_s") if anonlink else None
    if dense or anonlink:
        rows = []
        for workers, b in sorted(dense.items()):
            ours = b.number("comparisons_per_s")
            rows.append(
                [
                    f"fedlink, {_threads(workers)}",
                    _n(b.number("pairs")),
                    _t(b.median),
                    _n(ours),
                    _x(_ratio(ours, theirs)),
                ]
            )
        if anonlink is not None:
            rows.append(["anonlink, 1 thread", _n(anonlink.number("comparisons", "pairs")), "—", _n(theirs), "1.00×"])
        lines += [
            "Every pair of two blocks of random 1,024-bit filters (`test_bench_match.py`); comparisons/s from "
            "each kernel's best round (anonlink's measured inside its own Python, so its wall time is not comparable).",
            "",
        ]
        lines += _table(["kernel", "pairs", "median", "comparisons/s", "vs anonlink"], rows, "lrrrr")
        lines.append("")
        one_thread = dense.get(1)
        ours1 = one_thread.number("comparisons_per_s") if one_thread is not None else None
        if ours1 and theirs:
            ratio = ours1 / theirs
            phrase = f"{_x(1 / ratio)} slower than" if ratio < 1 else f"{_x(ratio)} as fast as"
            headlines.append(
                f"fedlink's Dice kernel (numba-compiled, 1 thread) is {phrase} anonlink's C++ kernel on a dense block."
            )
    elif dense:
        lines += ["anonlink was not available in this run (no peers Python), so there is no kernel ratio.", ""]
    if registers:
        rows = []
        for b in registers:
            stages = ", ".join(
                f"{k} {b.number(k):.2f} s"
                for k in ("encode", "exact", "block", "compare", "cluster")
                if b.number(k) is not None
            )
            rows.append(
                [
                    _n(b.number("records_per_party", "size")),
                    _t(b.median),
                    stages or "—",
                    _n(b.number("comparisons")),
                    f"{b.number('f1') or 0:.4f}",
                ]
            )
        lines += [
            "Two registers (DWP- and NHS-style corruption) linked end to end: normalise, encode, exact tiers, "
            "blocking, Dice, clustering.",
            "",
        ]
        lines += _table(
            ["records per register", "median", "stages (last round)", "Dice comparisons", "F1"], rows, "rrlrr"
        )
        lines.append("")
        top = registers[-1]
        headlines.append(
            f"Linking two registers of {_n(top.number('records_per_party', 'size'))} records takes "
            f"{_t(top.median)} end to end (F1 {top.number('f1') or 0:.4f})."
        )
    if threshold is not None:
        f1 = threshold.extra["f1_by_threshold"]
        best = max(f1, key=lambda t: f1[t] or 0.0)
        lines += ["F1 by Dice threshold (DfE + DWP + NHS of 100,000 synthetic people):", ""]
        lines += _table(
            ["threshold", "F1"],
            [[t, f"{v:.4f}" + (" (best)" if t == best else "")] for t, v in f1.items() if v is not None],
        )
        lines.append("")
    if febrl is not None:
        quality = f"F1 {febrl.number('f1') or 0:.4f} (precision {febrl.number('precision') or 0:.4f}, recall "
        quality += f"{febrl.number('recall') or 0:.4f})"
        lines += [
            f"FEBRL4 (5,000 true pairs, `schemas/febrl.json`): {quality}, {_t(febrl.median)} encode and link.",
            "",
        ]
        headlines.append(f"FEBRL4 links with {quality}.")
    return lines + probabilistic


def _probabilistic_lines(match: list[Bench], headlines: list[str]) -> list[str]:
    """Probabilistic linkage: side by side with the CLK path, FEBRL4 measured and estimated, defences."""
    lines: list[str] = []
    sides = sorted(
        (b for b in match if b.function == "test_three_departments_side_by_side" and b.number("people")),
        key=lambda b: b.number("people") or 0,
    )
    if sides:
        rows = []
        for b in sides:
            for path in ("clk", "probabilistic"):
                run = b.extra.get(path)
                if not isinstance(run, dict):
                    continue
                estimated = run.get("estimated_f1")
                rows.append(
                    [
                        _n(b.number("people")),
                        path,
                        f"{run['seconds']:.1f} s",
                        f"{run['encode_seconds']:.1f} s",
                        f"{run['link_seconds']:.1f} s",
                        f"{run['peak_mib'] / 1024:.2f} GiB",
                        f"{run['f1']:.4f}",
                        "—" if estimated is None else f"{estimated:.4f}",
                    ]
                )
        lines += [
            "### Probabilistic linkage: side by side with the record-level CLK path",
            "",
            "DfE, DWP and NHS of a synthetic population (default corruption), one record per distinct identifier "
            "tuple, encode + link (for the probabilistic path: field-level encodings, EM, scoring, clustering and "
            "the label-free estimate), each path in a process of its own, one after the other "
            "(`test_three_departments_side_by_side`). Peak RSS is each process's, data loading included.",
            "",
        ]
        lines += _table(
            ["people", "path", "encode + link", "encode", "link", "peak RSS", "F1", "estimated F1"], rows, "rlrrrrrr"
        )
        lines.append("")
        top = sides[-1]
        time_ratio, memory_ratio = top.number("time_ratio"), top.number("memory_ratio")
        if time_ratio and memory_ratio:
            verdict = "met" if time_ratio <= 1.3 and memory_ratio <= 1.3 else "not met"
            lines += [
                f"Probabilistic / CLK at {_n(top.number('people'))} people: time {time_ratio:.2f}x, memory "
                f"{memory_ratio:.2f}x (goal: within 1.3x, {verdict}).",
                "",
            ]
            headlines.append(
                f"Probabilistic linkage of three departments of {_n(top.number('people'))} people takes "
                f"{time_ratio:.2f}x the time and {memory_ratio:.2f}x the memory of the CLK path."
            )
    febrl = sorted(
        (b for b in match if b.function == "test_probabilistic_febrl4"), key=lambda b: str(b.get("identifier"))
    )
    if febrl:
        rows = [
            [
                "none" if b.get("identifier") == "none" else str(b.get("identifier")),
                f"{b.number('precision') or 0:.4f}",
                f"{b.number('recall') or 0:.4f}",
                f"{b.number('f1') or 0:.4f}",
                f"{b.number('estimated_f1') or 0:.4f}",
                _t(b.median),
            ]
            for b in febrl
        ]
        lines += [
            "FEBRL4 with its own column names through `fedlink linkage run` (the federation's code), the default "
            "spec, no labels (`test_probabilistic_febrl4`):",
            "",
        ]
        lines += _table(["national identifier", "precision", "recall", "F1", "estimated F1", "median"], rows, "lrrrrr")
        lines.append("")
        plain = next((b for b in febrl if b.get("identifier") == "none"), None)
        if plain is not None:
            headlines.append(
                f"FEBRL4 links probabilistically without labels or the social security number with F1 "
                f"{plain.number('f1') or 0:.4f} (estimated without labels: {plain.number('estimated_f1') or 0:.4f})."
            )
    defences = [b for b in match if b.function == "test_defence_cost"]
    if defences:
        rows = []
        for b in defences:
            epsilon = b.number("epsilon_name_filter")
            rows.append(
                [
                    str(b.get("defence")),
                    "—" if epsilon is None or epsilon == float("inf") else f"{epsilon:,.0f}",
                    "—" if b.number("febrl4") is None else f"{b.number('febrl4'):.4f}",
                    "—" if b.number("synthetic") is None else f"{b.number('synthetic'):.4f}",
                ]
            )
        lines += [
            "F1 with and without the defences of field-level filters against frequency attacks "
            "(`test_defence_cost`; epsilon of bit flipping per 256-bit name filter; synthetic: three departments "
            "of 30,000 people):",
            "",
        ]
        lines += _table(["defence", "epsilon per name filter", "FEBRL4 F1", "synthetic F1"], rows, "lrrr")
        lines.append("")
    return lines


def _memory_section(loaded: Loaded) -> list[str]:
    rows = []
    for b in loaded.benchmarks:
        peak = b.number("peak_rss_mib")
        if peak is not None:
            arrow = b.number("arrow_pool_peak_mib")
            rows.append([f"`{b.name}`", b.suite, _n(peak), _n(arrow)])
    if not rows:
        return []
    lines = [
        "### Peak memory",
        "",
        "From `extra_info`: the high-water mark of resident memory (`ru_maxrss`) of the suite's pytest process "
        "when the benchmark finished. It only grows, so it describes a size exactly when that size is the largest "
        "run so far in its suite, and is an upper bound otherwise (each suite runs in its own process under "
        "`fedlink bench run`).",
        "",
    ]
    return [*lines, *_table(["benchmark", "suite", "peak RSS (MiB)", "Arrow pool peak (MiB)"], rows, "llrr"), ""]


def _scaling_section(figs: list[Figure], plots: dict[str, Path], out: Path) -> list[str]:
    lines = ["## How cost grows with size", ""]
    rows = []
    for figure in figs:
        for xlabel, title, series in figure.panels:
            for one in series:
                pts = one.sorted()
                if not pts:
                    continue
                slope = one.slope()
                rows.append(
                    [
                        f"{figure.title.split(' (')[0]}: {title}"
                        if len(figure.panels) > 1
                        else figure.title.split(" (")[0],
                        one.label,
                        f"{_n(pts[0][0])} to {_n(pts[-1][0])} {xlabel}"
                        if len(pts) > 1
                        else f"{_n(pts[0][0])} {xlabel}",
                        _t(pts[0][1].median),
                        _t(pts[-1][1].median),
                        "—" if slope is None else f"{slope:.2f}",
                    ]
                )
    if not rows:
        return [*lines, "No benchmark in this run records a size, so there is nothing to plot.", ""]
    lines += [
        "Log-log slope of median time against size (1.0: linear; below 1: fixed costs still dominate at these sizes).",
        "",
        *_table(["family", "series", "sizes", "smallest", "largest", "slope"], rows, "llrrrr"),
        "",
    ]
    for figure in figs:
        path = plots.get(figure.filename)
        if path is not None:
            link = Path(os.path.relpath(path, out.parent)).as_posix()
            lines += [f"![{figure.title}]({link})", ""]
    return lines


def _groups_section(loaded: Loaded) -> list[str]:
    groups: dict[str, list[Bench]] = {}
    for b in loaded.benchmarks:
        groups.setdefault(b.group, []).append(b)
    lines = ["## Results by benchmark group", "", "Medians and spreads of every benchmark (IQR: interquartile range)."]
    for group, benches in groups.items():
        unit = _unit(b.median for b in benches)
        rows = []
        for b in benches:
            notes = []
            for key, fmt in NOTE_KEYS:
                value = b.number(key)
                if value is not None and (value or key != "ciphertexts_per_node"):
                    notes.append(fmt.format(value))
            rows.append(
                [
                    f"`{b.name}`",
                    _params(b),
                    _t(b.median, unit),
                    _t(b.stats.get("iqr"), unit),
                    _t(b.stats["min"], unit),
                    _t(b.stats["max"], unit),
                    _n(b.stats.get("rounds")),
                    "; ".join(notes) or "",
                ]
            )
        u = unit[0]
        lines += ["", f"### {group}", ""]
        lines += _table(
            ["benchmark", "params", f"median ({u})", f"IQR ({u})", f"min ({u})", f"max ({u})", "rounds", "notes"],
            rows,
            "llrrrrrl",
        )
    return [*lines, ""]


def _primitives_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    lines: list[str] = []
    for kind, what, pet in PRIMITIVES:
        by_size: dict[float, dict[str, Bench]] = defaultdict(dict)
        for b in loaded.benchmarks:
            size = b.number("size")
            if b.get("primitive") == kind and size:
                by_size[size][str(b.get("path"))] = b
        if not by_size:
            continue
        rows = []
        for size, paths in sorted(by_size.items()):
            top, plain = paths.get(pet), paths.get("plain")
            rows.append(
                [
                    _n(size),
                    _t(top.median if top else None),
                    _t(plain.median if plain else None),
                    _x(_ratio(top.median if top else None, plain.median if plain else None)),
                ]
            )
        if not lines:
            lines = [
                "### PET primitives on their own (`test_bench_pets.py`)",
                "",
                "Each next to its plaintext path in the same run: DP next to releasing the rounded vector "
                "without noise; BFV and the chain next to NumPy computing the same sums.",
                "",
            ]
        lines += [f"**{kind}**: {what}.", ""]
        lines += _table(["values", pet, "plain", f"{pet} / plain"], rows, "rrrr")
        lines.append("")
        largest = max(by_size)
        top = by_size[largest].get(pet)
        if top is not None:
            headlines.append(f"{kind} over {_n(largest)} values takes {_t(top.median)}.")
    return lines


def _psi_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    groups = [b for b in loaded.benchmarks if b.get("psi_group")]
    by_items: dict[float, dict[str, Bench]] = defaultdict(dict)
    for b in loaded.benchmarks:
        if b.get("psi") and b.number("items"):
            by_items[b.number("items") or 0][str(b.get("path"))] = b
    if not groups and not by_items:
        return []
    lines = ["### PSI (`test_bench_psi.py`)", ""]
    if groups:
        rows = [
            [str(b.get("psi_group")), _n(b.number("multiplications_per_s"))]
            for b in sorted(groups, key=lambda b: -(b.number("multiplications_per_s") or 0))
        ]
        lines += ["Scalar multiplications per second through each binding, one core:", ""]
        lines += [*_table(["group and binding", "multiplications/s"], rows, "lr"), ""]
    if by_items:
        rows = []
        for items, paths in sorted(by_items.items()):
            ours, plain, peer = paths.get("psi"), paths.get("plain"), paths.get("openmined-psi")
            peer_s = peer.number("peer_seconds") if peer else None
            rows.append(
                [
                    _n(items),
                    _t(ours.median if ours else None),
                    _t(plain.median if plain else None),
                    _x(_ratio(ours.median if ours else None, plain.median if plain else None)),
                    _t(peer_s),
                    _x(_ratio(peer_s, ours.median if ours else None)),
                ]
            )
            if ours is not None and items >= 1_000_000:
                met = "met" if ours.median < 60 else "NOT met"
                headlines.append(
                    f"Two-party PSI of {_n(items)} x {_n(items)} items: {_t(ours.median)} (goal 60 s: {met})."
                )
        lines += [
            "Two-party PSI, both parties in one process on this machine's cores, half the items in common; "
            "openmined-psi's own timing of its protocol, in its own Python:",
            "",
        ]
        lines += _table(
            [
                "items per party",
                "fedlink PSI",
                "set intersection",
                "PSI / plain",
                "openmined-psi",
                "openmined / fedlink",
            ],
            rows,
            "rrrrrr",
        )
    return [*lines, ""]


def _backends_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    rows = []
    for b in sorted(
        (b for b in loaded.benchmarks if b.get("backend") and b.number("encode_seconds") is not None),
        key=lambda b: (b.number("rows") or 0, str(b.get("backend"))),
    ):
        rows.append(
            [
                _n(b.number("rows")),
                str(b.get("backend")),
                _t(b.number("load_seconds")),
                _t(b.number("query_seconds")),
                _t(b.number("encode_seconds")),
                _n(b.number("encode_people")),
                _n(b.number("encode_peak_rss_mib")),
            ]
        )
    if not rows:
        return []
    largest = max(b.number("rows") or 0 for b in loaded.benchmarks if b.get("backend"))
    headlines.append(f"Node backends measured up to {_n(largest)} rows (DuckDB files, PostgreSQL, Spark).")
    lines = [
        "### Node data backends (`test_bench_backends.py`)",
        "",
        "The same table as a Parquet file (DuckDB), in PostgreSQL and in Spark local mode: a horizontal "
        "`COUNT`/`SUM` by group through the node's operator, and the linkage encoding pass (people streamed "
        "out in batches, normalised, encoded). Each backend in a process of its own; peak memory is that "
        "process's high-water mark after both operations.",
        "",
    ]
    lines += _table(
        ["rows", "backend", "load / start", "query", "encoding pass", "people", "peak RSS (MiB)"], rows, "rlrrrrr"
    )
    return [*lines, ""]


def _rows_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    by_rows: dict[float, dict[str, Bench]] = defaultdict(dict)
    for b in loaded.benchmarks:
        if b.get("rows_axis") and b.number("rows_per_node"):
            by_rows[b.number("rows_per_node") or 0][str(b.get("pet", "path"))] = b
    if not by_rows:
        return []
    lines = [
        "### Horizontal COUNT by rows per node (`test_bench_horizontal.py`)",
        "",
        "he+dp `COUNT(*) GROUP BY` over 2 nodes x 10 groups as the nodes' tables grow, next to the clear DP "
        "path and DuckDB reading both files: the ciphertexts stay the same size, only the nodes' scans grow.",
        "",
    ]
    rows = []
    for size, paths in sorted(by_rows.items()):
        he, dp, floor = paths.get("he+dp"), paths.get("dp"), paths.get("duckdb")
        rows.append(
            [
                _n(size),
                _t(he.median if he else None),
                _t(dp.median if dp else None),
                _t(floor.median if floor else None),
                _x(_ratio(he.median if he else None, dp.median if dp else None)),
                _x(_ratio(he.median if he else None, floor.median if floor else None)),
            ]
        )
    largest = max(by_rows)
    he = by_rows[largest].get("he+dp")
    if he is not None:
        headlines.append(f"he+dp COUNT GROUP BY over 2 nodes with {_n(largest)} rows each: {_t(he.median)}.")
    lines += _table(["rows per node", "he+dp", "dp", "DuckDB", "he+dp / dp", "he+dp / DuckDB"], rows, "rrrrrr")
    return [*lines, ""]


def _linked_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    by_people: dict[float, dict[str, Bench]] = defaultdict(dict)
    for b in loaded.benchmarks:
        if _linked(b):
            by_people[b.number("people") or 0][str(b.get("pet", "path"))] = b
    if not by_people:
        return []
    lines = [
        "### Linked queries: the encrypted chain vs a DuckDB join (`test_bench_linked.py`)",
        "",
        "A linked `COUNT(*) ... GROUP BY` (9 groups, a predicate at each of 3 nodes), spine already built, "
        "through the federation on loopback, next to DuckDB joining the same Parquet files on the link key "
        "in plaintext. Goal: within 15x DuckDB at 1,000,000 people.",
        "",
    ]
    rows = []
    for people, paths in sorted(by_people.items()):
        he, floor = paths.get("he+dp"), paths.get("duckdb")
        ratio = _ratio(he.median if he else None, floor.median if floor else None)
        rows.append([_n(people), _t(he.median if he else None), _t(floor.median if floor else None), _x(ratio)])
        if people >= 1_000_000 and ratio is not None:
            verdict = "met" if ratio <= 15 else "NOT met"
            headlines.append(
                f"Linked COUNT GROUP BY over {_n(people)} people: {_x(ratio)} DuckDB (goal 15x: {verdict})."
            )
    lines += _table(["people", "he+dp", "DuckDB", "he+dp / DuckDB"], rows, "rrrr")
    return [*lines, ""]


def _transport_section(loaded: Loaded, headlines: list[str]) -> list[str]:
    paths = {str(b.get("transport")): b for b in loaded.benchmarks if b.get("transport")}
    if not paths:
        return []
    lines = [
        "### Transport: a query over Flower vs fedlink's gRPC (`test_bench_flower.py`)",
        "",
        "The same he+dp `COUNT`/`SUM ... GROUP BY region` over the charity's two branches, end to end from the "
        "analyst: over fedlink's mTLS gRPC (coordinator and nodes as processes on loopback) and over Flower's "
        "deployment runtime (SuperLink and SuperNodes as processes, `flwr run`, a ServerApp process per run and "
        "a ClientApp process per message). A query is three Grid rounds (catalogue, reserve, execute), and "
        "Flower polls every 3 s on both sides of each round.",
        "",
    ]
    rows = []
    for name in ("grpc", "flower"):
        b = paths.get(name)
        if b is None:
            continue
        spread = f"{_t(b.stats['min'])} - {_t(b.stats['max'])}"  # _bench keeps only stats with both
        rows.append([name, _t(b.median), spread, _n(b.stats.get("rounds"))])
    lines += _table(["transport", "median", "min - max", "rounds"], rows, "lrrr")
    grpc, flower = paths.get("grpc"), paths.get("flower")
    ratio = _ratio(flower.median if flower else None, grpc.median if grpc else None)
    if ratio is not None and grpc is not None and flower is not None:
        lines += ["", f"Flower / gRPC: {_x(ratio)}."]
        headlines.append(
            f"A query over Flower's deployment runtime takes {_t(flower.median)}, over fedlink's gRPC "
            f"{_t(grpc.median)} ({_x(ratio)})."
        )
    return [*lines, ""]


def _coverage_section(loaded: Loaded) -> list[str]:
    names = " ".join(f"{b.suite} {b.name} {b.group}".lower() for b in loaded.benchmarks)
    missing = [what for what, words in PENDING if not any(w in names for w in words)]
    lines = ["## Not benchmarked yet", ""]
    if missing:
        lines += ["These required measurements have no suite yet, so this report gives no numbers for them:", ""]
        lines += [f"- {what}" for what in missing]
    else:
        lines.append("Every required measurement has a suite.")
    skipped = []
    for suite in loaded.run.get("suites", []):
        for item in _dict(suite).get("skipped", []):
            cases = _dict(item).get("cases", 1)
            reason = _dict(item).get("reason", item)
            skipped.append(f"- `{_dict(suite).get('suite')}`, {cases} case{'s' if cases != 1 else ''}: {reason}")
    if skipped:
        lines += ["", "Skipped in this run (pytest's reasons):", "", *skipped]
    return [*lines, ""]


def _run_lines(loaded: Loaded, out: Path) -> list[str]:
    run = loaded.run
    sources = ", ".join(f"`{_display(p, out)}`" for p in loaded.sources)
    commit = loaded.commit.get("id")
    bits = [f"From {sources}"]
    if run.get("mode"):
        mode = "quick run (the suites' default sizes)" if run["mode"] == "quick" else "full run (FEDLINK_BENCH_LARGE=1)"
        bits.append(mode)
    when = run.get("started") or run.get("datetime")
    if when:
        bits.append(f"started {str(when)[:19].replace('T', ' ')} UTC")
    if run.get("seconds"):
        bits.append(f"{float(run['seconds']):.0f} s in all")
    if commit:
        bits.append(f"commit {str(commit)[:10]}{' (with uncommitted changes)' if loaded.commit.get('dirty') else ''}")
    lines = ["; ".join(bits) + f"; {len(loaded.benchmarks)} benchmarks."]
    if loaded.dropped:
        lines.append(f"{loaded.dropped} entries without statistics were left out.")
    suites = [s for s in run.get("suites", []) if isinstance(s, dict)]
    if suites:
        parts = [
            f"`{s.get('suite')}` {s.get('benchmarks', 0)} in {float(s.get('seconds') or 0):.0f} s"
            + (f" ({s['mode']} run)" if s.get("mode") and s.get("mode") != run.get("mode") else "")
            + ("" if s.get("returncode") == 0 else f" (FAILED, pytest exit {s.get('returncode')})")
            for s in suites
        ]
        lines.append("Suites: " + ", ".join(parts) + ".")
    return lines


def _display(path: Path, out: Path) -> str:
    for base in (Path.cwd(), out.parent.parent, out.parent):
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return path.name


# ---------------------------------------------------------------------------------------------- entry point


def write_report(
    source: Path | Sequence[Path] | None = None,
    out: Path = Path("benchmarks/REPORT.md"),
    plots_dir: Path | None = None,
) -> ReportResult:
    """Write the Markdown report at ``out`` and its PNG plots (default ``<out's folder>/plots``) from
    pytest-benchmark JSON: a file, several files, or a folder (its newest ``*.json``; default
    ``benchmarks/results``)."""
    if source is None:
        sources: list[Path] = [Path("benchmarks/results")]
    elif isinstance(source, str | Path):
        sources = [Path(source)]
    else:
        sources = [Path(s) for s in source]
    loaded = load(sources)
    plots_dir = plots_dir if plots_dir is not None else out.parent / "plots"
    try:
        plots_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create the plots folder {plots_dir}: {exc.strerror or exc}") from None
    machine = _short_machine(loaded)
    figs = figures(loaded)
    plots = {f.filename: _plot(f, plots_dir, machine) for f in figs}
    for name in PLOT_NAMES:  # a plot this run has no data for must not be left over from an older run
        if name not in plots:
            (plots_dir / name).unlink(missing_ok=True)

    headlines: list[str] = []
    ratios = _horizontal_section(loaded, headlines) + _rows_section(loaded, headlines)
    ratios += _encoding_section(loaded, headlines)
    ratios += _matching_section(loaded, headlines) + _linked_section(loaded, headlines)
    ratios += _psi_section(loaded, headlines) + _primitives_section(loaded, headlines)
    ratios += _backends_section(loaded, headlines) + _transport_section(loaded, headlines)
    ratios += _memory_section(loaded)
    for b in sorted(_suite(loaded, "synth"), key=lambda b: b.number("people") or 0)[-1:]:
        people = b.number("people")
        if people:
            headlines.append(
                f"Synthesising {_n(people)} people takes {_t(b.median)} ({_n(people / b.median)} people/s)."
            )

    lines = [
        "# fedlink benchmark report",
        "",
        "Generated by `fedlink bench report` from the pytest-benchmark suites in `benchmarks/` "
        "(`fedlink bench run --quick` for the default sizes, `fedlink bench run` for all of them). "
        "Absolute times hold only for the machine below; ratios compare paths measured in the same run.",
        "",
        machine_line(loaded),
        "",
        *_run_lines(loaded, out),
        "",
        "## Headlines",
        "",
        *([f"- {h}" for h in headlines] or ["- No overhead ratio could be computed from this run."]),
        "",
        "## Overhead ratios",
        "",
        *(ratios or ["No benchmark in this run pairs a PET path with its plaintext path.", ""]),
        *_scaling_section(figs, plots, out),
        *_groups_section(loaded),
        *_coverage_section(loaded),
    ]
    text = "\n".join(lines).rstrip() + "\n"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot write the report {out}: {exc.strerror or exc}") from None
    return ReportResult(out, list(plots.values()), len(loaded.benchmarks), headlines)
