"""The plaintext path of a linked query: one DuckDB join over every table, keyed by a person key.

Never run by a node or the coordinator: it needs every department's rows in one place. It exists to
check and measure the encrypted protocol: with the link spine's slots as the key it must give exactly
what the encrypted chain gives in test mode; with the synthetic ground truth's person ids as the key
(and perfect identifiers) it gives the true statistic; and it is the plaintext baseline of the
linked-query benchmark. It follows the semantics stated in :mod:`fedlink.language.linked_query` with SQL
written independently of the node's operators.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb
import numpy as np

from fedlink.node.engines.operators import predicate_sql
from fedlink.plan.linked_query import LinkedPlan


def _reader(path: Path) -> str:
    literal = str(path).replace("'", "''")
    return f"read_csv_auto('{literal}')" if path.suffix == ".csv" else f"read_parquet('{literal}')"


def reference_totals(
    plan: LinkedPlan,
    tables: Mapping[tuple[str, str], Path],
    keys: Mapping[tuple[str, str], str],
    units: Mapping[str, float] | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, np.ndarray]:
    """Per plan component, the exact total in every cell.

    ``tables[(node, table)]`` is the table's file; ``keys[(node, table)]`` names a relation in
    ``connection`` with columns ``record_id`` (VARCHAR) and ``key`` (the person). ``units`` gives the
    fixed-point unit of each SUM component (as the encrypted result reports it), so sums round alike;
    without it, sums are exact.
    """
    con = connection or duckdb.connect()
    units = units or {}
    ctes = []
    for i, source in enumerate(plan.sources):
        is_group = plan.group_source == i
        picks = ["k.key AS key"]
        filters = [predicate_sql(source.where).sql(dialect="duckdb")] if source.where is not None else []
        if is_group:
            cell_terms = []
            stride = 1
            for group in reversed(plan.group_by):
                values = ", ".join(repr(c) for c in group.categories)
                position = f'list_position([{values}], "{group.column}")'
                cell_terms.append(f"({position} - 1) * {stride}")
                filters.append(f"{position} IS NOT NULL")
                stride *= len(group.categories)
            picks.append(f"MIN({' + '.join(cell_terms)}) AS cell")
        prefix = f"{source.nodes[0]}.{source.table}."
        for j, agg in enumerate(plan.aggregates):
            if agg.column and agg.column.startswith(prefix):
                column = f'"{agg.column.removeprefix(prefix)}"'
                if agg.lower is not None and agg.upper is not None:
                    column = f"LEAST(GREATEST({column}, {agg.lower!r}), {agg.upper!r})"
                picks.append(f"AVG({column}) AS a{j}")
        where = f"WHERE {' AND '.join(filters)}" if filters else ""
        parts = [
            f"SELECT {', '.join(picks)} FROM {_reader(tables[(node, source.table)])} t "
            f"JOIN {keys[(node, source.table)]} k ON CAST(t.record_id AS VARCHAR) = k.record_id {where} GROUP BY k.key"
            for node in source.nodes
        ]
        body = " UNION ".join(f"SELECT DISTINCT key FROM ({p})" for p in parts) if len(parts) > 1 else parts[0]
        ctes.append(f"s{i} AS ({body})")
    joins = " ".join(f"JOIN s{i} USING (key)" for i in range(1, len(plan.sources)))
    cell = f"s{plan.group_source}.cell" if plan.group_source is not None else "0"
    hist = plan.histogram
    outputs = []
    for comp in plan.components:
        index = next((k for k, a in enumerate(plan.aggregates) if a.column == comp.column), None)
        if comp.kind in ("rows", "histogram"):
            outputs.append("COUNT(*)")
        elif comp.kind == "count":
            outputs.append(f"COUNT(a{index})")
        else:
            unit = units.get(comp.key)
            value = f"ROUND_EVEN(a{index} / {unit!r}, 0) * {unit!r}" if unit else f"a{index}"
            outputs.append(f"COALESCE(SUM({value}), 0)")
    if hist is not None:
        j = plan.aggregates.index(hist)
        assert hist.bins is not None
        edges = ", ".join(repr(float(e)) for e in hist.bins[1:-1])
        below = f"list_count(list_filter([{edges}], lambda e: e <= a{j}))"
        bin_index = f"(CASE WHEN a{j} IS NULL THEN NULL ELSE {below} END)"
        cell = f"{cell} * {plan.bins} + {bin_index}"
    sql = (
        f"WITH {', '.join(ctes)} SELECT {cell} AS cell, {', '.join(outputs)} FROM s0 {joins} "
        f"{'WHERE a' + str(plan.aggregates.index(hist)) + ' IS NOT NULL' if hist is not None else ''} GROUP BY 1"
    )
    totals = {c.key: np.zeros(plan.cells) for c in plan.components}
    for row in con.execute(sql).fetchall():
        for comp, value in zip(plan.components, row[1:], strict=True):
            totals[comp.key][int(row[0])] = float(value)
    return totals
