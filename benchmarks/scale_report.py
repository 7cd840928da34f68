"""Plot the scale suite's figures (``benchmarks/scale/people-*.json``, from ``test_bench_scale.py``) against
people on log-log axes, and project a larger federation on a Spark cluster from the measured costs.

    python benchmarks/scale_report.py            # writes benchmarks/plots/scale.png, prints Markdown

The projection (printed as a Markdown section for ``benchmarks/REPORT.md``) takes, from the largest size
measured: the encoding cost per record and core (nodes encode in parallel, each on its own machine),
the wire bytes per record, the linkage unit's comparison cost per candidate pair and core, the growth of
candidate pairs with people (a power law fitted over the sizes measured), the EM fit's cost (it reads
tallies and a bounded random sample: near constant), and the clustering and estimate cost per record
(single machine here; a distributed connected-components step on Spark). The Spark cluster's
comparison throughput per core and its fixed cost per link come from the Spark linkage unit's own runs
in local mode (``benchmarks/scale/spark-people-*.json``, written by ``test_bench_spark_linkage.py`` at
10,000 people and more): a line ``seconds = fixed + pairs / (rate x cores)`` through two or more sizes
measured on one machine, so that the jobs' fixed costs (scheduling, Python workers, dozens of small
jobs) are not charged per pair. With fewer than two sizes the in-process figure stands in, said so.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "scale"
PLOT = Path(__file__).parent / "plots" / "scale.png"

#: The projected federation and the cluster it is projected on.
TARGET_PEOPLE = 60_000_000
TARGET_DEPARTMENTS = 5
CLUSTER = {"executors": 16, "cores_per_executor": 8, "memory_per_executor_gib": 32, "network_gbit_s": 10}

STAGE_GROUPS = {
    "synthesis": ("synthesis",),
    "encode (per node, max)": ("encode dfe", "encode dwp", "encode nhs"),
    "transfer (per node, max)": ("transfer dfe", "transfer dwp", "transfer nhs"),
    "link": ("link",),
    "DuckDB three-way join": ("duckdb join",),
    "linked query": ("linked query",),
    "horizontal query": ("horizontal query",),
}


def load() -> list[dict[str, Any]]:
    runs = [json.loads(path.read_text()) for path in RESULTS.glob("people-*.json")]
    return sorted(runs, key=lambda run: run["people"])


def spark_costs() -> dict[str, Any] | None:
    """Spark's fixed cost (s) and throughput per core (pairs/s) from its local-mode runs: the least-squares
    line ``seconds = fixed + pairs / total_rate`` through every recorded size run with the most common
    number of cores; None with fewer than two sizes or a line that does not rise."""
    runs = [json.loads(path.read_text()) for path in RESULTS.glob("spark-people-*.json")]
    if not runs:
        return None
    cores = max({r["cores"] for r in runs}, key=lambda c: sum(r["cores"] == c for r in runs))
    runs = sorted((r for r in runs if r["cores"] == cores), key=lambda r: r["pairs_compared"])
    if len({r["pairs_compared"] for r in runs}) < 2:
        return None
    slope, intercept = statistics.linear_regression(
        [float(r["pairs_compared"]) for r in runs], [float(r["spark_seconds"]) for r in runs]
    )
    if slope <= 0:
        return None
    return {"cores": cores, "pairs_per_s_per_core": 1 / slope / cores, "fixed_s": max(intercept, 0.0), "runs": runs}


def _figure(run: dict[str, Any], names: tuple[str, ...], key: str) -> float | None:
    values = [run["stages"][n].get(key) for n in names if n in run["stages"] and "error" not in run["stages"][n]]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def plot(runs: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12.8, 4.8))
    for label, names in STAGE_GROUPS.items():
        people = [r["people"] for r in runs if _figure(r, names, "seconds") is not None]
        if not people:
            continue
        chosen = [r for r in runs if _figure(r, names, "seconds") is not None]
        left.plot(people, [_figure(r, names, "seconds") for r in chosen], marker="o", label=label)
        right.plot(people, [_figure(r, names, "peak_rss_mib") / 1024 for r in chosen], marker="o", label=label)
    for axis, title, unit in ((left, "wall time", "seconds"), (right, "peak memory per process", "GiB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("people in the population")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    right.axhline(12, color="grey", linestyle="--", linewidth=1)
    right.text(runs[0]["people"], 12.6, "goal for the linkage unit at 1e7: 12 GiB", fontsize=8, color="grey")
    left.legend(fontsize=8)
    fig.suptitle("Scale suite: three departments (test_bench_scale.py)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return PLOT


def table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| people | records (DfE, DWP, NHS) | stage | wall | peak RSS | peak anonymous |",
        "| --: | :-- | :-- | --: | --: | --: |",
    ]
    for run in runs:
        link = run["stages"].get("link", {})
        records = ", ".join(f"{n:,}" for n in link.get("records", [])) or "—"
        for name, figures in run["stages"].items():
            if "error" in figures:
                lines.append(f"| {run['people']:,} | {records} | {name} | — | — | {figures['error']} |")
                continue
            extra = ""
            if name in ("linked query", "horizontal query"):
                extra = f" (query {figures['query_s']:.1f} s; DuckDB {figures['duckdb_s'] * 1000:.0f} ms)"
            lines.append(
                f"| {run['people']:,} | {records} | {name}{extra} | {figures['seconds']:.1f} s | "
                f"{figures['peak_rss_mib'] / 1024:.2f} GiB | {figures['peak_anon_mib'] / 1024:.2f} GiB |"
            )
    lines += [
        "",
        "| people | link stages (s) | candidate pairs | scored pairs | F1 | estimated F1 |",
        "| --: | :-- | --: | --: | --: | --: |",
    ]
    for run in runs:
        link = run["stages"].get("link", {})
        if "f1" not in link:
            continue
        stages = ", ".join(f"{k} {v:.0f}" for k, v in link["stages"].items())
        lines.append(
            f"| {run['people']:,} | {stages} | {link['candidates']:,} | {link['scored_pairs']:,} | "
            f"{link['f1']:.4f} | {link['estimated_f1']:.4f} |"
        )
    return lines


def projection(runs: list[dict[str, Any]]) -> list[str]:
    linked_runs = [r for r in runs if "f1" in r["stages"].get("link", {})]
    if not linked_runs:
        return ["No size has a completed link stage: nothing to project from."]
    last = linked_runs[-1]
    link = last["stages"]["link"]
    records = link["records"]
    share = sum(records) / len(records) / last["people"]  # records of a department per person
    encode_s = sum(last["stages"][f"encode {n}"]["seconds"] for n in ("dfe", "dwp", "nhs"))
    encode_per_record = encode_s / sum(records)  # one core each
    wire_per_record = sum(last["stages"][f"transfer {n}"]["wire_bytes"] for n in ("dfe", "dwp", "nhs")) / sum(records)
    pair_count = len(records) * (len(records) - 1) // 2
    pairs_per_record_pair = link["candidates"] / pair_count / (sum(records) / len(records))
    if len(linked_runs) >= 2:
        first = linked_runs[0]["stages"]["link"]
        growth = math.log(link["candidates"] / first["candidates"]) / math.log(
            last["people"] / linked_runs[0]["people"]
        )
    else:
        growth = 1.0
    # core-seconds a pair: wall time x this machine's cores (an upper bound: parts run on one core);
    # comparing and, where timed apart ("score"), scoring the spilled pairs are per pair and distributable
    per_pair_s = link["stages"]["compare"] + link["stages"].get("score", 0.0)
    compare_per_pair = per_pair_s / link["candidates"] * last["machine"]["cpus"]
    spark = spark_costs()
    spark_rate = spark["pairs_per_s_per_core"] if spark else 1 / compare_per_pair
    per_record_rest = (link["stages"]["link"] + link["stages"].get("estimate", 0.0)) / sum(records)

    target_records = share * TARGET_PEOPLE
    target_pairs = TARGET_DEPARTMENTS * (TARGET_DEPARTMENTS - 1) // 2
    scale = (TARGET_PEOPLE / last["people"]) ** growth
    candidates = pairs_per_record_pair * (sum(records) / len(records)) * scale * target_pairs
    cores = CLUSTER["executors"] * CLUSTER["cores_per_executor"]
    compare_s = candidates / spark_rate / cores
    encode_node_s = target_records * encode_per_record  # each department on its own node, one core
    wire_gib = target_records * TARGET_DEPARTMENTS * wire_per_record / 2**30
    transfer_s = wire_gib * 2**30 * 8 / (CLUSTER["network_gbit_s"] * 1e9)
    rest_s = per_record_rest * target_records * TARGET_DEPARTMENTS
    stages = {
        "encode (each node, one core, in parallel)": encode_node_s,
        "transfer (all nodes, one 10 Gbit/s link)": transfer_s,
        "compare and score candidate pairs (cluster)": compare_s,
        **({"Spark's fixed cost of a link (its jobs, as in local mode)": spark["fixed_s"]} if spark else {}),
        "EM fit (tallies and a bounded sample)": link["stages"]["fit"],
        "assign, cluster, estimate (single machine as measured; scoring too where not timed apart)": rest_s,
    }
    dominant = max(stages, key=lambda k: stages[k])
    if spark:
        measured = "; ".join(
            f"{r['people']:,} people, {r['pairs_compared']:,} pairs in {r['spark_seconds']:.1f} s ({r['date']})"
            for r in spark["runs"]
        )
        slot = (
            f"{spark_rate:,.0f} pairs/s per core, the Spark linkage unit's cost per pair in local[{spark['cores']}] "
            f"(the slope through {measured}; its fixed cost {spark['fixed_s']:.0f} s a link), against "
            f"{1 / compare_per_pair:,.0f} pairs/s per core in process"
        )
    else:
        slot = (
            f"**Spark's cost per pair not yet measured at two sizes; the in-process figure "
            f"{1 / compare_per_pair:,.0f} pairs/s per core stands in**"
        )
    lines = [
        f"Projected: {TARGET_PEOPLE:,} people x {TARGET_DEPARTMENTS} departments on a Spark cluster of "
        f"{CLUSTER['executors']} executors x {CLUSTER['cores_per_executor']} cores ({cores} cores, "
        f"{CLUSTER['memory_per_executor_gib']} GiB each, {CLUSTER['network_gbit_s']} Gbit/s), from the "
        f"{last['people']:,}-people run ({last['date']}):",
        "",
        f"- records per department: {share:.2f} x people (as the generator's departments) = {target_records:,.0f}",
        f"- candidate pairs grow as people^{growth:.2f} (fitted over the sizes measured): "
        f"{candidates:,.0f} over {target_pairs} pairs of departments",
        f"- comparison throughput: {slot}",
        f"- encodings on the wire: {wire_per_record:.0f} bytes a record ({wire_gib:,.0f} GiB in all)",
        f"- candidate pairs spilled or shuffled: 13 bytes each, {candidates * 13 / 2**40:,.1f} TiB",
        "",
        "| stage | projected wall time |",
        "| :-- | --: |",
        *[f"| {name} | {seconds / 60:,.1f} min |" for name, seconds in stages.items()],
        "",
        f"Dominant stage: **{dominant}**.",
    ]
    return lines


def main() -> int:
    runs = load()
    if not runs:
        print(f"no figures under {RESULTS}; run FEDLINK_BENCH_SCALE=1e6 pytest benchmarks/test_bench_scale.py")
        return 1
    path = plot(runs)
    image = f"![Scale suite]({path.relative_to(Path(__file__).parent)})"
    print("\n".join([*table(runs), "", image, "", *projection(runs)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
