"""Rendering API objects for people (rich tables) and for scripts (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console
from rich.table import Table

import fedlink


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.2f}"
    return str(value)


def result(console: Console, res: fedlink.Result, fmt: str) -> None:
    if fmt == "json":
        console.print_json(json.dumps(res.to_dict()))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(res.columns)
        for row in res.rows():
            writer.writerow(["" if v is None else v for v in row.values()])
        console.file.write(buffer.getvalue())
        return
    table = Table(title=res.sql, caption=f"nodes: {', '.join(res.nodes)}", title_justify="left")
    numeric = set(res.raw.value_columns)
    for column in res.columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    for row in res.rows():
        table.add_row(*(_cell(v) for v in row.values()))
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
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        console.file.write(buffer.getvalue())
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
