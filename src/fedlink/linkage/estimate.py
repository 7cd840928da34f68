"""Label-free linkage quality: expected precision, recall and F1 from a fitted model's posteriors.

A probabilistic model gives every scored pair a posterior match probability p. Over the cross-party
record pairs a spine links (the pairs of records of two parties in one entity):

- expected correct links = Σ p over linked pairs; expected false links = links - that sum;
- expected missed links = Σ q over scored pairs the spine does not link, where q is the pair's
  posterior discounted for what each of its records already has: a record linked elsewhere in the
  other party with posterior π can only be this pair's match if that link is wrong, so
  q = p (1 - π_a)(1 - π_b), and a record's q sum is capped at 1 - π (one match per record and party).

Then precision = correct / links, recall = correct / (correct + missed), F1 = 2 correct / (links +
correct + missed) (as in fastLink's confusion table, Enamorado, Fifield and Imai 2019). A linked
pair the model never scored (two records joined through a third party's record) gets the product of
the posteriors along the best such path. True matches that no blocking rule brought together are
invisible to the model and so missing from the estimate; it is as honest as the model's calibration,
which the tests check against ground truth on FEBRL4 and synthetic data.

Counts are kept per pair of parties and, for each subgroup, per keyed subgroup code (a pair counts
towards the code of each of its two records, once if they agree).

>>> import numpy as np
>>> scored = [ScoredPairs(0, 1, np.array([0, 1, 1]), np.array([0, 1, 2]), np.array([0.99, 0.9, 0.2], np.float32),
...                       np.array([-1, -1, -1], np.int8), np.array([True, True, False]), 3)]
>>> report = estimate_quality([np.array([0, 1]), np.array([0, 1, 2])], scored)
>>> round(report.overall.precision, 3), round(report.overall.recall, 3)
(0.945, 0.99)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlink.linkage.match import block_join


@dataclass(frozen=True)
class ScoredPairs:
    """Pairs of records of parties ``p`` and ``q`` that the model scored (posterior above a floor)."""

    p: int
    q: int
    ia: np.ndarray
    ib: np.ndarray
    posterior: np.ndarray
    #: Exact tier that proposed the pair, or -1 for a blocked candidate.
    via: np.ndarray
    #: Whether the one-to-one assignment kept the pair (before the threshold).
    assigned: np.ndarray
    candidates: int = 0


@dataclass(frozen=True)
class ExpectedCounts:
    """Expected counts of cross-party record pairs: linked, correct among them, and missed."""

    links: float = 0.0
    correct: float = 0.0
    missed: float = 0.0

    def __add__(self, other: ExpectedCounts) -> ExpectedCounts:
        return ExpectedCounts(self.links + other.links, self.correct + other.correct, self.missed + other.missed)

    @property
    def precision(self) -> float | None:
        return self.correct / self.links if self.links > 0 else None

    @property
    def recall(self) -> float | None:
        found = self.correct + self.missed
        return self.correct / found if found > 0 else None

    @property
    def f1(self) -> float | None:
        denominator = self.links + self.correct + self.missed
        return 2 * self.correct / denominator if denominator > 0 else None

    def to_dict(self) -> dict[str, float | None]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "links": self.links,
            "expected_false_links": self.links - self.correct,
            "expected_missed_links": self.missed,
        }


@dataclass(frozen=True)
class QualityEstimate:
    """Expected quality overall, per pair of parties and, per subgroup, per keyed subgroup code."""

    overall: ExpectedCounts
    pairs: dict[tuple[int, int], ExpectedCounts]
    subgroups: dict[str, dict[int, ExpectedCounts]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.overall.to_dict(),
            "pairs": {f"{p}-{q}": counts.to_dict() for (p, q), counts in self.pairs.items()},
        }


def _discounted(scored: ScoredPairs, linked: np.ndarray, partner_a: np.ndarray, partner_b: np.ndarray) -> np.ndarray:
    """q of every scored pair that is not linked (0 for linked ones); see the module docstring."""
    q = np.where(linked, 0.0, scored.posterior.astype(np.float64))
    q *= (1.0 - partner_a[scored.ia]) * (1.0 - partner_b[scored.ib])
    for index, partner in ((scored.ia, partner_a), (scored.ib, partner_b)):
        total = np.bincount(index, q, minlength=len(partner))
        room = 1.0 - partner
        scale = np.ones(len(partner))
        over = total > room
        scale[over] = room[over] / total[over]
        q *= scale[index]
    return q


Lookup = Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray, int]]


def _pair_keys(ia: np.ndarray, ib: np.ndarray, width: int) -> np.ndarray:
    return ia.astype(np.int64) * width + ib.astype(np.int64)


def _lookup_pair(lookup: Lookup, p: int, q: int, xa: np.ndarray, xb: np.ndarray, default: float = 0.0) -> np.ndarray:
    """Posterior of pairs (xa of party p, xb of party q), parties in either order; ``default`` if unscored."""
    if (p, q) not in lookup:
        p, q, xa, xb = q, p, xb, xa
    keys, values, width = lookup[(p, q)]
    if len(keys) == 0:
        return np.full(len(xa), default)
    wanted = _pair_keys(xa, xb, width)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, values[at], default)


def _member(entity: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The record of a party in each target entity, or -1 where it has none."""
    order = np.argsort(entity, kind="stable")
    if len(order) == 0:
        return np.full(len(targets), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(entity[order], targets), len(order) - 1)
    return np.where(entity[order][at] == targets, order[at], -1)


def _linked_posterior(
    p: int, q: int, la: np.ndarray, lb: np.ndarray, lookup: Lookup, entity: Sequence[np.ndarray]
) -> np.ndarray:
    """Posterior of each linked pair (la[k] of party p, lb[k] of party q): its own score, else the best
    product through a third party's record of the same entity, else 0."""
    out = _lookup_pair(lookup, p, q, la, lb, default=np.nan)
    unscored = np.flatnonzero(np.isnan(out))
    if len(unscored):
        best = np.zeros(len(unscored))
        for r in range(len(entity)):
            if r in (p, q):
                continue
            member = _member(entity[r], entity[p][la[unscored]])
            has = member >= 0
            first = _lookup_pair(lookup, p, r, la[unscored][has], member[has])
            second = _lookup_pair(lookup, r, q, member[has], lb[unscored][has])
            best[has] = np.maximum(best[has], first * second)
        out[unscored] = best
    return out


def estimate_quality(
    entity: Sequence[np.ndarray],
    scored: Sequence[ScoredPairs],
    subgroups: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> QualityEstimate:
    """Expected quality of the spine ``entity`` (one array per party) from the model's scored pairs;
    ``subgroups`` gives, per subgroup, each party's records' keyed codes (0: unknown)."""
    counts = [len(e) for e in entity]
    lookup: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}
    for s in scored:
        keys = _pair_keys(s.ia, s.ib, counts[s.q])
        order = np.argsort(keys)
        lookup[(s.p, s.q)] = (keys[order], s.posterior[order].astype(np.float64), counts[s.q])
    pairs: dict[tuple[int, int], ExpectedCounts] = {}
    tallies: dict[str, dict[int, np.ndarray]] = {name: {} for name in subgroups or {}}
    for s in scored:
        p, q = s.p, s.q
        la, lb = block_join(entity[p].astype(np.uint64) + 1, entity[q].astype(np.uint64) + 1)
        posterior = _linked_posterior(p, q, la, lb, lookup, entity)
        partner_a, partner_b = np.zeros(counts[p]), np.zeros(counts[q])
        partner_a[la], partner_b[lb] = posterior, posterior
        linked = entity[p][s.ia] == entity[q][s.ib]
        missed = _discounted(s, linked, partner_a, partner_b)
        pairs[(p, q)] = ExpectedCounts(links=float(len(la)), correct=float(posterior.sum()), missed=float(missed.sum()))
        for name, codes in (subgroups or {}).items():
            for ca, cb, values in (
                (codes[p][la], codes[q][lb], np.stack([np.ones(len(la)), posterior, np.zeros(len(la))])),
                (codes[p][s.ia], codes[q][s.ib], np.stack([np.zeros(len(s.ia)), np.zeros(len(s.ia)), missed])),
            ):
                for code_column, mask in ((ca, np.ones(len(ca), bool)), (cb, cb != ca)):
                    for code in np.unique(code_column[mask]).tolist():
                        chosen = mask & (code_column == code)
                        tally = tallies[name].setdefault(int(code), np.zeros(3))
                        tally += values[:, chosen].sum(axis=1)
    overall = sum(pairs.values(), ExpectedCounts())
    by_subgroup = {
        name: {code: ExpectedCounts(*tally.tolist()) for code, tally in sorted(codes.items())}
        for name, codes in tallies.items()
    }
    return QualityEstimate(overall=overall, pairs=pairs, subgroups=by_subgroup)


def best_threshold(scored: Sequence[ScoredPairs]) -> float:
    """The posterior threshold that maximises the expected F1 of linking the assigned pairs above it
    (pairwise, before clustering; 0.5 when nothing was scored)."""
    chosen, expected_matches = [], 0.0
    for s in scored:
        assigned = s.assigned
        posterior = s.posterior.astype(np.float64)
        count_a = int(s.ia.max()) + 1 if len(s.ia) else 0
        count_b = int(s.ib.max()) + 1 if len(s.ib) else 0
        partner_a, partner_b = np.zeros(count_a), np.zeros(count_b)
        partner_a[s.ia[assigned]] = posterior[assigned]
        partner_b[s.ib[assigned]] = posterior[assigned]
        expected_matches += posterior[assigned].sum() + _discounted(s, assigned, partner_a, partner_b).sum()
        chosen.append(posterior[assigned])
    values = np.sort(np.concatenate(chosen) if chosen else np.zeros(0))[::-1]
    if len(values) == 0:
        return 0.5
    expected_f1 = 2 * np.cumsum(values) / (np.arange(1, len(values) + 1) + expected_matches)
    return float(values[int(np.argmax(expected_f1))])
