"""The node's fixed aggregate operator, one sqlglot expression that each backend renders in its own
SQL dialect (DuckDB, PostgreSQL, Spark).

No code is ever shipped to a node: a plan is data, validated here against the node's own
declarations (the node trusts nothing the coordinator says about bounds, bins or categories), and
turned into one SQL statement built from sqlglot expressions, never by pasting strings.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import numpy as np
from sqlglot import exp

from fedlink.errors import QueryError
from fedlink.node.config import ColumnDecl, TableDecl
from fedlink.plan.aggregate import (
    AggregatePlan,
    Between,
    BoolOp,
    Comparison,
    Component,
    InList,
    IsNull,
    Not,
    Predicate,
)
from fedlink.plan.catalogue import Category
from fedlink.plan.model import ModelPlan, accumulate
from fedlink.protocol.results import PartialAggregates

if TYPE_CHECKING:
    from fedlink.node.engines.backends import Backend

_OPS: dict[str, type[exp.Binary]] = {
    "=": exp.EQ,
    "!=": exp.NEQ,
    "<": exp.LT,
    "<=": exp.LTE,
    ">": exp.GT,
    ">=": exp.GTE,
}


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def _lit(value: str | int | float) -> exp.Expr:
    return exp.Literal.string(value) if isinstance(value, str) else exp.Literal.number(value)


def predicate_sql(predicate: Predicate) -> exp.Expr:
    """A plan predicate as a sqlglot expression (values become literals, never raw SQL)."""
    if isinstance(predicate, Comparison):
        return _OPS[predicate.op](this=_col(predicate.column), expression=_lit(predicate.value))
    if isinstance(predicate, InList):
        node: exp.Expr = exp.In(this=_col(predicate.column), expressions=[_lit(v) for v in predicate.values])
        return exp.Not(this=node) if predicate.negated else node
    if isinstance(predicate, Between):
        return exp.Between(this=_col(predicate.column), low=_lit(predicate.low), high=_lit(predicate.high))
    if isinstance(predicate, IsNull):
        node = exp.Is(this=_col(predicate.column), expression=exp.Null())
        return exp.Not(this=node) if predicate.negated else node
    if isinstance(predicate, BoolOp):
        joined = (
            exp.and_(*map(predicate_sql, predicate.args))
            if predicate.op == "and"
            else exp.or_(*map(predicate_sql, predicate.args))
        )
        return exp.Paren(this=joined)
    if isinstance(predicate, Not):
        return exp.Not(this=exp.Paren(this=predicate_sql(predicate.arg)))
    raise QueryError(f"unknown predicate {predicate!r}")


def validate_plan(plan: AggregatePlan, table: TableDecl, node: str) -> None:
    """Refuse a plan that does not match this node's own declarations."""
    declared: dict[str, ColumnDecl] = {c.name: c for c in table.columns}
    for name in sorted(plan.columns_used()):
        column = declared.get(name)
        if column is None or column.kind == "identifier":
            raise QueryError(f"node '{node}' refuses: column '{name}' is not a queryable column of '{table.name}'")
    for group in plan.group_by:
        if declared[group.column].categories != group.categories:
            raise QueryError(f"node '{node}' refuses: the categories of '{group.column}' differ from its declaration")
    for comp in plan.components:
        if comp.kind == "sum" and (comp.lower, comp.upper) != declared[cast(str, comp.column)].bounds:
            raise QueryError(f"node '{node}' refuses: bounds of '{comp.column}' differ from its declaration")
        if comp.kind == "histogram" and comp.bins != declared[cast(str, comp.column)].bins:
            raise QueryError(f"node '{node}' refuses: bins of '{comp.column}' differ from its declaration")


def _bin_index(comp: Component) -> exp.Expr:
    assert comp.bins is not None and comp.column is not None
    case = exp.Case()
    for i, edge in enumerate(comp.bins[1:-1]):
        case = case.when(exp.LT(this=_col(comp.column), expression=_lit(edge)), _lit(i))
    return case.else_(_lit(len(comp.bins) - 2))


def _component_sql(comp: Component) -> exp.Expr:
    if comp.kind in ("rows", "histogram"):
        return exp.Count(this=exp.Star())
    assert comp.column is not None
    if comp.kind == "count":
        return exp.Count(this=_col(comp.column))
    clamped = exp.Least(
        this=exp.Greatest(this=_col(comp.column), expressions=[_lit(cast(float, comp.lower))]),
        expressions=[_lit(cast(float, comp.upper))],
    )
    return exp.Coalesce(this=exp.Sum(this=clamped), expressions=[_lit(0)])


def position(placeholder: int, column: str) -> exp.Expr:
    """The 1-based position of ``column``'s value in the list bound to ``$placeholder``: NULL (DuckDB,
    PostgreSQL) or 0 (Spark) when absent, so ``> 0`` keeps exactly the declared values everywhere."""
    return exp.ArrayPosition(this=exp.Placeholder(this=str(placeholder)), expression=_col(column))


def bounded(table: TableDecl, relation: exp.Expr) -> exp.Expr:
    """``relation`` with the contribution bound enforced: at most max_rows_per_person rows of each
    person. Which rows are kept must not depend on the engine or the run: order by every declared column."""
    if not table.person_key:
        return relation.copy()
    order = exp.Order(expressions=[exp.Ordered(this=_col(c.name)) for c in table.columns])
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_col(c) for c in table.person_key], order=order)
    kept = (
        exp.select(exp.Star())
        .from_(relation.copy())
        .qualify(exp.LTE(this=rank, expression=_lit(table.max_rows_per_person)))
    )
    return exp.alias_(exp.Subquery(this=kept), "bounded")


def aggregate_sql(plan: AggregatePlan, table: TableDecl, relation: exp.Expr) -> tuple[exp.Select, list[list[Category]]]:
    """One SELECT giving, per non-empty cell, the cell index and every component's value, and its
    parameters: each group column's declared categories are one list (``$1``, ``$2``...), which
    DuckDB binds (10,000 groups cost no more to compile than 10) and other backends inline."""
    cell: exp.Expr = _lit(0)
    stride = plan.bins
    filters: list[exp.Expr] = []
    params: list[list[Category]] = []
    for group in reversed(plan.group_by):
        params.append(list(group.categories))
        where = position(len(params), group.column)
        cell = exp.Add(
            this=cell,
            expression=exp.Mul(this=exp.Paren(this=exp.Sub(this=where, expression=_lit(1))), expression=_lit(stride)),
        )
        filters.append(exp.GT(this=where.copy(), expression=_lit(0)))
        stride *= len(group.categories)
    hist = next((c for c in plan.components if c.kind == "histogram"), None)
    if hist is not None:
        cell = exp.Add(this=cell, expression=_bin_index(hist))
        filters.append(exp.Not(this=exp.Is(this=_col(cast(str, hist.column)), expression=exp.Null())))
    if plan.where is not None:
        filters.append(predicate_sql(plan.where))
    source = bounded(table, relation)
    values = (exp.alias_(_component_sql(c), f"v{i}") for i, c in enumerate(plan.components))
    select = exp.select(exp.alias_(cell, "cell"), *values).from_(source)
    if filters:
        select = select.where(exp.and_(*filters))
    return select.group_by(_lit(1)), params


def run_aggregate(backend: Backend, plan: AggregatePlan, table: TableDecl, node: str) -> PartialAggregates:
    """Validate and run ``plan`` over ``table`` in its backend; dense vectors over every declared cell."""
    validate_plan(plan, table, node)
    select, params = aggregate_sql(plan, table, backend.relation(table))
    columns = backend.fetch(select, params)
    names = list(columns)
    vectors = {c.key: np.zeros(plan.cells) for c in plan.components}
    cells = np.asarray(columns[names[0]], dtype=float).astype(np.int64) if names else np.zeros(0, np.int64)
    for comp, name in zip(plan.components, names[1:], strict=True):
        values = np.nan_to_num(np.asarray(columns[name], dtype=float))
        vectors[comp.key][cells] = values
    return PartialAggregates(node=node, vectors={k: tuple(v.tolist()) for k, v in vectors.items()})


def validate_model(plan: ModelPlan, table: TableDecl, node: str) -> None:
    """Refuse a model whose terms do not match this node's own declarations."""
    declared: dict[str, ColumnDecl] = {c.name: c for c in table.columns}
    for term in (plan.response, *plan.terms):
        column = declared.get(term.column)
        if column is None or column.kind == "identifier":
            raise QueryError(
                f"node '{node}' refuses: column '{term.column}' is not a queryable column of '{table.name}'"
            )
        if term.value is not None:
            if term.value not in (column.categories or ()):
                raise QueryError(f"node '{node}' refuses: '{term.value}' is not a declared category of '{term.column}'")
        elif not term.lower < term.upper or not all(map(math.isfinite, (term.lower, term.upper))):
            raise QueryError(f"node '{node}' refuses: the bounds of '{term.column}' in the model are not a range")


def model_sql(plan: ModelPlan, table: TableDecl, relation: exp.Expr) -> exp.Select:
    """The design rows of a model (``y``, ``x0`` ...: every value clamped and scaled to [0, 1]) over
    ``table`` after its contribution bound, skipping rows with a missing value in any column used."""
    values = [exp.alias_(plan.response.expression(), "y")]
    values += [exp.alias_(term.expression(), f"x{i}") for i, term in enumerate(plan.terms)]
    present = [exp.Not(this=exp.Is(this=_col(c), expression=exp.Null())) for c in sorted(plan.columns_used())]
    return exp.select(*values).from_(bounded(table, relation)).where(exp.and_(*present))


def model_statistics(backend: Backend, plan: ModelPlan, table: TableDecl, node: str, beta: np.ndarray) -> np.ndarray:
    """This node's statistics vector for ``beta`` (see :func:`fedlink.plan.model.accumulate`)."""
    validate_model(plan, table, node)
    select = model_sql(plan, table, backend.relation(table))
    return accumulate(plan, backend.batches(select, (), 200_000), beta)
