"""The three research scenarios, run end to end as an analyst runs them, through the public API.

- ``deprivation``: children on free school meals (DfE) whose parent received disability benefit
  (DWP), against a later severe mental illness diagnosis (NHS), by region and for England;
- ``justice``: parental imprisonment (HMPS) against a parent's conviction without custody (PNC)
  and all pupils, on children's attainment (DfE) over ten years of GCSE cohorts;
- ``homelessness``: a homelessness charity's clients (both its branches) and their later health
  (NHS), housing and employment (DWP) outcomes, as a DP table the charity can publish.

Each runs its queries (linked ones over the project's link spine, built first if missing), derives
the scenario's table with intervals, writes a PNG chart and a CSV of what it publishes. With
:class:`DemoTruth` (only possible on the synthetic demo, whose ground truth is on disk) it also
reports the linkage error per node pair and the true value of every linked count, labelled as such.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from fedlink.analyst.client import Federation
from fedlink.analyst.result import Result
from fedlink.errors import BadInput
from fedlink.extras import require
from fedlink.language.linked_query import is_linked, plan_linked
from fedlink.node.engines.reference import reference_totals
from fedlink.pets.chain import MAX_MULTIPLICATIONS
from fedlink.plan.catalogue import FederationCatalogue

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Query:
    key: str
    title: str
    sql: str


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    project: str
    question: str
    queries: tuple[Query, ...]
    #: Privacy loss per query by default: enough for useful intervals at the demo's sizes, and well
    #: inside the demo projects' caps (epsilon 10 per dataset) for one run.
    epsilon: float


_REGION = "dfe.pupils.region"
_DEPRIVED = "dfe.pupils.fsm = 1 AND dwp.claims.parent_disability = 1"
_NOT_DEPRIVED = "dfe.pupils.fsm = 0 AND dwp.claims.parent_disability = 0"
_SMI = "nhs.diagnoses.severe = 1"
_PERIODS = ((2014, 2018), (2019, 2023))
_CLIENTS = "support_episodes.start_year BETWEEN 2012 AND 2017"
_LATER_NHS = "nhs.diagnoses.year >= 2018"
_LATER_DWP = "dwp.claims.start_year >= 2018"


def _deprivation_queries() -> tuple[Query, ...]:
    out = []
    for group, condition in (("exposed", _DEPRIVED), ("unexposed", _NOT_DEPRIVED)):
        for scope, select, group_by in (("region", f"{_REGION}, ", f" GROUP BY {_REGION}"), ("england", "", "")):
            out.append(
                Query(
                    f"{group}:{scope}:all",
                    f"{group} children linked to DWP, {scope}",
                    f"SELECT {select}COUNT(*) AS n FROM dfe.pupils LINK dwp.claims WHERE {condition}{group_by}",
                )
            )
            out.append(
                Query(
                    f"{group}:{scope}:smi",
                    f"{group} children with a later severe mental illness, {scope}",
                    f"SELECT {select}COUNT(*) AS n FROM dfe.pupils LINK dwp.claims, nhs.diagnoses "
                    f"WHERE {condition} AND {_SMI}{group_by}",
                )
            )
    return tuple(out)


def _justice_queries() -> tuple[Query, ...]:
    out = []
    for low, high in _PERIODS:
        years = f"dfe.pupils.ks4_year BETWEEN {low} AND {high}"
        for group, link in (
            ("parent imprisoned", " LINK hmps.prisoner_children"),
            ("parent convicted, no custody", " LINK pnc.offender_children"),
            ("all pupils", ""),
        ):
            prefix = "dfe.pupils." if link else ""  # a horizontal query names columns bare
            where = years if link else years.replace("dfe.pupils.", "")
            out.append(
                Query(
                    f"{group}:{low}",
                    f"{group}, GCSE cohorts {low}-{high}",
                    f"SELECT COUNT(*) AS n, AVG({prefix}attainment8) AS attainment FROM dfe.pupils{link} WHERE {where}",
                )
            )
    return tuple(out)


def _homelessness_queries() -> tuple[Query, ...]:
    return (
        Query(
            "health",
            "clients supported 2012-2017 with a diagnosis from 2018, by diagnosis group",
            "SELECT nhs.diagnoses.diagnosis, COUNT(*) AS clients FROM support_episodes LINK nhs.diagnoses "
            f"WHERE {_CLIENTS} AND {_LATER_NHS} GROUP BY nhs.diagnoses.diagnosis",
        ),
        Query(
            "housing",
            "clients supported 2012-2017 with a benefit claim from 2018, by benefit",
            "SELECT dwp.claims.benefit, COUNT(*) AS clients FROM support_episodes LINK dwp.claims "
            f"WHERE {_CLIENTS} AND {_LATER_DWP} GROUP BY dwp.claims.benefit",
        ),
        Query(
            "employment",
            "clients supported 2012-2017 with a claim from 2018, by employment status",
            "SELECT dwp.claims.employment, COUNT(*) AS clients FROM support_episodes LINK dwp.claims "
            f"WHERE {_CLIENTS} AND {_LATER_DWP} GROUP BY dwp.claims.employment",
        ),
    )


SCENARIOS: dict[str, Scenario] = {
    "deprivation": Scenario(
        "deprivation",
        "Childhood deprivation and adult severe mental illness",
        "deprivation-mental-health",
        "Among children later linked to benefit records, is severe mental illness more common for those on free "
        "school meals whose parent received disability benefit than for those with neither?",
        _deprivation_queries(),
        0.25,
    ),
    "justice": Scenario(
        "justice",
        "Parental imprisonment, conviction without custody, and children's attainment",
        "justice-attainment",
        "How do the GCSE results (Attainment 8) of children whose parent was imprisoned compare with children "
        "whose parent was convicted without custody, and with all pupils, over ten years of cohorts?",
        _justice_queries(),
        1.0,
    ),
    "homelessness": Scenario(
        "homelessness",
        "Long-term outcomes after homelessness support",
        "homelessness-outcomes",
        "What later health, housing and employment records do the charity's 2012-2017 clients have?",
        _homelessness_queries(),
        1.0,
    ),
}


@dataclass
class ScenarioTable:
    """A derived table: column names and rows of values (with intervals as ``lower``/``upper`` pairs)."""

    columns: list[str]
    rows: list[list[Any]]


@dataclass
class ScenarioReport:
    scenario: Scenario
    results: dict[str, Result]
    table: ScenarioTable
    chart: Path
    published: Path
    epsilon: float
    notes: list[str] = field(default_factory=list)
    #: DEMO ONLY (synthetic ground truth): linkage error per node pair.
    linkage_truth: list[dict[str, Any]] | None = None
    #: DEMO ONLY: per query key, the true value of each released count (perfect linkage, no noise);
    #: None for a cell whose release was suppressed, which shows no value anywhere.
    truth: dict[str, list[float | None]] | None = None

    def spent(self) -> dict[str, float]:
        """Epsilon each node spent on this scenario's queries."""
        totals: dict[str, float] = {}
        for result in self.results.values():
            for node, loss in result.privacy_loss.items():
                totals[node] = totals.get(node, 0.0) + loss["epsilon"]
        return totals


@dataclass(frozen=True)
class DemoTruth:
    """Where the synthetic demo keeps its ground truth and the parties' state (never in a deployment)."""

    workdir: Path

    def records(self) -> Path:
        return self.workdir / "data" / "truth" / "records.parquet"

    def node_state(self, node: str, project: str) -> Path:
        return self.workdir / "state" / node / "linkage" / project

    def available(self) -> bool:
        return self.records().exists()


def run_scenario(
    fed: Federation,
    name: str,
    out_dir: Path,
    epsilon: float | None = None,
    truth: DemoTruth | None = None,
    progress: Progress | None = None,
) -> ScenarioReport:
    """Run scenario ``name`` (deprivation, justice or homelessness) on ``fed``, spending ``epsilon`` per
    query at every node it reads (default: the scenario's own), and write its chart (PNG) and published
    table (CSV) into ``out_dir``."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise BadInput(f"unknown scenario '{name}'; choose one of {', '.join(SCENARIOS)}")
    epsilon = scenario.epsilon if epsilon is None else epsilon
    if epsilon <= 0:
        raise BadInput("give a positive `epsilon` per query")
    require("charts", "fedlink scenario")  # before the first query: a missing package costs no budget
    say = progress or (lambda _: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Result] = {}
    for i, query in enumerate(scenario.queries, 1):
        say(f"query {i}/{len(scenario.queries)}: {query.title}")
        results[query.key] = ask(fed, scenario, query, epsilon, say)
    table = derive_table(name, results)
    published = out_dir / f"{name}.csv"
    with published.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.columns)
        writer.writerows(table.rows)
    chart = out_dir / f"{name}.png"
    _CHART[name](table, scenario, chart)
    report = ScenarioReport(scenario, results, table, chart, published, epsilon)
    report.notes.append(
        "intervals: 95% for each count's DP noise; rates and their intervals combine two counts' intervals "
        "(so hold with at least 90%); linkage error is not in any interval"
    )
    if truth is not None and truth.available():
        say("DEMO ONLY: comparing with the synthetic ground truth")
        catalogue = fed.catalog().raw
        report.truth = {
            key: _unless_suppressed(results[key], values)
            for key, values in _true_counts(scenario, catalogue, truth).items()
        }
        report.linkage_truth = _linkage_error(scenario, results, truth)
    return report


def ask(fed: Federation, scenario: Scenario, query: Query, epsilon: float, progress: Progress | None = None) -> Result:
    """One of ``scenario``'s queries, building the project's link spine first if it has none yet."""
    try:
        return fed.query(query.sql, project=scenario.project, epsilon=epsilon)
    except BadInput as exc:
        if "no link spine" not in exc.message:
            raise
    (progress or (lambda _: None))(f"building the link spine of '{scenario.project}' first")
    fed.link(scenario.project)
    return fed.query(query.sql, project=scenario.project, epsilon=epsilon)


def derive_table(name: str, results: dict[str, Result]) -> ScenarioTable:
    """Scenario ``name``'s table (with intervals) from the results of all its queries, by query key."""
    return _DERIVE[name](results)


# --- derived tables ---------------------------------------------------------------------------------
def _cell(result: Result, row: int, column: str) -> tuple[float | None, float | None, float | None]:
    flat = result.rows()[row]
    return flat[column], flat[f"{column}_lower"], flat[f"{column}_upper"]


def _rate(num: tuple[float | None, ...], den: tuple[float | None, ...]) -> tuple[float | None, ...]:
    """A percentage with a conservative interval from the corners of two count intervals."""
    (n, n_lo, n_hi), (d, d_lo, d_hi) = num, den
    if n is None or d is None or not d or d_lo is None or n_lo is None or n_hi is None or d_hi is None:
        return None, None, None
    value = 100 * n / d
    lower = 100 * n_lo / d_hi if d_hi > 0 else 0.0
    upper = min(100.0, 100 * n_hi / d_lo) if d_lo > 0 else 100.0
    return round(value, 2), round(lower, 2), round(upper, 2)


def _deprivation_table(results: dict[str, Result]) -> ScenarioTable:
    rows = []
    regional = results["exposed:region:all"]
    areas = [(r["region"], i) for i, r in enumerate(regional.rows())] + [("England", 0)]
    for area, index in areas:
        scope = "england" if area == "England" else "region"
        row: list[Any] = [area]
        for group in ("exposed", "unexposed"):
            everyone = _cell(results[f"{group}:{scope}:all"], index, "n")
            ill = _cell(results[f"{group}:{scope}:smi"], index, "n")
            row += [everyone[0], ill[0], *_rate(ill, everyone)]
        rows.append(row)
    columns = ["area"]
    for group in ("exposed", "unexposed"):
        columns += [
            f"{group}_n",
            f"{group}_smi",
            f"{group}_smi_pct",
            f"{group}_smi_pct_lower",
            f"{group}_smi_pct_upper",
        ]
    return ScenarioTable(columns, rows)


def _justice_table(results: dict[str, Result]) -> ScenarioTable:
    rows = []
    for low, high in _PERIODS:
        for group in ("parent imprisoned", "parent convicted, no custody", "all pupils"):
            result = results[f"{group}:{low}"]
            n = _cell(result, 0, "n")
            att = _cell(result, 0, "attainment")
            rows.append([f"{low}-{high}", group, n[0], n[1], n[2], *att])
    columns = ["cohorts", "group", "n", "n_lower", "n_upper", "attainment8", "attainment8_lower", "attainment8_upper"]
    return ScenarioTable(columns, rows)


def _homelessness_table(results: dict[str, Result]) -> ScenarioTable:
    rows = []
    for key, column in (("health", "diagnosis"), ("housing", "benefit"), ("employment", "employment")):
        for i, flat in enumerate(results[key].rows()):
            value, lower, upper = _cell(results[key], i, "clients")
            rows.append([key, flat[column], value, lower, upper, flat["suppressed"] or ""])
    return ScenarioTable(["outcome", "category", "clients", "clients_lower", "clients_upper", "suppressed"], rows)


_DERIVE: dict[str, Callable[[dict[str, Result]], ScenarioTable]] = {
    "deprivation": _deprivation_table,
    "justice": _justice_table,
    "homelessness": _homelessness_table,
}


# --- charts ----------------------------------------------------------------------------------------
def _pyplot() -> Any:
    require("charts", "fedlink scenario").use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _errors(values: Sequence[Any], lower: Sequence[Any], upper: Sequence[Any]) -> tuple[list[float], np.ndarray]:
    v = [float(x) if x is not None else math.nan for x in values]
    lo = [float(x) if x is not None else math.nan for x in lower]
    hi = [float(x) if x is not None else math.nan for x in upper]
    err = np.array(
        [[max(0.0, a - b) for a, b in zip(v, lo, strict=True)], [max(0.0, b - a) for a, b in zip(v, hi, strict=True)]]
    )
    return v, np.nan_to_num(err)


def _finish(plt: Any, fig: Any, scenario: Scenario, path: Path) -> None:
    fig.text(
        0.01,
        0.01,
        "Differentially private estimates with 95% noise intervals; suppressed cells left out.",
        fontsize=7,
        color="#555555",
    )
    fig.suptitle(scenario.title, fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _deprivation_chart(table: ScenarioTable, scenario: Scenario, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(table.rows))
    for offset, group, colour in ((-0.2, "exposed", "#c0392b"), (0.2, "unexposed", "#2e86c1")):
        i = table.columns.index(f"{group}_smi_pct")
        values, err = _errors(*([r[i + k] for r in table.rows] for k in range(3)))
        ax.bar(x + offset, values, 0.4, yerr=err, capsize=3, color=colour, label=group)
    ax.set_xticks(x, [r[0] for r in table.rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("% with a later severe mental illness")
    ax.legend(["FSM and parent on disability benefit", "neither"], fontsize=8)
    _finish(plt, fig, scenario, path)


def _justice_chart(table: ScenarioTable, scenario: Scenario, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    groups = ("parent imprisoned", "parent convicted, no custody", "all pupils")
    periods = [f"{low}-{high}" for low, high in _PERIODS]
    x = np.arange(len(periods))
    for k, (group, colour) in enumerate(zip(groups, ("#c0392b", "#e67e22", "#2e86c1"), strict=True)):
        rows = [r for r in table.rows if r[1] == group]
        values, err = _errors([r[5] for r in rows], [r[6] for r in rows], [r[7] for r in rows])
        ax.bar(x + (k - 1) * 0.27, values, 0.27, yerr=err, capsize=3, color=colour, label=group)
    ax.set_xticks(x, [f"GCSE cohorts {p}" for p in periods])
    ax.set_ylabel("mean Attainment 8")
    ax.legend(fontsize=8)
    _finish(plt, fig, scenario, path)


def _homelessness_chart(table: ScenarioTable, scenario: Scenario, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    rows = [r for r in table.rows if r[2] is not None]
    values, err = _errors([r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows])
    colours = {"health": "#8e44ad", "housing": "#16a085", "employment": "#d35400"}
    y = np.arange(len(rows))
    ax.barh(y, values, xerr=err, capsize=3, color=[colours[r[0]] for r in rows])
    ax.set_yticks(y, [f"{r[0]}: {r[1]}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("clients (DP count)")
    _finish(plt, fig, scenario, path)


_CHART: dict[str, Callable[[ScenarioTable, Scenario, Path], None]] = {
    "deprivation": _deprivation_chart,
    "justice": _justice_chart,
    "homelessness": _homelessness_chart,
}


# --- DEMO ONLY: the synthetic ground truth --------------------------------------------------------
def _true_counts(scenario: Scenario, catalogue: FederationCatalogue, truth: DemoTruth) -> dict[str, list[float]]:
    """The count each linked query would give with perfect linkage and no noise (true person ids)."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW truth AS SELECT * FROM read_parquet('{truth.records()}')")
    out = {}
    for query in scenario.queries:
        if not is_linked(query.sql):
            continue
        plan = plan_linked(query.sql, catalogue, MAX_MULTIPLICATIONS)
        tables, keys = {}, {}
        for source in plan.sources:
            for node in source.nodes:
                name = f"k_{node}_{source.table}"
                con.execute(
                    f"CREATE OR REPLACE VIEW {name} AS SELECT record_id, person_id AS key FROM truth "
                    f"WHERE node = '{node}' AND \"table\" = '{source.table}'"
                )
                tables[(node, source.table)] = truth.workdir / "data" / node / f"{source.table}.parquet"
                keys[(node, source.table)] = name
        totals = reference_totals(plan, tables, keys, connection=con)
        out[query.key] = totals[plan.components[0].key].tolist()
    return out


def _unless_suppressed(result: Result, values: list[float]) -> list[float | None]:
    """The true values of a result's cells, None where the release suppressed the cell."""
    rows = result.raw.rows
    return [None if any(c.suppressed for c in row.cells) else value for row, value in zip(rows, values, strict=True)]


def _linkage_error(scenario: Scenario, results: dict[str, Result], truth: DemoTruth) -> list[dict[str, Any]]:
    """Per node pair of the spine: precision and recall of its links against the true person ids."""
    nodes = sorted({n for r in results.values() if r.raw.linkage for n in r.raw.linkage.people})
    con = duckdb.connect()
    per_node = {}
    for node in nodes:
        folder = truth.node_state(node, scenario.project)
        if not (folder / "slots.npy").exists():
            continue
        slots = np.load(folder / "slots.npy", allow_pickle=False)
        con.register(f"slots_{node}", {"person": np.arange(len(slots)), "slot": slots})
        per_node[node] = con.execute(
            f"SELECT DISTINCT s.slot, t.person_id FROM read_parquet('{folder / 'records.parquet'}') r "
            f"JOIN slots_{node} s USING (person) JOIN read_parquet('{truth.records()}') t "
            f"ON t.node = '{node}' AND t.record_id = r.record_id"
        ).fetchall()
    rows = []
    names = sorted(per_node)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            slots_a: dict[int, set[int]] = {}
            for slot, person in per_node[a]:
                slots_a.setdefault(slot, set()).add(person)
            slots_b: dict[int, set[int]] = {}
            for slot, person in per_node[b]:
                slots_b.setdefault(slot, set()).add(person)
            shared = set(slots_a) & set(slots_b)
            correct = sum(1 for s in shared if slots_a[s] & slots_b[s] != set())
            true_pairs = len({p for _, p in per_node[a]} & {p for _, p in per_node[b]})
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "links": len(shared),
                    "true_pairs": true_pairs,
                    "precision": correct / len(shared) if shared else None,
                    "recall": correct / true_pairs if true_pairs else None,
                }
            )
    return rows
