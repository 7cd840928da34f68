"""The linkage unit's two-party core: exact match-key tiers, then Dice similarity of Bloom filters
over blocked candidate pairs, then a one-to-one assignment.

:func:`link_pair` links the records of two parties (each an :class:`EncodedRecords`) in three steps:

Exact tiers
    For each match-key tier, strict to loose, records whose keyed digest is non-empty and occurs
    once among the records of each side still unlinked are linked (:func:`exact_tier`). A digest
    that two unlinked records of one side share is ambiguous at that tier (twins, duplicates) and
    links nothing there; a looser tier may still separate them once one of the two is linked.
Blocking and Dice
    The records not linked exactly are compared only with records of the other side that share a
    non-zero keyed blocking value under some blocking key (:func:`candidate_pairs`). Each pair is
    compared once, under the first blocking key that produces it. A block of more than
    ``max_block`` pairs (a placeholder date of birth, a huge postcode) is skipped under that key:
    it costs quadratic time and separates little; its records still meet under the other keys.
    Pairs whose filter popcounts alone bound the Dice coefficient below the threshold are dropped
    before comparison. The Dice coefficient 2|A∧B| / (|A|+|B|) of the rest is computed by
    :func:`dice` in batches, in threads: by the compiled kernel of :mod:`fedlink.linkage.kernel`
    (numba, without the GIL), or by NumPy where numba cannot be imported.
One-to-one
    Pairs at or above the threshold are assigned greedily in descending order of score (ties by
    record order, so the result is deterministic): each record is linked at most once.

Exact links carry score 1.0 and the index of their tier in ``via``; Dice links carry ``FUZZY``.

The default threshold (:data:`DEFAULT_THRESHOLD`, 0.65) was measured on DfE, DWP and NHS of
:func:`fedlink_tools.synth.synthesize` with the default corruption and the default schema: the best F1
falls from about 0.55-0.6 at 50,000 people (F1 0.992) to 0.65-0.7 at 1,000,000 (F1 0.986), since
the more people, the more chance look-alikes each record meets; 0.65 is within 0.003 of the best F1
at every size measured. ``test_quality_by_threshold`` in ``benchmarks/test_bench_match.py`` repeats
the measurement; re-run it when the schema changes.

>>> import numpy as np
>>> a = np.array([[0b1111]], dtype=np.uint64); b = np.array([[0b0111], [0b1000]], dtype=np.uint64)
>>> dice(a, np.array([4], np.int32), b, np.array([3, 1], np.int32), np.array([0, 0]), np.array([0, 1]))
array([0.85714287, 0.4       ], dtype=float32)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import numpy as np

from fedlink.errors import BadInput
from fedlink.linkage.encode import EncodedRecords

#: Dice threshold of a fuzzy link (see the module docstring for how it was chosen).
DEFAULT_THRESHOLD: Final = 0.65
#: Most candidate pairs one block may produce under one blocking key before it is skipped.
DEFAULT_MAX_BLOCK: Final = 250_000
#: ``via`` of a link made by Dice similarity rather than by an exact tier.
FUZZY: Final = -1
#: Pairs per Dice batch of the NumPy kernel (scratch of about 300 bytes a pair for 1024-bit filters).
BATCH: Final = 8192
#: Pairs per Dice batch of the compiled kernel (no scratch; batches only share the work among threads).
COMPILED_BATCH: Final = 1 << 16
#: Filters of the second side beyond this many bytes (about a core's cache) are prefetched by the
#: compiled kernel, :data:`PREFETCH_AHEAD` pairs ahead; smaller ones are read from cache anyway.
PREFETCH_ABOVE: Final = 1 << 20
PREFETCH_AHEAD: Final = 32
#: Candidate pairs generated, filtered and compared at a time, bounding the memory of linkage.
CHUNK: Final = 1 << 21

_LOW_BYTES: Final = np.uint64(0x00FF00FF00FF00FF)
_SUM_LANES: Final = np.uint64(0x0001000100010001)


@dataclass(frozen=True)
class StageSeconds:
    """Wall-clock seconds spent in each stage of linkage."""

    exact: float = 0.0  #: matching exact tiers
    block: float = 0.0  #: generating and filtering candidate pairs
    compare: float = 0.0  #: Dice coefficients
    assign: float = 0.0  #: one-to-one assignment (and, for several parties, clustering)

    def __add__(self, other: StageSeconds) -> StageSeconds:
        return StageSeconds(
            self.exact + other.exact, self.block + other.block, self.compare + other.compare, self.assign + other.assign
        )


@dataclass(frozen=True)
class PairLinks:
    """The links between two parties: record ``ia[k]`` of the first is ``ib[k]`` of the second."""

    ia: np.ndarray  #: int64 record indices in the first party
    ib: np.ndarray  #: int64 record indices in the second party
    score: np.ndarray  #: float32 Dice coefficient, 1.0 for an exact link
    via: np.ndarray  #: int8 index of the exact tier that linked the pair, or FUZZY
    candidates: int  #: candidate pairs the blocking keys produced among records not linked exactly
    comparisons: int  #: Dice coefficients computed (candidates left after the popcount bound)
    seconds: StageSeconds

    def __len__(self) -> int:
        return len(self.ia)


def default_workers() -> int:
    """Threads for the Dice kernel: the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Scratch:
    """One thread's working arrays for batches of up to ``size`` pairs of ``words``-word filters,
    allocated once: fresh multi-megabyte temporaries per batch cost page faults."""

    def __init__(self, size: int, words: int) -> None:
        self.left = np.empty((size, words), dtype=np.uint64)
        self.right = np.empty((size, words), dtype=np.uint64)
        self.counts = np.empty((size, words), dtype=np.uint8)
        self.group = np.empty(size, dtype=np.uint64)
        self.spare = np.empty(size, dtype=np.uint64)
        self.total = np.empty(size, dtype=np.uint64)
        self.pop = np.empty(size, dtype=np.float32)
        self.other_pop = np.empty(size, dtype=np.float32)
        self.score = np.empty(size, dtype=np.float32)

    def dice(
        self, a: np.ndarray, a_pop: np.ndarray, b: np.ndarray, b_pop: np.ndarray, ia: np.ndarray, ib: np.ndarray
    ) -> np.ndarray:
        """Dice of each pair (a view of this scratch); ``a`` and ``b`` have a multiple of 8 words per filter."""
        n = len(ia)
        left, right, counts = self.left[:n], self.right[:n], self.counts[:n]
        group, spare, total = self.group[:n], self.spare[:n], self.total[:n]
        # mode="clip" writes straight into ``out`` (the caller checked the indices once)
        np.take(a, ia, axis=0, out=left, mode="clip")
        np.take(b, ib, axis=0, out=right, mode="clip")
        np.bitwise_and(left, right, out=left)
        np.bitwise_count(left, out=counts)
        # one byte of count per word: add the bytes of eight words at a time as the lanes of a uint64
        lanes = counts.view(np.uint64)
        total.fill(0)
        for start in range(0, lanes.shape[1], 3):  # three bytes <= 64 cannot overflow a byte
            np.copyto(group, lanes[:, start])
            for column in range(start + 1, min(start + 3, lanes.shape[1])):
                group += lanes[:, column]
            np.bitwise_and(group, _LOW_BYTES, out=spare)
            total += spare
            group >>= np.uint64(8)
            group &= _LOW_BYTES
            total += group
        total *= _SUM_LANES  # the four 16-bit lanes summed into the top lane
        total >>= np.uint64(48)
        pop, other_pop, score = self.pop[:n], self.other_pop[:n], self.score[:n]
        np.take(a_pop, ia, out=pop, mode="clip")
        np.take(b_pop, ib, out=other_pop, mode="clip")
        pop += other_pop
        np.copyto(score, total, casting="unsafe")
        score *= 2
        np.divide(score, pop, out=score, where=pop > 0)
        score[pop == 0] = 0
        return score


def _padded(blooms: np.ndarray) -> np.ndarray:
    words = blooms.shape[1]
    if words % 8 == 0:
        return blooms
    return np.pad(blooms, ((0, 0), (0, 8 - words % 8)))


def dice(
    a_blooms: np.ndarray,
    a_pop: np.ndarray,
    b_blooms: np.ndarray,
    b_pop: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    workers: int | None = None,
) -> np.ndarray:
    """Dice coefficient (float32) of filter ``a_blooms[ia[k]]`` with ``b_blooms[ib[k]]`` for each k.

    Filters are uint64 rows of one length; ``a_pop`` and ``b_pop`` their popcounts. Two empty
    filters score 0. Work runs in batches on ``workers`` threads (default: every CPU this process
    may use), by the compiled kernel (:mod:`fedlink.linkage.kernel`) where numba can be imported,
    else by NumPy; both give identical results.
    """
    if a_blooms.dtype != np.uint64 or b_blooms.dtype != np.uint64 or a_blooms.shape[1:] != b_blooms.shape[1:]:
        raise BadInput("Bloom filters to compare must be uint64 rows of one length")
    if a_blooms.ndim != 2 or a_blooms.shape[1] * 64 >= 1 << 16:
        raise BadInput("Bloom filters must be 2-D and shorter than 65536 bits")
    ia = np.ascontiguousarray(ia, dtype=np.intp)
    ib = np.ascontiguousarray(ib, dtype=np.intp)
    if ia.shape != ib.shape or ia.ndim != 1:
        raise BadInput("pair index arrays must be one-dimensional and of one length")
    a_pop = np.ascontiguousarray(a_pop, dtype=np.float32)
    b_pop = np.ascontiguousarray(b_pop, dtype=np.float32)
    if a_pop.shape != (len(a_blooms),) or b_pop.shape != (len(b_blooms),):
        raise BadInput("there must be one popcount a filter")
    out = np.empty(len(ia), dtype=np.float32)
    compiled = _compiled_kernel()
    batch = BATCH if compiled is None else COMPILED_BATCH
    batches = range(0, len(ia), batch)
    threads = max(1, min(default_workers() if workers is None else workers, len(batches)))
    if compiled is None:
        if len(ia) and (ia.min() < 0 or ib.min() < 0 or ia.max() >= len(a_blooms) or ib.max() >= len(b_blooms)):
            raise BadInput(_OUT_OF_RANGE)
        a, b = _padded(np.ascontiguousarray(a_blooms)), _padded(np.ascontiguousarray(b_blooms))

        def run(span: range) -> int:
            scratch = _Scratch(min(BATCH, len(ia)), a.shape[1])
            for start in span:
                stop = min(start + BATCH, len(ia))
                out[start:stop] = scratch.dice(a, a_pop, b, b_pop, ia[start:stop], ib[start:stop])
            return 0

    else:
        a, b = np.ascontiguousarray(a_blooms), np.ascontiguousarray(b_blooms)
        ahead = PREFETCH_AHEAD if b.nbytes > PREFETCH_ABOVE else 0

        def run(span: range) -> int:  # the kernel checks every index (a pass of min and max costs 20%)
            return sum(compiled(a, a_pop, b, b_pop, ia, ib, out, s, min(s + batch, len(ia)), ahead) for s in span)

    spans = [batches[t::threads] for t in range(threads)]
    if threads == 1:
        bad = run(spans[0])
    else:
        with ThreadPoolExecutor(threads) as pool:
            bad = sum(pool.map(run, spans))
    if bad:
        raise BadInput(_OUT_OF_RANGE)
    return out


_OUT_OF_RANGE: Final = "a pair index is out of range of its filters"


def _compiled_kernel() -> Callable[..., int] | None:
    """The compiled Dice kernel, or None where numba cannot be imported (imported at first use:
    numba takes a while to import)."""
    from fedlink.linkage import kernel

    return kernel.dice_pairs


def _grouped(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(record order sorted by key, distinct non-zero keys, start of each in that order, count of each)."""
    present = np.flatnonzero(keys)
    order = present[np.argsort(keys[present], kind="stable")]
    distinct, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    return order, distinct, starts, counts


def _block_chunks(
    a_key: np.ndarray, b_key: np.ndarray, max_block: int | None, chunk: int = CHUNK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs (ia, ib) sharing a non-zero key, a run of whole blocks at a time (about ``chunk`` pairs),
    skipping blocks of more than ``max_block`` pairs."""
    a_order, a_distinct, a_start, a_count = _grouped(a_key)
    b_order, b_distinct, b_start, b_count = _grouped(b_key)
    _, ka, kb = np.intersect1d(a_distinct, b_distinct, assume_unique=True, return_indices=True)
    a_start, a_count, b_start, b_count = a_start[ka], a_count[ka], b_start[kb], b_count[kb]
    sizes = a_count * b_count
    if max_block is not None:
        kept = sizes <= max_block
        a_start, a_count, b_start, b_count, sizes = (x[kept] for x in (a_start, a_count, b_start, b_count, sizes))
    ends = np.cumsum(sizes)
    first = 0
    while first < len(sizes):
        done = int(ends[first - 1]) if first else 0
        last = max(int(np.searchsorted(ends, done + chunk, side="right")), first + 1)
        block_sizes = sizes[first:last]
        block = np.repeat(np.arange(first, last), block_sizes)
        within = np.arange(len(block)) - np.repeat(np.cumsum(block_sizes) - block_sizes, block_sizes)
        across = b_count[block]
        yield a_order[a_start[block] + within // across], b_order[b_start[block] + within % across]
        first = last


def block_join(a_key: np.ndarray, b_key: np.ndarray, max_block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (ia, ib) with ``a_key[ia] == b_key[ib] != 0``, grouped by key; blocks of more than
    ``max_block`` pairs are left out (``None``: none are)."""
    parts = list(_block_chunks(np.asarray(a_key, np.uint64), np.asarray(b_key, np.uint64), max_block))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ia = np.concatenate([p[0] for p in parts]).astype(np.int64)
    return ia, np.concatenate([p[1] for p in parts]).astype(np.int64)


def _without_giant_blocks(a_key: np.ndarray, b_key: np.ndarray, max_block: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies of both keys with the values of blocks of more than ``max_block`` pairs set to 0 (missing)."""
    a_values, a_counts = np.unique(a_key[a_key != 0], return_counts=True)
    b_values, b_counts = np.unique(b_key[b_key != 0], return_counts=True)
    shared, ka, kb = np.intersect1d(a_values, b_values, assume_unique=True, return_indices=True)
    giant = shared[a_counts[ka] * b_counts[kb] > max_block]
    if len(giant) == 0:
        return a_key, b_key
    return np.where(np.isin(a_key, giant), 0, a_key), np.where(np.isin(b_key, giant), 0, b_key)


def candidate_chunks(
    a_blocks: Mapping[str, np.ndarray], b_blocks: Mapping[str, np.ndarray], max_block: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Disjoint chunks of the union of candidate pairs over the blocking keys both sides have."""
    names = [name for name in a_blocks if name in b_blocks]
    keys = [
        _without_giant_blocks(np.asarray(a_blocks[n], np.uint64), np.asarray(b_blocks[n], np.uint64), max_block)
        for n in names
    ]
    for k, (a_key, b_key) in enumerate(keys):
        for ia, ib in _block_chunks(a_key, b_key, None):
            fresh = np.ones(len(ia), dtype=bool)
            for a_earlier, b_earlier in keys[:k]:  # a pair an earlier key produced was compared there
                ka = a_earlier[ia]
                fresh &= (ka == 0) | (ka != b_earlier[ib])
            yield ia[fresh], ib[fresh]


def candidate_pairs(
    a_blocks: Mapping[str, np.ndarray], b_blocks: Mapping[str, np.ndarray], max_block: int = DEFAULT_MAX_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (ia, ib) of records sharing a non-zero value of some blocking key both sides have,
    each pair once, sorted by (ia, ib). Under each key, blocks of more than ``max_block`` pairs are
    skipped."""
    parts = list(candidate_chunks(a_blocks, b_blocks, max_block))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ia = np.concatenate([p[0] for p in parts]).astype(np.int64)
    ib = np.concatenate([p[1] for p in parts]).astype(np.int64)
    order = np.lexsort((ib, ia))
    return ia[order], ib[order]


def _unique_keys(keys: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(digests occurring exactly once among free records with a digest, the record holding each)."""
    candidates = np.flatnonzero(free & (keys != b""))
    values, first, counts = np.unique(keys[candidates], return_index=True, return_counts=True)
    once = counts == 1
    return values[once], candidates[first[once]]


def exact_tier(
    a_keys: Mapping[str, np.ndarray], b_keys: Mapping[str, np.ndarray], tiers: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Links (ia, ib, tier index) by equal match-key digests, tier by tier in the order of ``tiers``.

    At each tier, a record not yet linked whose digest is non-empty and unique among the unlinked
    records of its side links to the unlinked record of the other side with the same, also unique,
    digest. Each record is linked at most once, at the strictest tier that links it.
    """
    count_a = len(next(iter(a_keys.values()))) if a_keys else 0
    count_b = len(next(iter(b_keys.values()))) if b_keys else 0
    free_a, free_b = np.ones(count_a, dtype=bool), np.ones(count_b, dtype=bool)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for index, tier in enumerate(tiers):
        if tier not in a_keys or tier not in b_keys:
            raise BadInput(f"match-key tier '{tier}' is missing from one party's encodings; encode with one schema")
        values_a, records_a = _unique_keys(a_keys[tier], free_a)
        values_b, records_b = _unique_keys(b_keys[tier], free_b)
        _, ka, kb = np.intersect1d(values_a, values_b, assume_unique=True, return_indices=True)
        ia, ib = records_a[ka], records_b[kb]
        free_a[ia] = False
        free_b[ib] = False
        found.append((ia, ib, np.full(len(ia), index, dtype=np.int8)))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8)
    return (
        np.concatenate([f[0] for f in found]).astype(np.int64),
        np.concatenate([f[1] for f in found]).astype(np.int64),
        np.concatenate([f[2] for f in found]),
    )


def _python_greedy(ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    used_a: set[int] = set()
    used_b: set[int] = set()
    keep = np.zeros(len(ia), dtype=bool)
    for k, (x, y) in enumerate(zip(ia.tolist(), ib.tolist(), strict=True)):
        if x not in used_a and y not in used_b:
            used_a.add(x)
            used_b.add(y)
            keep[k] = True
    return keep


def one_to_one(ia: np.ndarray, ib: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the pairs a greedy assignment keeps: in descending score (ties by ia, then ib),
    a pair is kept if neither of its records is in a pair kept before it.

    Computed in rounds: a pair that ranks first among the remaining pairs of both its records is
    kept by the greedy order too; kept records' other pairs are then dropped, and so on.
    """
    rank = np.lexsort((ib, ia, -score.astype(np.float64)))
    ra, rb = ia[rank], ib[rank]
    kept: list[np.ndarray] = []
    remaining = np.arange(len(rank))
    for _ in range(32):
        if len(remaining) == 0:
            break
        xa, xb = ra[remaining], rb[remaining]
        best = np.zeros(len(remaining), dtype=bool)
        best[np.unique(xa, return_index=True)[1]] = True
        best_b = np.zeros(len(remaining), dtype=bool)
        best_b[np.unique(xb, return_index=True)[1]] = True
        best &= best_b
        kept.append(remaining[best])
        taken = remaining[best]
        remaining = remaining[~(np.isin(xa, ra[taken]) | np.isin(xb, rb[taken]))]
    else:  # long chains of competing pairs: finish in order, one pair at a time
        kept.append(remaining[_python_greedy(ra[remaining], rb[remaining])])
    return np.sort(rank[np.concatenate(kept)]) if kept else np.empty(0, np.int64)


def link_pair(
    a: EncodedRecords,
    b: EncodedRecords,
    threshold: float = DEFAULT_THRESHOLD,
    max_block: int = DEFAULT_MAX_BLOCK,
    workers: int | None = None,
) -> PairLinks:
    """Links between the records of two parties: exact tiers, then Dice over blocked candidates
    among the records left, then a greedy one-to-one assignment of Dice scores >= ``threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise BadInput(f"a Dice threshold must be in (0, 1], not {threshold}")
    if a.blooms.shape[1:] != b.blooms.shape[1:]:
        raise BadInput("the two parties' Bloom filters differ in length; encode with one schema")
    started = time.perf_counter()
    tiers = [tier for tier in a.match_keys if tier in b.match_keys]
    ea, eb, tier = exact_tier(a.match_keys, b.match_keys, tiers)
    free_a, free_b = np.ones(a.count, dtype=bool), np.ones(b.count, dtype=bool)
    free_a[ea] = False
    free_b[eb] = False
    a_blocks = {name: np.where(free_a, key, np.uint64(0)) for name, key in a.block_keys.items()}
    b_blocks = {name: np.where(free_b, key, np.uint64(0)) for name, key in b.block_keys.items()}
    a_pop, b_pop = a.popcounts.astype(np.int64), b.popcounts.astype(np.int64)
    mark = time.perf_counter()
    exact_seconds, block_seconds, compare_seconds = mark - started, 0.0, 0.0
    candidates = comparisons = 0
    found_a: list[np.ndarray] = []
    found_b: list[np.ndarray] = []
    found_score: list[np.ndarray] = []
    for ia, ib in candidate_chunks(a_blocks, b_blocks, max_block):
        candidates += len(ia)
        # Dice <= 2 min(|A|, |B|) / (|A| + |B|): a pair too unequal in popcount cannot reach the threshold
        pa, pb = a_pop[ia], b_pop[ib]
        possible = 2 * np.minimum(pa, pb) >= threshold * (pa + pb) - 1e-6
        ia, ib = ia[possible], ib[possible]
        now = time.perf_counter()
        block_seconds += now - mark
        scores = dice(a.blooms, a.popcounts, b.blooms, b.popcounts, ia, ib, workers=workers)
        comparisons += len(ia)
        above = scores >= threshold
        found_a.append(ia[above])
        found_b.append(ib[above])
        found_score.append(scores[above])
        mark = time.perf_counter()
        compare_seconds += mark - now
    block_seconds += time.perf_counter() - mark
    mark = time.perf_counter()
    fa = np.concatenate(found_a).astype(np.int64) if found_a else np.empty(0, np.int64)
    fb = np.concatenate(found_b).astype(np.int64) if found_b else np.empty(0, np.int64)
    fs = np.concatenate(found_score) if found_score else np.empty(0, np.float32)
    keep = one_to_one(fa, fb, fs)
    return PairLinks(
        ia=np.concatenate([ea, fa[keep]]),
        ib=np.concatenate([eb, fb[keep]]),
        score=np.concatenate([np.ones(len(ea), np.float32), fs[keep]]),
        via=np.concatenate([tier, np.full(len(keep), FUZZY, dtype=np.int8)]),
        candidates=candidates,
        comparisons=comparisons,
        seconds=StageSeconds(
            exact=exact_seconds, block=block_seconds, compare=compare_seconds, assign=time.perf_counter() - mark
        ),
    )
