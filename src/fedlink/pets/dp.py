"""Differential privacy with OpenDP: calibrating noise to a privacy loss, sampling it, and the
exact 95% interval of the noise a released number carries.

Two privacy-loss measures are supported, as in OpenDP:

- ``epsilon`` (pure DP): the Laplace mechanism, discrete (two-sided geometric) for counts and
  continuous for clamped sums, with scale ``b = sensitivity / epsilon``;
- ``rho`` (zero-concentrated DP): the Gaussian mechanism, discrete for counts, with
  ``sigma = sensitivity / sqrt(2 rho)``.

Every scale is checked with OpenDP's own privacy map (``measurement.map(sensitivity) <= budget``)
before any noise is drawn, and the noise itself comes from OpenDP's samplers.

Each node adds noise to its own partial aggregate, so a horizontal result summed over ``n`` nodes
carries the sum of ``n`` independent noises; :func:`noise_halfwidth` gives the exact quantile of that
sum (by convolving the noise distributions on a grid), so the stated 95% interval covers the true
value 95% of the time, no more and no less, up to the grid's resolution.

The grid never holds more than :data:`MAX_GRID` points, whatever the scale: integer noise too wide
for a grid of single integers is held as the exact mass of blocks of integers ("cells"), and the
half-width is widened by how far each draw can sit from its cell's centre, so the interval still
covers at least the stated level (wider than the exact one by about ``nodes**2 * 33 / MAX_GRID`` of
the noise scale: 0.2% over seven nodes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from fedlink.errors import BadInput

Mechanism = Literal["laplace", "gaussian"]


@dataclass(frozen=True)
class NoiseSpec:
    """The noise one node adds to one component vector."""

    mechanism: Mechanism
    scale: float
    integer: bool

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "scale": self.scale, "integer": self.integer}


@lru_cache(maxsize=1)
def _opendp() -> Any:
    """OpenDP's prelude with its contrib features on, loaded on first use (importing it takes most of a
    second, which ``import fedlink`` and the command line should not pay)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _measurement(mechanism: Mechanism, integer: bool, scale: float) -> Any:
    dp = _opendp()
    atom = dp.atom_domain(T=int) if integer else dp.atom_domain(T=float, nan=False)
    metric_t = int if integer else float
    metric = dp.l1_distance(T=metric_t) if mechanism == "laplace" else dp.l2_distance(T=metric_t)
    make = dp.m.make_laplace if mechanism == "laplace" else dp.m.make_gaussian
    return make(dp.vector_domain(atom), metric, scale=scale)


def calibrate(sensitivity: float, epsilon: float = 0.0, rho: float = 0.0, integer: bool = True) -> NoiseSpec:
    """The smallest noise for which OpenDP's privacy map certifies the given loss at ``sensitivity``.

    Exactly one of ``epsilon`` (Laplace) or ``rho`` (Gaussian) must be positive.
    """
    if (epsilon > 0) == (rho > 0):
        raise BadInput("give exactly one privacy loss: `epsilon=E` (pure DP) or `rho=R` (zCDP), positive")
    if sensitivity <= 0:
        raise BadInput("sensitivity must be positive")
    mechanism: Mechanism = "laplace" if epsilon > 0 else "gaussian"
    budget = epsilon if epsilon > 0 else rho
    scale = sensitivity / epsilon if epsilon > 0 else sensitivity / math.sqrt(2 * rho)
    d_in: int | float = math.ceil(sensitivity) if integer else float(sensitivity)
    for _ in range(64):  # float rounding can put the map a hair over budget: widen until certified
        if _measurement(mechanism, integer, scale).map(d_in) <= budget:
            return NoiseSpec(mechanism, scale, integer)
        scale *= 1 + 1e-9
    raise BadInput(f"cannot calibrate noise for sensitivity {sensitivity} at budget {budget}")


def add_noise(values: np.ndarray, spec: NoiseSpec) -> np.ndarray:
    """``values`` plus noise drawn by OpenDP's sampler for ``spec``."""
    if values.size == 0:
        return values.astype(float)
    measurement = _measurement(spec.mechanism, spec.integer, spec.scale)
    if spec.integer:
        noisy = measurement([round(v) for v in values.tolist()])
    else:
        noisy = measurement([float(v) for v in values.tolist()])
    return np.asarray(noisy, dtype=float)


#: The most points the distribution of a sum of noises is held on (8 MiB of floats), for any scale.
MAX_GRID = 1 << 20


def _grid(spec: NoiseSpec, step: float, reach: float) -> np.ndarray:
    """Probability mass of one noise draw on the grid ``k * step`` for ``|k * step| <= reach`` (for
    integer noise with an odd ``step`` above 1: the mass of the ``step`` integers around each point)."""
    half = math.ceil(reach / step)
    x = np.arange(-half, half + 1) * step
    if spec.integer and step > 1 and spec.mechanism == "laplace":
        mass = _laplace_cells(spec.scale, x, int(step))
    elif spec.mechanism == "laplace":
        if spec.integer:
            mass = np.exp(-np.abs(x) / spec.scale)
        else:  # integrate the density over each cell of the grid
            cdf = _laplace_cdf(np.concatenate([x - step / 2, x[-1:] + step / 2]), spec.scale)
            mass = np.diff(cdf)
    else:
        if spec.integer:
            # On cells (sigma in the thousands or more) the density at a cell's centre stands for the
            # mass of its integers to a relative 1e-9 (midpoint rule: about (width / sigma)^2 / 24).
            mass = np.exp(-((x / spec.scale) ** 2) / 2)
        else:
            cdf = _normal_cdf(np.concatenate([x - step / 2, x[-1:] + step / 2]), spec.scale)
            mass = np.diff(cdf)
    return mass / mass.sum()


def _laplace_cells(b: float, centres: np.ndarray, width: int) -> np.ndarray:
    """Mass of the ``width`` (odd) integers around each centre under a discrete Laplace of scale ``b``
    (two-sided geometric, p = exp(-1/b)): P(X >= m) = p^m / (1 + p) for m >= 1, so a cell starting at
    m > 0 holds p^m (1 - p^width) / (1 + p) and the centre cell 1 - 2 p^(reach + 1) / (1 + p), written
    with expm1 so that no digits cancel however large ``b`` is."""
    reach = (width - 1) // 2
    offsets = np.abs(centres)
    p = math.exp(-1 / b)
    mass = np.exp(-(offsets - reach) / b) * -math.expm1(-width / b) / (1 + p)
    a = (reach + 1) / b  # 1 + p - 2 p^(reach + 1) = (1 - e^-a) + e^-a (e^(a - 1/b) - 1)
    mass[offsets == 0] = (-math.expm1(-a) + math.exp(-a) * math.expm1(a - 1 / b)) / (1 + p)
    return np.asarray(mass)


def _laplace_cdf(x: np.ndarray, b: float) -> np.ndarray:
    return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / b), 1 - 0.5 * np.exp(-np.maximum(x, 0) / b))


def _normal_cdf(x: np.ndarray, sigma: float) -> np.ndarray:
    from math import erf, sqrt

    return np.array([0.5 * (1 + erf(v / (sigma * sqrt(2)))) for v in x])


@lru_cache(maxsize=256)
def _interval(spec: NoiseSpec, nodes: int, level: float) -> tuple[float, float]:
    """(half-width, probability inside it) of the sum of ``nodes`` independent draws: the exact
    probability, or for integer noise on cells a lower bound of it."""
    if nodes < 1:
        raise BadInput("nodes must be at least 1")
    spread = spec.scale * (math.log(1 / (1 - level)) + 30) if spec.mechanism == "laplace" else spec.scale * 12
    if not (spec.scale > 0 and math.isfinite(spread) and spread < 1e300):
        raise BadInput(f"noise of scale {spec.scale:g} has no usable interval; declare a larger privacy loss")
    step = 1.0 if spec.integer else max(spec.scale, 1e-12) / 64
    if not spec.integer:
        step = min(step, spread / 2000)  # at most about 4,400 points a node, whatever the scale
    elif 2 * nodes * math.ceil(spread) + 1 > MAX_GRID:
        step = float(2 * math.ceil(nodes * spread / MAX_GRID) + 1)  # odd: cells centred on their point
    single = _grid(spec, step, spread)
    total = single
    for _ in range(nodes - 1):
        size = len(total) + len(single) - 1
        n = 1 << (size - 1).bit_length()
        total = np.fft.irfft(np.fft.rfft(total, n) * np.fft.rfft(single, n), n)[:size]
        total = np.clip(total, 0, None)
        total /= total.sum()
    center = len(total) // 2
    # mass inside [-k, k] grows with k; find the first k reaching the level
    cumulative = np.concatenate([[0.0], np.cumsum(total)])
    ks = np.arange(center + 1)
    inside = cumulative[center + ks + 1] - cumulative[center - ks]
    k = int(np.searchsorted(inside, level - 1e-12))
    # On cells, each draw lies within (step - 1) / 2 of its cell's centre, so the sum within
    # nodes * (step - 1) / 2 of the sum of centres: widening by that keeps the coverage.
    slack = nodes * (step - 1) / 2 if spec.integer else 0.0
    return float(k * step + slack), float(inside[k])


def noise_halfwidth(spec: NoiseSpec, nodes: int = 1, level: float = 0.95) -> float:
    """Half-width ``h`` such that the sum of ``nodes`` independent draws lies in ``[-h, h]`` with
    probability at least ``level`` (the smallest such ``h`` on the grid)."""
    return _interval(spec, nodes, level)[0]


def noise_coverage(spec: NoiseSpec, nodes: int = 1, level: float = 0.95) -> float:
    """The probability that the interval of :func:`noise_halfwidth` covers the noise: at least
    ``level``, and above it for integer noise, whose coverage moves in steps (0.962 for a discrete
    Laplace of scale 2). Exact, except for integer noise held on cells (scales in the thousands and
    more), where it is a lower bound."""
    return _interval(spec, nodes, level)[1]


def iteration_noise(sensitivity: float, iterations: int, rho: float) -> NoiseSpec:
    """The Gaussian noise a node adds to a model's statistics at each of ``iterations`` releases of L2
    ``sensitivity`` (:meth:`fedlink.plan.model.ModelPlan.sensitivity`): ``rho / iterations`` each,
    calibrated and certified by OpenDP."""
    return calibrate(sensitivity, rho=rho / iterations, integer=False)
