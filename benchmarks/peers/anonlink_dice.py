"""Peer measurement: anonlink's accelerated Dice kernel (C++), comparisons per second.

Run with a Python that has anonlink (``python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip
install anonlink``); ``benchmarks/test_bench_match.py`` calls it in a subprocess and compares it with
fedlink's Dice kernel (numba-compiled, NumPy fallback) in the same run. anonlink compares every
filter of one list with every filter of another (a dense block); filters are random 1024-bit
filters with about half their bits set, and the threshold (0.9) is above any chance similarity, so
every pair is compared and none is returned.

    python benchmarks/peers/anonlink_dice.py SIZE REPEATS  ->  one JSON line
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from anonlink.similarities import dice_coefficient_accelerated
from bitarray import bitarray


def filters(count: int, rng: random.Random) -> list[bitarray]:
    out = []
    for _ in range(count):
        bits = bitarray()
        bits.frombytes(rng.randbytes(128))
        out.append(bits)
    return out


def main() -> None:
    size, repeats = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(1)
    a, b = filters(size, rng), filters(size, rng)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dice_coefficient_accelerated([a, b], threshold=0.9)
        best = min(best, time.perf_counter() - started)
    print(
        json.dumps(
            {
                "size": size,
                "comparisons": size * size,
                "seconds": best,
                "comparisons_per_s": size * size / best,
                "threads": 1,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
