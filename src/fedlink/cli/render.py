"""Rendering API objects for people (rich tables) and for scripts (JSON, CSV)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

import fedlink


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
        table.add_row(
            *(fedlink.format_value(k) for k in row.keys), *(res.cell_text(i, c) for c in res.raw.value_columns)
        )
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
        "epsilon_cap",
        "epsilon_spent",
        "epsilon_remaining",
        "rho_cap",
        "rho_spent",
        "rho_remaining",
        "queries",
    ]
    if fmt == "csv":
        _csv(console, header, [[r[h] for h in header] for r in rows])
        return
    table = Table(title="privacy budget (each node's own ledger)", title_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name in ("node", "project", "dataset") else "right")
    for r in rows:
        table.add_row(*(f"{r[h]:g}" if isinstance(r[h], float) else str(r[h]) for h in header))
    console.print(table)


def catalogue(console: Console, cat: fedlink.Catalogue, fmt: str) -> None:
    if fmt == "json":
        console.print_json(json.dumps(cat.to_dict()))
        return
    rows = []
    for status in cat.raw.nodes:
        for table in status.catalogue.tables if status.catalogue else ():
            for col in table.columns:
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
                        table.name,
                        f"~{table.rows_rounded:,}",
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
    if down:
        caption += f"; down: {', '.join(down)}"
    table = Table(title="fedlink catalogue", caption=caption, title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@contextlib.contextmanager
def stage_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar over named stages on a terminal; nothing when output is not a terminal."""
    if not console.is_terminal:
        yield lambda stage, done, total: None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), console=console
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
        title=f"link spine built for project {report.project}",
        title_justify="left",
        caption=f"nodes: {', '.join(report.nodes)}; overlap counts are not released",
    )
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in report.stages.items():
        table.add_row(stage, f"{seconds:.2f}")
    console.print(table)


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
