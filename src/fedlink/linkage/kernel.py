"""The compiled Dice kernel: numba when it can be imported, else ``dice_pairs is None`` (and
:func:`fedlink.linkage.match.dice` falls back to its NumPy kernel); and the compiled comparison-level
kernel of probabilistic matching (``filter_levels``, else None: the NumPy path of
:mod:`fedlink.linkage.probabilistic` gives the same levels).

:func:`dice_pairs` scores a span of pairs in one thread without the GIL, so that
:func:`~fedlink.linkage.match.dice` runs spans on Python threads of its own. It does not use numba's
``parallel=True``: numba's default threading layer (workqueue) must not be entered from two Python
threads at once, and a coordinator may link for two sessions at once.

The popcount is LLVM's ``ctpop``: the CPU's instruction, AVX-512 ``vpopcntq`` over vectors of words
where the CPU has it (numba compiles for the host CPU). Blocking yields pairs sorted by the first
record, so the second record's filter is the random read: where the second side's filters are larger
than a core's cache (``ahead`` > 0) each pair's second filter is prefetched ``ahead`` pairs early,
which doubles to quadruples the rate; for filters that fit in cache the prefetch only costs.

The result is bit for bit the NumPy kernel's: ``float32(2c) / float32(pa + pb)``, 0 where both
filters are empty. The first call in a process compiles (under a second here) or loads the compiled
code numba caches beside this file (``cache=True``; a per-user cache where this folder is read-only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

dice_pairs: Callable[..., int] | None
filter_levels: Callable[..., int] | None

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the NumPy kernel working without it
    dice_pairs = None
    filter_levels = None
else:

    @intrinsic
    def _ctpop(typingctx: Any, word: Any) -> Any:
        """The number of set bits of a uint64 (LLVM's ctpop: the CPU's popcount instruction)."""
        if word != types.uint64:
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @intrinsic
    def _prefetch_line(typingctx: Any, address: Any) -> Any:
        """A hint to bring the cache line at ``address`` (an integer) into cache for reading; never faults."""
        if not isinstance(address, types.Integer):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            byte_pointer = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0i8"
            )
            # read, keep in every cache level, data
            builder.call(prefetch, [builder.inttoptr(args[0], byte_pointer), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(address), codegen

    # called inside compiled code with the arguments after the typing context
    _popcount: Any = _ctpop
    _prefetch: Any = _prefetch_line

    @njit(nogil=True, cache=True, fastmath=False, boundscheck=False)
    def _dice_pairs(
        a: np.ndarray,
        a_pop: np.ndarray,
        b: np.ndarray,
        b_pop: np.ndarray,
        ia: np.ndarray,
        ib: np.ndarray,
        out: np.ndarray,
        start: int,
        stop: int,
        ahead: int,
    ) -> int:  # pragma: no cover - compiled; tested through fedlink.linkage.match.dice
        """``out[k]`` = Dice of ``a[ia[k]]`` and ``b[ib[k]]`` for ``start <= k < stop``; ``a_pop`` and
        ``b_pop`` are float32 popcounts of the rows, ``a`` and ``b`` C-contiguous. Returns how many
        pairs had an index out of range (their ``out`` is 0 and no filter was read for them)."""
        words = np.uint64(a.shape[1])
        row_bytes = a.shape[1] * 8
        a_rows = np.uint64(a.shape[0])
        b_rows = np.uint64(b.shape[0])
        # flat rows and unsigned indices: no code for negative (wrap-around) indices in the inner loop
        a_flat = a.reshape(-1)
        b_flat = b.reshape(-1)
        b_address = b.ctypes.data
        two = np.float32(2.0)
        zero = np.float32(0.0)
        bad = 0
        k = start
        while k < stop:
            if ahead > 0 and k + ahead < stop:
                address = b_address + ib[k + ahead] * row_bytes  # a bad index prefetches junk: harmless
                for line in range(0, row_bytes, 64):
                    _prefetch(address + line)
                _prefetch(address + row_bytes - 1)  # a row not aligned to a cache line ends in one more
            i = np.uint64(ia[k])  # a negative index becomes a huge one: out of range below
            j = np.uint64(ib[k])
            if i < a_rows and j < b_rows:
                x = i * words
                y = j * words
                both = np.uint64(0)
                for w in range(words):
                    both += _popcount(a_flat[x + w] & b_flat[y + w])
                total = a_pop[i] + b_pop[j]
                out[k] = np.float32(both) * two / total if total > zero else zero
            else:
                out[k] = zero
                bad += 1
            k += 1
        return bad

    dice_pairs = _dice_pairs

    @njit(nogil=True, cache=True, fastmath=False, boundscheck=False)
    def _similar(x: np.ndarray, i: int, px: int, y: np.ndarray, j: int, py: int) -> np.float32:  # pragma: no cover
        """Dice of row i of x and row j of y, the float32 the Dice kernel gives (compared with float32
        thresholds, as NumPy compares a float32 array with a Python float)."""
        both = np.uint64(0)
        for w in range(x.shape[1]):
            both += _popcount(x[i, w] & y[j, w])
        total = np.float32(px + py)
        if total <= np.float32(0.0):
            return np.float32(0.0)
        return np.float32(both) * np.float32(2.0) / total

    @njit(nogil=True, cache=True, fastmath=False, boundscheck=False)
    def _filter_levels(
        af: np.ndarray,
        ap: np.ndarray,
        bf: np.ndarray,
        bp: np.ndarray,
        ad: np.ndarray,
        bd: np.ndarray,
        a_swapped: np.ndarray,
        b_swapped: np.ndarray,
        a_other: np.ndarray,
        a_other_pop: np.ndarray,
        b_other: np.ndarray,
        b_other_pop: np.ndarray,
        a_middle: np.ndarray,
        a_middle_pop: np.ndarray,
        b_middle: np.ndarray,
        b_middle_pop: np.ndarray,
        ia: np.ndarray,
        ib: np.ndarray,
        thresholds: np.ndarray,
        settings: np.ndarray,
        out: np.ndarray,
        start: int,
        stop: int,
    ) -> int:  # pragma: no cover - compiled; tested through fedlink.linkage.probabilistic
        """The level of one filter comparison for pairs ``start:stop`` (see probabilistic._levels_of):
        0 where a side is missing; 1 for equal digests; 2 for a transposed date; then the first
        threshold the Dice similarity reaches (from level ``first``); then "swapped" or "middle" where
        the value is like the other's swap-field or middle-name filter; else ``different``.
        ``settings``: digests (0 none, 1 equal, 2 equal or transposed), first, swap level, middle level,
        the number n of grading thresholds, different; ``thresholds``: the n grading thresholds, then the
        similarity a swapped or middle name needs. Returns how many indices were out of range."""
        digests, first, swap_level, middle_level = settings[0], settings[1], settings[2], settings[3]
        graded, different = settings[4], settings[5]
        fallback = thresholds[graded]
        a_rows, b_rows = ap.shape[0], bp.shape[0]
        bad = 0
        for k in range(start, stop):
            i, j = ia[k], ib[k]
            if i < 0 or j < 0 or i >= a_rows or j >= b_rows:
                out[k] = 0
                bad += 1
                continue
            if ap[i] == 0 or bp[j] == 0:
                out[k] = 0
                continue
            if digests >= 1 and ad[i] != 0 and ad[i] == bd[j]:
                out[k] = 1
                continue
            if digests == 2 and (
                (ad[i] != 0 and ad[i] == b_swapped[j]) or (a_swapped[i] != 0 and a_swapped[i] == bd[j])
            ):
                out[k] = 2
                continue
            similarity = _similar(af, i, ap[i], bf, j, bp[j])
            level = 0
            for t in range(graded):
                if similarity >= thresholds[t]:
                    level = first + t
                    break
            if level == 0 and swap_level > 0:
                near = np.float32(0.0)
                if b_other_pop[j] > 0:
                    near = _similar(af, i, ap[i], b_other, j, b_other_pop[j])
                if a_other_pop[i] > 0:
                    near = max(near, _similar(a_other, i, a_other_pop[i], bf, j, bp[j]))
                if near >= fallback:
                    level = swap_level
            if level == 0 and middle_level > 0:
                near = np.float32(0.0)
                if b_middle_pop[j] > 0:
                    near = _similar(af, i, ap[i], b_middle, j, b_middle_pop[j])
                if a_middle_pop[i] > 0:
                    near = max(near, _similar(a_middle, i, a_middle_pop[i], bf, j, bp[j]))
                if near >= fallback:
                    level = middle_level
            out[k] = level if level > 0 else different
        return bad

    filter_levels = _filter_levels
