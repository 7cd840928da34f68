"""The compiled Dice kernel: numba when it can be imported, else ``dice_pairs is None`` (and
:func:`fedlink.linkage.match.dice` falls back to its NumPy kernel).

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

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the NumPy kernel working without it
    dice_pairs = None
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
