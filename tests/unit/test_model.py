"""Federated GLM arithmetic: formulas, sensitivity, Newton-Raphson under DP noise, and the pairwise
masks of secure aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from fedlink.errors import QueryError
from fedlink.language.model_formula import plan_model
from fedlink.pets import secagg
from fedlink.pets.dp import add_noise, iteration_noise
from fedlink.plan.catalogue import ColumnInfo, FederationCatalogue, NodeCatalogue, NodeStatus, TableInfo
from fedlink.plan.model import ModelPlan, accumulate, column_scale, newton_fit, summary
from fedlink.protocol.tasks import ModelResult

COLUMNS = (
    ColumnInfo(name="y", kind="category", categories=(0, 1)),
    ColumnInfo(name="a", kind="numeric", bounds=(0.0, 10.0)),
    ColumnInfo(name="b", kind="numeric", bounds=(-5.0, 5.0)),
    ColumnInfo(name="kind", kind="category", categories=("x + y", "z")),
    ColumnInfo(name="year", kind="category", categories=(2020, 2021, 2022)),
    ColumnInfo(name="name", kind="identifier"),
)
CATALOGUE = FederationCatalogue(
    nodes=tuple(
        NodeStatus(
            node=n,
            live=True,
            catalogue=NodeCatalogue(node=n, tables=(TableInfo(name="t", rows_rounded=100, columns=COLUMNS),)),
        )
        for n in ("n1", "n2")
    )
)


def test_formulas_bind_to_the_catalogue() -> None:
    plan = plan_model("y = 1 ~ a + kind = 'x + y' + year", "t", CATALOGUE)
    assert plan.nodes == ("n1", "n2") and plan.width == 4 and plan.iterations == 8
    assert plan.labels() == ["(intercept)", "a", "kind = 'x + y'", "year"]


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("y ~ name", "identifier"),
        ("y ~ kind", "category of text"),
        ("y ~ missing", "unknown column"),
        ("a ~ b", "logistic response must be 0/1"),
        ("y ~ a + a", "appears twice"),
        ("y ~ kind = 'w'", "not a declared category"),
        ("y ~ a ~ b", "one '~'"),
        ("y ~ ", "at least one term"),
        ("y ~ a * b", "must be a column"),
    ],
)
def test_bad_formulas_say_what_is_wrong(formula: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        plan_model(formula, "t", CATALOGUE)


def test_sensitivity_bounds_one_rows_change() -> None:
    """The L2 sensitivity holds on the worst rows the [0, 1] design allows."""
    rng = np.random.default_rng(3)
    for family in ("logistic", "gaussian"):
        plan = plan_model("y ~ a + b", "t", CATALOGUE, family)  # type: ignore[arg-type]
        bound = plan.sensitivity(1)
        worst = 0.0
        for _ in range(300):
            row = {"y": rng.integers(0, 2, 1).astype(float), "x0": rng.random(1).round(), "x1": rng.random(1).round()}
            change = accumulate(plan, [row], rng.normal(0, 3, plan.width))
            worst = max(worst, float(np.linalg.norm(change)))
        assert worst <= bound + 1e-12
        if family == "gaussian":
            assert worst == pytest.approx(bound)  # tight: a row of ones reaches it


def _fit(plan: ModelPlan, nodes: list[dict[str, np.ndarray]], rho: float = 0.0) -> np.ndarray:
    """Newton-Raphson over per-node statistics, with each node's DP noise when ``rho`` > 0."""
    spec = iteration_noise(plan.sensitivity(1), plan.iterations, rho) if rho else None

    def run_round(iteration: int, beta: np.ndarray) -> tuple[np.ndarray, float]:
        parts = [accumulate(plan, [rows], beta) for rows in nodes]
        total = np.sum([add_noise(p, spec) if spec else p for p in parts], axis=0)
        return total, np.sqrt(len(nodes)) * spec.scale if spec else 0.0

    return newton_fit(plan, run_round).beta


def _data(rng: np.random.Generator, n: int, truth: np.ndarray) -> dict[str, np.ndarray]:
    x0, x1 = rng.random(n), rng.random(n)
    mu = 1 / (1 + np.exp(-(truth[0] + truth[1] * x0 + truth[2] * x1)))
    return {"y": (rng.random(n) < mu).astype(float), "x0": x0, "x1": x1}


def test_noisy_logistic_fits_are_close_to_the_exact_fit() -> None:
    rng = np.random.default_rng(7)
    plan = plan_model("y ~ a + b", "t", CATALOGUE)
    nodes = [_data(rng, 20_000, np.array([-1.0, 2.0, -1.5])) for _ in range(2)]
    exact = _fit(plan, nodes)
    for _ in range(5):  # coefficient errors have SDs of about 0.012: 0.07 is about six of them
        assert np.abs(_fit(plan, nodes, rho=1.0) - exact).max() < 0.07


def test_tiny_noisy_data_does_not_explode() -> None:
    """Noise larger than the data: the floored, clipped steps keep the coefficients finite and bounded."""
    rng = np.random.default_rng(8)
    plan = plan_model("y ~ a + b", "t", CATALOGUE)
    nodes = [_data(rng, 20, np.array([0.0, 1.0, 1.0])) for _ in range(2)]
    for _ in range(20):
        beta = _fit(plan, nodes, rho=0.1)
        assert np.all(np.isfinite(beta)) and np.abs(beta).max() <= 5.0 * plan.iterations


def test_coefficients_on_the_columns_scale() -> None:
    """A linear model fitted on the [0, 1] scale maps back to the columns' own units."""
    plan = plan_model("a ~ b + year", "t", CATALOGUE, "gaussian")
    rng = np.random.default_rng(9)
    b, year = rng.uniform(-5, 5, 500), rng.integers(2020, 2023, 500).astype(float)
    a = 3.0 + 0.4 * b + 0.5 * (year - 2020) + rng.normal(0, 0.1, 500)
    rows = {"y": a / 10.0, "x0": (b + 5) / 10, "x1": (year - 2020) / 2}
    fit = newton_fit(plan, lambda _, beta: (accumulate(plan, [rows], beta), 0.0))
    estimate = summary(plan, fit)
    coefficients, errors = estimate.coefficients, estimate.std_errors
    assert errors is not None and estimate.noise_errors is not None and not estimate.noise_errors.any()
    design = np.column_stack([np.ones(500), b, year])
    expected = np.linalg.lstsq(design, a, rcond=None)[0]
    np.testing.assert_allclose(coefficients, expected, rtol=1e-9, atol=1e-9)
    residual = a - design @ expected
    covariance = residual @ residual / (500 - 3) * np.linalg.inv(design.T @ design)
    np.testing.assert_allclose(errors, np.sqrt(np.diag(covariance)), rtol=1e-6)
    matrix, shift = column_scale(plan)
    assert matrix.shape == (3, 3) and shift[0] == 0.0


def test_masked_statistics_reveal_nothing_alone_and_sum_exactly() -> None:
    secrets = {("a", "b"): b"1" * 32, ("a", "c"): b"2" * 32, ("b", "c"): b"3" * 32}

    def peers(node: str) -> list[tuple[str, bytes]]:
        return [(b if a == node else a, s) for (a, b), s in secrets.items() if node in (a, b)]

    values = {n: np.array([1.5, -2.25, 1e6, 0.0]) * (i + 1) for i, n in enumerate("abc")}
    parts = [secagg.masked(values[n], n, peers(n), "q:0") for n in "abc"]
    np.testing.assert_allclose(secagg.unmasked_sum(parts, 4), sum(values.values()), atol=1e-6)
    # one node's words alone look nothing like its values; another round's masks differ
    alone = np.frombuffer(parts[0], dtype="<u8").view(np.int64) / secagg.SCALE
    assert np.all(np.abs(alone - values["a"]) > 1e3)
    assert secagg.masked(values["a"], "a", peers("a"), "q:1") != parts[0]
    # a missing node leaves the masks uncancelled: the partial sum is garbage, not a node's values
    partial = secagg.unmasked_sum(parts[:2], 4)
    assert np.all(np.abs(partial - (values["a"] + values["b"])) > 1e3)


def test_fit_result_rows() -> None:
    result = ModelResult(
        query_id="q",
        project="p",
        formula="y ~ a",
        table="t",
        family="logistic",
        labels=("(intercept)", "a"),
        coefficients=(0.5, -1.0),
        std_errors=(0.1, 0.5),
        rows=100,
        iterations=8,
        nodes=("n1", "n2"),
        pet="secagg+dp",
        noiseless=False,
        privacy_loss={},
    )
    rows = result.table_rows()
    assert rows[1]["z"] == -2.0 and rows[1]["lower"] == pytest.approx(-1.0 - 1.959964 * 0.5)
    assert rows[1]["noise_error"] is None  # not given: no split shown
    withheld = result.model_copy(update={"std_errors": None, "errors_withheld": "the DP noise swamps the rows"})
    assert [(r["std_error"], r["z"], r["lower"], r["upper"]) for r in withheld.table_rows()] == [(None,) * 4] * 2
