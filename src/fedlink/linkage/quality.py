"""Linkage quality against ground truth, overall and by subgroup, so that linkage bias is visible.

Quality is counted over *cross-party record pairs*: a pair of records of two different parties is a
true match if both belong to one true entity, and a predicted match if linkage put both into one
entity. Then

- precision = correct / predicted, recall = correct / true, F1 their harmonic mean;
- false-match rate = 1 - precision: the share of predicted matches that are wrong;
- missed-match rate = 1 - recall: the share of true matches that linkage missed.

A rate is ``None`` where its denominator is zero. By subgroup (e.g. age band, name origin), a pair
counts towards each value its two records have: once if both have the same value, towards both
values if they differ. Unequal rates between subgroups are linkage bias: an analysis of linked data
under-counts, or wrongly joins, the people of the worse subgroup.

>>> import numpy as np
>>> report = pairwise_quality([np.array([0, 1]), np.array([0, 1])], [np.array([7, 8]), np.array([7, 9])])
>>> report.true_pairs, report.predicted_pairs, report.correct_pairs, report.precision, report.recall
(1, 2, 1, 0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlink.errors import BadInput
from fedlink.linkage.match import block_join


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class PairQuality:
    """Counts of cross-party record pairs and the rates they give."""

    true_pairs: int
    predicted_pairs: int
    correct_pairs: int

    @property
    def precision(self) -> float | None:
        return _ratio(self.correct_pairs, self.predicted_pairs)

    @property
    def recall(self) -> float | None:
        return _ratio(self.correct_pairs, self.true_pairs)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.correct_pairs, self.predicted_pairs + self.true_pairs)

    @property
    def false_match_rate(self) -> float | None:
        return _ratio(self.predicted_pairs - self.correct_pairs, self.predicted_pairs)

    @property
    def missed_match_rate(self) -> float | None:
        return _ratio(self.true_pairs - self.correct_pairs, self.true_pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_match_rate": self.false_match_rate,
            "missed_match_rate": self.missed_match_rate,
            "true_pairs": self.true_pairs,
            "predicted_pairs": self.predicted_pairs,
            "correct_pairs": self.correct_pairs,
        }


@dataclass(frozen=True)
class QualityReport(PairQuality):
    """Overall quality, and quality by value of each subgroup column."""

    by_subgroup: dict[str, dict[str, PairQuality]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "by_subgroup": {
                name: {value: quality.to_dict() for value, quality in values.items()}
                for name, values in self.by_subgroup.items()
            },
        }


def _keys(labels: np.ndarray) -> np.ndarray:
    """Entity labels as join keys: label + 1, and 0 (no pair) for a negative label."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.where(labels >= 0, labels + 1, 0).astype(np.uint64)


def _subgroup_codes(values: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    text = [np.asarray([("" if v is None else str(v)) for v in np.asarray(column, dtype=object)]) for column in values]
    names, codes = np.unique(np.concatenate(text) if text else np.empty(0, str), return_inverse=True)
    bounds = np.cumsum([0, *(len(t) for t in text)])
    return names, [codes[bounds[p] : bounds[p + 1]] for p in range(len(text))]


_Pairs = list[tuple[int, int, np.ndarray, np.ndarray]]  # (party p, party q, records of p, records of q)


def _tally(pairs: _Pairs, codes: list[np.ndarray], groups: int) -> np.ndarray:
    """Pairs per subgroup value: each pair once per distinct value among its two records."""
    total = np.zeros(groups, dtype=np.int64)
    for p, q, ia, ib in pairs:
        ca, cb = codes[p][ia], codes[q][ib]
        total += np.bincount(ca, minlength=groups)
        total += np.bincount(cb[cb != ca], minlength=groups)
    return total


def pairwise_quality(
    predicted_entity: Sequence[np.ndarray],
    true_entity: Sequence[np.ndarray],
    subgroups: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> QualityReport:
    """Quality of a predicted linkage against the truth, over cross-party record pairs.

    Each argument has one array per party, one entry per record: the predicted entity (negative:
    linked to nothing), the true entity (negative: unknown, the record is left out of every count)
    and, for each subgroup column, the record's value (``None`` counts as ``""``).
    """
    parties = len(predicted_entity)
    if len(true_entity) != parties:
        raise BadInput(f"quality needs one truth array per party: {parties} predicted, {len(true_entity)} true")
    for p in range(parties):
        if len(predicted_entity[p]) != len(true_entity[p]):
            raise BadInput(f"party {p}: {len(predicted_entity[p])} predicted but {len(true_entity[p])} true entities")
    subgroups = dict(subgroups or {})
    for name, columns in subgroups.items():
        if len(columns) != parties or any(len(c) != len(t) for c, t in zip(columns, true_entity, strict=True)):
            raise BadInput(f"subgroup '{name}' needs one value per record of every party")
    truth = [np.asarray(t, dtype=np.int64) for t in true_entity]
    predicted = [np.where(truth[p] >= 0, np.asarray(predicted_entity[p], dtype=np.int64), -1) for p in range(parties)]
    coded = {name: _subgroup_codes(columns) for name, columns in subgroups.items()}
    true_pairs: _Pairs = []
    predicted_pairs: _Pairs = []
    correct_pairs: _Pairs = []
    for p in range(parties):
        for q in range(p + 1, parties):
            ta, tb = block_join(_keys(truth[p]), _keys(truth[q]))
            pa, pb = block_join(_keys(predicted[p]), _keys(predicted[q]))
            right = truth[p][pa] == truth[q][pb]
            true_pairs.append((p, q, ta, tb))
            predicted_pairs.append((p, q, pa, pb))
            correct_pairs.append((p, q, pa[right], pb[right]))
    by_subgroup: dict[str, dict[str, PairQuality]] = {}
    for name, (values, codes) in coded.items():
        t, d, c = (_tally(pairs, codes, len(values)) for pairs in (true_pairs, predicted_pairs, correct_pairs))
        by_subgroup[name] = {
            str(value): PairQuality(true_pairs=int(t[k]), predicted_pairs=int(d[k]), correct_pairs=int(c[k]))
            for k, value in enumerate(values)
        }
    return QualityReport(
        true_pairs=sum(len(ia) for _, _, ia, _ in true_pairs),
        predicted_pairs=sum(len(ia) for _, _, ia, _ in predicted_pairs),
        correct_pairs=sum(len(ia) for _, _, ia, _ in correct_pairs),
        by_subgroup=by_subgroup,
    )
