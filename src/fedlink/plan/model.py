"""Federated generalised linear models: the plan of a model over one table held at several nodes
(horizontally partitioned, like the charity's two branches), fitted by Newton-Raphson on the nodes'
summed score vectors and information matrices, as DataSHIELD's ``ds.glm`` does. The formula that
gives a plan is read by :mod:`fedlink.language.model_formula`.

Numbers are clamped to their declared bounds and scaled to [0, 1] (their sensitivity is public);
coefficients are reported on the columns' own scale.

A node's statistics for coefficients ``beta`` (:func:`accumulate`): ``X'(y - mu)`` and
``X' W X`` (logistic: ``mu = sigmoid(X beta)``, ``W = mu (1 - mu)``; gaussian: ``X'y`` and ``X'X``),
over its rows after the table's contribution bound. One person changes them by at most
:meth:`ModelPlan.sensitivity` in L2 norm, so each release is a Gaussian mechanism (zCDP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
from sqlglot import exp

from fedlink.frozen import Frozen
from fedlink.plan.catalogue import Category

Family = Literal["logistic", "gaussian"]
#: Under DP noise, the most one coefficient (on the [0, 1] scale) moves in one Newton step.
MAX_STEP = 5.0


class ModelTerm(Frozen):
    """One column of the design: a clamped, [0, 1]-scaled number, or an indicator of one category."""

    column: str
    value: Category | None = None  # an indicator of this category
    lower: float = 0.0
    upper: float = 1.0

    @property
    def label(self) -> str:
        return self.column if self.value is None else f"{self.column} = {self.value!r}"

    def expression(self) -> exp.Expr:
        """The term as SQL, in [0, 1]."""
        column = exp.column(self.column, quoted=True)
        if self.value is not None:
            literal = exp.Literal.string(self.value) if isinstance(self.value, str) else exp.Literal.number(self.value)
            return (
                exp.Case()
                .when(exp.EQ(this=column, expression=literal), exp.Literal.number(1))
                .else_(exp.Literal.number(0))
            )
        clamped = exp.Least(
            this=exp.Greatest(this=exp.cast(column, "double"), expressions=[exp.Literal.number(self.lower)]),
            expressions=[exp.Literal.number(self.upper)],
        )
        span = self.upper - self.lower
        return exp.Div(
            this=exp.Paren(this=exp.Sub(this=clamped, expression=exp.Literal.number(self.lower))),
            expression=exp.Literal.number(span),
        )


class ModelPlan(Frozen):
    """A GLM over ``table`` at ``nodes``: what every node computes and what its release costs."""

    kind: Literal["model"] = "model"
    table: str
    nodes: tuple[str, ...]
    family: Family
    response: ModelTerm
    terms: tuple[ModelTerm, ...]
    iterations: int
    #: The formula as written (registers show it).
    sql: str

    @property
    def width(self) -> int:
        """Coefficients: the intercept and one per term."""
        return 1 + len(self.terms)

    @property
    def statistics(self) -> int:
        """Length of a node's statistics vector: the score, the upper triangle of the information
        matrix, the number of rows and the sum of squared responses (for a linear model's residual
        variance)."""
        d = self.width
        return d + d * (d + 1) // 2 + 2

    def columns_used(self) -> set[str]:
        return {self.response.column} | {t.column for t in self.terms}

    def sensitivity(self, rows_per_person: int) -> float:
        """L2 change of one node's statistics when one person's rows change (add/remove). Every design
        entry and response lies in [0, 1], so one row moves each score entry by at most 1 (sqrt(d) in
        all), each of the d (d + 1) / 2 entries of the information matrix's upper triangle by at most 1
        (gaussian: x_i x_j) or 1/4 (logistic: x_i x_j mu (1 - mu)), and the row count and the sum of
        squared responses by at most 1 each; a person moves them by at most ``rows_per_person`` times that."""
        d = self.width
        weight = 1.0 if self.family == "gaussian" else 0.25
        return rows_per_person * math.sqrt(d + weight**2 * d * (d + 1) / 2 + 2)

    def labels(self) -> list[str]:
        return ["(intercept)", *(t.label for t in self.terms)]


def accumulate(plan: ModelPlan, batches: Iterable[dict[str, np.ndarray]], beta: np.ndarray) -> np.ndarray:
    """A node's statistics vector from batches of rows (columns ``y``, ``x0`` ...): score, the upper
    triangle of the information matrix, the row count and the sum of squared responses."""
    d = plan.width
    score = np.zeros(d)
    information = np.zeros((d, d))
    rows = 0
    squares = 0.0
    for batch in batches:
        y = np.asarray(batch["y"], dtype=float)
        if not len(y):
            continue
        x = np.column_stack([np.ones(len(y)), *(np.asarray(batch[f"x{i}"], dtype=float) for i in range(d - 1))])
        if plan.family == "logistic":
            mu = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -35.0, 35.0)))
            score += x.T @ (y - mu)
            information += (x * (mu * (1 - mu))[:, None]).T @ x
        else:
            score += x.T @ y
            information += x.T @ x
        rows += len(y)
        squares += float(y @ y)
    upper = information[np.triu_indices(d)]
    return np.concatenate([score, upper, [rows, squares]])


def unpack(plan: ModelPlan, total: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(score, symmetric information matrix, rows, sum of squared responses) from a (summed)
    statistics vector."""
    d = plan.width
    score = total[:d]
    information = np.zeros((d, d))
    information[np.triu_indices(d)] = total[d : d + d * (d + 1) // 2]
    information = information + np.triu(information, 1).T
    return score, information, float(total[-2]), float(total[-1])


def newton_step(
    plan: ModelPlan, beta: np.ndarray, score: np.ndarray, information: np.ndarray, noise_sd: float = 0.0
) -> np.ndarray:
    """The next coefficients from summed statistics.

    ``noise_sd``: the standard deviation of the DP noise on each summed statistic. Noise can make the
    information matrix indefinite or near-singular, and a Newton step through it explode, so its
    eigenvalues are floored at twice the noise matrix's typical spectral norm (``2 sd sqrt(d)``, a
    ridge that outweighs the noise) and each coefficient moves by at most :data:`MAX_STEP` per
    iteration (on the [0, 1] scale). Without noise the step is exact Newton-Raphson. Both guards bias
    a fit they bind on: :func:`summary` gives no standard errors for such a fit."""
    floor = 2 * noise_sd * math.sqrt(plan.width)
    step = inverse(information, floor) @ score
    if noise_sd > 0:
        step = np.clip(step, -MAX_STEP, MAX_STEP)
    return step if plan.family == "gaussian" else beta + step


#: One round of a fit: the statistics summed over the nodes for the coefficients ``beta`` at
#: ``iteration`` (0-based), and the standard deviation of the DP noise on each entry of that sum.
Round = Callable[[int, np.ndarray], tuple[np.ndarray, float]]


@dataclass(frozen=True)
class NewtonFit:
    """Where a fit ended, on the [0, 1] scale: all :func:`summary` needs (released quantities only)."""

    beta: np.ndarray
    #: The summed statistics the estimate rests on: the last round's (logistic) or the mean of all
    #: rounds' (gaussian: the statistics do not depend on the coefficients, so each round is an
    #: independent noisy copy of the same sums).
    statistics: np.ndarray
    #: Standard deviation of the DP noise on each entry of ``statistics``.
    noise_sd: float
    #: The last iteration's change of the coefficients (logistic; zeros for gaussian).
    last_step: np.ndarray
    #: Whether the last step was clipped at :data:`MAX_STEP`.
    clipped: bool


def newton_fit(plan: ModelPlan, run_round: Round) -> NewtonFit:
    """Newton-Raphson from zero over ``plan.iterations`` rounds of summed statistics: the loop the
    coordinator runs over the federation (and the coverage simulation runs in process)."""
    beta = np.zeros(plan.width)
    step = np.zeros(plan.width)
    clipped = False
    total, noise_sd = np.zeros(plan.statistics), 0.0
    copies: list[np.ndarray] = []
    variances: list[float] = []
    for iteration in range(plan.iterations):
        total, noise_sd = run_round(iteration, beta)
        if plan.family == "gaussian":
            copies.append(total)
            variances.append(noise_sd**2)
            total = np.mean(copies, axis=0)
            noise_sd = math.sqrt(sum(variances)) / len(variances)
        score, information, _, _ = unpack(plan, total)
        moved = newton_step(plan, beta, score, information, noise_sd)
        change = moved if plan.family == "gaussian" else moved - beta
        clipped = noise_sd > 0 and bool(np.abs(change).max() >= MAX_STEP)
        step = np.zeros(plan.width) if plan.family == "gaussian" else change
        beta = moved
    return NewtonFit(beta=beta, statistics=total, noise_sd=noise_sd, last_step=step, clipped=clipped)


def column_scale(plan: ModelPlan) -> tuple[np.ndarray, np.ndarray]:
    """``(A, shift)`` with coefficients on the columns' own scale ``A @ beta + shift``: undoes the [0, 1]
    scaling of numeric terms (and of a numeric gaussian response); covariances map as ``A C A'``."""
    d = plan.width
    matrix = np.eye(d)
    for i, term in enumerate(plan.terms, start=1):
        if term.value is None:
            span = term.upper - term.lower
            matrix[i, i] = 1.0 / span
            matrix[0, i] = -term.lower / span
    shift = np.zeros(d)
    if plan.family == "gaussian" and plan.response.value is None:
        matrix *= plan.response.upper - plan.response.lower
        shift[0] = plan.response.lower
    return matrix, shift


def inverse(information: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """The inverse of a symmetric information matrix, its eigenvalues floored at ``floor`` (and at a
    tiny fraction of the largest, so it is always defined)."""
    values, vectors = np.linalg.eigh((information + information.T) / 2)
    floor = max(floor, 1e-9, 1e-9 * float(np.abs(values).max(initial=0.0)))
    return (vectors / np.maximum(values, floor)) @ vectors.T


#: Standard errors are given only when the noisy information matrix's smallest eigenvalue is at least
#: this many times the noise matrix's spectral scale ``2 sd sqrt(d)``: below it the floor of
#: :func:`newton_step` binds and the linearisation of :func:`summary` fails (see its docstring).
MIN_INFORMATION_TO_NOISE = 2.0
#: A converged fit's last Newton step is noise (covariance ``2 V``) plus at most this many sampling
#: standard errors of deterministic change; a longer step means the iteration had not converged.
STEP_TOLERANCE = 0.1


@dataclass(frozen=True)
class ModelEstimate:
    """Coefficients on the columns' scale, with standard errors that include the DP noise."""

    coefficients: np.ndarray
    #: The total standard errors: sampling and DP noise (None when no honest one can be given).
    std_errors: np.ndarray | None
    #: The DP noise's part of each standard error (they add in quadrature; None with ``std_errors``).
    noise_errors: np.ndarray | None
    #: Why no standard errors are given (None when they are).
    withheld: str | None = None


def noise_covariance(plan: ModelPlan, fit: NewtonFit, information: np.ndarray) -> np.ndarray:
    """Covariance of the coefficients' error due to the DP noise, on the [0, 1] scale (delta method).

    A Newton step from ``beta`` on noisy sums ``s + e``, ``H + E`` moves the coefficients' error
    ``delta = beta - b`` (``b``: the noiseless estimate) to ``(H + E)^-1 (e + E delta)`` to first order.
    ``e`` and the symmetric ``E`` have independent entries of variance ``sd^2``, so
    ``Cov(e + E delta) = sd^2 ((1 + |delta|^2) I + delta delta' - diag(delta^2))``. A gaussian fit is one
    step from zero (``delta = -b``); a logistic fit's error is carried from step to step from
    ``delta = -b`` at the start, so the recursion runs over its iterations, each step with the expected
    ``delta delta'`` of the one before."""
    d = plan.width
    sd2 = fit.noise_sd**2
    bread = inverse(information)
    if sd2 == 0:
        return np.zeros((d, d))

    def propagate(second_moment: np.ndarray) -> np.ndarray:
        middle = sd2 * ((1 + np.trace(second_moment)) * np.eye(d) + second_moment - np.diag(np.diag(second_moment)))
        return bread @ middle @ bread

    moment = np.outer(fit.beta, fit.beta)
    for _ in range(1 if plan.family == "gaussian" else plan.iterations):
        moment = propagate(moment)
    return moment


def summary(plan: ModelPlan, fit: NewtonFit) -> ModelEstimate:
    """Coefficients and standard errors on the columns' scale from where a fit ended.

    The variance of a coefficient is the estimator's sampling variance plus the DP noise's
    contribution, both evaluated at the released (noisy) statistics, so this is post-processing and
    costs no privacy. Sampling: the inverse information (logistic), or the residual variance times
    ``(X'X)^-1`` (gaussian), the residual sum of squares corrected for the noise's expected effect on
    it. Noise: :func:`noise_covariance`, a delta method on the noisy Newton iteration rather than a
    parametric bootstrap because it is exact to first order, costs one matrix product per iteration and
    needs no stand-in for the nodes' rows (which a bootstrap of a logistic fit's statistics would).

    The delta method holds while the noise is small beside the information; no standard errors are
    given (``withheld`` says why) when the noisy information's smallest eigenvalue is below
    :data:`MIN_INFORMATION_TO_NOISE` times the noise's spectral scale (the eigenvalue floor of
    :func:`newton_step` binds there and shrinks the fit towards zero), when the last step was clipped,
    or when a logistic fit's last step is longer than the noise explains (it had not converged).
    ``tests/unit/test_model_coverage.py`` measures the 95% intervals' coverage."""
    d = plan.width
    score, information, rows, squares = unpack(plan, fit.statistics)
    matrix, shift = column_scale(plan)
    coefficients = matrix @ fit.beta + shift
    floor = 2 * fit.noise_sd * math.sqrt(d)
    bread = inverse(information, floor)
    noise = noise_covariance(plan, fit, information)
    if plan.family == "gaussian":
        # residual sum of squares from the sufficient statistics: y'y - 2 b'X'y + b'X'X b; the noise
        # lowers its expectation by trace(bread . Cov(e + E delta)) = trace(X'X . noise)
        rss = squares - 2 * float(fit.beta @ score) + float(fit.beta @ information @ fit.beta)
        rss += float(np.trace(information @ noise))
        sampling = bread * max(rss, 0.0) / max(rows - d, 1.0)
    else:
        sampling = bread
    covariance = matrix @ (sampling + noise) @ matrix.T
    noise_part = matrix @ noise @ matrix.T
    withheld = _withheld(plan, fit, information, sampling, noise)
    if withheld is None and not np.all(np.isfinite(covariance)):
        withheld = "the fit's statistics are not finite"
    if withheld is not None:
        return ModelEstimate(coefficients=coefficients, std_errors=None, noise_errors=None, withheld=withheld)
    return ModelEstimate(
        coefficients=coefficients,
        std_errors=np.sqrt(np.maximum(np.diag(covariance), 0.0)),
        noise_errors=np.sqrt(np.maximum(np.diag(noise_part), 0.0)),
    )


def _withheld(
    plan: ModelPlan, fit: NewtonFit, information: np.ndarray, sampling: np.ndarray, noise: np.ndarray
) -> str | None:
    """Why the delta method of :func:`summary` cannot be trusted for this fit, or None."""
    if fit.noise_sd > 0:
        smallest = float(np.linalg.eigvalsh((information + information.T) / 2).min())
        scale = 2 * fit.noise_sd * math.sqrt(plan.width)
        if smallest < MIN_INFORMATION_TO_NOISE * scale:
            return (
                f"the DP noise swamps the rows' information (smallest eigenvalue {smallest:.3g} against a "
                f"noise scale of {scale:.3g}); spend more rho, take fewer iterations or terms, or use more rows"
            )
    if fit.clipped and plan.family == "gaussian":
        return (
            f"a coefficient lies beyond the step limit of {MAX_STEP:g} on the [0, 1] scale (a term barely varies "
            "or the terms are nearly collinear; drop one)"
        )
    if fit.clipped:
        return "the last Newton step was clipped; the fit had not settled (take more iterations)"
    if plan.family == "logistic":
        spread = 2 * noise + STEP_TOLERANCE**2 * sampling
        length = float(fit.last_step @ inverse(spread) @ fit.last_step)
        if length > _chi2_quantile(plan.width, 0.9999):
            return f"the fit had not converged in {plan.iterations} iterations (take more iterations)"
    return None


def _chi2_quantile(df: int, level: float) -> float:
    """The ``level`` quantile of chi-squared with ``df`` degrees of freedom (Wilson-Hilferty: a little
    above the exact one for few degrees of freedom, 16.2 against 15.1 at df 1 and level 0.9999, which
    only makes the convergence check laxer)."""
    z = NormalDist().inv_cdf(level)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
