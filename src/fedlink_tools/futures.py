"""The four futures of data sharing across government, run for real: each persona's question under each
future, as a federation whose configuration makes that future, and the persona x future matrix of what
each persona got.

The futures (:data:`FUTURES`) are federation profiles, not stories: a profile decides which departments'
nodes are registered and started, which analysts' certificates the coordinator refuses (a revocation list
it reads, as after `fedlink pki revoke`), whether the coordinator runs a linkage service
(``linkage_service`` in its config), and whether outputs are published. The personas (:data:`PERSONAS`)
are the three research scenarios of :mod:`fedlink_tools.scenarios`, each asked by its own analyst
identity with its own certificate. Every cell of the matrix is what the federation answered: the
released estimates with their intervals, or the error it refused with, word for word.

One synthetic population (one PKI and one set of departmental tables) serves all four futures; each
future has its own federation (its own coordinator config, ledgers, registers and link spines), started
once and asked by all three personas, then stopped. Everything but what is published (the matrix, and
in a future that publishes, each persona's released estimates and the federation's public register
page) lives in a temporary folder removed at the end: the federations of a run exist for that run only.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import csv
import json
import shutil
import tempfile
import textwrap
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import tomli_w

import fedlink
from fedlink import pki
from fedlink.analyst.client import Federation
from fedlink.analyst.result import Result
from fedlink.errors import AccessDenied, BadInput, FedlinkError
from fedlink.extras import require
from fedlink.governance.export import export_register
from fedlink.language.linked_query import is_linked
from fedlink.templating import environment
from fedlink_tools.demo import LocalFederation, federation_dir, node_names, prepare_pki
from fedlink_tools.scenarios import SCENARIOS, Query, ScenarioTable, ask, derive_table
from fedlink_tools.synth.generate import MAX_PEOPLE, MIN_PEOPLE

Progress = Callable[[str], None]
#: Marks a folder as written by :func:`run_futures`, so a later run may replace what it wrote there.
MARKER = ".fedlink-futures"


@dataclass(frozen=True)
class Persona:
    """One of the report's three personas: an analyst identity asking one scenario's question."""

    key: str
    #: The name on the persona's analyst certificate (the identity the coordinator sees).
    analyst: str
    title: str
    scenario: str
    #: Outside government: an academic or a charity, accredited by the federation or not, by future.
    external: bool
    #: The departments (nodes) whose records the question links.
    sources: tuple[str, ...]
    #: What the persona asks when nothing can be linked: each department's own table, aggregated
    #: across the nodes that hold it (horizontal DP queries of the same project).
    aggregates: tuple[Query, ...]


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "academic",
        "academic",
        "An academic linking DfE, DWP and NHS",
        "deprivation",
        True,
        ("dfe", "dwp", "nhs"),
        (
            Query(
                "dfe", "DfE: pupils by free school meals", "SELECT fsm, COUNT(*) AS pupils FROM dfe.pupils GROUP BY fsm"
            ),
            Query(
                "dwp",
                "DWP: claims by parent's disability benefit",
                "SELECT parent_disability, COUNT(*) AS claims FROM dwp.claims GROUP BY parent_disability",
            ),
            Query(
                "nhs",
                "NHS: diagnoses by severity",
                "SELECT severe, COUNT(*) AS diagnoses FROM nhs.diagnoses GROUP BY severe",
            ),
        ),
    ),
    Persona(
        "moj-researcher",
        "moj-researcher",
        "A Ministry of Justice researcher linking DfE, HMPS and PNC",
        "justice",
        False,
        ("dfe", "hmps", "pnc"),
        (
            Query(
                "dfe",
                "DfE: pupils and mean Attainment 8, GCSE cohorts 2014-2023",
                "SELECT COUNT(*) AS pupils, AVG(attainment8) AS attainment8 FROM dfe.pupils "
                "WHERE ks4_year BETWEEN 2014 AND 2023",
            ),
            Query(
                "hmps",
                "HMPS: sentences by whether the prisoner is a parent",
                "SELECT is_parent, COUNT(*) AS sentences FROM hmps.sentences GROUP BY is_parent",
            ),
            Query(
                "pnc",
                "PNC: convictions by disposal",
                "SELECT disposal, COUNT(*) AS convictions FROM pnc.convictions GROUP BY disposal",
            ),
        ),
    ),
    Persona(
        "charity",
        "charity",
        "A homelessness charity linking its clients to NHS and DWP",
        "homelessness",
        True,
        ("charity_north", "charity_south", "nhs", "dwp"),
        (
            Query(
                "charity",
                "Charity (both branches): support episodes by outcome",
                "SELECT outcome, COUNT(*) AS episodes FROM support_episodes GROUP BY outcome",
            ),
            Query(
                "nhs",
                "NHS: diagnoses by group",
                "SELECT diagnosis, COUNT(*) AS diagnoses FROM nhs.diagnoses GROUP BY diagnosis",
            ),
            Query(
                "dwp", "DWP: claims by benefit", "SELECT benefit, COUNT(*) AS claims FROM dwp.claims GROUP BY benefit"
            ),
        ),
    ),
)


@dataclass(frozen=True)
class Future:
    """A federation profile: what differs between the futures, as configuration."""

    key: str
    title: str
    description: str
    #: Departments not federated: absent from the coordinator's [[nodes]] and the projects' datasets.
    absent: tuple[str, ...] = ()
    #: Analysts whose certificates the coordinator refuses (on its revocation list).
    refused: tuple[str, ...] = ()
    #: The coordinator's ``linkage_service``: False refuses every link and LINK query.
    linkage_service: bool = True
    #: Whether each persona's released estimates and the federation's register page are published.
    publish: bool = True


FUTURES: tuple[Future, ...] = (
    Future(
        "public-good",
        "For public good",
        "Every department federated, external analysts accredited (certificates issued and accepted), "
        "outputs published.",
    ),
    Future(
        "silos",
        "In silos",
        "NHS England and the Police National Computer stay out of the federation (their nodes are not "
        "registered), so each persona links at most two of its three sources.",
        absent=("nhs", "pnc"),
    ),
    Future(
        "government",
        "For government",
        "Every department federated, but the coordinator refuses external analysts' certificates (academic, "
        "charity: on its revocation list); government analysts are answered and nothing is published.",
        refused=tuple(p.analyst for p in PERSONAS if p.external),
        publish=False,
    ),
    Future(
        "deprioritised",
        "Deprioritised",
        "No linkage service (the coordinator's linkage_service = false): linked questions are refused and "
        "only each department's own tables, aggregated with DP, can be asked.",
        linkage_service=False,
    ),
)


class Outcome(StrEnum):
    answered = "answered"
    partial = "partial"
    aggregates = "aggregates only"
    refused = "refused"


@dataclass(frozen=True)
class Estimate:
    """One released number with its 95% interval (None where disclosure control suppressed it)."""

    query: str
    group: str
    measure: str
    value: float | None
    lower: float | None
    upper: float | None
    suppressed: str = ""

    def text(self) -> str:
        if self.value is None or self.lower is None or self.upper is None:
            return f"suppressed ({self.suppressed})" if self.suppressed else "not released"
        return f"{_number(self.value)} [{_number(self.lower)}, {_number(self.upper)}]"


@dataclass(frozen=True)
class Refusal:
    """A query the federation refused, and its error as the analyst received it."""

    query: str
    reason: str
    code: str


@dataclass(frozen=True)
class Cell:
    """What one persona got in one future."""

    persona: str
    future: str
    outcome: Outcome
    #: Queries of the persona's question asked, and answered.
    asked: int
    answered: int
    #: Nodes whose records were linked in the answered linked queries.
    linked: tuple[str, ...]
    #: The persona's sources that are not federated in this future.
    missing: tuple[str, ...]
    refusals: tuple[Refusal, ...]
    #: The question's released estimates, then the per-department tables asked when nothing was linked.
    estimates: tuple[Estimate, ...]
    aggregates: tuple[Estimate, ...]
    #: The scenario's own table (with intervals), when every query of the question was answered.
    table: ScenarioTable | None
    #: Where the released estimates were published (relative to the output folder); None: not published.
    published: str | None

    def summary(self) -> str:
        """One sentence saying what the persona got, from the run's own figures and errors."""
        reason = self.refusals[0].reason if self.refusals else ""
        kept = f"published in {self.published}" if self.published else "not published"
        if self.outcome is Outcome.answered:
            return (
                f"Full answer: all {self.asked} queries answered, linking {_and(self.linked)}; "
                f"{_released(self.estimates)}; {kept}."
            )
        if self.outcome is Outcome.partial:
            missing = f"; {_and(self.missing)} not federated" if self.missing else ""
            return (
                f"Partial answer: {self.answered} of {self.asked} queries answered, linking "
                f"{_and(self.linked) or 'nothing'}{missing}; {_released(self.estimates)}; {kept}; refused: {reason}"
            )
        if self.outcome is Outcome.aggregates:
            tables = len({e.query for e in self.aggregates})
            return (
                f"No linked answer (refused: {reason}); {tables} per-department tables instead: "
                f"{_released(self.aggregates)}; {kept}."
            )
        return f"Refused: {reason}"

    def headlines(self, limit: int = 3) -> list[Estimate]:
        """The released estimates shown first: totals (no group) before groups, in the order asked."""
        released = [e for e in (*self.estimates, *self.aggregates) if e.value is not None]
        return sorted(released, key=lambda e: bool(e.group))[:limit]  # a stable sort keeps the order asked

    def headline(self) -> Estimate | None:
        first = self.headlines(1)
        return first[0] if first else None


def _released(estimates: tuple[Estimate, ...]) -> str:
    """How many estimates were released with intervals, and why the others were suppressed."""
    shown = sum(1 for e in estimates if e.value is not None)
    why = sorted({e.suppressed for e in estimates if e.value is None and e.suppressed})
    hidden = f" ({len(estimates) - shown} suppressed: {'; '.join(why)})" if shown < len(estimates) else ""
    return f"{shown} of {len(estimates)} estimates released with 95% intervals{hidden}"


@dataclass(frozen=True)
class FuturesMatrix:
    """The persona x future matrix of one run."""

    people: int
    seed: int
    futures: tuple[Future, ...]
    personas: tuple[Persona, ...]
    cells: tuple[Cell, ...]

    def cell(self, persona: str, future: str) -> Cell:
        return next(c for c in self.cells if c.persona == persona and c.future == future)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for cell, data in zip(self.cells, out["cells"], strict=True):
            data["summary"] = cell.summary()
        return out


# --- the federation profiles --------------------------------------------------------------------------
def write_profile(future: Future, root: Path, revoked: Path) -> list[str]:
    """The configs of ``future``'s federation under ``root`` (coordinator/ and nodes/, as in the demo
    federation's folder), with the revocation list at ``revoked``; returns the federated nodes."""
    source = federation_dir()
    config = tomllib.loads((source / "coordinator" / "coordinator.toml").read_text(encoding="utf-8"))
    config["coordinator"]["linkage_service"] = future.linkage_service
    config["tls"]["revoked"] = str(revoked)
    config["nodes"] = [n for n in config["nodes"] if n["name"] not in future.absent]
    registry = tomllib.loads((source / "coordinator" / "projects.toml").read_text(encoding="utf-8"))
    askers = {SCENARIOS[p.scenario].project: p.analyst for p in PERSONAS}
    for project in registry["projects"]:
        project["analysts"] = [askers[project["id"]]] if project["id"] in askers else []
        project["datasets"] = [d for d in project["datasets"] if d.split(".", 1)[0] not in future.absent]
    header = f"# Written by `fedlink futures` for the future '{future.title}': {future.description}\n"
    (root / "coordinator").mkdir(parents=True, exist_ok=True)
    (root / "coordinator" / "coordinator.toml").write_text(header + tomli_w.dumps(config), encoding="utf-8")
    (root / "coordinator" / "projects.toml").write_text(header + tomli_w.dumps(registry), encoding="utf-8")
    nodes = [n["name"] for n in config["nodes"]]
    for node in nodes:
        shutil.copytree(source / "nodes" / node, root / "nodes" / node)
    return nodes


# --- one cell -------------------------------------------------------------------------------------------
def _estimates(title: str, result: Result) -> list[Estimate]:
    keys = list(result.raw.key_columns)
    out = []
    for flat in result.rows():
        group = ", ".join(f"{k} {flat[k]}" for k in keys)
        for measure in result.raw.value_columns:
            out.append(
                Estimate(
                    title,
                    group,
                    measure,
                    flat[measure],
                    flat[f"{measure}_lower"],
                    flat[f"{measure}_upper"],
                    flat["suppressed"] or "",
                )
            )
    return out


def run_cell(fed: Federation, persona: Persona, future: Future) -> tuple[Cell, dict[str, Result]]:
    """Ask ``persona``'s question on ``fed`` (a connection under the persona's certificate); when nothing
    could be linked and the analyst was not refused, ask each department's own table instead."""
    scenario = SCENARIOS[persona.scenario]
    results: dict[str, Result] = {}
    refusals: list[Refusal] = []
    estimates: list[Estimate] = []
    shut_out = False
    for query in scenario.queries:
        try:
            results[query.key] = ask(fed, scenario, query, scenario.epsilon)
        except FedlinkError as exc:
            refusals.append(Refusal(query.title, exc.message, exc.code))
            if isinstance(exc, AccessDenied):  # the analyst is refused: every other call would be too
                shut_out = True
                break
            continue
        estimates += _estimates(query.title, results[query.key])
    linked = sorted(
        {n for q in scenario.queries if q.key in results and is_linked(q.sql) for n in results[q.key].nodes}
    )
    aggregates: list[Estimate] = []
    if not linked and not shut_out:
        for query in persona.aggregates:
            try:
                aggregates += _estimates(query.title, ask(fed, scenario, query, scenario.epsilon))
            except FedlinkError as exc:
                refusals.append(Refusal(query.title, exc.message, exc.code))
    answered = len(results)
    if answered == len(scenario.queries):
        outcome = Outcome.answered
    elif linked:
        outcome = Outcome.partial
    elif aggregates:
        outcome = Outcome.aggregates
    elif answered:
        outcome = Outcome.partial
    else:
        outcome = Outcome.refused
    cell = Cell(
        persona=persona.key,
        future=future.key,
        outcome=outcome,
        asked=len(scenario.queries) if not shut_out else len(refusals),
        answered=answered,
        linked=tuple(linked),
        missing=tuple(s for s in persona.sources if s in future.absent),
        refusals=tuple(refusals),
        estimates=tuple(estimates),
        aggregates=tuple(aggregates),
        table=derive_table(persona.scenario, results) if outcome is Outcome.answered else None,
        published=None,
    )
    return cell, results


# --- a run --------------------------------------------------------------------------------------------
def _prepare(shared: Path, people: int, seed: int, progress: Progress) -> None:
    from fedlink_tools.synth import synthesize

    nodes = node_names(federation_dir())
    progress(f"PKI: a federation CA, certificates for the coordinator, {len(nodes)} nodes and 3 analysts")
    prepare_pki(shared, nodes)
    for persona in PERSONAS:
        pki.issue(shared / "pki", "analyst", persona.analyst)
    progress(f"synthetic population of {people:,} people (seed {seed}) and its departments, shared by every future")
    synthesize(people, seed, shared / "data", progress=False)


def _publish(cell: Cell, out: Path, future: Future) -> Cell:
    """Write the cell's released estimates as ``out/<future>/<persona>.csv``; the cell, saying where."""
    rows = [e for e in (*cell.estimates, *cell.aggregates) if e.value is not None]
    if not rows:
        return cell
    path = out / future.key / f"{cell.persona}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "group", "measure", "value", "lower_95", "upper_95"])
        writer.writerows([e.query, e.group, e.measure, e.value, e.lower, e.upper] for e in rows)
    return replace(cell, published=path.relative_to(out).as_posix())


def _publish_outcome(fed: Federation, persona: Persona, cell: Cell, say: Progress) -> None:
    """Publish the cell's sentence as the persona's outcome (``fedlink project publish``): the
    coordinator puts it on its register, which the future's public page shows beside every output of
    the project released in this future and the privacy loss that produced them."""
    if not cell.answered:
        return
    try:
        fed.publish(cell.summary(), project=SCENARIOS[persona.scenario].project)
    except FedlinkError as exc:  # e.g. nothing released: every output withheld by disclosure control
        say(f"{persona.key}: nothing to publish on the register ({exc.message})")


def _federation(future: Future, shared: Path, work: Path) -> LocalFederation:
    """``future``'s federation (configured, not started): its profile, revocation list and folders."""
    folder = work / future.key
    federated = write_profile(future, folder / "federation", folder / "revoked.txt")
    for persona in PERSONAS:
        if persona.analyst in future.refused:  # as `fedlink pki revoke` does, on this future's list only
            pki.revoke(folder, pki.cert_paths(shared / "pki", "analyst", persona.analyst)[0])
    # a node no persona can reach in this future (its analyst refused) would answer nothing: not started
    reachable = {s for p in PERSONAS if p.analyst not in future.refused for s in p.sources}
    return LocalFederation(
        workdir=folder,
        root=folder / "federation",
        nodes=[n for n in federated if n in reachable],
        env={"FEDLINK_WORKDIR": str(shared)},  # one PKI and one population; ledgers and registers per future
    )


def _ask_personas(future: Future, federation: LocalFederation, shared: Path, out: Path, say: Progress) -> list[Cell]:
    cells = []
    for persona in PERSONAS:
        cert, key = pki.cert_paths(shared / "pki", "analyst", persona.analyst)
        fed = fedlink.connect(
            federation.address,
            cert=cert,
            key=key,
            ca=shared / "pki" / "ca.crt",
            results_dir=federation.workdir / persona.key,
        )
        cell, _ = run_cell(fed, persona, future)
        if future.publish:
            cell = _publish(cell, out, future)
            _publish_outcome(fed, persona, cell, say)
        say(f"{future.title} / {persona.key}: {cell.outcome.value}: {cell.summary()}")
        cells.append(cell)
    return cells


def _run_all(shared: Path, work: Path, out: Path, say: Progress) -> list[Cell]:
    """Every future in turn. The next future's federation starts (and the last one stops) in the
    background while the personas ask the current one: a linked query keeps one node busy at a time,
    so starting processes beside it costs little and saves most of a start per future."""
    federations = [_federation(future, shared, work) for future in FUTURES]
    cells: list[Cell] = []
    with contextlib.ExitStack() as stack:
        for federation in federations:
            stack.callback(federation.stop)  # runs after the pool below has finished its starts and stops
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=2, thread_name_prefix="futures"))

        def start(i: int) -> concurrent.futures.Future[None]:
            say(f"{FUTURES[i].title}: starting a coordinator and {len(federations[i].nodes)} nodes")
            return pool.submit(federations[i].start)

        starting = start(0)
        stopping = []
        for i, (future, federation) in enumerate(zip(FUTURES, federations, strict=True)):
            starting.result()
            if i + 1 < len(FUTURES):
                starting = start(i + 1)
            cells += _ask_personas(future, federation, shared, out, say)
            stopping.append(pool.submit(federation.stop))
        for stopped in stopping:
            stopped.result()
    for future, federation in zip(FUTURES, federations, strict=True):
        if future.publish:
            title = f"fedlink transparency register: the future '{future.title}'"
            export_register(federation.registers(), out / future.key / "register", title)
    return cells


def _claim(out: Path) -> None:
    """``out`` may be new, empty, or an earlier run's output (whose futures' folders are replaced)."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out} is a file; choose a folder for `out`")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BadInput(f"{out} is not empty and was not written by `fedlink futures`; choose another `out`")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by fedlink futures\n", encoding="utf-8")
    for future in FUTURES:
        shutil.rmtree(out / future.key, ignore_errors=True)


def run_futures(
    out: Path, people: int = 5_000, seed: int = 7, progress: Progress | None = None
) -> tuple[FuturesMatrix, Path, Path]:
    """Run every persona's question under every future and write the matrix as ``out/index.html``,
    ``out/matrix.png`` and ``out/matrix.json``; returns the matrix and the page's and the chart's paths."""
    if not MIN_PEOPLE <= people <= MAX_PEOPLE:  # before anything is made or started
        raise BadInput(f"people is {people:,}; choose between {MIN_PEOPLE:,} and {MAX_PEOPLE:,}")
    require("charts", "fedlink futures")  # before anything starts: a missing package costs nothing
    say = progress or (lambda _: None)
    out = Path(out)
    _claim(out)
    work = Path(tempfile.mkdtemp(prefix="fedlink-futures-"))
    try:
        shared = work / "shared"
        _prepare(shared, people, seed, say)
        cells = _run_all(shared, work, out, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    matrix = FuturesMatrix(people, seed, FUTURES, PERSONAS, tuple(cells))
    page, chart = write_matrix(matrix, out)
    return matrix, page, chart


# --- the matrix, as a page and a chart -------------------------------------------------------------
_COLOURS = {
    Outcome.answered: "#b7e1b0",
    Outcome.partial: "#f6d98b",
    Outcome.aggregates: "#b9d3ee",
    Outcome.refused: "#f1a9a0",
}


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:,.1f}"


def _and(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def chart_label(cell: Cell) -> str:
    """The text of a cell in the PNG: the outcome, then what it rests on (from the cell's own data)."""
    lines = [cell.outcome.value.upper()]
    if cell.outcome is Outcome.answered:
        lines.append(f"{cell.answered}/{cell.asked} queries, linked {'+'.join(cell.linked)}")
    elif cell.outcome is Outcome.partial:
        lines.append(f"{cell.answered}/{cell.asked} queries, linked {'+'.join(cell.linked) or 'nothing'}")
        if cell.missing:
            lines.append(f"missing: {', '.join(cell.missing)} (not federated)")
    elif cell.outcome is Outcome.aggregates:
        lines.append(f"no linkage; {len({e.query for e in cell.aggregates})} department tables")
    if cell.outcome is Outcome.refused and cell.refusals:
        lines += textwrap.wrap(cell.refusals[0].reason, 34)[:4]
    else:
        estimates = (*cell.estimates, *cell.aggregates)
        headline = cell.headline()
        if headline is not None:
            lines += textwrap.wrap(f"{headline.query}: {headline.group or headline.measure}", 44)[:2]
            lines.append(f"{headline.measure} {headline.text()}")
        lines.append(f"{sum(e.value is not None for e in estimates)} of {len(estimates)} estimates released")
        lines.append("published" if cell.published else "not published")
    return "\n".join(lines)


def write_matrix(matrix: FuturesMatrix, out: Path) -> tuple[Path, Path]:
    """``out/index.html`` (self-contained, every value escaped), ``out/matrix.png`` and ``out/matrix.json``
    from ``matrix``; returns the page's and the chart's paths."""
    out.mkdir(parents=True, exist_ok=True)
    chart = out / "matrix.png"
    _chart(matrix, chart)
    rows = [(p, [matrix.cell(p.key, f.key) for f in matrix.futures]) for p in matrix.personas]
    page = out / "index.html"
    template = environment("fedlink_tools").get_template("futures.html.j2")
    page.write_text(
        template.render(
            matrix=matrix,
            rows=rows,
            colours={o.value: c for o, c in _COLOURS.items()},
            chart_data=base64.b64encode(chart.read_bytes()).decode("ascii"),  # one file: the chart travels inside
            published_registers=[f for f in matrix.futures if (out / f.key / "register" / "index.html").exists()],
        ),
        encoding="utf-8",
    )
    (out / "matrix.json").write_text(json.dumps(matrix.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return page, chart


def _chart(matrix: FuturesMatrix, path: Path) -> None:
    require("charts", "fedlink futures").use("Agg", force=True)
    import matplotlib.pyplot as plt

    columns, rows = len(matrix.futures), len(matrix.personas)
    fig, ax = plt.subplots(figsize=(3.4 * columns + 1.8, 1.9 * rows + 1.2))
    for i, persona in enumerate(matrix.personas):
        for j, future in enumerate(matrix.futures):
            cell = matrix.cell(persona.key, future.key)
            ax.add_patch(
                plt.Rectangle((j, rows - 1 - i), 1, 1, facecolor=_COLOURS[cell.outcome], edgecolor="white", lw=3)
            )
            ax.text(j + 0.5, rows - 0.5 - i, chart_label(cell), ha="center", va="center", fontsize=7.5, wrap=True)
    ax.set_xlim(0, columns)
    ax.set_ylim(0, rows)
    ax.set_xticks([j + 0.5 for j in range(columns)], [f.title for f in matrix.futures], fontsize=10)
    ax.xaxis.tick_top()
    ax.set_yticks(
        [rows - 0.5 - i for i in range(rows)], [textwrap.fill(p.title, 22) for p in matrix.personas], fontsize=9
    )
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.text(
        0.01,
        0.01,
        f"fedlink futures: real federation runs on {matrix.people:,} synthetic people (seed {matrix.seed}); "
        "estimates are DP with 95% intervals.",
        fontsize=7,
        color="#555555",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
