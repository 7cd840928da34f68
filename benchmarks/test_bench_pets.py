"""The PET primitives on their own, each next to its plaintext path in the same run, over vectors of
1e3 to 1e6 values (1e5 and 1e6 only with ``FEDLINK_BENCH_LARGE=1``):

- **DP release** (``dp_release``): OpenDP calibration (its privacy map certifies the loss), OpenDP's
  discrete Laplace sampler on every cell, and the exact 95% interval of the noise, next to releasing
  the same vector rounded to 5 without noise (what disclosure control alone would do).
- **HE aggregation** (``he_aggregate``): three nodes' vectors encrypted with TenSEAL BFV under one
  analyst key, added as ciphertexts, decrypted; next to NumPy adding the three vectors.
- **Linked chain** (``he_chain``): the chain of linked queries on its own (encrypt at one node, multiply
  and re-randomise at a second, nine group products, sum, mask and noise at a third, decrypt), next to
  NumPy computing the same grouped product sums.

::

    pytest benchmarks/test_bench_pets.py --benchmark-only
    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_pets.py --benchmark-only -k 1000000
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from fedlink.pets.chain import ChainEvaluator, ChainKeys, ChainParams
from fedlink.pets.dp import add_noise, calibrate, noise_halfwidth
from fedlink.pets.he import AnalystKeys, add, encrypt, load_public_context

LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"
GROUPS = 9


def _sizes() -> list[Any]:
    large = pytest.mark.skipif(not LARGE, reason="1e5 and 1e6 values: set FEDLINK_BENCH_LARGE=1")
    return [1_000, 10_000, pytest.param(100_000, marks=large), pytest.param(1_000_000, marks=large)]


def _rounds(size: int) -> int:
    return 2 if size >= 1_000_000 else 5


def _info(benchmark: Any, kind: str, path: str, size: int) -> None:
    benchmark.group = f"{kind}, {size:,} values"
    benchmark.extra_info.update({"primitive": kind, "path": path, "size": size})


# --- DP release --------------------------------------------------------------------------------------
def _release_dp(values: np.ndarray) -> tuple[np.ndarray, float]:
    spec = calibrate(1.0, epsilon=1.0, integer=True)
    return add_noise(values, spec), noise_halfwidth(spec)


def _release_plain(values: np.ndarray) -> tuple[np.ndarray, float]:
    return np.round(values / 5.0) * 5.0, 0.0


@pytest.mark.parametrize("path", ["dp", "plain"])
@pytest.mark.parametrize("size", _sizes())
def test_dp_release(benchmark: Any, size: int, path: str) -> None:
    values = np.random.default_rng(1).integers(0, 1000, size).astype(float)
    _info(benchmark, "dp_release", path, size)
    release = _release_dp if path == "dp" else _release_plain
    noisy, halfwidth = benchmark.pedantic(release, args=(values,), rounds=_rounds(size), iterations=1, warmup_rounds=1)
    assert noisy.shape == values.shape
    if path == "dp":
        # discrete Laplace of scale 1: 95% of the cells lie within the interval's half-width
        inside = float(np.mean(np.abs(noisy - values) <= halfwidth))
        assert inside >= 0.93 and halfwidth > 0
        assert not np.array_equal(noisy, values)


# --- HE aggregation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["he", "plain"])
@pytest.mark.parametrize("size", _sizes())
def test_he_aggregate(benchmark: Any, size: int, path: str) -> None:
    rng = np.random.default_rng(2)
    vectors = [rng.integers(0, 1000, size) for _ in range(3)]
    expected = sum(vectors)
    _info(benchmark, "he_aggregate", path, size)
    if path == "plain":
        total = benchmark.pedantic(lambda: np.sum(vectors, axis=0), rounds=_rounds(size), iterations=1)
        assert np.array_equal(total, expected)
        return
    keys = AnalystKeys(["bfv"])
    public = load_public_context("bfv", keys.public_contexts()["bfv"])

    def aggregate() -> np.ndarray:
        ciphertexts = [encrypt(public, v) for v in vectors]
        return keys.decrypt("bfv", add(public, ciphertexts), size)

    total = benchmark.pedantic(aggregate, rounds=_rounds(size), iterations=1, warmup_rounds=0)
    assert np.array_equal(total, expected), "BFV sums are exact"


# --- the linked chain --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["he", "plain"])
@pytest.mark.parametrize("size", _sizes())
def test_he_chain(benchmark: Any, size: int, path: str) -> None:
    rng = np.random.default_rng(3)
    first, second, third = (rng.integers(0, 2, size) for _ in range(3))
    groups = rng.integers(0, GROUPS, size)
    expected = [int((first * second * third * (groups == g)).sum()) for g in range(GROUPS)]
    _info(benchmark, "he_chain", path, size)
    if path == "plain":
        totals = benchmark.pedantic(
            lambda: np.bincount(groups, weights=first * second * third, minlength=GROUPS),
            rounds=_rounds(size),
            iterations=1,
        )
        assert totals.astype(int).tolist() == expected
        return
    params = ChainParams.for_chain(2)
    keys = ChainKeys(params)
    evaluator = ChainEvaluator(params, keys.public_key())

    def chain() -> list[int]:
        chunks = evaluator.multiply(evaluator.encrypt(first), second)
        cells = evaluator.finish(chunks, third, groups, GROUPS, [0] * GROUPS)
        return [keys.total(c) for c in cells]

    totals = benchmark.pedantic(chain, rounds=_rounds(size), iterations=1, warmup_rounds=1)
    assert totals == expected, "noiseless chain totals are exact"
    benchmark.extra_info["ciphertexts_per_vector"] = evaluator.chunks(size)
