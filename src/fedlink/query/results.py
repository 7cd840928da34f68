"""What nodes send back (additive partial aggregates) and what the analyst receives (a result table)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedlink.errors import Fault
from fedlink.query.catalogue import Category
from fedlink.query.plan import AggregatePlan, histogram_labels


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PartialAggregates(_Frozen):
    """One node's additive vectors, one per plan component (keyed by ``Component.key``), over all cells."""

    node: str
    vectors: dict[str, tuple[float, ...]]

    def check(self, plan: AggregatePlan) -> None:
        expected = {c.key for c in plan.components}
        if set(self.vectors) != expected or any(len(v) != plan.cells for v in self.vectors.values()):
            raise Fault(
                f"node '{self.node}' returned vectors of the wrong shape; check that it runs this fedlink version"
            )


def combine(plan: AggregatePlan, partials: list[PartialAggregates]) -> dict[str, np.ndarray]:
    """Element-wise sums of every node's vectors."""
    totals = {c.key: np.zeros(plan.cells) for c in plan.components}
    for partial in partials:
        partial.check(plan)
        for key, vector in partial.vectors.items():
            totals[key] += np.asarray(vector, dtype=float)
    return totals


class ResultRow(_Frozen):
    keys: tuple[Category, ...]
    values: tuple[float | None, ...]


class QueryResult(_Frozen):
    """An aggregate table: one row per declared group (and bin), one value column per aggregate."""

    sql: str
    table: str
    nodes: tuple[str, ...]
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    rows: tuple[ResultRow, ...]


def build_result(plan: AggregatePlan, totals: dict[str, np.ndarray]) -> QueryResult:
    """Turn summed component vectors into the analyst's table (AVG = SUM / COUNT)."""
    keys: list[tuple[Category, ...]] = plan.group_keys()
    key_columns = tuple(g.column for g in plan.group_by)
    hist = plan.histogram
    if hist is not None and hist.bins:
        labels = histogram_labels(hist.bins)
        keys = [(*k, label) for k in keys for label in labels]
        key_columns = (*key_columns, f"{hist.column}_bin")
    columns = []
    for agg in plan.aggregates:
        comps = [totals[c.key] for c in agg.components]
        if agg.func == "avg":
            total, count = comps
            with np.errstate(invalid="ignore", divide="ignore"):
                columns.append(np.where(count > 0, total / np.where(count > 0, count, 1), np.nan))
        else:
            columns.append(comps[0])
    rows = []
    for i, key in enumerate(keys):
        values = tuple(None if np.isnan(col[i]) else float(col[i]) for col in columns)
        rows.append(ResultRow(keys=key, values=values))
    return QueryResult(
        sql=plan.sql,
        table=plan.table,
        nodes=plan.nodes,
        key_columns=key_columns,
        value_columns=tuple(a.label for a in plan.aggregates),
        rows=tuple(rows),
    )
