"""Federated models over a real federation (mTLS gRPC on loopback; the same coordinator code runs as
a Flower ServerApp in tests/e2e/test_flower.py): without noise the coefficients equal a pooled
plaintext fit on the nodes' files; with noise each node's loss is committed once and registered;
no node's statistics can be read on the wire."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fedlink.errors import BadInput, Fault, PolicyRefused, QueryError
from fedlink.language.model_formula import plan_model
from fedlink.pets.keyagree import LinkKeyCard
from fedlink.protocol.blobs import unpack as unpack_blobs
from fedlink.protocol.tasks import ModelOutput, ModelStep, PrivacyLoss, QueryTask

from ..conftest import InProcessFederation, connect_analyst, start_federation

pytestmark = pytest.mark.usefixtures("workdir")
CHARITIES = ["charity_north", "charity_south"]
PROJECT = "homelessness-outcomes"
FORMULA = "outcome = 'housed' ~ episode_type = 'rough_sleeping' + duration_days + start_year"
DECLARED = "episode_type, start_year, duration_days, outcome, region"


@pytest.fixture(scope="module")
def charities() -> Iterator[InProcessFederation]:
    fed = start_federation([*CHARITIES, "dfe"])
    yield fed
    fed.stop()


def pooled(workdir: Path, select: str) -> np.ndarray:
    """``select`` over both charities' rows after the contribution bound (3 rows a person), in DuckDB."""
    files = ", ".join(f"'{workdir / 'data' / n / 'support_episodes.parquet'}'" for n in CHARITIES)
    parts = []
    for name in CHARITIES:
        source = workdir / "data" / name / "support_episodes.parquet"
        parts.append(
            f"SELECT * FROM read_parquet('{source}') QUALIFY row_number() OVER "
            f"(PARTITION BY first_name, last_name, dob ORDER BY record_id, first_name, last_name, dob, sex, postcode, "
            f"region, episode_type, start_year, duration_days, outcome) <= 3"
        )
    assert files
    return np.asarray(duckdb.sql(select.replace("DATA", f"({' UNION ALL '.join(parts)})")).fetchall(), dtype=float)


def irls(x: np.ndarray, y: np.ndarray, logistic: bool, steps: int = 50) -> np.ndarray:
    """A plain pooled fit to compare with (iteratively reweighted least squares to convergence)."""
    x = np.column_stack([np.ones(len(y)), x])
    if not logistic:
        return np.linalg.solve(x.T @ x, x.T @ y)
    beta = np.zeros(x.shape[1])
    for _ in range(steps):
        mu = 1 / (1 + np.exp(-(x @ beta)))
        beta = beta + np.linalg.solve((x * (mu * (1 - mu))[:, None]).T @ x, x.T @ (y - mu))
    return beta


def test_logistic_without_noise_equals_the_pooled_fit(charities: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(charities.address, workdir)
    fit = client.fit(FORMULA, table="support_episodes", project=PROJECT, noiseless=True, iterations=10)
    rows = pooled(
        workdir,
        "SELECT CASE WHEN outcome = 'housed' THEN 1 ELSE 0 END, CASE WHEN episode_type = 'rough_sleeping' "
        "THEN 1 ELSE 0 END, duration_days, start_year FROM DATA",
    )
    expected = irls(rows[:, 1:], rows[:, 0], logistic=True)
    assert fit.labels == ("(intercept)", "episode_type = 'rough_sleeping'", "duration_days", "start_year")
    assert fit.rows == len(rows) and fit.noiseless and fit.pet == "secagg+dp, TEST MODE (no noise)"
    np.testing.assert_allclose(fit.coefficients, expected, atol=1e-4, rtol=0)
    assert fit.coefficients[1] < -0.5  # rough sleeping: fewer housed (the synthetic truth)
    # standard errors from the pooled information matrix at the estimate
    x = np.column_stack([np.ones(len(rows)), rows[:, 1:]])
    mu = 1 / (1 + np.exp(-(x @ expected)))
    errors = np.sqrt(np.diag(np.linalg.inv((x * (mu * (1 - mu))[:, None]).T @ x)))
    np.testing.assert_allclose(fit.std_errors, errors, rtol=1e-3)


def test_linear_without_noise_equals_the_pooled_fit(charities: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(charities.address, workdir)
    fit = client.fit(
        "duration_days ~ episode_type = 'hostel' + start_year",
        table="support_episodes",
        project=PROJECT,
        family="gaussian",
        noiseless=True,
    )
    rows = pooled(
        workdir, "SELECT duration_days, CASE WHEN episode_type = 'hostel' THEN 1 ELSE 0 END, start_year FROM DATA"
    )
    expected = irls(rows[:, 1:], rows[:, 0], logistic=False)
    np.testing.assert_allclose(fit.coefficients, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-6)
    x = np.column_stack([np.ones(len(rows)), rows[:, 1:]])
    residual = rows[:, 0] - x @ expected
    sigma2 = residual @ residual / (len(rows) - 3)
    np.testing.assert_allclose(fit.std_errors, np.sqrt(np.diag(sigma2 * np.linalg.inv(x.T @ x))), rtol=1e-4)


def test_with_noise_each_node_spends_rho_once_and_the_register_says_so(
    charities: InProcessFederation, workdir: Path
) -> None:
    client = connect_analyst(charities.address, workdir)
    spent = {r["dataset"]: r["rho_spent"] for r in client.budget().rows() if r["dataset"].endswith("support_episodes")}
    # (the demo's charities hold about 50 episodes: at this size the fit itself is mostly noise; the
    # accuracy of noisy fits is checked on larger data in tests/unit/test_model.py)
    fit = client.fit(FORMULA, table="support_episodes", project=PROJECT, rho=1.5, iterations=2)
    assert not fit.noiseless and fit.pet == "secagg+dp" and fit.iterations == 2
    assert {n: loss.rho for n, loss in fit.privacy_loss.items()} == {"charity_north": 1.5, "charity_south": 1.5}
    assert set(fit.noise_sd) == set(CHARITIES) and all(sd > 0 for sd in fit.noise_sd.values())
    # the noise swamps these rows: no standard errors rather than false ones (coverage where they are
    # given: tests/unit/test_model_coverage.py)
    assert fit.std_errors is None and str(fit.errors_withheld).startswith("the DP noise swamps the rows' information")
    after = {r["dataset"]: r["rho_spent"] for r in client.budget().rows() if r["dataset"].endswith("support_episodes")}
    for name in CHARITIES:
        assert after[f"{name}.support_episodes"] == pytest.approx(spent[f"{name}.support_episodes"] + 1.5)
        entries = [json.loads(line) for line in (charities.state / name / "register.jsonl").read_text().splitlines()]
        mine = [e for e in entries if e["kind"] == "query" and e["fields"]["query_id"] == fit.query_id]
        assert [e["fields"]["status"] for e in mine] == ["released"]  # once, not once per iteration
        assert all(e["fields"]["privacy_loss"] == {name: {"epsilon": 0.0, "rho": 1.5}} for e in mine)
        assert mine[0]["fields"]["query"].startswith("MODEL logistic outcome = 'housed' ~")
    public = client.register().entries("query")
    released = next(e for e in public if e["fields"]["query_id"] == fit.query_id)["fields"]
    assert released["status"] == "released" and released["pet"] == "secagg+dp"
    assert [row[0] for row in released["released"]["rows"]] == list(fit.labels)


def test_bad_models_cost_nothing(charities: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(charities.address, workdir)
    before = client.budget().rows()
    cases = [
        ("outcome = 'housed' ~ first_name", QueryError, "identifier"),
        ("outcome = 'housed' ~ nonsense", QueryError, "unknown column 'nonsense'"),
        ("outcome ~ duration_days", QueryError, "use an indicator such as outcome = 'housed'"),
        ("outcome = 'evicted' ~ duration_days", QueryError, "not a declared category"),
        ("outcome = 'housed' duration_days", BadInput, "response ~ term"),
    ]
    for formula, error, text in cases:
        with pytest.raises(error, match=text):
            client.fit(formula, table="support_episodes", project=PROJECT, rho=0.5)
    with pytest.raises(BadInput, match="`rho=R`"):
        client.fit(FORMULA, table="support_episodes", project=PROJECT)
    with pytest.raises(BadInput, match="two or more nodes"):
        client.fit("fsm = 1 ~ attainment8", table="pupils", project="deprivation-mental-health", rho=0.5)
    assert client.budget().rows() == before


def test_a_node_refuses_a_replayed_or_extra_iteration(charities: InProcessFederation, workdir: Path) -> None:
    """The coordinator can neither buy more releases than the plan's iterations nor drop a peer's mask."""
    coordinator = charities.coordinator
    plan = plan_model(FORMULA, "support_episodes", coordinator.catalogue(), iterations=2)
    task = QueryTask(
        query_id="replay-test", plan=plan, analyst="demo-analyst", project=PROJECT, loss=PrivacyLoss(rho=0.2)
    )
    north, south = (charities.agents[n].runtime for n in CHARITIES)
    before = north.ledger.lines()
    north.reserve(task)
    card = south.linkage.keys.card()

    def step(iteration: int, cards: tuple[LinkKeyCard, ...] = (card,)) -> ModelStep:
        return ModelStep(query_id=task.query_id, iteration=iteration, beta=(0.0,) * plan.width, cards=cards)

    with pytest.raises(PolicyRefused, match="key card of every other node"):
        north.model_step(step(0, ()))  # no mask with the peer: refused, and nothing spent
    assert north.ledger.lines() == before
    task = task.model_copy(update={"query_id": "replay-test-2"})
    north.reserve(task)
    assert north.model_step(step(0)) is None  # the first statistics wait in the outbox for the commit
    _, body = north.commit(task.query_id)
    header, blobs = unpack_blobs(body)
    assert ModelOutput.model_validate_json(header).noise_sd > 0 and len(blobs[0]) == 8 * plan.statistics
    with pytest.raises(PolicyRefused, match="answered already"):
        north.model_step(step(0))
    with pytest.raises(PolicyRefused, match="not one of its 2"):
        north.model_step(step(2))
    north.model_step(step(1))
    with pytest.raises(Fault, match="holds no reservation"):
        north.model_step(step(1))
    statuses = [e.fields["status"] for e in north.register.entries() if e.kind == "query" and "replay" in str(e.fields)]
    assert statuses == ["failed", "released"]
    spent = {line.dataset: line.committed for line in north.ledger.lines()}
    was = {line.dataset: line.committed for line in before}
    assert spent["charity_north.support_episodes"] == pytest.approx(was.get("charity_north.support_episodes", 0) + 0.2)


def test_no_nodes_statistics_cross_the_wire(workdir: Path) -> None:
    """Wire audit of a fit: each node's statistics (in the fixed point they are sent in) appear in no
    message, only masked; the positive control finds them in an unmasked vector."""
    from fedlink.node.data import NodeData
    from fedlink.node.engines.operators import model_statistics
    from fedlink.pets import secagg
    from fedlink.protocol import audit
    from fedlink.protocol.tasks import ModelRequest, ModelResult

    from ..conftest import node_config

    with audit.recording() as captured:
        fed = start_federation(CHARITIES)
        try:
            request = ModelRequest(
                formula=FORMULA, table="support_episodes", project=PROJECT, iterations=1, noiseless=True
            )
            _, body = fed.coordinator.fit_model(request, "demo-analyst")  # unsealed: no result key given
            fit = ModelResult.model_validate_json(body)
        finally:
            fed.stop()
    plan = plan_model(FORMULA, "support_episodes", fed.coordinator.catalogue(), iterations=1)
    messages = [data for _, data in captured]
    secret_words = []
    for name in CHARITIES:
        data = NodeData(node_config(name, "127.0.0.1:1"))
        table = data.tables["support_episodes"]
        exact = model_statistics(data.backend(table), plan, table, name, np.zeros(plan.width))
        words = secagg.masked(exact, name, [], "unmasked")  # the node's statistics as they would be sent bare
        # words of non-integer statistics (an integer's low 24 bits are zero in fixed point)
        distinctive = [words[i : i + 8] for i in range(0, len(words), 8) if words[i : i + 3] != b"\0\0\0"]
        assert len(distinctive) >= 4
        secret_words.append((words, distinctive))
        data.close()
    assert fit.noiseless and len(fit.coefficients) == plan.width
    assert len(messages) > 10
    for words, distinctive in secret_words:
        assert not any(words in m for m in messages)
        assert not any(word in m for m in messages for word in distinctive)
        assert any(word in b"header" + words for word in distinctive)  # positive control
