"""What nodes send back (noisy additive partial aggregates) and what the analyst receives: a table
of estimates, each with its 95% interval, suppression flags and the result's provenance."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fedlink.errors import Fault
from fedlink.frozen import Frozen
from fedlink.pets.dp import noise_halfwidth
from fedlink.plan.aggregate import Aggregate, AggregatePlan, Component, histogram_labels
from fedlink.plan.catalogue import Category
from fedlink.plan.disclosure import DisclosurePolicy, round_count, round_down, round_up
from fedlink.plan.linked_query import LinkedPlan
from fedlink.protocol.linkage import LinkageQuality
from fedlink.protocol.tasks import Noise, PrivacyLoss

CONFIDENCE = 0.95


class PartialAggregates(Frozen):
    """One node's additive vectors, one per plan component (keyed by ``Component.key``), over all
    cells, with the noise the node added to each (none only in logged test mode)."""

    node: str
    vectors: dict[str, tuple[float, ...]]
    noise: dict[str, Noise] = Field(default_factory=dict)
    noiseless: bool = False
    #: The node's disclosure policy for the query's project when stricter than its catalogue's (an
    #: approval's minimum cohort); the result gets the strictest policy of all.
    disclosure: DisclosurePolicy | None = None

    def check(self, plan: AggregatePlan) -> None:
        expected = {c.key for c in plan.components}
        shapes_ok = set(self.vectors) == expected and all(len(v) == plan.cells for v in self.vectors.values())
        noise_ok = self.noiseless or set(self.noise) == expected
        if not (shapes_ok and noise_ok):
            raise Fault(f"node '{self.node}' returned vectors of the wrong shape; check it runs this fedlink version")


def scheme_of(component: Component) -> Literal["bfv", "ckks"]:
    """Integer vectors (counts, bins) go in BFV, exactly; clamped real sums in CKKS."""
    return "ckks" if component.kind == "sum" else "bfv"


class EncryptedPartial(Frozen):
    """One node's noisy vectors, each encrypted under the analyst's key (base64 ciphertext chunks)."""

    node: str
    ciphertexts: dict[str, list[str]]
    noise: dict[str, Noise] = Field(default_factory=dict)
    noiseless: bool = False
    #: As in :class:`PartialAggregates`.
    disclosure: DisclosurePolicy | None = None


class EncryptedResult(Frozen):
    """What the coordinator returns for he+dp: sums of ciphertexts plus what the analyst's client
    needs to decrypt them and build the table (the plan's layout, noise, disclosure policy)."""

    query_id: str
    plan: AggregatePlan
    project: str
    pet: str
    noiseless: bool
    privacy_loss: dict[str, PrivacyLoss]
    policy: DisclosurePolicy
    noise: dict[str, Noise]
    ciphertexts: dict[str, list[str]]


class LinkedEncryptedResult(Frozen):
    """What the coordinator returns for a linked query (the header of a binary body whose blobs are
    the masked cell ciphertexts, component by component in plan order, cell by cell)."""

    query_id: str
    plan: LinkedPlan
    project: str
    pet: str
    noiseless: bool
    privacy_loss: dict[str, PrivacyLoss]
    policy: DisclosurePolicy
    noise: dict[str, Noise]
    units: dict[str, float] = Field(default_factory=dict)
    linkage: LinkageQuality | None = None
    linkage_note: str | None = None


def combine(plan: AggregatePlan, partials: list[PartialAggregates]) -> dict[str, np.ndarray]:
    """Element-wise sums of every node's vectors."""
    totals = {c.key: np.zeros(plan.cells) for c in plan.components}
    for partial in partials:
        partial.check(plan)
        for key, vector in partial.vectors.items():
            totals[key] += np.asarray(vector, dtype=float)
    return totals


class Cell(Frozen):
    """One released number: the estimate, its 95% interval, or why it was suppressed."""

    value: float | None
    lower: float | None
    upper: float | None
    suppressed: str | None = None


class ResultRow(Frozen):
    keys: tuple[Category, ...]
    cells: tuple[Cell, ...]


class QueryResult(Frozen):
    """An aggregate table: one row per declared group (and bin), one column per aggregate."""

    query_id: str
    sql: str
    table: str
    nodes: tuple[str, ...]
    project: str
    pet: str
    noiseless: bool
    confidence: float = CONFIDENCE
    #: The privacy loss each node charged to its own budget for this query.
    privacy_loss: dict[str, PrivacyLoss]
    disclosure: DisclosurePolicy
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    rows: tuple[ResultRow, ...]
    notes: tuple[str, ...] = ()
    #: For a linked query: the DP match rates of the spine it ran over (None: not released).
    linkage: LinkageQuality | None = None


def _interval(values: np.ndarray, noise: Noise | None, nodes: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    if noise is None:
        return values.copy(), values.copy()
    half = noise_halfwidth(noise.spec(), nodes, level) * noise.unit
    return values - half, values + half


def _is_count(agg: Aggregate) -> bool:
    return agg.func in ("count", "histogram")


def estimate(
    plan: AggregatePlan | LinkedPlan, totals: dict[str, np.ndarray], noise: dict[str, Noise], nodes: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per aggregate: (value, lower, upper) vectors, the interval covering the truth with 95%."""
    out = []
    for agg in plan.aggregates:
        comps = agg.components
        if agg.func == "avg":
            assert agg.lower is not None and agg.upper is not None
            total, count = (totals[c.key] for c in comps)
            # Each part at 97.5%, so both hold together with at least 95% (Bonferroni).
            s_lo, s_hi = _interval(total, noise.get(comps[0].key), nodes, 1 - (1 - CONFIDENCE) / 2)
            c_lo, c_hi = _interval(count, noise.get(comps[1].key), nodes, 1 - (1 - CONFIDENCE) / 2)
            with np.errstate(divide="ignore", invalid="ignore"):
                value = np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
                positive = c_lo > 0
                safe_lo = np.where(positive, c_lo, 1)
                corners = np.stack(
                    [s_lo / safe_lo, s_lo / np.maximum(c_hi, 1e-300), s_hi / safe_lo, s_hi / np.maximum(c_hi, 1e-300)]
                )
            lower = np.where(positive, corners.min(axis=0), agg.lower)
            upper = np.where(positive, corners.max(axis=0), agg.upper)
            value = np.clip(value, agg.lower, agg.upper)
            out.append((value, np.clip(lower, agg.lower, agg.upper), np.clip(upper, agg.lower, agg.upper)))
            continue
        values = totals[comps[0].key]
        lower, upper = _interval(values, noise.get(comps[0].key), nodes, CONFIDENCE)
        if _is_count(agg):
            lower = np.maximum(lower, 0)  # a count is never negative: clipping keeps the coverage
        out.append((values, lower, upper))
    return out


def build_result(
    plan: AggregatePlan | LinkedPlan,
    totals: dict[str, np.ndarray],
    *,
    query_id: str,
    project: str,
    pet: str,
    noise: dict[str, Noise],
    noiseless: bool,
    privacy_loss: dict[str, PrivacyLoss],
    policy: DisclosurePolicy,
) -> QueryResult:
    """Turn summed noisy vectors into the analyst's table, then apply disclosure control."""
    nodes = plan.noise_sources
    keys: list[tuple[Category, ...]] = plan.group_keys()
    key_columns = tuple(g.column for g in plan.group_by)
    hist = plan.histogram
    if hist is not None and hist.bins:
        labels = histogram_labels(hist.bins)
        keys = [(*k, label) for k in keys for label in labels]
        key_columns = (*key_columns, f"{hist.column}_bin")
    estimates = estimate(plan, totals, noise, nodes)
    # The noisy number of rows per cell decides suppression (a histogram's bins are that count).
    cohort = totals[hist.components[0].key] if hist is not None else totals["rows:*"]
    notes = []
    # Test mode checks correctness: exact values, so neither noise nor disclosure control applies.
    small = cohort < policy.suppress_below if not noiseless else np.zeros(len(cohort), dtype=bool)
    total_cohort = float(cohort.sum())
    whole = total_cohort < policy.min_cohort and not noiseless
    total_cells = len(keys) * len(plan.aggregates)
    if whole:
        # The count itself is what is suppressed: say only that it fell below the minimum.
        notes.append(
            f"all cells suppressed by disclosure control: the cohort's noisy count is below the minimum of "
            f"{policy.min_cohort}; no value is shown"
        )
    elif small.any():
        # How many cells, never their values: a suppressed cell's noisy count is shown nowhere either.
        notes.append(
            f"{int(small.sum()) * len(plan.aggregates)} of {total_cells} cells suppressed by disclosure control: their "
            f"group's noisy count is below {policy.suppress_below}; no value is shown for them"
        )
    if noiseless:
        notes.append("TEST MODE: no noise and no disclosure control; exact values that must never be published")
    else:
        notes.append(f"intervals: {CONFIDENCE:.0%} for the DP noise (linkage and sampling error not included)")
    rows = []
    for i, key in enumerate(keys):
        cells = []
        for agg, (value, lower, upper) in zip(plan.aggregates, estimates, strict=True):
            if whole or small[i]:
                reason = "cohort below minimum" if whole else f"noisy count below {policy.suppress_below}"
                cells.append(Cell(value=None, lower=None, upper=None, suppressed=reason))
                continue
            v, lo, hi = float(value[i]), float(lower[i]), float(upper[i])
            if np.isnan(v):
                cells.append(Cell(value=None, lower=None, upper=None, suppressed="no rows"))
                continue
            if _is_count(agg) and not noiseless:
                base = policy.round_to
                v, lo, hi = round_count(v, base), round_down(lo, base), round_up(hi, base)
            cells.append(Cell(value=v, lower=lo, upper=hi))
        rows.append(ResultRow(keys=key, cells=tuple(cells)))
    return QueryResult(
        query_id=query_id,
        sql=plan.sql,
        table=plan.table,
        nodes=plan.nodes,
        project=project,
        pet=pet,
        noiseless=noiseless,
        privacy_loss=privacy_loss,
        disclosure=policy,
        key_columns=key_columns,
        value_columns=tuple(a.label for a in plan.aggregates),
        rows=tuple(rows),
        notes=tuple(notes),
    )
