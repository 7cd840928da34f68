"""The encrypted chain of linked queries (:mod:`fedlink.pets.chain`): it multiplies, ORs, sums, masks
and adds noise exactly; what a node sends cannot be divided by what it received (re-randomisation);
the parameters keep enough noise budget for the longest chain over millions of people; the worker
pool gives the same answers as one process."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenseal import sealapi

from fedlink.errors import BadInput, Fault
from fedlink.pets import chain, pool
from fedlink.pets.chain import MAX_MULTIPLICATIONS, ChainEvaluator, ChainKeys, ChainParams


def _run_chain(
    evaluator: ChainEvaluator,
    first: np.ndarray,
    union: np.ndarray,
    factors: list[np.ndarray],
    groups: np.ndarray,
    noise: list[int],
) -> list[bytes]:
    chunks = evaluator.encrypt(first)
    chunks = evaluator.union(chunks, union)
    for factor in factors:
        chunks = evaluator.multiply(chunks, factor)
    base = np.ones(len(first), dtype=np.int64)
    return evaluator.finish(chunks, base, groups, len(noise), noise)


@settings(max_examples=6, deadline=None)
@given(
    st.integers(min_value=1, max_value=3),
    st.lists(st.integers(min_value=-5, max_value=5), min_size=3, max_size=3),
    st.integers(min_value=0, max_value=2**16),
    st.booleans(),
)
def test_the_chain_multiplies_ors_sums_and_adds_noise_exactly(
    middles: int, noise: list[int], seed: int, sums: bool
) -> None:
    """Decrypted cells equal the plaintext sum of slot-wise products plus the noise, for random vectors
    spanning several ciphertexts."""
    params = ChainParams.for_chain(middles + 1, sums=sums)
    keys = ChainKeys(params)
    evaluator = ChainEvaluator(params, keys.public_key())
    rng = np.random.default_rng(seed)
    size = params.slots + 100
    first, union = rng.integers(0, 2, size), rng.integers(0, 2, size)
    factors = [rng.integers(0, 4, size) for _ in range(middles - 1)]
    groups = rng.integers(-1, 3, size)  # -1: in no group
    product = first * (1 - union) + union
    for factor in factors:
        product = product * factor
    out = _run_chain(evaluator, first, union, factors, groups, noise)
    assert [keys.total(c) for c in out] == [int((product * (groups == g)).sum()) + noise[g] for g in range(3)]


def test_nobody_matching_in_a_chunk_and_everybody_in_a_union_still_work() -> None:
    """Zero plaintexts would make SEAL's 'transparent' ciphertexts: those chunks are fresh encryptions."""
    params = ChainParams.for_chain(2)
    keys = ChainKeys(params)
    evaluator = ChainEvaluator(params, keys.public_key())
    size = 2 * params.slots
    first = np.ones(size, dtype=np.int64)
    union = np.zeros(size, dtype=np.int64)
    union[: params.slots] = 1  # the whole first chunk is in the union
    middle = np.zeros(size, dtype=np.int64)
    middle[params.slots :: 7] = 1  # nobody of the first chunk matches here
    out = _run_chain(evaluator, first, union, [middle], np.zeros(size, dtype=np.int64), [0])
    assert keys.total(out[0]) == int(middle.sum())


def test_each_step_re_randomises_so_a_relay_cannot_divide_out_a_nodes_vector() -> None:
    """Positive control: a bare plain x cipher product is deterministic, so whoever relays the ciphertext
    in and out can check any guess of the node's vector (and divide it out coefficient-wise). The
    chain's steps add a fresh encryption: the same guess no longer reproduces what the node sent, and
    the same step run twice sends different ciphertexts, which still decrypt to the right product."""
    params = ChainParams.for_chain(2)
    keys = ChainKeys(params)
    evaluator = ChainEvaluator(params, keys.public_key())
    rng = np.random.default_rng(7)
    first, secret = rng.integers(0, 2, params.slots), rng.integers(0, 2, params.slots)
    incoming = evaluator.encrypt(first)
    bare = chain._save(evaluator._times(evaluator._ntt(incoming[0]), secret))
    guess = chain._save(evaluator._times(evaluator._ntt(incoming[0]), secret))
    assert guess == bare, "the attack works on a bare product"
    sent, again = evaluator.multiply(incoming, secret), evaluator.multiply(incoming, secret)
    assert sent[0] != guess and sent[0] != again[0]
    unioned = evaluator.union(incoming, secret)
    assert unioned[0] != evaluator.union(incoming, secret)[0]
    done = evaluator.finish(sent, np.ones(params.slots, dtype=np.int64), None, 1, [0])
    assert keys.total(done[0]) == int((first * secret).sum())


def test_a_cell_reveals_its_sum_and_nothing_about_single_slots() -> None:
    """The last node's zero-sum mask makes every slot uniform modulo t: the analyst decrypting a cell
    sees random slots, not the per-person products, and their sum is the total."""
    params = ChainParams.for_chain(1)
    keys = ChainKeys(params)
    evaluator = ChainEvaluator(params, keys.public_key())
    vector = np.zeros(params.slots, dtype=np.int64)
    vector[:50] = 1
    cell = evaluator.finish(evaluator.encrypt(vector), np.ones(params.slots, dtype=np.int64), None, 1, [3])[0]
    ciphertext = chain._load(sealapi.Ciphertext(), params.context(), cell)
    plain = sealapi.Plaintext()
    keys._decryptor.decrypt(ciphertext, plain)
    slots = np.asarray(keys._encoder.decode_uint64(plain), dtype=np.int64)
    t = params.plain_modulus
    assert int(slots.sum() % t) == 53
    # 8192 uniform values modulo t: zeros and ones (what the products were) are essentially absent
    assert np.count_nonzero(slots <= 1) < 5
    assert abs(float(slots.mean()) / t - 0.5) < 0.02  # mean of uniform slots: 0.5 t +- 6 standard errors


@pytest.mark.parametrize("sums", [False, True])
@pytest.mark.parametrize("multiplications", [1, 2, 3, MAX_MULTIPLICATIONS])
def test_parameters_leave_noise_budget_for_the_longest_chain_over_a_large_spine(
    multiplications: int, sums: bool
) -> None:
    """Full-range plaintexts (the worst case for noise) through every product of the tier, then the
    last node's sum over chunks (8 copies of each product here: 3 bits; a spine of 8 million people
    costs 10) still leave at least 10 bits: every tier decrypts with room to spare."""
    params = ChainParams.for_chain(multiplications, sums=sums)
    keys = ChainKeys(params)
    evaluator = ChainEvaluator(params, keys.public_key())
    rng = np.random.default_rng(multiplications)
    t = params.plain_modulus
    chunks = evaluator.encrypt(rng.integers(0, t, params.slots))
    for _ in range(multiplications - 1):
        chunks = evaluator.multiply(chunks, rng.integers(1, t, params.slots))
    products = evaluator._chunks_products(chunks * 8, rng.integers(1, t, 8 * params.slots), None, 1)
    assert products[0] is not None
    assert keys.noise_budget(products[0]) >= 10 + 7, "room for 128 times more chunks"


def test_the_worker_pool_gives_the_answers_of_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLINK_HE_WORKERS", "2")
    params = ChainParams.for_chain(3)  # union, middle, last
    keys = ChainKeys(params)
    evaluator = ChainEvaluator(params, keys.public_key())
    rng = np.random.default_rng(3)
    size = 3 * params.slots - 5
    first, middle, groups = rng.integers(0, 2, size), rng.integers(0, 2, size), rng.integers(0, 4, size)
    assert len(evaluator._split(evaluator.chunks(size))) == 2
    out = _run_chain(evaluator, first, np.zeros(size, dtype=np.int64), [middle], groups, [1, 2, 3, 4])
    assert [keys.total(c) for c in out] == [int((first * middle * (groups == g)).sum()) + g + 1 for g in range(4)]
    monkeypatch.setenv("FEDLINK_HE_WORKERS", "many")
    with pytest.raises(BadInput, match="FEDLINK_HE_WORKERS must be a whole number"):
        pool.workers()


def test_only_the_analysts_key_decrypts_and_a_bad_public_key_is_refused() -> None:
    params = ChainParams.for_chain(1)
    keys, other = ChainKeys(params), ChainKeys(params)
    evaluator = ChainEvaluator(params, keys.public_key())
    cell = evaluator.finish(evaluator.encrypt(np.ones(10, dtype=np.int64)), np.ones(10, dtype=np.int64), None, 1, [0])
    assert keys.total(cell[0]) == 10
    with pytest.raises(Fault, match="noise budget"):  # under another key the cell is noise
        other.total(cell[0])
    with pytest.raises(BadInput, match="not valid base64"):
        ChainEvaluator(params, "not a key!")
    with pytest.raises(Fault, match="does not match this query's encryption parameters"):
        evaluator.load(b"garbage")
