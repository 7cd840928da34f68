"""Rendering API objects for people (rich tables) and for scripts (JSON, CSV).

Every console here is made by :func:`console`, which never reads Rich markup: a query, a category,
a note or an error message that holds ``[tls]`` or ``[/x]`` prints as written. Styles come only from
:func:`styled` (and rich's own table styles), never from text.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

import fedlink
from fedlink.analyst.result import format_value, noise_hidden_rates, noise_note
from fedlink.linkage.concepts import LOW_VALID_SHARE


def console(stderr: bool = False) -> Console:
    """A console that prints every string literally (markup off)."""
    if stderr:
        return Console(stderr=True, soft_wrap=True, markup=False)
    # Piped or redirected output is read in files and logs: wide tables there rather than truncated headers.
    return Console(soft_wrap=True, markup=False, width=None if sys.stdout.isatty() else 200)


def styled(label: str, style: str, text: str = "") -> Text:
    """``label`` in ``style`` followed by ``text`` as written."""
    return Text.assemble((label, style), text)


def _csv(console: Console, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    console.file.write(buffer.getvalue())


def result(console: Console, res: fedlink.Result, fmt: str) -> None:
    if fmt == "json":
        console.print_json(json.dumps(res.to_dict()))
        return
    if fmt == "csv":
        rows = res.rows()
        header = list(rows[0]) if rows else res.columns
        _csv(console, header, [list(r.values()) for r in rows])
        return
    caption = "\n".join([res.provenance(), *res.notes])
    table = Table(title=res.sql, caption=caption, title_justify="left", caption_justify="left")
    for column in res.raw.key_columns:
        table.add_column(column)
    for column in res.raw.value_columns:
        table.add_column(f"{column} [95% interval]", justify="right")
    for i, row in enumerate(res.raw.rows):
        table.add_row(*(format_value(k) for k in row.keys), *(res.cell_text(i, c) for c in res.raw.value_columns))
    console.print(table)


def budget(console: Console, report: fedlink.Budget, fmt: str) -> None:
    rows = report.rows()
    if fmt == "json":
        console.print_json(json.dumps(report.to_dict()))
        return
    header = [
        "node",
        "project",
        "dataset",
        "rho_cap",
        "rho_spent",
        "rho_reserved",
        "rho_remaining",
        "max_epsilon",
        "dataset_rho_cap",
        "dataset_rho_spent",
        "queries",
    ]
    if fmt == "csv":
        _csv(console, header, [[r[h] for h in header] for r in rows])
        return
    table = Table(
        title="privacy budget in rho (zCDP), each node's own ledger; an epsilon-DP query costs rho = epsilon²/2",
        title_justify="left",
    )
    for name in header:
        table.add_column(name, justify="left" if name in ("node", "project", "dataset") else "right")
    for r in rows:
        table.add_row(*(_budget_cell(r[h]) for h in header))
    console.print(table)


def _budget_cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def catalogue(console: Console, cat: fedlink.Catalogue, fmt: str) -> None:
    if fmt == "json":
        console.print_json(json.dumps(cat.to_dict()))
        return
    rows = []
    for status in cat.raw.nodes:
        for info in status.catalogue.tables if status.catalogue else ():
            for col in info.columns:
                domain = ""
                if col.categories is not None:
                    shown = ", ".join(map(str, col.categories[:6]))
                    domain = shown + (f", … ({len(col.categories)})" if len(col.categories) > 6 else "")
                elif col.bounds is not None:
                    domain = f"[{col.bounds[0]:g}, {col.bounds[1]:g}]" + (" binned" if col.bins else "")
                elif col.completeness is not None:
                    domain = f"{col.completeness:.0%} complete"
                rows.append(
                    [
                        status.node,
                        "live" if status.live else "down",
                        info.name,
                        f"~{info.rows_rounded:,}",
                        col.name,
                        col.kind,
                        domain,
                        col.description,
                    ]
                )
    header = ["node", "status", "table", "rows", "column", "kind", "domain", "description"]
    if fmt == "csv":
        _csv(console, header, rows)
        return
    down = [s.node for s in cat.raw.nodes if not s.live]
    caption = "rows rounded to 100; identifiers can be linked on, never queried"
    warnings = [
        f"warning: node '{status.node}', table '{info.name}': only {concept.valid:.0%} of {concept.concept} values "
        f"({', '.join(concept.columns)}) are valid after normalisation; check tables.linkage in its node.toml"
        for status in cat.raw.nodes
        for info in (status.catalogue.tables if status.catalogue else ())
        for concept in info.linkage
        if concept.valid is not None and concept.valid < LOW_VALID_SHARE
    ]
    if down:
        caption += f"; down: {', '.join(down)}"
    table = Table(title="fedlink catalogue", caption=caption, title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    linkage = [
        (status.node, info.name, concept.concept, ", ".join(concept.columns), concept.valid)
        for status in cat.raw.nodes
        for info in (status.catalogue.tables if status.catalogue else ())
        for concept in info.linkage
    ]
    if linkage:
        concepts = Table(title="identifier concepts mapped for linkage", title_justify="left")
        for name in ("node", "table", "concept", "columns", "valid"):
            concepts.add_column(name, justify="right" if name == "valid" else "left")
        for node, name, concept, columns, valid in linkage:
            concepts.add_row(node, name, concept, Text(columns), "—" if valid is None else f"{valid:.0%}")
        console.print(concepts)
    for warning in warnings:
        console.print(warning, markup=False, highlight=False)


@contextlib.contextmanager
def stage_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar over named stages on a terminal; nothing when output is not a terminal."""
    if not console.is_terminal:
        yield lambda stage, done, total: None
        return
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}", markup=False),
        console=console,
    ) as bar:
        task = bar.add_task("linking", total=1)

        def advance(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        yield advance


def link_report(console: Console, report: Any, fmt: str) -> None:
    if fmt == "json":
        console.print_json(report.model_dump_json())
        return
    if fmt == "csv":
        _csv(console, ["stage", "seconds"], [[k, v] for k, v in report.stages.items()])
        return
    table = Table(
        title=f"link spine built for project {report.project}"
        + (" (PSI: exact match keys, no shared secret)" if report.mode == "psi" else ""),
        title_justify="left",
        caption=f"nodes: {', '.join(report.nodes)}; exact overlap counts are seen by the linkage unit only",
    )
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in report.stages.items():
        table.add_row(stage, f"{seconds:.2f}")
    console.print(table)
    if report.spec_hash:
        console.print(
            f"matching: {report.matching}; linkage spec sha256 {report.spec_hash[:16]}...; scores and the fitted "
            "model stay with the linkage unit",
            markup=False,
            highlight=False,
        )
    for warning in report.warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False)
    match_rates(console, report.quality, report.quality_refused)
    if report.quality is not None and report.quality.estimated is not None:
        estimated_quality(console, report.quality.estimated)


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def estimated_quality(console: Console, estimated: Any) -> None:
    """A spine's label-free quality (DP): overall, per node pair and by subgroup."""
    table = Table(
        title="estimated linkage quality (from the fitted model, no labels; differentially private)",
        title_justify="left",
        caption=estimated.note,
    )
    for column in ("scope", "links", "expected false", "expected missed", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if column == "scope" else "right")

    def row(scope: str, counts: Any) -> None:
        table.add_row(
            Text(scope),  # subgroup labels are a node's own values: never markup
            f"{counts.links:,.0f}",
            f"{counts.false_links:,.1f}",
            f"{counts.missed_links:,.1f}",
            _rate(counts.precision),
            _rate(counts.recall),
            _rate(counts.f1),
        )

    scopes = [("all node pairs", estimated.overall), *((f"{p.a} - {p.b}", p) for p in estimated.pairs)]
    scopes += [
        (f"{name} = {label}", counts) for name, cells in estimated.subgroups.items() for label, counts in cells.items()
    ]
    for scope, counts in scopes:
        row(scope, counts)
    console.print(table)
    # Laplace noise of scale b exceeds t in size with probability exp(-t / b): 95% within b ln 20.
    reach = estimated.scale * math.log(20)
    swamped = sum(counts.links < reach for _, counts in scopes)
    if swamped:
        console.print(
            f"note: {swamped} of {len(scopes)} rows have fewer links than the noise on their expected false and "
            f"missed links reaches (±{reach:,.0f} at 95%, Laplace scale {estimated.scale:.3g}): their precision, "
            "recall and F1 are mostly noise",
            markup=False,
            highlight=False,
        )


def linkage_run(console: Console, report: dict[str, Any], fmt: str) -> None:
    """`fedlink linkage run`: estimated (and measured) quality, inputs, warnings."""
    if fmt == "json":
        console.print_json(json.dumps(report, default=str))
        return
    measures = ("precision", "recall", "f1")
    estimated, measured = report.get("estimated") or {}, report.get("measured") or {}
    if fmt == "csv":
        _csv(
            console,
            ["measure", "estimated", "measured"],
            [[m, estimated.get(m), measured.get(m)] for m in measures],
        )
        return
    table = Table(
        title="linkage quality over cross-input pairs of people",
        title_justify="left",
        caption=f"matching {report['matching']}, threshold "
        f"{'—' if report['threshold'] is None else format(report['threshold'], '.3f')}; linkage spec "
        f"{report['spec_hash'][:12]}; estimated: from the fitted model, no labels",
    )
    table.add_column("measure")
    table.add_column("estimated", justify="right")
    if measured:
        table.add_column("measured", justify="right")
    for measure in measures:
        cells = [_rate(estimated.get(measure))]
        if measured:
            cells.append(_rate(measured.get(measure)))
        table.add_row(measure, *cells)
    console.print(table)
    inputs = Table(title="inputs", title_justify="left")
    for column in ("input", "rows", "people", "concepts", "missing"):
        inputs.add_column(column, justify="right" if column in ("rows", "people") else "left")
    for number, described in enumerate(report["inputs"]):
        inputs.add_row(
            Text(f"{number}: {described['file']}"),
            f"{described['rows']:,}",
            f"{described['people']:,}",
            ", ".join(f"{c} {share:.0%}" for c, share in described["valid"].items()),
            ", ".join(described["missing"]),
        )
    console.print(inputs)
    for warning in report["warnings"]:
        console.print(f"warning: {warning}", markup=False, highlight=False)
    if report.get("note"):
        console.print(report["note"], markup=False, highlight=False)


def match_rates(console: Console, quality: Any, refused: str | None = None) -> None:
    """A spine's DP match rates per node pair (or why they were not released)."""
    if quality is None:
        console.print(refused or "match rates: not released", highlight=False)
        return
    table = Table(
        title="match rates per node pair (differentially private)",
        title_justify="left",
        caption=f"{quality.note}; Laplace scale {quality.scale:g} on each count",
    )
    for column in ("a", "b", "people at a", "people at b", "linked", "share of a linked", "share of b linked"):
        table.add_column(column, justify="left" if column in ("a", "b") else "right")
    for pair in quality.pairs:
        table.add_row(
            pair.a,
            pair.b,
            format_value(round(quality.people[pair.a])),
            format_value(round(quality.people[pair.b])),
            format_value(round(pair.overlap)),
            "—" if pair.rate_a is None else f"{pair.rate_a:.1%}",
            "—" if pair.rate_b is None else f"{pair.rate_b:.1%}",
        )
    console.print(table)
    hidden = noise_hidden_rates(quality)
    if hidden:
        shown = 2 * len(quality.pairs)
        console.print(
            f"note: {hidden} of {shown} match rates read 0.0% or —; {noise_note(quality)}",
            markup=False,
            highlight=False,
        )


def scenario(console: Console, report: Any, fmt: str) -> None:
    """A scenario's published table, its linkage quality and, on the demo only, the ground truth."""
    if fmt == "json":
        console.print_json(json.dumps(scenario_dict(report), default=str))
        return
    if fmt == "csv":
        _csv(console, report.table.columns, report.table.rows)
        return
    meta = report.scenario
    console.print(styled(meta.title, "bold", f" (project {meta.project})\n{meta.question}"), highlight=False)
    table = Table(title=f"published table ({report.published})", title_justify="left", caption="\n".join(report.notes))
    for column in report.table.columns:
        table.add_column(
            column, justify="left" if column in ("area", "cohorts", "group", "outcome", "category") else "right"
        )
    for row in report.table.rows:
        table.add_row(*(format_value(v) for v in row))
    console.print(table)
    linked = next((r for r in report.results.values() if r.linkage is not None), None)
    if linked is not None:
        match_rates(console, linked.linkage)
    spent = ", ".join(f"{n}: ε={e:g}" for n, e in sorted(report.spent().items()))
    console.print(f"privacy loss spent ({report.epsilon:g} per query at each node it reads): {spent}", highlight=False)
    if report.linkage_truth:
        truth = Table(
            title="DEMO ONLY: linkage error against the synthetic ground truth",
            title_justify="left",
            caption="no real deployment can compute this: it needs the true identities",
        )
        for column in ("a", "b", "links", "true pairs", "precision", "recall"):
            truth.add_column(column, justify="left" if column in ("a", "b") else "right")
        for row in report.linkage_truth:
            truth.add_row(
                row["a"],
                row["b"],
                str(row["links"]),
                str(row["true_pairs"]),
                _fmt_measure(row["precision"]),
                _fmt_measure(row["recall"]),
            )
        console.print(truth)
    if report.truth:
        errors = Table(
            title="DEMO ONLY: released counts against the truth (perfect linkage, no noise)", title_justify="left"
        )
        for column in ("query", "cell", "released [95% interval]", "true"):
            errors.add_column(column, justify="right" if column != "query" else "left")
        for query in meta.queries:
            if query.key not in report.truth:
                continue
            result = report.results[query.key]
            column = result.raw.value_columns[0]
            for i, true in enumerate(report.truth[query.key]):
                keys = " / ".join(str(k) for k in result.raw.rows[i].keys) or "all"
                errors.add_row(query.title, keys, result.cell_text(i, column), format_value(true))
        console.print(errors)
    console.print(f"chart: {report.chart}", highlight=False)


def scenarios(console: Console, reports: list[Any], fmt: str) -> None:
    """One scenario as :func:`scenario` shows it; several one after another (JSON: a list, CSV: each
    table after a ``# scenario`` line)."""
    if len(reports) == 1:
        scenario(console, reports[0], fmt)
    elif fmt == "json":
        console.print_json(json.dumps([scenario_dict(r) for r in reports], default=str))
    else:
        for index, report in enumerate(reports):
            if fmt == "csv":
                console.print(f"# {report.scenario.name}", highlight=False)
            elif index:
                console.print()
            scenario(console, report, fmt)


def scenario_dict(report: Any) -> dict[str, Any]:
    return {
        "scenario": report.scenario.name,
        "project": report.scenario.project,
        "columns": report.table.columns,
        "rows": report.table.rows,
        "chart": str(report.chart),
        "published": str(report.published),
        "spent": report.spent(),
        "notes": report.notes,
        "results": {key: result.to_dict() for key, result in report.results.items()},
        "demo_only_linkage_error": report.linkage_truth,
        "demo_only_true_counts": report.truth,
    }


def linkage_quality(console: Console, report: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        console.print_json(json.dumps(report, default=str))
        return
    rows = [[k, v] for k, v in report.items() if not isinstance(v, dict | list)]
    if fmt == "csv":
        _csv(console, ["measure", "value"], rows)
        return
    table = Table(title="linkage quality against the ground truth", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(str(name), f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    for name, value in report.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            sub = Table(title=name, title_justify="left")
            columns = sorted({c for v in value.values() for c in v})
            sub.add_column("group")
            for column in columns:
                sub.add_column(column, justify="right")
            for group, measures in value.items():
                sub.add_row(str(group), *(_fmt_measure(measures.get(c)) for c in columns))
            console.print(sub)


def _fmt_measure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


@contextlib.contextmanager
def waiting(console: Console, what: str) -> Iterator[None]:
    """A spinner on stderr while a long call runs (nothing when stderr is not a terminal)."""
    if not console.is_terminal:
        yield
        return
    with console.status(Text(what + " ...")):
        yield


def model(console: Console, fit: fedlink.ModelResult, fmt: str) -> None:
    rows = fit.table_rows()
    if fmt == "json":
        console.print_json(json.dumps({**fit.model_dump(mode="json"), "table_rows": rows}))
        return
    if fmt == "csv":
        _csv(console, list(rows[0]), [list(r.values()) for r in rows])
        return
    noise = (
        "no noise (TEST MODE)"
        if fit.noiseless
        else "noise sd per statistic per iteration: "
        + ", ".join(f"{n} {sd:.3g}" for n, sd in sorted(fit.noise_sd.items()))
    )
    losses = ", ".join(f"{n} rho={loss.rho:g}" for n, loss in sorted(fit.privacy_loss.items()))
    errors = (
        f"no standard errors or intervals: {fit.errors_withheld}"
        if fit.errors_withheld is not None
        else "standard errors and intervals include the sampling error and the DP noise ('of which noise': its part)"
    )
    caption = (
        f"{fit.family} regression on {fit.table} at {', '.join(fit.nodes)}; {fit.iterations} iteration(s); "
        f"about {fit.rows:.0f} rows; {fit.pet}\nprivacy loss: {losses}; {noise}\n{errors}"
    )
    table = Table(title=fit.formula, caption=caption, title_justify="left", caption_justify="left")
    for column in ("term", "estimate", "std error", "of which noise", "z", "95% interval"):
        table.add_column(column, justify="left" if column == "term" else "right")
    for row in rows:
        error, part, z, lower, upper = (row[k] for k in ("std_error", "noise_error", "z", "lower", "upper"))
        table.add_row(
            str(row["term"]),
            f"{row['estimate']:.4g}",
            "-" if error is None else f"{error:.3g}",
            "-" if part is None else f"{part:.3g}",
            "-" if z is None else f"{z:.2f}",
            "-" if lower is None else f"[{lower:.4g}, {upper:.4g}]",
        )
    console.print(table)
    for note in fit.notes:
        console.print(f"note: {note}", highlight=False, markup=False)


def stored_results(console: Console, queries: list[dict[str, str]], fmt: str) -> None:
    """The queries whose keys this client keeps (so whose results it can collect)."""
    if fmt == "json":
        console.print_json(json.dumps({"queries": queries}))
        return
    header = ["query_id", "kind", "coordinator", "created"]
    if fmt == "csv":
        _csv(console, header, [[q[h] for h in header] for q in queries])
        return
    table = Table(title="queries whose results this client can collect", title_justify="left")
    for name in header:
        table.add_column(name)
    for q in queries:
        table.add_row(*(q[h] for h in header))
    console.print(table)


def publication(console: Console, pub: fedlink.Publication, fmt: str) -> None:
    """A publication as the coordinator stored it: its summary and, per output, the data and privacy loss."""
    if fmt == "json":
        console.print_json(pub.model_dump_json())
        return
    header = ["query_id", "kind", "pet", "datasets", "privacy_loss"]
    rows = [
        [
            o.query_id,
            o.kind,
            o.pet,
            " ".join(o.datasets),
            " ".join(f"{n}:epsilon={loss.epsilon:g},rho={loss.rho:g}" for n, loss in sorted(o.privacy_loss.items())),
        ]
        for o in pub.outputs
    ]
    if fmt == "csv":
        _csv(console, header, rows)
        return
    replaced = f"; supersedes {', '.join(pub.supersedes)}" if pub.supersedes else ""
    console.print(
        f"published {pub.publication_id} for project {pub.project}: {len(pub.outputs)} output(s){replaced}",
        highlight=False,
    )
    console.print(pub.summary, highlight=False)
    table = Table(title="outputs the summary is about", title_justify="left")
    for name in header:
        table.add_column(name)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("the public register page shows it: fedlink register export", highlight=False)
