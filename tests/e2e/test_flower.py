"""fedlink on Flower's deployment runtime: a SuperLink and two SuperNodes (the charity's two branches)
as processes on loopback (insecure mode: tests only), fedlink's ServerApp and ClientApp run by
``flwr run``; a horizontal he+dp query gives the same answer as over fedlink's own gRPC transport,
budgets are spent on the nodes' own ledgers and the query is on the ServerApp's register."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..conftest import ROOT, connect_analyst, start_federation
from ..flower_deploy import FlowerDeployment
from .test_cli import assert_one_line_error, cli

if TYPE_CHECKING:
    from fedlink.flower import FlowerFederation

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'fedlink[flower]')")
pytestmark = pytest.mark.slow
NODES = ["charity_north", "charity_south"]
PROJECT = "homelessness-outcomes"
SQL = "SELECT region, COUNT(*) AS n, SUM(duration_days) AS days FROM support_episodes GROUP BY region"
#: How long one `fedlink ... --superlink` command may take before the test calls it hung: a Flower run
#: starts a ServerApp process and a ClientApp process per message, each importing fedlink's HE stack,
#: which on a loaded 2-core machine has taken more than the other commands' 120 s.
FLOWER_RUN_S = 300


def _register(flower: dict) -> Path:
    """The coordinator's transparency register on the SuperLink's side of the test deployment."""
    return Path(flower["root"]) / "coordinator" / "register.jsonl"


def _flower_options(flower: dict) -> list[str]:
    return [
        "--superlink", f"127.0.0.1:{flower['port']}", "--insecure", "--analyst", "demo-analyst",
        "--projects", str(ROOT / "coordinator" / "projects.toml"), "--register", str(_register(flower)),
    ]  # fmt: skip


def _over_flower(flower: dict) -> FlowerFederation:
    """The analyst's FlowerFederation on the deployment that _flower_options names, in test mode."""
    from fedlink.flower import FlowerFederation

    return FlowerFederation(
        f"127.0.0.1:{flower['port']}",
        analyst="demo-analyst",
        projects=ROOT / "coordinator" / "projects.toml",
        register=_register(flower),
        insecure=True,
        test_mode=True,
    )


@pytest.fixture(scope="module")
def flower(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    with FlowerDeployment(tmp_path_factory.mktemp("flower"), workdir, NODES, configs=ROOT) as deployment:
        yield {"port": deployment.port, "root": deployment.root, "state": deployment.state, "env": deployment.env}


def test_a_query_over_flower_gives_the_answer_of_fedlinks_own_transport(flower: dict, workdir: Path) -> None:
    register = _register(flower)
    over_flower = _over_flower(flower)
    flower_rows = over_flower.query(SQL, project=PROJECT, noiseless=True).rows()
    federation = start_federation(NODES)
    try:
        grpc_rows = connect_analyst(federation.address, workdir).query(SQL, project=PROJECT, noiseless=True).rows()
    finally:
        federation.stop()
    # counts (BFV) exactly; clamped sums (CKKS) to its approximation, as over fedlink's own transport
    assert [(r["region"], r["n"]) for r in flower_rows] == [(r["region"], r["n"]) for r in grpc_rows]
    assert sum(r["n"] for r in grpc_rows) > 20
    for mine, theirs in zip(flower_rows, grpc_rows, strict=True):
        assert mine["days"] == pytest.approx(theirs["days"], rel=1e-6, abs=1e-6)

    # the CLI over Flower: the same query with noise, as JSON
    done = cli(
        "query", SQL, "--project", PROJECT, "--epsilon", "0.5", "--format", "json", *_flower_options(flower),
        timeout=FLOWER_RUN_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    noisy = json.loads(done.stdout)
    assert noisy["pet"] == "he+dp" and not noisy["noiseless"]
    assert noisy["privacy_loss"] == {n: {"epsilon": 0.5, "rho": 0.0} for n in NODES}
    assert [r["region"] for r in noisy["rows"]] == [r["region"] for r in grpc_rows]
    for name in NODES:  # each node spent on its own ledger, and logged the release on its own register
        entries = [
            json.loads(line) for line in (Path(flower["state"]) / name / "register.jsonl").read_text().splitlines()
        ]
        released = [e for e in entries if e["kind"] == "query" and e["fields"]["status"] == "released"]
        assert len(released) == 2 and released[-1]["fields"]["query_id"] == noisy["query_id"]
    logged = [json.loads(line) for line in register.read_text().splitlines()]
    assert [e["fields"]["status"] for e in logged if e["kind"] == "query"] == ["released", "released"]


def test_a_refusal_over_flower_is_the_same_one_line_error_and_spends_nothing(flower: dict) -> None:
    before = _spent(flower)
    done = cli(
        "query", "SELECT first_name, COUNT(*) FROM support_episodes GROUP BY first_name", "--project", PROJECT,
        "--epsilon", "1", *_flower_options(flower), timeout=FLOWER_RUN_S,
    )  # fmt: skip
    assert_one_line_error(done, 2, "identifier")
    assert _spent(flower) == before
    logged = [json.loads(line) for line in _register(flower).read_text().splitlines()]
    refused = logged[-1]["fields"]  # refused by the ServerApp's planning, before any node was asked
    assert (refused["status"], refused["analyst"], refused["privacy_loss"]) == ("refused", "demo-analyst", {})
    assert refused["query"] == "SELECT first_name, COUNT(*) FROM support_episodes GROUP BY first_name"
    bad_pet = cli(
        "query", SQL, "--project", PROJECT, "--pet", "dp", "--epsilon", "1", *_flower_options(flower),
        timeout=FLOWER_RUN_S,
    )  # fmt: skip
    assert_one_line_error(bad_pet, 2, "--pet he+dp")
    assert _spent(flower) == before


def _spent(flower: dict) -> dict[str, tuple[float, float]]:
    """(committed, reserved) rho per node and dataset, from the nodes' own ledgers."""
    from fedlink.node.ledger import BudgetLedger

    spent = {}
    for path in sorted(Path(flower["state"]).glob("*/ledger.sqlite")):
        with BudgetLedger(path) as ledger:
            for line in ledger.lines():
                spent[f"{path.parent.name}/{line.dataset}"] = (line.committed, line.reserved)
    return spent


def test_insecure_mode_is_for_loopback_only() -> None:
    """A SuperLink anywhere but loopback needs TLS; no Flower process is started for the refusal."""
    from fedlink.errors import BadInput
    from fedlink.flower import FlowerFederation

    common = {"analyst": "demo-analyst", "projects": Path("p.toml"), "register": Path("r.jsonl")}
    with pytest.raises(BadInput, match=r"only for tests on loopback, not 10\.0\.0\.7"):
        FlowerFederation("10.0.0.7:9093", insecure=True, **common)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="over TLS"):
        FlowerFederation("10.0.0.7:9093", **common)  # type: ignore[arg-type]
    assert FlowerFederation("[::1]:9093", insecure=True, **common).insecure  # type: ignore[arg-type]


def test_a_model_fitted_over_flower_matches_the_pooled_fit_and_registers_its_loss(flower: dict, workdir: Path) -> None:
    """Newton-Raphson rounds over Flower's Grid on masked statistics: without noise the coefficients
    equal fedlink's own transport's and a pooled plaintext fit (1e-4); with noise each node commits
    its rho once and registers it."""
    import numpy as np

    from ..integration.test_models import FORMULA, irls, pooled

    over_flower = _over_flower(flower)
    fit = over_flower.fit(FORMULA, table="support_episodes", project=PROJECT, noiseless=True, iterations=6)
    rows = pooled(
        workdir,
        "SELECT CASE WHEN outcome = 'housed' THEN 1 ELSE 0 END, CASE WHEN episode_type = 'rough_sleeping' "
        "THEN 1 ELSE 0 END, duration_days, start_year FROM DATA",
    )
    np.testing.assert_allclose(fit.coefficients, irls(rows[:, 1:], rows[:, 0], logistic=True), atol=1e-4, rtol=0)
    federation = start_federation(NODES)
    try:
        client = connect_analyst(federation.address, workdir)
        over_grpc = client.fit(FORMULA, table="support_episodes", project=PROJECT, noiseless=True, iterations=6)
    finally:
        federation.stop()
    np.testing.assert_allclose(fit.coefficients, over_grpc.coefficients, rtol=1e-9, atol=1e-12)
    assert fit.std_errors == pytest.approx(over_grpc.std_errors, rel=1e-9)

    noisy = over_flower.fit(FORMULA, table="support_episodes", project=PROJECT, rho=1.5, iterations=1)
    assert noisy.pet == "secagg+dp" and set(noisy.noise_sd) == set(NODES)
    for name in NODES:
        entries = [
            json.loads(line) for line in (Path(flower["state"]) / name / "register.jsonl").read_text().splitlines()
        ]
        mine = [e["fields"] for e in entries if e["kind"] == "query" and e["fields"]["query_id"] == noisy.query_id]
        loss = {name: {"epsilon": 0.0, "rho": 1.5}}
        assert [(f["status"], f["privacy_loss"]) for f in mine] == [("released", loss)]
