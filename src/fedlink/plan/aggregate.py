"""The typed query model: what a validated SQL query asks nodes to compute.

Plans are frozen pydantic models because they cross the trust boundary between coordinator and node;
every node validates a plan against its own declarations again before running it.

A horizontal :class:`AggregatePlan` defines a dense *cell layout*: the cross product of the declared
categories of the group-by columns (in declaration order) and, for a histogram, its declared bins.
Every node returns one vector per :class:`Component` over exactly those cells, including empty ones,
so the set of released keys is public and vectors from different nodes add element-wise (in the clear
today, under homomorphic encryption later).
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Literal

from pydantic import Field

from fedlink.frozen import Frozen
from fedlink.plan.catalogue import Category

Scalar = str | int | float


class Comparison(Frozen):
    kind: Literal["cmp"] = "cmp"
    column: str
    op: Literal["=", "!=", "<", "<=", ">", ">="]
    value: Scalar


class InList(Frozen):
    kind: Literal["in"] = "in"
    column: str
    values: tuple[Scalar, ...]
    negated: bool = False


class Between(Frozen):
    kind: Literal["between"] = "between"
    column: str
    low: float
    high: float


class IsNull(Frozen):
    kind: Literal["is_null"] = "is_null"
    column: str
    negated: bool = False


class BoolOp(Frozen):
    kind: Literal["bool"] = "bool"
    op: Literal["and", "or"]
    args: tuple[Predicate, ...]


class Not(Frozen):
    kind: Literal["not"] = "not"
    arg: Predicate


Predicate = Annotated[Comparison | InList | Between | IsNull | BoolOp | Not, Field(discriminator="kind")]
BoolOp.model_rebuild()
Not.model_rebuild()


def predicate_columns(predicate: Predicate | None) -> set[str]:
    if predicate is None:
        return set()
    if isinstance(predicate, BoolOp):
        return set().union(*(predicate_columns(a) for a in predicate.args))
    if isinstance(predicate, Not):
        return predicate_columns(predicate.arg)
    return {predicate.column}


AggregateFunc = Literal["count", "sum", "avg", "histogram"]


class Component(Frozen):
    """One additive vector a node computes: a count of rows, of non-null values, a clamped sum, or bins."""

    kind: Literal["rows", "count", "sum", "histogram"]
    column: str | None = None
    lower: float | None = None
    upper: float | None = None
    bins: tuple[float, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.column or '*'}"


class Aggregate(Frozen):
    """One aggregate of the SELECT list, with the public bounds (sum, avg) or bins (histogram) it uses."""

    func: AggregateFunc
    column: str | None = None  # None only for COUNT(*)
    label: str
    lower: float | None = None
    upper: float | None = None
    bins: tuple[float, ...] | None = None

    @property
    def components(self) -> tuple[Component, ...]:
        if self.func == "count":
            if self.column is None:
                return (Component(kind="rows"),)
            return (Component(kind="count", column=self.column),)
        if self.func == "histogram":
            return (Component(kind="histogram", column=self.column, bins=self.bins),)
        total = Component(kind="sum", column=self.column, lower=self.lower, upper=self.upper)
        if self.func == "sum":
            return (total,)
        return (total, Component(kind="count", column=self.column))


class GroupKey(Frozen):
    column: str
    categories: tuple[Category, ...]


class CellLayout(Frozen):
    """The aggregates and group-by of a plan, and the dense cell layout they define (shared by
    horizontal and linked plans)."""

    aggregates: tuple[Aggregate, ...]
    group_by: tuple[GroupKey, ...] = ()
    sql: str = ""

    @property
    def components(self) -> tuple[Component, ...]:
        """The distinct additive vectors needed to answer every aggregate.

        A plan without a histogram always includes the row count per cell: disclosure control
        decides suppression on it, even when the analyst did not ask for a count.
        """
        found: dict[str, Component] = {}
        if self.histogram is None:
            found["rows:*"] = Component(kind="rows")
        for agg in self.aggregates:
            for comp in agg.components:
                found.setdefault(comp.key, comp)
        return tuple(found.values())

    @property
    def histogram(self) -> Aggregate | None:
        """The plan's HISTOGRAM aggregate, if any: its bins add a trailing dimension to every cell."""
        return next((a for a in self.aggregates if a.func == "histogram"), None)

    @property
    def bins(self) -> int:
        hist = self.histogram
        return len(hist.bins) - 1 if hist and hist.bins else 1

    @property
    def group_cells(self) -> int:
        return math.prod(len(g.categories) for g in self.group_by)

    @property
    def cells(self) -> int:
        return self.group_cells * self.bins

    def group_keys(self) -> list[tuple[Category, ...]]:
        """Group-by keys in cell order (row-major over declared categories)."""
        return list(itertools.product(*(g.categories for g in self.group_by)))


class AggregatePlan(CellLayout):
    """A horizontal aggregate over one table declared at one or more nodes."""

    kind: Literal["horizontal"] = "horizontal"
    table: str
    nodes: tuple[str, ...]
    where: Predicate | None = None

    @property
    def noise_sources(self) -> int:
        """How many independent noises a released number carries: one per node."""
        return len(self.nodes)

    def columns_used(self) -> set[str]:
        used = {a.column for a in self.aggregates if a.column} | {g.column for g in self.group_by}
        return used | predicate_columns(self.where)


def histogram_labels(bins: tuple[float, ...]) -> list[str]:
    """Readable labels of half-open bins; the last bin is closed."""

    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    labels = [f"[{fmt(lo)}, {fmt(hi)})" for lo, hi in itertools.pairwise(bins)]
    labels[-1] = labels[-1][:-1] + "]"
    return labels
