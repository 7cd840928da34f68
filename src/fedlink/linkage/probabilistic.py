"""Probabilistic record linkage at the linkage unit: per-field comparisons of keyed field encodings,
combined by a Fellegi-Sunter model whose parameters are estimated without labels.

:func:`link_probabilistic` links the parties of a project (each an :class:`EncodedRecords` of a
probabilistic spec, :mod:`fedlink.linkage.fields`):

1. **Exact fast path.** For each pair of parties, the spec's first ``exact_tiers`` match-key tiers
   link records whose key is unique on both sides (:func:`fedlink.linkage.match.exact_tier`). These
   pairs are scored by the model below like any other, and link only if it agrees.
2. **Blocking.** The other records meet as candidate pairs when they share a keyed value of one of
   the spec's blocking rules (:func:`fedlink.linkage.match.candidate_chunks`).
3. **Comparison vectors.** For every pair and comparison, a level (:func:`comparison_levels`): for
   a name, the Dice similarity of the two filters graded exact / similar / near, else swapped with the
   other name field, else equal to the other's middle name, else different; for a date, equal
   digests, transposed day and month, then the digit filters' similarity; and so on
   (:mod:`fedlink.linkage.spec`). Level 0 (a value missing on either side) counts as no evidence.
4. **u from random pairs.** The distribution of each comparison's levels over random pairs of records
   of two parties, which are almost all non-matches (Splink's "u from random sampling"), so u is what
   agreement costs to chance in the whole comparison space, whatever blocking selected.
5. **m and the share of matches by EM.** Expectation-maximisation (Dempster, Laird and Rubin 1977)
   of a two-class mixture with conditional independence between comparisons, on the comparison
   vectors of all pairs (Winkler 1988; Brown et al. 2017 do it on field-level Bloom filters, BMC
   Medical Research Methodology 17:95): the match class's level distribution is m; the non-match
   class of candidates gets its own distribution (blocking makes candidates agree more often than
   random pairs), used only to fit. No label is used anywhere.
6. **Posterior.** With the prior λ = expected matches / all cross pairs, a pair's match weight is
   log2(λ / (1 - λ)) + Σ log2(m / u) over its non-missing comparisons (Fellegi and Sunter 1969), and
   its posterior match probability is 1 / (1 + 2^-weight).
7. **One-to-one posterior.** With the spec's ``posterior`` ``"one-to-one"`` (the default), a pair's
   probability also weighs its records' other scored pairs, since a record has at most one match in
   another party (:func:`one_to_one_posterior`: a bipartite matching model after Sadinle's, by
   damped belief propagation). A pair whose records have no other candidate gains, by each record's chance of
   having a match at all; no pair falls below its own posterior (:func:`scored_pairs`: competing
   candidates may be one person held twice by a node). This matters more as populations grow: the
   pairwise prior falls with the number of cross pairs, while the evidence of a partial agreement
   stays the same.
8. **Threshold.** ``"expected-f1"`` (the default rule): the posterior probability above which
   linking the one-to-one assigned pairs maximises the model's expected F1
   (:func:`fedlink.linkage.estimate.best_threshold`; for a calibrated model that is about half the
   best F1: Lipton, Elkan and Naryanaswamy 2014); or the number the spec gives.
9. **One-to-one, then clusters.** Per pair of parties, pairs are assigned greedily by posterior
   (:func:`fedlink.linkage.match.one_to_one`), then merged into entities across parties, strongest
   first, never two records of one party in an entity (:func:`fedlink.linkage.cluster.cluster_links`).

The fitted model, every pair's posterior and the estimated quality stay in the linkage unit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlink.errors import BadInput
from fedlink.linkage.cluster import Spine, cluster_links
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.estimate import ScoredPairs, best_threshold
from fedlink.linkage.match import (
    CHUNK,
    COMPILED_BATCH,
    DEFAULT_MAX_BLOCK,
    FUZZY,
    PairLinks,
    StageSeconds,
    candidate_chunks,
    default_workers,
    dice,
    exact_tier,
    one_to_one,
)
from fedlink.linkage.spec import Comparison, LinkageSpec

#: Bits of a pattern id per comparison (levels 0-7).
LEVEL_BITS: Final = 3
MAX_COMPARISONS: Final = 63 // LEVEL_BITS
#: Random pairs per pair of parties from which u is estimated.
RANDOM_PAIRS: Final = 400_000
#: Pairs scored below this posterior are dropped (they count for nothing in any estimate).
POSTERIOR_FLOOR: Final = 1e-4
#: Pseudo-count added to every level's tally in EM and in u, so no level has probability 0.
SMOOTHING: Final = 0.5
EM_ITERATIONS: Final = 200
EM_TOLERANCE: Final = 1e-7
#: Random pairs' worth of evidence that a dependence ratio is 1 (no correlation), see ChanceAgreement.
RATIO_PSEUDO_COUNT: Final = 5.0
#: Pairs of one node's records sharing an address or postcode from which household agreement is
#: estimated, and the largest group of records counted as one household.
WITHIN_PAIRS: Final = 400_000
HOUSEHOLD_MAX: Final = 100
#: How many pairs' worth of evidence the model of all pairs of parties weighs in one pair's model.
ANCHOR_STRENGTH: Final = 50.0
#: The chance that a record's match in the other party is among none of its scored pairs (no blocking
#: rule brought them together, or the model scored them under the floor), for the one-to-one
#: posterior: it keeps a record of a party where every record has a match from being forced onto its
#: only candidate, however weak.
UNSCORED_MATCH: Final = 0.01
#: Belief propagation for the one-to-one posterior stops when no message moves by more than this
#: (relative to its value), or after the most rounds. Messages are damped (each round's message is the
#: geometric mean of the old and the new one), since undamped messages can oscillate around cycles of
#: pairs: on the synthetic departments at a million people, 50 damped rounds are within 0.002 of 2,000.
ONE_TO_ONE_TOLERANCE: Final = 1e-6
ONE_TO_ONE_ROUNDS: Final = 50
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ChanceTally:
    """Counts over random pairs from which chance agreement is estimated; tallies of several pairs of
    parties add up to the tally of all of them."""

    marginals: tuple[np.ndarray, ...]
    #: Per dependence group, pairs per cell of the group's joint levels, and pairs per presence pattern.
    cells: tuple[np.ndarray, ...]
    presence: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, levels: np.ndarray, sizes: Sequence[int], groups: Sequence[Sequence[int]]) -> ChanceTally:
        marginals = []
        for c, size in enumerate(sizes):
            column = levels[:, c]
            marginals.append(np.bincount(column[column > 0] - 1, minlength=size)[:size].astype(float))
        cells, presence = [], []
        for group in groups:
            width = len(group)
            cell = np.zeros(len(levels), dtype=np.int64)
            present = np.zeros(len(levels), dtype=np.int64)
            for j, c in enumerate(group):
                cell |= levels[:, c].astype(np.int64) << (LEVEL_BITS * j)
                present |= (levels[:, c] > 0).astype(np.int64) << j
            cells.append(np.bincount(cell, minlength=1 << (LEVEL_BITS * width)).astype(float))
            presence.append(np.bincount(present, minlength=1 << width).astype(float))
        return cls(tuple(marginals), tuple(cells), tuple(presence))

    def __add__(self, other: ChanceTally) -> ChanceTally:
        return ChanceTally(
            tuple(a + b for a, b in zip(self.marginals, other.marginals, strict=True)),
            tuple(a + b for a, b in zip(self.cells, other.cells, strict=True)),
            tuple(a + b for a, b in zip(self.presence, other.presence, strict=True)),
        )


@dataclass(frozen=True)
class ChanceAgreement:
    """u: how often random pairs of records (almost all non-matches) reach each level, per comparison,
    corrected within groups of comparisons that agree together by chance more (or less) often than
    their product says: first and last names (families, names of one origin) and sex (a shared first
    name means a shared sex), or postcode, address and locality (one place). For each cell of a group's
    joint levels, the ratio of random pairs observed in it to those the product of the marginals
    expects, shrunk towards 1 by :data:`RATIO_PSEUDO_COUNT` pairs (so a sparse cell keeps the product)."""

    marginals: tuple[np.ndarray, ...]
    groups: tuple[tuple[int, ...], ...] = ()
    #: Per group, log2 of the ratio of each cell (indexed by the group's levels, LEVEL_BITS each).
    log2_ratios: tuple[np.ndarray, ...] = ()
    #: The household group (comparison indices), and per household comparison (in order of precedence)
    #: log2 of P(cell | that comparison agrees exactly, non-match) / P(cell | non-match).
    household_group: tuple[int, ...] = ()
    households: tuple[tuple[int, np.ndarray], ...] = ()

    def with_households(
        self, group: tuple[int, ...], households: tuple[tuple[int, np.ndarray], ...]
    ) -> ChanceAgreement:
        return ChanceAgreement(self.marginals, self.groups, self.log2_ratios, group, households)

    @classmethod
    def from_random_pairs(
        cls, levels: np.ndarray, sizes: Sequence[int], groups: Sequence[Sequence[int]] = ()
    ) -> ChanceAgreement:
        """From the comparison levels of random pairs of records ((pairs, comparisons) uint8)."""
        return cls.from_tally(ChanceTally.of(levels, sizes, groups), sizes, groups)

    @classmethod
    def from_tally(cls, tally: ChanceTally, sizes: Sequence[int], groups: Sequence[Sequence[int]]) -> ChanceAgreement:
        marginals = [_normalised(counts) for counts in tally.marginals]
        ratios = []
        for group, observed, pairs_with in zip(groups, tally.cells, tally.presence, strict=True):
            width = len(group)
            cells = np.arange(1 << (LEVEL_BITS * width))
            cell_levels = np.stack([(cells >> (LEVEL_BITS * j)) & 7 for j in range(width)], axis=1)
            presence = (cell_levels > 0).astype(np.int64) @ (1 << np.arange(width))
            expected = pairs_with[presence].astype(float)
            for j, c in enumerate(group):
                level = cell_levels[:, j]
                valid = level <= sizes[c]
                factor = np.where(level > 0, marginals[c][np.clip(level - 1, 0, sizes[c] - 1)], 1.0)
                expected *= np.where(valid, factor, 0.0)
            ratios.append(np.log2((observed + RATIO_PSEUDO_COUNT) / (expected + RATIO_PSEUDO_COUNT)))
        return cls(tuple(marginals), tuple(tuple(g) for g in groups), tuple(ratios))

    def log2_u(self, patterns: np.ndarray) -> np.ndarray:
        """log2 P(levels of a pattern | non-match) of each pattern id, missing comparisons left out."""
        gamma = _levels_of_patterns(patterns, len(self.marginals))
        out = np.zeros(len(patterns))
        for c, marginal in enumerate(self.marginals):
            present = gamma[:, c] > 0
            out += np.where(present, np.log2(marginal[np.maximum(gamma[:, c] - 1, 0)]), 0.0)
        for group, table in zip(self.groups, self.log2_ratios, strict=True):
            out += table[_cells(gamma, group)]
        if self.households:
            cell = _cells(gamma, self.household_group)
            done = np.zeros(len(patterns), dtype=bool)
            for given, table in self.households:
                agree = (gamma[:, given] == 1) & ~done
                out[agree] += table[cell[agree]]
                done |= agree
        return out


def _cells(gamma: np.ndarray, group: Sequence[int]) -> np.ndarray:
    """The joint levels of ``group`` of each row of ``gamma`` as one index (LEVEL_BITS a comparison)."""
    cell = np.zeros(len(gamma), dtype=np.int64)
    for j, c in enumerate(group):
        cell |= gamma[:, c].astype(np.int64) << (LEVEL_BITS * j)
    return cell


@dataclass(frozen=True)
class FellegiSunter:
    """A fitted Fellegi-Sunter model: per comparison, P(level | match) ``m`` over its non-missing
    levels; P(levels | non-match) from chance agreement of random pairs (``chance``); and the prior
    probability that two random records match."""

    comparisons: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    m: tuple[np.ndarray, ...]
    chance: ChanceAgreement
    #: Prior probability that two random records of two parties match.
    prior: float
    iterations: int
    #: The number of matches the model expects among all cross pairs.
    expected_matches: float

    def log2_bayes_factor(self, patterns: np.ndarray) -> np.ndarray:
        """log2 P(levels | match) / P(levels | non-match) of each pattern id."""
        gamma = _levels_of_patterns(patterns, len(self.comparisons))
        out = -self.chance.log2_u(patterns)
        for c, m in enumerate(self.m):
            present = gamma[:, c] > 0
            out += np.where(present, np.log2(m[np.maximum(gamma[:, c] - 1, 0)]), 0.0)
        return out

    def match_weight(self, patterns: np.ndarray) -> np.ndarray:
        """log2 posterior odds of match of each pattern id (float64)."""
        return np.log2(self.prior / (1 - self.prior)) + self.log2_bayes_factor(patterns)

    def posterior(self, patterns: np.ndarray) -> np.ndarray:
        """P(match | comparison vector) of each pattern id."""
        return 1.0 / (1.0 + np.exp2(-np.clip(self.match_weight(patterns), -1000, 1000)))

    def describe(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per comparison and level: m, u (chance agreement alone) and the match weight log2(m/u)."""
        return {
            name: {
                level: {"m": float(m[i]), "u": float(u[i]), "weight": float(np.log2(m[i] / u[i]))}
                for i, level in enumerate(levels)
            }
            for name, levels, m, u in zip(self.comparisons, self.levels, self.m, self.chance.marginals, strict=True)
        }


@dataclass(frozen=True)
class ProbabilisticLinkage:
    """What probabilistic linkage produced: the spine, the model, the threshold and every scored pair."""

    spine: Spine
    #: The model fitted on every pair of parties together.
    model: FellegiSunter
    #: Per pair of parties (p, q), its own model (anchored on the pooled one), which scored its pairs.
    models: dict[tuple[int, int], FellegiSunter]
    threshold: float
    #: Per pair of parties, every pair scored at or above :data:`POSTERIOR_FLOOR`.
    scored: list[ScoredPairs]
    random_pairs: int
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- levels


def _field(records: EncodedRecords, name: str) -> np.ndarray:
    try:
        return records.fields[name]
    except KeyError:
        raise BadInput(f"a party's encodings lack '{name}'; every node must encode with the same spec") from None


def _similarity(
    a: EncodedRecords, a_part: str, b: EncodedRecords, b_part: str, ia: np.ndarray, ib: np.ndarray, workers: int | None
) -> np.ndarray:
    """Dice of filter ``a_part`` of a's records with filter ``b_part`` of b's ("x/filter", "x/middle");
    0 where a side has no such field at all (filters of no bits)."""
    a_filter, b_filter = _field(a, a_part), _field(b, b_part)
    if a_filter.shape[1] == 0 or b_filter.shape[1] == 0:
        return np.zeros(len(ia), dtype=np.float32)
    a_pop, b_pop = _field(a, _pop_name(a_part)), _field(b, _pop_name(b_part))
    return dice(a_filter, a_pop, b_filter, b_pop, ia, ib, workers=workers)


def _pop_name(part: str) -> str:
    return part.replace("/filter", "/pop").replace("/middle", "/middle_pop")


def _graded(similarity: np.ndarray, thresholds: Sequence[float], first_level: int) -> np.ndarray:
    """Level ``first_level`` for similarity >= thresholds[0], the next for >= thresholds[1]...; 0 below all."""
    level = np.zeros(len(similarity), dtype=np.uint8)
    for offset, bound in reversed(list(enumerate(thresholds))):
        level[similarity >= bound] = first_level + offset
    return level


def _levels_of(
    comparison: Comparison,
    a: EncodedRecords,
    b: EncodedRecords,
    ia: np.ndarray,
    ib: np.ndarray,
    workers: int | None,
) -> np.ndarray:
    name, kind = comparison.name, comparison.kind
    different = len(comparison.levels)
    if kind == "exact":
        if not (_field(a, f"{name}/digest").any() and _field(b, f"{name}/digest").any()):
            return np.zeros(len(ia), dtype=np.uint8)  # a field one side has nowhere
        da, db = _field(a, f"{name}/digest")[ia], _field(b, f"{name}/digest")[ib]
        level = np.where(da == db, 1, different).astype(np.uint8)
        level[(da == 0) | (db == 0)] = 0
        return level
    compiled = _compiled_levels(comparison, a, b, ia, ib, workers)
    if compiled is not None:
        return compiled
    present = (_field(a, f"{name}/pop")[ia] > 0) & (_field(b, f"{name}/pop")[ib] > 0)
    if not present.any():  # a concept no node maps, or the other side lacks
        return np.zeros(len(ia), dtype=np.uint8)
    similarity = _similarity(a, f"{name}/filter", b, f"{name}/filter", ia, ib, workers)
    if kind in ("name", "text"):
        level = _graded(similarity, comparison.thresholds, 1)
    else:
        da, db = _field(a, f"{name}/digest")[ia], _field(b, f"{name}/digest")[ib]
        if kind == "date":
            sa, sb = _field(a, f"{name}/swapped")[ia], _field(b, f"{name}/swapped")[ib]
            level = _graded(similarity, comparison.thresholds, 3)
            transposed = ((da != 0) & (da == sb)) | ((sa != 0) & (sa == db))
            level[transposed] = 2
        else:
            level = _graded(similarity, comparison.thresholds, 2)
        level[(da != 0) & (da == db)] = 1
    if kind == "name":
        level = _name_fallbacks(comparison, a, b, ia, ib, level, workers)
    level[level == 0] = different
    level[~present] = 0
    return level


def _compiled_levels(
    comparison: Comparison, a: EncodedRecords, b: EncodedRecords, ia: np.ndarray, ib: np.ndarray, workers: int | None
) -> np.ndarray | None:
    """The levels of a filter comparison by the compiled kernel (one pass over the pairs, in threads),
    or None where numba cannot be imported (the NumPy path below gives the same levels)."""
    from fedlink.linkage import kernel

    if kernel.filter_levels is None:  # pragma: no cover - numba is a dependency
        return None
    name, kind = comparison.name, comparison.kind
    af, bf = _field(a, f"{name}/filter"), _field(b, f"{name}/filter")
    out = np.zeros(len(ia), dtype=np.uint8)
    if af.shape[1] == 0 or bf.shape[1] == 0 or len(ia) == 0:
        return out
    nothing = np.zeros(1, dtype=np.uint64)
    no_pop = (np.zeros(a.count, dtype=np.int32), np.zeros(b.count, dtype=np.int32))

    def part(records: EncodedRecords, key: str, fallback: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(records.fields.get(key, fallback))

    digests = {"date": 2, "code": 1}.get(kind, 0)
    first = {"date": 3, "code": 2}.get(kind, 1)
    swap = f"{comparison.swap}/filter" if comparison.swap else None
    levels = comparison.levels
    settings = np.array(
        [
            digests,
            first,
            levels.index("swapped") + 1 if swap else 0,
            levels.index("middle") + 1 if comparison.middle else 0,
            len(comparison.thresholds),
            len(levels),
        ],
        dtype=np.int64,
    )
    thresholds = np.array([*comparison.thresholds, comparison.thresholds[1 if kind == "name" else 0]], np.float32)
    arguments = (
        np.ascontiguousarray(af),
        part(a, f"{name}/pop", no_pop[0]),
        np.ascontiguousarray(bf),
        part(b, f"{name}/pop", no_pop[1]),
        part(a, f"{name}/digest", nothing),
        part(b, f"{name}/digest", nothing),
        part(a, f"{name}/swapped", nothing),
        part(b, f"{name}/swapped", nothing),
        part(a, swap or "", af[:0]),
        part(a, _pop_name(swap) if swap else "", no_pop[0]),
        part(b, swap or "", bf[:0]),
        part(b, _pop_name(swap) if swap else "", no_pop[1]),
        part(a, f"{name}/middle", af[:0]),
        part(a, f"{name}/middle_pop", no_pop[0]),
        part(b, f"{name}/middle", bf[:0]),
        part(b, f"{name}/middle_pop", no_pop[1]),
        np.ascontiguousarray(ia),
        np.ascontiguousarray(ib),
        thresholds,
        settings,
        out,
    )
    spans = range(0, len(ia), COMPILED_BATCH)
    threads = max(1, min(default_workers() if workers is None else workers, len(spans)))

    def run(chunk: range) -> int:
        return sum(kernel.filter_levels(*arguments, s, min(s + COMPILED_BATCH, len(ia))) for s in chunk)  # type: ignore[misc]

    if threads == 1:
        bad = run(spans)
    else:
        with ThreadPoolExecutor(threads) as pool:
            bad = sum(pool.map(run, [spans[t::threads] for t in range(threads)]))
    if bad:
        raise BadInput("a pair index is out of range of its records")
    return out


def _name_fallbacks(
    comparison: Comparison,
    a: EncodedRecords,
    b: EncodedRecords,
    ia: np.ndarray,
    ib: np.ndarray,
    level: np.ndarray,
    workers: int | None,
) -> np.ndarray:
    """Names that differ: "swapped" if like the other record's value of the swap field, else "middle"
    if like the other's first middle name."""
    name, similar = comparison.name, comparison.thresholds[1]
    names = comparison.levels
    checks = []
    if comparison.swap:
        other = f"{comparison.swap}/filter"
        checks.append((names.index("swapped") + 1, f"{name}/filter", other))
    if comparison.middle:
        checks.append((names.index("middle") + 1, f"{name}/filter", f"{name}/middle"))
    for value, own, other in checks:
        other_pop = _pop_name(other)
        if not (_field(a, other_pop).any() or _field(b, other_pop).any()):
            continue  # nobody has that field (no middle names anywhere)
        open_ = np.flatnonzero(level == 0)
        if len(open_) == 0:
            break
        xa, xb = ia[open_], ib[open_]
        near = np.maximum(
            _similarity(a, own, b, other, xa, xb, workers), _similarity(a, other, b, own, xa, xb, workers)
        )
        level[open_[near >= similar]] = value
    return level


def comparison_levels(
    spec: LinkageSpec, a: EncodedRecords, b: EncodedRecords, ia: np.ndarray, ib: np.ndarray, workers: int | None = None
) -> np.ndarray:
    """The level of every comparison of ``spec`` for each pair (a[ia[k]], b[ib[k]]): (pairs, comparisons) uint8."""
    # column-major: each comparison's levels are written (and read by pattern_ids) contiguously
    out = np.zeros((len(spec.comparisons), len(ia)), dtype=np.uint8).T
    if len(ia) == 0:
        return out
    for c, comparison in enumerate(spec.comparisons):
        out[:, c] = _levels_of(comparison, a, b, ia, ib, workers)
    return out


def pattern_ids(levels: np.ndarray) -> np.ndarray:
    """Each row of comparison levels as one int64 (LEVEL_BITS bits a comparison)."""
    ids = np.zeros(len(levels), dtype=np.int64)
    for c in range(levels.shape[1]):
        ids |= levels[:, c].astype(np.int64) << (LEVEL_BITS * c)
    return ids


def _levels_of_patterns(patterns: np.ndarray, comparisons: int) -> np.ndarray:
    return np.stack([(patterns >> (LEVEL_BITS * c)) & 7 for c in range(comparisons)], axis=1).astype(np.intp)


# ---------------------------------------------------------------------------------------------- the model


def _initial_m(levels: int) -> np.ndarray:
    """Matches agree: most mass on the first (best) level, little on the last (different)."""
    m = np.full(levels, 0.09 / max(levels - 2, 1))
    m[0] = 0.9
    m[-1] = 0.01
    return m / m.sum()


def _normalised(tally: np.ndarray) -> np.ndarray:
    tally = tally + SMOOTHING
    return tally / tally.sum()


def fit_model(
    spec: LinkageSpec,
    patterns: np.ndarray,
    counts: np.ndarray,
    chance: ChanceAgreement,
    all_pairs: float,
    anchor: FellegiSunter | None = None,
) -> FellegiSunter:
    """Fit m and the prior by EM on the distinct comparison patterns of the scored pairs (with their
    counts), u held at ``chance``; ``all_pairs`` is the number of cross pairs.

    This is EM for the mixture over *all* cross pairs: pairs that no blocking rule produced are taken
    to be non-matches (their posterior is negligible: they disagree on every blocking field), so the
    prior is the expected number of matches among the scored pairs over ``all_pairs``. Because u is
    the non-match distribution of the whole space, agreement that blocking selected (every candidate
    of the date-of-birth rule agrees on the date) weighs what it weighs between random records.

    With ``anchor`` (the model fitted on every pair of parties together), EM starts from it and its m
    counts as :data:`ANCHOR_STRENGTH` matches of evidence, so a pair of parties with few matches
    borrows strength from the others while a large one follows its own data.
    """
    comparisons = spec.comparisons
    sizes = [len(c.levels) for c in comparisons]
    names, levels = tuple(c.name for c in comparisons), tuple(c.levels for c in comparisons)
    if len(patterns) == 0 or all_pairs <= 0:
        initial = anchor.m if anchor else tuple(_initial_m(size) for size in sizes)
        return FellegiSunter(names, levels, initial, chance, 1e-12, 0, 0.0)
    gamma = _levels_of_patterns(patterns, len(comparisons))
    weights = counts.astype(float)
    log_bayes = -chance.log2_u(patterns) * np.log(2.0)
    m = list(anchor.m) if anchor else [_initial_m(size) for size in sizes]
    prior = anchor.prior if anchor else float(np.clip(0.1 * weights.sum() / all_pairs, 1e-15, 0.5))
    iterations = 0
    for iterations in range(1, EM_ITERATIONS + 1):  # noqa: B007 - the count is reported
        log_odds = log_bayes + np.log(prior / (1 - prior))
        for c in range(len(comparisons)):
            present = gamma[:, c] > 0
            log_odds += np.where(present, np.log(m[c][np.maximum(gamma[:, c] - 1, 0)]), 0.0)
        matched = weights / (1.0 + np.exp(-np.clip(log_odds, -700, 700)))
        prior = float(np.clip(matched.sum() / all_pairs, 1e-15, 0.5))
        change = 0.0
        for c, size in enumerate(sizes):
            present = gamma[:, c] > 0
            tally = np.bincount(gamma[present, c] - 1, matched[present], minlength=size)
            if anchor is None:
                new_m = _normalised(tally)
            else:
                new_m = (tally + ANCHOR_STRENGTH * anchor.m[c]) / (tally.sum() + ANCHOR_STRENGTH)
            change = max(change, float(np.abs(new_m - m[c]).max()))
            m[c] = new_m
        if change < EM_TOLERANCE:
            break
    return FellegiSunter(
        comparisons=names,
        levels=levels,
        m=tuple(m),
        chance=chance,
        prior=prior,
        iterations=iterations,
        expected_matches=prior * all_pairs,
    )


# ---------------------------------------------------------------------------------------------- linking


@dataclass
class _PartyPair:
    p: int
    q: int
    ia: np.ndarray
    ib: np.ndarray
    via: np.ndarray
    patterns: np.ndarray
    candidates: int


def _household_keys(records: EncodedRecords, comparison: Comparison) -> np.ndarray:
    """A key per record equal exactly where the comparison's values are equal (its keyed digest, or a
    hash of its filter), 0 where missing."""
    if comparison.has_digest:
        return _field(records, f"{comparison.name}/digest")
    keys = _row_hashes(_field(records, f"{comparison.name}/filter"))
    present = _field(records, f"{comparison.name}/pop") > 0
    keys[present & (keys == 0)] = 1
    keys[~present] = 0
    return keys


def _household_ratios(
    spec: LinkageSpec,
    parties: Sequence[EncodedRecords],
    random_tally: ChanceTally,
    rng: np.random.Generator,
    workers: int | None,
) -> HouseholdRatios:
    """Per household comparison, log2 P(group cell | it agrees exactly, non-match) / P(group cell |
    non-match): the first from pairs of different people of one node that share its value (parties
    list each person once; pairs agreeing on the date of birth, possible duplicates, are left out),
    the second from the random pairs; shrunk towards 1 by :data:`RATIO_PSEUDO_COUNT` pairs."""
    found = spec.household_indices
    if found is None or flip_probability_hides_equality(spec):
        return (), ()
    given, group_index = found
    group = spec.dependence_groups[group_index]
    random_cells = random_tally.cells[group_index]
    random_share = random_cells / max(random_cells.sum(), 1.0)
    date = next((i for i, c in enumerate(spec.comparisons) if c.kind == "date"), None)
    tables = []
    for h in given:
        comparison = spec.comparisons[h]
        observed = np.zeros_like(random_cells)
        for party in parties:
            ia, ib = _within_pairs(_household_keys(party, comparison), WITHIN_PAIRS // len(parties), rng)
            if len(ia) == 0:
                continue
            levels = np.zeros((len(ia), len(spec.comparisons)), dtype=np.uint8)
            for c in (*group, *((date,) if date is not None else ())):
                levels[:, c] = _levels_of(spec.comparisons[c], party, party, ia, ib, workers)
            kept = levels[:, date] != 1 if date is not None else np.ones(len(ia), dtype=bool)
            observed += np.bincount(_cells(levels[kept], group), minlength=len(observed))
        if observed.sum() == 0:
            continue
        expected = observed.sum() * random_share
        tables.append((h, np.log2((observed + RATIO_PSEUDO_COUNT) / (expected + RATIO_PSEUDO_COUNT))))
    return group, tuple(tables)


def flip_probability_hides_equality(spec: LinkageSpec) -> bool:
    """With bit flipping equal values have different filters, so households cannot be found by them."""
    return spec.flip_probability > 0


def _within_pairs(keys: np.ndarray, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of records of one party sharing a non-zero key, from randomly chosen groups of at
    most :data:`HOUSEHOLD_MAX` records (a hall of residence is no household), about ``budget`` of them."""
    present = np.flatnonzero(keys)
    order = present[np.argsort(keys[present], kind="stable")]
    _, starts, sizes = np.unique(keys[order], return_index=True, return_counts=True)
    usable = np.flatnonzero((sizes >= 2) & (sizes <= HOUSEHOLD_MAX))
    usable = usable[rng.permutation(len(usable))]
    pairs_of = sizes[usable] * (sizes[usable] - 1) // 2
    usable = usable[: int(np.searchsorted(np.cumsum(pairs_of), budget)) + 1]
    first, second = [], []
    for size in np.unique(sizes[usable]).tolist():
        blocks = starts[usable[sizes[usable] == size]]
        i, j = np.triu_indices(size, k=1)
        first.append(order[(blocks[:, None] + i[None, :]).reshape(-1)])
        second.append(order[(blocks[:, None] + j[None, :]).reshape(-1)])
    if not first:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(first), np.concatenate(second)


def _probability(weight: np.ndarray) -> np.ndarray:
    """The probability of log2 odds ``weight``."""
    return 1.0 / (1.0 + np.exp2(-np.clip(weight, -1000, 1000)))


def _factorised(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct values, index of each value among them, count of each) of an int64 or uint64 array,
    by hashing (Arrow) rather than sorting: tens of millions of pattern ids have few distinct values."""
    encoded = pc.dictionary_encode(pa.array(values))
    distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
    inverse = encoded.indices.to_numpy(zero_copy_only=False)
    return distinct, inverse, np.bincount(inverse, minlength=len(distinct))


def _index_type(count: int) -> type[np.signedinteger]:
    """32-bit record indices where they fit: candidate pairs are the bulk of linkage's memory."""
    return np.int32 if count < 2**31 else np.int64


def _random_pairs(count_a: int, count_b: int, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    total = count_a * count_b
    if total <= budget:
        ia, ib = np.divmod(np.arange(total, dtype=np.int64), count_b)
        return ia, ib
    return rng.integers(0, count_a, budget), rng.integers(0, count_b, budget)


def _pair_patterns(
    spec: LinkageSpec, a: EncodedRecords, b: EncodedRecords, max_block: int, workers: int | None, p: int, q: int
) -> _PartyPair:
    """Exact-path links and blocked candidates of two parties, with each pair's comparison pattern."""
    tiers = [tier for tier, _ in spec.match_keys[: spec.exact_tiers]]
    ea, eb, via = (
        exact_tier({t: a.match_keys[t] for t in tiers}, {t: b.match_keys[t] for t in tiers}, tiers)
        if tiers
        else (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8))
    )
    free_a, free_b = np.ones(a.count, dtype=bool), np.ones(b.count, dtype=bool)
    free_a[ea] = False
    free_b[eb] = False
    a_blocks = {name: np.where(free_a, key, np.uint64(0)) for name, key in a.block_keys.items()}
    b_blocks = {name: np.where(free_b, key, np.uint64(0)) for name, key in b.block_keys.items()}
    parts_a, parts_b, parts_pattern = [ea], [eb], [pattern_ids(comparison_levels(spec, a, b, ea, eb, workers))]
    candidates = 0
    for ia, ib in candidate_chunks(a_blocks, b_blocks, max_block):
        for start in range(0, len(ia), CHUNK):
            xa, xb = ia[start : start + CHUNK], ib[start : start + CHUNK]
            parts_a.append(xa)
            parts_b.append(xb)
            parts_pattern.append(pattern_ids(comparison_levels(spec, a, b, xa, xb, workers)))
            candidates += len(xa)
    return _PartyPair(
        p=p,
        q=q,
        ia=np.concatenate(parts_a).astype(_index_type(a.count)),
        ib=np.concatenate(parts_b).astype(_index_type(b.count)),
        via=np.concatenate([via, np.full(candidates, FUZZY, dtype=np.int8)]),
        patterns=np.concatenate(parts_pattern).astype(
            np.int32 if LEVEL_BITS * len(spec.comparisons) < 31 else np.int64
        ),
        candidates=candidates,
    )


def _row_hashes(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of words (equal rows, equal hashes; others collide with probability
    about 2^-64 a pair), so equal filters can be counted by sorting numbers instead of rows."""
    mixed = np.zeros(len(rows), dtype=np.uint64)
    for w in range(rows.shape[1]):
        mixed ^= rows[:, w] * np.uint64(0x9E3779B97F4A7C15 + 2 * w)
        mixed = (mixed << np.uint64(31)) | (mixed >> np.uint64(33))
    return mixed


def _term_frequencies(parties: Sequence[EncodedRecords], spec: LinkageSpec) -> dict[int, list[np.ndarray]]:
    """Per name comparison with term frequencies, each party's records' share of all records holding
    their value (equal values have equal filters: without bit flipping, the unit sees that anyway).

    Agreeing on a rare name is stronger evidence than agreeing on a common one: for a pair whose names
    agree exactly, the chance of agreement u is the value's frequency rather than the average over
    all values (term frequency adjustment, as in Splink; Winkler 1989). Not applied with bit
    flipping, which makes equal values' filters differ."""
    out: dict[int, list[np.ndarray]] = {}
    if spec.flip_probability > 0:
        return out
    for c, comparison in enumerate(spec.comparisons):
        if comparison.kind != "name" or not comparison.term_frequency:
            continue
        stacked = np.concatenate([_row_hashes(p.fields[f"{comparison.name}/filter"]) for p in parties])
        _, inverse, counts = _factorised(stacked)
        present = np.concatenate([p.fields[f"{comparison.name}/pop"] > 0 for p in parties])
        total = max(int(present.sum()), 1)
        share = np.maximum(counts[inverse.reshape(-1)] / total, 1.0 / total)
        bounds = np.cumsum([0, *(p.count for p in parties)])
        out[c] = [share[bounds[i] : bounds[i + 1]] for i in range(len(parties))]
    return out


def one_to_one_posterior(
    ia: np.ndarray,
    ib: np.ndarray,
    posterior: np.ndarray,
    count_a: int,
    count_b: int,
    expected_matches: float,
    rounds: int = ONE_TO_ONE_ROUNDS,
) -> np.ndarray:
    """Each scored pair's probability of being a match given that a record has at most one match in
    the other party (float32), from the pairs' own posteriors ``posterior`` (records ``ia`` of a party
    of ``count_a``, ``ib`` of a party of ``count_b``) and the model's ``expected_matches`` between them.

    A pair's own posterior weighs only its own comparisons. Its records' other pairs are evidence too:
    where a record has a better candidate, this pair is likely a look-alike; where neither record has
    any other candidate, the pair is likelier than its comparisons alone say, because each record's
    share of having a match at all (``expected_matches`` over the party's records) is then spent on
    it. The model is a bipartite (one-to-one) matching in the spirit of Sadinle (2017), with an
    independent chance per record of having no match rather than his prior on the number of matches:
    a matching's weight is the product of its pairs' own posterior odds and, for every record it leaves
    unmatched, that record's weight of having no match among its pairs, (1 - s) + s
    :data:`UNSCORED_MATCH`, where s is the expected matches over its party's records. Each pair's
    marginal is computed by damped belief propagation over the graph of scored pairs (as for weighted
    matchings by Bayati, Shah and Sharma 2008), until no message moves by more than
    :data:`ONE_TO_ONE_TOLERANCE` or after ``rounds`` rounds: exact where the pairs form no cycle (once
    settled), the Bethe approximation where they do.

    Without competing pairs and with few matches per record, it is the pair's own posterior. It is as
    deterministic as the pairs' order: every linker gives it the pairs in one order.
    """
    if len(ia) == 0:
        return posterior.astype(np.float32)
    odds = posterior.astype(np.float64)
    odds = np.minimum(odds, 1.0 - 2.0**-24)  # the largest float32 probability under 1
    odds = odds / (1.0 - odds)
    share_a = min(expected_matches / count_a, 1.0) if count_a else 0.0
    share_b = min(expected_matches / count_b, 1.0) if count_b else 0.0
    free_a = (1.0 - share_a) + share_a * UNSCORED_MATCH  # a record of a is matched by none of its pairs
    free_b = (1.0 - share_b) + share_b * UNSCORED_MATCH
    to_a, to_b = odds.copy(), odds.copy()  # messages from each pair to its record in a and in b

    def taken_a(message: np.ndarray) -> np.ndarray:
        return free_a + np.bincount(ia, message, minlength=count_a)[ia] - message

    def taken_b(message: np.ndarray) -> np.ndarray:
        return free_b + np.bincount(ib, message, minlength=count_b)[ib] - message

    for _ in range(rounds):
        new_a = np.sqrt(to_a * (odds / taken_b(to_b)))
        new_b = np.sqrt(to_b * (odds / taken_a(to_a)))
        moved = max(
            float(np.max(np.abs(new_a - to_a) / new_a.clip(1e-300))),
            float(np.max(np.abs(new_b - to_b) / new_b.clip(1e-300))),
        )
        to_a, to_b = new_a, new_b
        if moved < ONE_TO_ONE_TOLERANCE:
            break
    joint = odds / (taken_a(to_a) * taken_b(to_b))
    return (joint / (1.0 + joint)).astype(np.float32)


def scored_pairs(
    spec: LinkageSpec,
    p: int,
    q: int,
    counts: Sequence[int],
    model: FellegiSunter,
    ia: np.ndarray,
    ib: np.ndarray,
    posterior: np.ndarray,
    via: np.ndarray,
    candidates: int,
) -> ScoredPairs:
    """The scored pairs of parties ``p`` and ``q`` (records of parties of ``counts``) with their
    posteriors, and the pairs the greedy one-to-one assignment keeps. Every linker (in process,
    spilled, on Spark) assigns its pairs here.

    With the spec's ``posterior`` ``"one-to-one"``, a pair's posterior is the greater of its own and
    its one-to-one posterior (:func:`one_to_one_posterior`). The one-to-one posterior raises a pair
    whose records have no other candidate; it is not let lower a pair below its own posterior,
    because a record's competing candidates may be one person held twice by a node (FEBRL2 and
    FEBRL3 hold up to five records of a person), which the model cannot tell from look-alikes: they
    would share the probability and none be linked. Look-alikes lose to better candidates in the
    greedy assignment, as before."""
    if spec.posterior == "one-to-one":
        joint = one_to_one_posterior(ia, ib, posterior, counts[p], counts[q], model.expected_matches)
        posterior = np.maximum(joint, posterior)
    assigned = np.zeros(len(ia), dtype=bool)
    assigned[one_to_one(ia, ib, posterior)] = True
    return ScoredPairs(p=p, q=q, ia=ia, ib=ib, posterior=posterior, via=via, assigned=assigned, candidates=candidates)


def links_at_threshold(
    scored: Sequence[ScoredPairs], spec: LinkageSpec
) -> tuple[float, list[tuple[int, int, PairLinks]]]:
    """The spec's threshold (else the best one for ``scored``) and, per pair of parties, the pairs the
    one-to-one assignment kept whose posterior reaches it: what clustering links. Every linker (in
    process, spilled, on Spark) decides its links here."""
    threshold = spec.threshold if spec.threshold is not None else best_threshold(scored)
    links = []
    for pairs_scored in scored:
        chosen = pairs_scored.assigned & (pairs_scored.posterior >= threshold)
        links.append(
            (
                pairs_scored.p,
                pairs_scored.q,
                PairLinks(
                    ia=pairs_scored.ia[chosen],
                    ib=pairs_scored.ib[chosen],
                    score=pairs_scored.posterior[chosen],
                    via=pairs_scored.via[chosen],
                    candidates=pairs_scored.candidates,
                    comparisons=pairs_scored.candidates,
                    seconds=StageSeconds(),
                ),
            )
        )
    return threshold, links


def check_linkable(parties: Sequence[EncodedRecords], spec: LinkageSpec) -> None:
    """What every probabilistic linker refuses before any work: a spec of another matching, more
    comparisons than a pattern holds, fewer than two parties."""
    if spec.matching != "probabilistic":
        raise BadInput('probabilistic linkage needs a spec with matching "probabilistic"')
    if len(spec.comparisons) > MAX_COMPARISONS:
        raise BadInput(f"a spec may have at most {MAX_COMPARISONS} comparisons")
    if len(parties) < 2:
        raise BadInput("linkage needs at least two parties")


HouseholdRatios = tuple[tuple[int, ...], tuple[tuple[int, np.ndarray], ...]]


def fit_models(
    spec: LinkageSpec,
    index: Sequence[tuple[int, int]],
    patterns: Sequence[tuple[np.ndarray, np.ndarray]],
    tallies: Sequence[ChanceTally],
    cross_pairs: Sequence[float],
    household_ratios: Callable[[ChanceTally], HouseholdRatios],
) -> tuple[FellegiSunter, dict[tuple[int, int], FellegiSunter]]:
    """The pooled model and one model per pair of parties (anchored on the pooled one), from each pair's
    distinct comparison patterns with their counts, its tally of random pairs and its number of cross
    pairs. ``household_ratios`` gets the pooled tally (every linker counts households its own way);
    the same for the in-process, spilled and Spark linkers, so their models are equal."""
    sizes = [len(c.levels) for c in spec.comparisons]
    groups = spec.dependence_groups
    merged = np.concatenate([own for own, _ in patterns])
    distinct, where = np.unique(merged, return_inverse=True)
    counts = np.bincount(where.reshape(-1), np.concatenate([c for _, c in patterns]).astype(float))
    pooled_tally = tallies[0]
    for tally in tallies[1:]:
        pooled_tally = pooled_tally + tally
    household_group, households = household_ratios(pooled_tally)
    pooled_chance = ChanceAgreement.from_tally(pooled_tally, sizes, groups).with_households(household_group, households)
    pooled = fit_model(spec, distinct, counts, pooled_chance, sum(cross_pairs))
    models = {}
    for pair, tally, cross, (own, own_counts) in zip(index, tallies, cross_pairs, patterns, strict=True):
        chance = ChanceAgreement.from_tally(tally, sizes, groups).with_households(household_group, households)
        models[pair] = fit_model(spec, own, own_counts, chance, cross, anchor=pooled)
    return pooled, models


def link_probabilistic(
    parties: Sequence[EncodedRecords],
    spec: LinkageSpec,
    max_block: int = DEFAULT_MAX_BLOCK,
    workers: int | None = None,
    random_pairs: int = RANDOM_PAIRS,
    progress: Progress | None = None,
) -> ProbabilisticLinkage:
    """Link ``parties`` with ``spec``'s comparisons, blocking and threshold rule (see the module docstring)."""
    check_linkable(parties, spec)
    say = progress or (lambda _: None)
    seconds: dict[str, float] = {}
    mark = time.perf_counter()
    say("comparing candidate pairs field by field")
    pairs = [
        _pair_patterns(spec, parties[p], parties[q], max_block, workers, p, q)
        for p in range(len(parties))
        for q in range(p + 1, len(parties))
    ]
    seconds["compare"] = time.perf_counter() - mark

    mark = time.perf_counter()
    say("estimating the model without labels (EM)")
    rng = np.random.default_rng(20170095)  # a fixed seed: the same encodings give the same spine
    sizes = [len(c.levels) for c in spec.comparisons]
    groups = spec.dependence_groups
    tallies = []
    sampled = 0
    for pair in pairs:
        ra, rb = _random_pairs(parties[pair.p].count, parties[pair.q].count, random_pairs, rng)
        levels = comparison_levels(spec, parties[pair.p], parties[pair.q], ra, rb, workers)
        tallies.append(ChanceTally.of(levels, sizes, groups))
        sampled += len(ra)
    cross_pairs = [float(parties[pair.p].count * parties[pair.q].count) for pair in pairs]
    distinct_of = [_factorised(pair.patterns) for pair in pairs]
    pooled, models = fit_models(
        spec,
        [(pair.p, pair.q) for pair in pairs],
        [(own, own_counts) for own, _, own_counts in distinct_of],
        tallies,
        cross_pairs,
        lambda pooled_tally: _household_ratios(spec, parties, pooled_tally, rng, workers),
    )
    seconds["fit"] = time.perf_counter() - mark

    mark = time.perf_counter()
    say("scoring, assigning and clustering")
    frequencies = _term_frequencies(parties, spec)
    counts = [party.count for party in parties]
    scored: list[ScoredPairs] = []
    for index, (pair, (own, inverse, _)) in enumerate(zip(pairs, distinct_of, strict=True)):
        model = models[(pair.p, pair.q)]
        weights = model.match_weight(own)
        posterior = _probability(weights).astype(np.float32)[inverse]
        if frequencies:  # pairs agreeing exactly on a name weigh by its frequency
            exact_names = np.zeros(len(own), dtype=bool)
            for c in frequencies:
                exact_names |= ((own >> (LEVEL_BITS * c)) & 7) == 1
            adjusted = np.flatnonzero(exact_names[inverse])
            weight = weights[inverse[adjusted]]
            for c, per_party in frequencies.items():
                exact = ((pair.patterns[adjusted] >> (LEVEL_BITS * c)) & 7) == 1
                value = np.maximum(
                    per_party[pair.p][pair.ia[adjusted[exact]]], per_party[pair.q][pair.ib[adjusted[exact]]]
                )
                weight[exact] += np.log2(model.chance.marginals[c][0] / value)
            posterior[adjusted] = _probability(weight)
        distinct_of[index] = (own, inverse[:0], own[:0])  # the pairs' own arrays are not needed again
        kept = posterior >= POSTERIOR_FLOOR
        ia, ib, score, via = pair.ia[kept], pair.ib[kept], posterior[kept], pair.via[kept]
        scored.append(scored_pairs(spec, pair.p, pair.q, counts, model, ia, ib, score, via, pair.candidates))
        pairs[index] = _PartyPair(pair.p, pair.q, ia[:0], ib[:0], via[:0], pair.patterns[:0], pair.candidates)
    threshold, links = links_at_threshold(scored, spec)
    spine = cluster_links([p.count for p in parties], links)
    seconds["link"] = time.perf_counter() - mark
    return ProbabilisticLinkage(
        spine=spine,
        model=pooled,
        models=models,
        threshold=float(threshold),
        scored=scored,
        random_pairs=sampled,
        seconds=seconds,
    )
