"""A node's part of a linked query: per-slot vectors from its own rows, and its step of the chain.

For each of its tables in the query the node finds, with one DuckDB statement, the people (from the
record -> person map it kept at linkage time) with at least one row matching that table's conditions,
their group cell (group-by table) and the mean of their matching values (aggregated columns). It
places them at their slots of the link spine, so every vector has one entry per linked entity, and
runs its step of the encrypted chain (:mod:`fedlink.pets.chain`). Nothing but ciphertexts leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sqlglot import exp

from fedlink.errors import Fault, QueryError
from fedlink.node.config import TableDecl
from fedlink.node.data import NodeData
from fedlink.node.engines.operators import position, predicate_sql
from fedlink.pets.chain import ChainEvaluator, ChainParams
from fedlink.pets.dp import add_noise, calibrate
from fedlink.plan.aggregate import Component
from fedlink.plan.linked_query import LinkedPlan, LinkedSource, columns_at
from fedlink.protocol.tasks import LinkedOutput, LinkedStep, Noise, PrivacyLoss

#: Fixed-point units tried for linked SUM values, finest first (value = integer * unit).
_UNITS = (0.01, 0.1, 1.0, 10.0, 100.0)


def validate_linked(plan: LinkedPlan, tables: dict[str, TableDecl], node: str) -> list[TableDecl]:
    """This node's tables of the plan, checked against its own declarations."""
    mine = []
    for source in plan.sources_at(node):
        table = tables.get(source.table)
        if table is None:
            raise QueryError(f"node '{node}' refuses: it has no table '{source.table}'")
        declared = {c.name: c for c in table.columns}
        for name in sorted(columns_at(plan, source)):
            column = declared.get(name)
            if column is None or column.kind == "identifier":
                raise QueryError(f"node '{node}' refuses: '{name}' is not a queryable column of '{table.name}'")
        if plan.group_source is not None and plan.sources[plan.group_source] == source:
            for group in plan.group_by:
                if declared[group.column].categories != group.categories:
                    raise QueryError(f"node '{node}' refuses: the categories of '{group.column}' differ")
        for agg in plan.aggregates:
            prefix = f"{node}.{table.name}."
            if agg.column and agg.column.startswith(prefix):
                column = declared[agg.column.removeprefix(prefix)]
                if agg.func in ("sum", "avg") and (agg.lower, agg.upper) != column.bounds:
                    raise QueryError(f"node '{node}' refuses: bounds of '{column.name}' differ from its declaration")
                if agg.func == "histogram" and agg.bins != column.bins:
                    raise QueryError(f"node '{node}' refuses: bins of '{column.name}' differ from its declaration")
        mine.append(table)
    if not mine:
        raise QueryError(f"node '{node}' holds none of the linked tables")
    return mine


@dataclass
class NodeVectors:
    """This node's per-slot view of the linked people: who matches, their group cell, their values."""

    present: np.ndarray
    cell: np.ndarray | None = None
    values: dict[str, np.ndarray] = field(default_factory=dict)


def _value_columns(plan: LinkedPlan, node: str, source: LinkedSource) -> list[str]:
    prefix = f"{node}.{source.table}."
    return sorted({a.column.removeprefix(prefix) for a in plan.aggregates if a.column and a.column.startswith(prefix)})


def fetch_rows(plan: LinkedPlan, node: str, data: NodeData, link: str) -> list[dict[str, np.ndarray]]:
    """One statement per table of this node in the plan, in that table's backend: the slot of every
    person with a matching row, their group cell and the mean of their values (joined to the spine's
    table ``link``, see :meth:`NodeData.link_table`). Runs when the query is reserved, so nodes
    prepare in parallel."""
    out = []
    for source in plan.sources_at(node):
        table = data.tables[source.table]
        is_group = plan.group_source is not None and plan.sources[plan.group_source] == source
        select, params = _source_sql(
            plan, source, table, data.relation(table), link, is_group, _value_columns(plan, node, source)
        )
        batches = list(data.stream(table, select, params))  # one row per person, in batches of NumPy columns
        out.append(
            {
                name: np.concatenate([np.asarray(b[name]) for b in batches]) if batches else np.zeros(0)
                for name in select.named_selects
            }
        )
    return out


def node_vectors(plan: LinkedPlan, node: str, fetched: list[dict[str, np.ndarray]], spine_size: int) -> NodeVectors:
    """Per-slot vectors of this node's people (length ``spine_size``) from :func:`fetch_rows`."""
    present = np.ones(spine_size, dtype=np.int64)
    out = NodeVectors(present=present)
    for source, rows in zip(plan.sources_at(node), fetched, strict=True):
        is_group = plan.group_source is not None and plan.sources[plan.group_source] == source
        slots = rows["slot"].astype(np.int64)
        if slots.size and int(slots.max()) >= spine_size:
            raise Fault(f"node '{node}' holds slots beyond the spine; rebuild it with `fedlink link`")
        here = np.zeros(spine_size, dtype=np.int64)
        here[slots] = 1
        present *= here
        if is_group:
            cell = np.full(spine_size, -1, dtype=np.int64)
            cell[slots] = rows["cell"].astype(np.int64)
            out.cell = cell
        prefix = f"{node}.{source.table}."
        for i, column in enumerate(_value_columns(plan, node, source)):
            values = np.full(spine_size, np.nan)
            values[slots] = rows[f"v{i}"].astype(float)
            out.values[prefix + column] = values
    return out


def _source_sql(
    plan: LinkedPlan,
    source: LinkedSource,
    table: TableDecl,
    relation: exp.Expr,
    link: str,
    is_group: bool,
    values: list[str],
) -> tuple[exp.Select, list[object]]:
    """Per person (slot) with a row meeting the source's conditions: the group cell and the mean of
    each value, as one statement for any backend (the link table sits in the same backend)."""
    params: list[object] = [source.table]
    filters: list[exp.Expr] = [predicate_sql(source.where)] if source.where is not None else []
    cell: exp.Expr = exp.Literal.number(0)
    if is_group:
        stride = 1
        terms: list[exp.Expr] = []
        for group in reversed(plan.group_by):
            params.append(list(group.categories))
            where = position(len(params), group.column)
            terms.append(
                exp.Mul(
                    this=exp.Paren(this=exp.Sub(this=where, expression=exp.Literal.number(1))),
                    expression=exp.Literal.number(stride),
                )
            )
            filters.append(exp.GT(this=where.copy(), expression=exp.Literal.number(0)))
            stride *= len(group.categories)
        cell = terms[0]
        for term in terms[1:]:
            cell = exp.Add(this=cell, expression=term)
    picks: list[exp.Expr] = [exp.alias_(exp.Min(this=cell), "cell")]
    prefix = f"{source.nodes[0]}.{source.table}."
    for i, name in enumerate(values):
        # SUM and AVG clamp each row to the declared bounds (checked against this node's declaration)
        bounded = next((a for a in plan.aggregates if a.column == prefix + name and a.lower is not None), None)
        value: exp.Expr = exp.column(name, quoted=True)
        if bounded is not None:
            value = exp.Least(
                this=exp.Greatest(this=value, expressions=[exp.Literal.number(bounded.lower)]),
                expressions=[exp.Literal.number(bounded.upper)],
            )
        picks.append(exp.alias_(exp.Avg(this=value), f"v{i}"))
    rows = exp.select(exp.Star()).from_(relation.copy())
    if filters:
        rows = rows.where(exp.and_(*filters))
    joined = exp.and_(
        exp.EQ(this=exp.column("source_table", table="r"), expression=exp.Placeholder(this="1")),
        exp.EQ(
            this=exp.column("record_id", table="r"),
            expression=exp.cast(exp.column("record_id", table="t"), "text"),
        ),
    )
    select = (
        exp.select(exp.alias_(exp.column("slot", table="r"), "slot"), *picks)
        .from_(exp.alias_(exp.Subquery(this=rows), "t"))
        .join(exp.table_(link, quoted=True, alias="r"), on=joined)
        .group_by(exp.column("slot", table="r"))
    )
    return select, params


def _unit(plan: LinkedPlan, bound: float, spine_size: int) -> float:
    """The finest fixed-point unit at which a sum over the whole spine cannot wrap around."""
    room = ChainParams.for_chain(plan.multiplications, sums=plan.sums).max_total / 4
    for unit in _UNITS:
        if spine_size * bound / unit <= room:
            return unit
    raise QueryError("a linked SUM over this many people would overflow the encryption; query a smaller cohort")


class _Factors:
    """This node's plaintext factors for one component: a base vector (presence, value or non-null),
    local histogram bins, and, at the group-by node, each slot's group cell (-1: none)."""

    def __init__(self, plan: LinkedPlan, node: str, vectors: NodeVectors, comp: Component, unit: float | None) -> None:
        mine = comp.column is not None and comp.column.startswith(f"{node}.")
        base = vectors.present.copy()
        self.bins: list[np.ndarray] | None = None
        if mine:
            assert comp.column is not None
            values = vectors.values[comp.column]
            known = ~np.isnan(values)
            if comp.kind == "count":
                base *= known
            elif comp.kind == "sum":
                assert unit is not None
                base *= np.where(known, np.rint(np.nan_to_num(values) / unit), 0).astype(np.int64)
            elif comp.kind == "histogram":
                assert comp.bins is not None
                edges = np.asarray(comp.bins)
                index = np.clip(np.searchsorted(edges, np.nan_to_num(values), side="right") - 1, 0, len(edges) - 2)
                self.bins = [(known & (index == b)).astype(np.int64) for b in range(len(edges) - 1)]
        self.base = base
        self.cell: np.ndarray | None = None
        if plan.group_node == node:
            assert vectors.cell is not None
            self.cell = vectors.cell


@dataclass
class ChainCarry:
    """What a node carries from one window of a linked query's chain to the next: the windows done, and
    at the last node each component's per-cell sums so far (sealed with noise after the last window)."""

    windows: int = 0
    done: int = 0
    sums: dict[str, list[bytes | None]] = field(default_factory=dict)


def window_vectors(vectors: NodeVectors, start: int, stop: int) -> NodeVectors:
    """The slots [start, stop) of this node's per-slot vectors."""
    return NodeVectors(
        present=vectors.present[start:stop],
        cell=None if vectors.cell is None else vectors.cell[start:stop],
        values={k: v[start:stop] for k, v in vectors.values.items()},
    )


def run_step(
    plan: LinkedPlan,
    node: str,
    step: LinkedStep,
    vectors: NodeVectors,
    blobs: list[bytes],
    loss: PrivacyLoss,
    noiseless: bool,
    carry: ChainCarry | None = None,
) -> tuple[LinkedOutput, list[bytes]]:
    """This node's step of the chain over one window of the spine: encrypt, OR in, multiply, or (last)
    add the window's cells to ``carry``'s sums, and after the last window add DP noise and seal them.

    Windows must come in order, each once (``carry`` counts them): a window counted twice would count
    its people twice, beyond what the noise was calibrated for."""
    carry = carry if carry is not None else ChainCarry()
    if step.window != carry.done or (carry.done and step.windows != carry.windows) or step.window >= step.windows:
        raise Fault(
            f"window {step.window + 1} of {step.windows} of a linked query arrived after {carry.done} window(s); "
            "a window is run once, in order: retry the query"
        )
    carry.windows = step.windows
    evaluator = ChainEvaluator(ChainParams.for_chain(plan.multiplications, sums=plan.sums), step.public_key)
    start, stop = step.slot_range(evaluator.params.slots)
    here = window_vectors(vectors, start, stop)
    chunks = evaluator.chunks(stop - start)
    final = step.window == step.windows - 1
    units = dict(step.units)
    incoming = _split(step, blobs, chunks) if step.role != "first" else {}
    streams: dict[str, list[list[bytes]]] = {}
    noise: dict[str, Noise] = {}
    components = plan.components
    for comp in components:
        if comp.kind == "sum" and comp.column and comp.column.startswith(f"{node}."):
            units[comp.key] = _unit(plan, max(abs(comp.lower or 0), abs(comp.upper or 0)), step.spine_size)
        factors = _Factors(plan, node, here, comp, units.get(comp.key))
        if step.role == "first":
            parts = [factors.base * b for b in factors.bins] if factors.bins else [factors.base]
            streams[comp.key] = [evaluator.encrypt(p) for p in parts]
        elif step.role == "union":
            streams[comp.key] = [evaluator.union(s, here.present) for s in incoming[comp.key]]
        elif step.role == "middle":
            ins = incoming[comp.key]
            if factors.bins and len(ins) == 1:
                streams[comp.key] = [evaluator.multiply(ins[0], factors.base * b) for b in factors.bins]
            else:
                streams[comp.key] = [evaluator.multiply(s, factors.base) for s in ins]
        else:
            sums = carry.sums.setdefault(comp.key, [None] * plan.cells)
            _accumulate(plan, evaluator, factors, incoming[comp.key], sums)
            if final:
                spec, draws = _noise(plan, comp, loss, len(components), units.get(comp.key), noiseless)
                if spec is not None:
                    noise[comp.key] = spec
                sealed = evaluator.seal([[c] if c is not None else [] for c in sums], [int(d) for d in draws])
                streams[comp.key] = [[c] for c in sealed]
    carry.done += 1
    out_chunks = 1 if step.role == "last" else chunks
    output = LinkedOutput(
        streams={k: len(v) for k, v in streams.items()},
        chunks=out_chunks,
        units=units,
        noise=noise,
        noiseless=noiseless and step.role == "last",
    )
    return output, [blob for key in streams for stream in streams[key] for blob in stream]


def _split(step: LinkedStep, blobs: list[bytes], chunks: int) -> dict[str, list[list[bytes]]]:
    if step.chunks != chunks or sum(step.streams.values()) * chunks != len(blobs):
        raise Fault("the ciphertexts of a linked step do not match the spine; rebuild it with `fedlink link`")
    out: dict[str, list[list[bytes]]] = {}
    at = 0
    for key, count in step.streams.items():
        out[key] = []
        for _ in range(count):
            out[key].append(blobs[at : at + chunks])
            at += chunks
    return out


def _noise(
    plan: LinkedPlan, comp: Component, loss: PrivacyLoss, components: int, unit: float | None, noiseless: bool
) -> tuple[Noise | None, np.ndarray]:
    if noiseless:
        return None, np.zeros(plan.cells, dtype=np.int64)
    sensitivity = 1.0
    if comp.kind == "sum":
        assert unit is not None
        sensitivity = math.ceil(max(abs(comp.lower or 0), abs(comp.upper or 0)) / unit)
    spec = calibrate(sensitivity, epsilon=loss.epsilon / components, rho=loss.rho / components, integer=True)
    draws = np.rint(add_noise(np.zeros(plan.cells), spec)).astype(np.int64)
    return Noise(mechanism=spec.mechanism, scale=spec.scale, integer=True, unit=unit or 1.0), draws


def _accumulate(
    plan: LinkedPlan, evaluator: ChainEvaluator, factors: _Factors, ins: list[list[bytes]], sums: list[bytes | None]
) -> None:
    """Add one window's contribution to each cell (group-major, then bin) into ``sums``."""
    groups = plan.group_cells if factors.cell is not None else 1
    bins = plan.bins
    for b in range(bins):
        stream = ins[b] if len(ins) > 1 else ins[0]
        base = factors.base * factors.bins[b] if factors.bins and len(ins) == 1 else factors.base
        indices = [g * bins + b for g in range(groups)]
        window = evaluator.products(stream, base, factors.cell, groups)
        for index, part in zip(indices, window, strict=True):
            sums[index] = evaluator.combine([sums[index], part])
