"""Result objects an analyst holds: convertible to dicts, pandas and Polars, with a notebook repr."""

from __future__ import annotations

import html
from typing import Any

from fedlink.query.catalogue import FederationCatalogue
from fedlink.query.results import QueryResult


class Result:
    """An aggregate table released by the federation, with its provenance.

    ``rows()`` gives one dict per group; ``to_pandas()`` / ``to_polars()`` give data frames.
    """

    def __init__(self, raw: QueryResult) -> None:
        self.raw = raw

    @property
    def columns(self) -> list[str]:
        return [*self.raw.key_columns, *self.raw.value_columns]

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.raw.nodes

    @property
    def sql(self) -> str:
        return self.raw.sql

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, [*r.keys, *r.values], strict=True)) for r in self.raw.rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sql": self.sql,
            "table": self.raw.table,
            "nodes": list(self.nodes),
            "columns": self.columns,
            "rows": self.rows(),
        }

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=self.columns)

    def to_polars(self) -> Any:
        import polars as pl

        return pl.DataFrame(self.rows())

    def __repr__(self) -> str:
        shape = f"{len(self.raw.rows)} rows x {self.columns}"
        return f"<fedlink Result {self.raw.table} from {len(self.nodes)} nodes: {shape}>"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.values()) + "</tr>" for row in self.rows()
        )
        caption = html.escape(f"{self.sql} — nodes: {', '.join(self.nodes)}")
        return f"<table><caption>{caption}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.2f}"
    return str(value)


class Catalogue:
    """What data exists where in the federation."""

    def __init__(self, raw: FederationCatalogue) -> None:
        self.raw = raw

    def tables(self) -> dict[str, list[str]]:
        """Table name -> the nodes declaring it."""
        found: dict[str, list[str]] = {}
        for status in self.raw.nodes:
            for table in status.catalogue.tables if status.catalogue else ():
                found.setdefault(table.name, []).append(status.node)
        return found

    def to_dict(self) -> dict[str, Any]:
        return self.raw.model_dump(mode="json")

    def __repr__(self) -> str:
        live = sum(s.live for s in self.raw.nodes)
        return f"<fedlink Catalogue: {live}/{len(self.raw.nodes)} nodes live, tables {sorted(self.tables())}>"
