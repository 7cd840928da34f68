"""The one-to-one posterior: a scored pair's match probability given that each record has at most one
match in the other party (belief propagation over the graph of scored pairs), checked against the
exact posterior of the bipartite matching model computed by enumerating every matching."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from fedlink.linkage.probabilistic import UNSCORED_MATCH, FellegiSunter, one_to_one_posterior, scored_pairs
from fedlink.linkage.spec import load_spec


def exact_posterior(
    ia: list[int], ib: list[int], posterior: list[float], count_a: int, count_b: int, expected: float
) -> np.ndarray:
    """Each pair's marginal under the model one_to_one_posterior approximates: a matching's weight is
    the product of its pairs' own posterior odds and of every record's chance of no match among its
    pairs, summed over all sets of pairs in which no record appears twice."""
    odds = np.asarray(posterior) / (1 - np.asarray(posterior))
    share_a, share_b = min(expected / count_a, 1.0), min(expected / count_b, 1.0)
    free_a = (1 - share_a) + share_a * UNSCORED_MATCH
    free_b = (1 - share_b) + share_b * UNSCORED_MATCH
    total, marginal = 0.0, np.zeros(len(ia))
    for size in range(len(ia) + 1):
        for chosen in itertools.combinations(range(len(ia)), size):
            used_a, used_b = [ia[k] for k in chosen], [ib[k] for k in chosen]
            if len(set(used_a)) < size or len(set(used_b)) < size:
                continue
            weight = float(np.prod(odds[list(chosen)])) if chosen else 1.0
            weight *= free_a ** (len(set(ia)) - size) * free_b ** (len(set(ib)) - size)
            total += weight
            marginal[list(chosen)] += weight
    return marginal / total


def bp(ia: list[int], ib: list[int], posterior: list[float], count_a: int, count_b: int, expected: float) -> np.ndarray:
    return one_to_one_posterior(
        np.array(ia), np.array(ib), np.array(posterior, np.float32), count_a, count_b, expected
    ).astype(np.float64)


@pytest.mark.parametrize(
    ("ia", "ib", "posterior"),
    [
        ([0], [0], [0.3]),  # one pair alone
        ([0, 0], [0, 1], [0.9, 0.6]),  # a record with a better candidate and a look-alike
        ([0, 0, 1], [0, 1, 1], [0.6, 0.6, 0.999]),  # the look-alike's record is taken by a strong pair
        ([0, 1, 1, 2, 3], [0, 0, 1, 1, 1], [0.4, 0.7, 0.2, 0.5, 0.9]),  # a tree of five pairs
    ],
)
@pytest.mark.parametrize("expected", [1.0, 3.0])
def test_on_a_tree_of_pairs_it_is_the_exact_bipartite_posterior(
    ia: list[int], ib: list[int], posterior: list[float], expected: float
) -> None:
    """Belief propagation is exact where the pairs form no cycle (Pearl 1988)."""
    count_a, count_b = max(ia) + 1, max(ib) + 1
    want = exact_posterior(ia, ib, posterior, count_a, count_b, expected)
    np.testing.assert_allclose(bp(ia, ib, posterior, count_a, count_b, expected), want, atol=1e-5)


def test_a_long_chain_of_pairs_settles_on_the_exact_posterior() -> None:
    """A chain of 16 pairs in a party where nearly every record has a match: each pair's probability
    depends on the far end of the chain, so it takes many rounds to settle."""
    rng = np.random.default_rng(3)
    ia = [k // 2 + k % 2 for k in range(16)]  # a0-b0, a1-b0, a1-b1, a2-b1, ...
    ib = [k // 2 for k in range(16)]
    posterior = rng.uniform(0.2, 0.99, 16).tolist()
    want = exact_posterior(ia, ib, posterior, 9, 8, 7.9)
    np.testing.assert_allclose(bp(ia, ib, posterior, 9, 8, 7.9), want, atol=1e-3)


def test_a_certain_pair_stays_certain_and_two_certain_rivals_share() -> None:
    got = bp([0, 1, 1], [0, 1, 2], [1.0, 1.0, 1.0], 100, 100, 10.0)
    assert got[0] > 0.999999 and abs(got[1] - got[2]) < 1e-6 and 0.4 < got[1] < 0.6


def test_with_a_cycle_it_stays_close_to_the_exact_posterior() -> None:
    rng = np.random.default_rng(5)
    ia = [0, 0, 1, 1, 2, 2, 3]
    ib = [0, 1, 1, 2, 2, 0, 3]
    posterior = rng.uniform(0.05, 0.95, len(ia)).tolist()
    want = exact_posterior(ia, ib, posterior, 4, 4, 2.5)
    got = bp(ia, ib, posterior, 4, 4, 2.5)
    assert np.abs(got - want).max() < 0.05, (got, want)
    assert np.array_equal(np.argsort(-got), np.argsort(-want))  # the same order of pairs


def test_a_lone_pair_among_many_records_keeps_its_own_posterior() -> None:
    """Few of a party's records have a match: the one-to-one structure adds nothing to a pair whose
    records have no other candidate."""
    got = bp([0, 5, 9], [3, 7, 1], [0.2, 0.5, 0.97], 1_000_000, 2_000_000, 10.0)
    np.testing.assert_allclose(got, [0.2, 0.5, 0.97], rtol=1e-4)


def test_a_look_alike_loses_to_a_better_candidate_and_a_lone_pair_gains_where_most_records_match() -> None:
    # party a's 1,000 records nearly all have a match among b's 1,000
    got = bp([0, 0, 1], [0, 1, 2], [0.99, 0.7, 0.3], 1000, 1000, 950.0)
    assert got[0] > 0.95 and got[1] < 0.05  # record 0's look-alike
    assert got[2] > 0.9  # a weak pair whose records have nothing else: each record's match must be somewhere
    # yet not certain: the match of either record may be among no scored pair
    assert got[2] < 1 - UNSCORED_MATCH / 2


def test_it_depends_on_the_pairs_not_on_their_order() -> None:
    rng = np.random.default_rng(11)
    ia, ib = rng.integers(0, 50, 400), rng.integers(0, 60, 400)
    keep = np.unique(ia * 100 + ib, return_index=True)[1]
    ia, ib = ia[keep], ib[keep]
    posterior = rng.uniform(0.001, 0.999, len(ia)).astype(np.float32)
    got = one_to_one_posterior(ia, ib, posterior, 50, 60, 30.0)
    order = rng.permutation(len(ia))
    again = one_to_one_posterior(ia[order], ib[order], posterior[order], 50, 60, 30.0)
    np.testing.assert_allclose(again, got[order], rtol=1e-5)
    assert got.dtype == np.float32 and ((got >= 0) & (got <= 1)).all()


def test_no_pairs_no_work() -> None:
    empty = np.empty(0, np.int64)
    assert len(one_to_one_posterior(empty, empty, np.empty(0, np.float32), 0, 0, 0.0)) == 0


def test_the_spec_chooses_it_and_pairwise_keeps_the_pairs_own_posterior() -> None:
    spec = load_spec()
    model = FellegiSunter((), (), (), None, 0.001, 1, 950.0)  # type: ignore[arg-type]
    ia, ib = np.array([0, 0, 1]), np.array([0, 1, 2])
    posterior = np.array([0.99, 0.7, 0.3], np.float32)
    via = np.full(3, -1, np.int8)
    one_to_one = scored_pairs(spec, 0, 1, [1000, 1000], model, ia, ib, posterior, via, 3)
    pairwise_spec = dataclasses.replace(spec, posterior="pairwise")
    pairwise = scored_pairs(pairwise_spec, 0, 1, [1000, 1000], model, ia, ib, posterior, via, 3)
    np.testing.assert_array_equal(pairwise.posterior, posterior)
    assert one_to_one.posterior[2] > 0.8 > pairwise.posterior[2]  # the lone pair gains
    assert one_to_one.posterior[1] == posterior[1]  # the look-alike keeps its own posterior...
    assert one_to_one.assigned.tolist() == pairwise.assigned.tolist() == [True, False, True]  # ...and loses


def test_a_person_held_twice_by_a_node_is_still_linked() -> None:
    """Two equally strong candidates of one record (one person held twice by the other node) share
    the one-to-one probability; the pair the assignment keeps keeps its own posterior."""
    model = FellegiSunter((), (), (), None, 1e-6, 1, 100.0)  # type: ignore[arg-type]
    ia, ib = np.array([0, 0]), np.array([0, 1])
    posterior = np.array([0.999, 0.999], np.float32)
    joint = one_to_one_posterior(ia, ib, posterior, 1000, 1000, 100.0)
    assert (joint < 0.6).all()  # the model cannot tell them from look-alikes
    scored = scored_pairs(load_spec(), 0, 1, [1000, 1000], model, ia, ib, posterior, np.full(2, -1, np.int8), 2)
    np.testing.assert_array_equal(scored.posterior, posterior)
    assert scored.assigned.tolist() == [True, False]
