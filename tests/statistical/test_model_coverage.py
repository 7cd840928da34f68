"""Do the federated models' 95% intervals cover? A seeded simulation over synthetic data drawn from
known coefficients, with fresh rows and fresh DP noise at every fit, through the code a federation
runs: each node's statistics (:func:`accumulate`, which ``model_statistics`` calls on a node's rows),
its noise (:func:`iteration_noise`, OpenDP's calibration, and OpenDP's sampler in :func:`add_noise`, as
``NodeRuntime.model_step`` draws it), the coordinator's Newton iteration (:func:`newton_fit`, which
``fit_model`` drives over the nodes) and the released standard errors (:func:`summary`). Only the
secure aggregation's pairwise masks are left out: they cancel exactly in the sum.

The settings are those of the README's command (two nodes, up to 3 rows a person, 8 iterations for a
logistic fit and 1 for a linear one, rho 0.5, where the noise dominates the errors) and others (rho 4
with 4 iterations; rho 20, where sampling dominates), with enough rows that an honest interval exists;
the README's own few hundred rows at rho 0.5 get none, and say so.

Monte Carlo tolerance: the data are seeded but the noise is not (OpenDP samples it from the system's
randomness, as at a node), so the coverage found varies from run to run. A setting's coverage is
pooled over its 3 coefficients; those of one fit are correlated, and measured runs give about 1.9
independent indicators a fit, so 600 fits (logistic; a fit costs 16 of OpenDP's exact noise draws)
give a binomial SD of about 0.63 points and 1,200 (linear, which are cheap) about 0.45; the 200 fits
the issue asks for at least would give 1.1. Over 2,000 fits the settings covered 94.4% to 95.3%, 2.5
to 3.8 of these SDs inside the band of 93% to 97%, so a correct method fails this test by chance in
about 1% of runs, while the standard errors of earlier releases (without the noise) covered 79% in
the README's logistic setting and 20% in its linear one. One coefficient alone must cover at least
91% (3.6 SDs below 95% at 600 fits), which catches one badly served coefficient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fedlink.language.model_formula import plan_model
from fedlink.pets.dp import add_noise, iteration_noise
from fedlink.plan.catalogue import ColumnInfo, FederationCatalogue, NodeCatalogue, NodeStatus, TableInfo
from fedlink.plan.model import MAX_STEP, Family, accumulate, newton_fit, summary

pytestmark = pytest.mark.statistical
NODES = ("charity_north", "charity_south")
ROWS_PER_PERSON = 3  # the demo's support_episodes
#: Fits a setting: a logistic fit draws noise 16 times, a linear one twice.
FITS = {"logistic": 600, "gaussian": 1200}
COLUMNS = (
    ColumnInfo(name="outcome", kind="category", categories=("housed", "other")),
    ColumnInfo(name="episode_type", kind="category", categories=("rough_sleeping", "hostel", "other")),
    ColumnInfo(name="duration_days", kind="numeric", bounds=(0.0, 730.0)),
    ColumnInfo(name="start_year", kind="category", categories=(2018, 2019, 2020, 2021, 2022, 2023, 2024)),
)
CATALOGUE = FederationCatalogue(
    nodes=tuple(
        NodeStatus(
            node=n,
            live=True,
            catalogue=NodeCatalogue(
                node=n, tables=(TableInfo(name="support_episodes", rows_rounded=1000, columns=COLUMNS),)
            ),
        )
        for n in NODES
    )
)
#: The README's logistic model and a linear one, with the coefficients the data are drawn from (on the
#: columns' own scale: per day, per year; the linear model's intercept is at year 0).
LOGISTIC = ("outcome = 'housed' ~ episode_type = 'rough_sleeping' + duration_days", (0.5, -0.8, -0.001))
GAUSSIAN = ("duration_days ~ episode_type = 'hostel' + start_year", (200.0 - 15.0 * 2018, 60.0, 15.0))


@dataclass(frozen=True)
class Coverage:
    """What one setting's fits gave."""

    covered: np.ndarray  # fits x coefficients: did the 95% interval hold the true coefficient
    noise_share: np.ndarray  # fits x coefficients: the noise's part of each standard error, as a fraction
    withheld: list[str]


def _rows(rng: np.random.Generator, family: Family, truth: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """One node's rows as its SQL hands them to :func:`accumulate`: the design and the response in [0, 1]."""
    kind = rng.choice(3, n, p=[0.3, 0.3, 0.4])
    if family == "logistic":
        days = rng.uniform(0, 730, n)
        chance = 1 / (1 + np.exp(-(truth[0] + truth[1] * (kind == 0) + truth[2] * days)))
        return {"y": (rng.random(n) < chance).astype(float), "x0": (kind == 0).astype(float), "x1": days / 730}
    year = rng.integers(2018, 2025, n).astype(float)
    # a bounded error keeps every duration inside its declared bounds, so clamping changes nothing
    days = truth[0] + truth[1] * (kind == 1) + truth[2] * year + rng.uniform(-100, 100, n)
    return {"y": days / 730, "x0": (kind == 1).astype(float), "x1": (year - 2018) / 6}


def _batches(rows: dict[str, np.ndarray], size: int = 4_000) -> list[dict[str, np.ndarray]]:
    """A node's rows in batches, as its backend streams them; batches this small also keep OpenBLAS on
    one thread, whose threads spin for minutes on a busy machine over 12,000-row products."""
    return [
        {name: column[start : start + size] for name, column in rows.items()}
        for start in range(0, len(rows["y"]), size)
    ]


def simulate(family: Family, rho: float, iterations: int | None, rows_per_node: int, fits: int, seed: int) -> Coverage:
    """``fits`` federated fits, each over fresh rows at two nodes and fresh noise from each node."""
    formula, coefficients = LOGISTIC if family == "logistic" else GAUSSIAN
    plan = plan_model(formula, "support_episodes", CATALOGUE, family, iterations)
    truth = np.asarray(coefficients)
    spec = iteration_noise(plan.sensitivity(ROWS_PER_PERSON), plan.iterations, rho)
    rng = np.random.default_rng(seed)
    covered, shares, withheld = [], [], []
    for _ in range(fits):
        nodes = [_rows(rng, family, truth, rows_per_node) for _ in NODES]

        def run_round(
            iteration: int, beta: np.ndarray, nodes: list[dict[str, np.ndarray]] = nodes
        ) -> tuple[np.ndarray, float]:
            total = np.sum([add_noise(accumulate(plan, _batches(rows), beta), spec) for rows in nodes], axis=0)
            return total, np.sqrt(len(nodes)) * spec.scale

        estimate = summary(plan, newton_fit(plan, run_round))
        if estimate.std_errors is None or estimate.noise_errors is None:
            withheld.append(str(estimate.withheld))
            continue
        covered.append(np.abs(estimate.coefficients - truth) <= 1.959964 * estimate.std_errors)
        shares.append(estimate.noise_errors / estimate.std_errors)
    return Coverage(covered=np.array(covered), noise_share=np.array(shares), withheld=withheld)


@pytest.mark.slow  # about 30 s in all, most of it OpenDP's exact sampler (some 60 us a value)
@pytest.mark.parametrize(
    ("family", "rho", "iterations", "rows_per_node", "noise_dominates"),
    [
        pytest.param("logistic", 0.5, None, 12_000, True, id="logistic-rho0.5-readme"),
        pytest.param("logistic", 4.0, 4, 4_000, False, id="logistic-rho4-4-iterations"),
        pytest.param("gaussian", 0.5, None, 3_000, True, id="gaussian-rho0.5-readme"),
        pytest.param("gaussian", 20.0, None, 20_000, False, id="gaussian-rho20"),
    ],
)
def test_95_percent_intervals_cover_the_true_coefficients(
    family: Family, rho: float, iterations: int | None, rows_per_node: int, noise_dominates: bool
) -> None:
    result = simulate(family, rho, iterations, rows_per_node, fits=FITS[family], seed=round(rho * 100) + len(family))
    # Enough rows here for every fit to have an honest interval, save the convergence check's rare
    # alarms: its threshold is chi-squared's 0.9999 quantile, and a 4-iteration logistic fit is now and
    # then truly unsettled (1 in 600 seen). More than 1% withheld, or any other reason, is a failure.
    assert len(result.withheld) <= 0.01 * len(result.covered), result.withheld[:3]
    assert all("had not converged" in reason for reason in result.withheld), result.withheld[:3]
    coverage = result.covered.mean()
    assert 0.93 <= coverage <= 0.97, f"pooled coverage {coverage:.3f}"
    assert result.covered.mean(axis=0).min() >= 0.91, f"coverage per coefficient {result.covered.mean(axis=0)}"
    # noise dominates: its variance is most of the total (share of the standard error above 1 / sqrt 2)
    assert (np.median(result.noise_share) > 0.71) == noise_dominates, f"noise share {np.median(result.noise_share)}"


def test_the_readme_rows_at_rho_half_get_no_interval_rather_than_a_false_one() -> None:
    """About 150 episodes a branch (the demo's size) at rho 0.5: the noise on the information matrix
    outweighs its smallest eigenvalue, the eigenvalue floor shrinks every step, and no standard error
    or interval is released; the coefficients are, with the reason."""
    result = simulate("logistic", 0.5, None, 150, fits=20, seed=5)
    assert result.covered.size == 0 and len(result.withheld) == 20
    assert all(reason.startswith("the DP noise swamps the rows' information") for reason in result.withheld)


def test_a_fit_that_did_not_converge_gets_no_interval() -> None:
    """One noiseless Newton step from zero is not the maximum-likelihood fit; eight are."""
    rng = np.random.default_rng(11)
    formula, coefficients = LOGISTIC
    nodes = [_rows(rng, "logistic", np.asarray(coefficients), 5_000) for _ in NODES]
    for iterations, converged in ((1, False), (8, True)):
        plan = plan_model(formula, "support_episodes", CATALOGUE, iterations=iterations)
        fit = newton_fit(plan, lambda _, beta, plan=plan: (sum(accumulate(plan, [r], beta) for r in nodes), 0.0))
        estimate = summary(plan, fit)
        assert (estimate.std_errors is not None) == converged
        if not converged:
            assert estimate.withheld == "the fit had not converged in 1 iterations (take more iterations)"


def test_a_clipped_linear_fit_gets_no_interval() -> None:
    """A linear fit whose solution lies beyond the step clip (a coefficient over 5 on the [0, 1] scale)."""
    plan = plan_model(GAUSSIAN[0], "support_episodes", CATALOGUE, "gaussian")
    rng = np.random.default_rng(12)
    x0, x1 = rng.random(20_000), rng.random(20_000) * 0.01  # x1 barely varies: its coefficient is huge
    rows = {"y": np.clip(0.1 + 0.2 * x0 + 30 * x1, 0, 1), "x0": x0, "x1": x1}
    spec = iteration_noise(plan.sensitivity(1), plan.iterations, 1e6)

    def run_round(_: int, beta: np.ndarray) -> tuple[np.ndarray, float]:
        return add_noise(accumulate(plan, [rows], beta), spec), spec.scale

    fit = newton_fit(plan, run_round)
    assert fit.clipped and np.abs(fit.beta).max() == MAX_STEP
    assert str(summary(plan, fit).withheld).startswith("a coefficient lies beyond the step limit")
