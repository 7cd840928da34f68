"""Random draws shared by the synthesis steps, all from numpy's PCG64 generator.

Each step draws from its own stream, derived from the seed and the step's name, so a step's output
depends only on the seed and its inputs, not on how many numbers earlier steps consumed.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, step: str) -> np.random.Generator:
    """The random stream of one named step of synthesis under ``seed``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(step.encode())])))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, turning a log-odds into a probability."""
    return 1.0 / (1.0 + np.exp(-x))


def uniform_years(first: np.ndarray, last: np.ndarray | int, rng: np.random.Generator) -> np.ndarray:
    """A year drawn uniformly from ``first..last`` (inclusive), element-wise, as int16."""
    span = np.asarray(last) - first + 1
    return (first + np.floor(rng.random(first.size) * span)).astype(np.int16)


def categories(weights: np.ndarray, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """Category indices drawn with probability proportional to ``weights``.

    ``weights`` is one row shared by ``size`` draws, or a matrix with one row of weights per draw.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        return rng.choice(weights.size, size=size, p=weights / weights.sum()).astype(np.int8)
    cumulative = np.cumsum(weights, axis=1)
    u = rng.random(weights.shape[0]) * cumulative[:, -1]
    return np.minimum((u[:, None] >= cumulative).sum(axis=1), weights.shape[1] - 1).astype(np.int8)
