"""The privacy layer over a real federation: noise added by the nodes, intervals, budgets reserved
and committed in each node's own ledger (also under concurrency), projects approved by nodes,
test mode only where everyone allows it, and every use on the transparency registers."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

import fedlink
from fedlink.errors import AccessDenied, BadInput, BudgetExhausted, Fault, PolicyRefused
from fedlink.language.sql import plan_query
from fedlink.node.config import Approval
from fedlink.node.runtime import NodeRuntime
from fedlink.plan.catalogue import FederationCatalogue, NodeStatus
from fedlink.protocol.tasks import PrivacyLoss, QueryTask
from fedlink.transparency.register import verify_register

from ..conftest import InProcessFederation, connect_analyst, node_config, start_federation

pytestmark = pytest.mark.usefixtures("workdir")
CHARITIES = ["charity_north", "charity_south"]
PROJECT = "homelessness-outcomes"
SQL = "SELECT region, COUNT(*) AS n, AVG(duration_days) AS mean FROM support_episodes GROUP BY region"


def true_counts(workdir: Path) -> dict[str, int]:
    files = [str(workdir / "data" / n / "support_episodes.parquet") for n in CHARITIES]
    return dict(duckdb.sql(f"SELECT region, COUNT(*) FROM read_parquet({files}) GROUP BY 1").fetchall())


def test_dp_answer_has_noise_intervals_and_provenance(federation: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(federation.address, workdir)
    res = client.query(SQL, project=PROJECT, epsilon=2.0)
    assert not res.raw.noiseless and res.raw.pet == "he+dp"
    assert res.privacy_loss == {n: {"epsilon": 2.0, "rho": 0.0} for n in CHARITIES}
    doc = res.to_dict()
    for row in doc["rows"]:
        cell = row["n"]
        if cell["suppressed"]:
            assert cell["value"] is None
            continue
        assert cell["lower"] < cell["upper"]  # noise was added, so the interval has width
        assert cell["lower"] <= cell["value"] <= cell["upper"] and cell["value"] % 5 == 0  # rounded to 5
        mean = row["mean"]
        assert mean["value"] is None or 1 <= mean["lower"] <= mean["value"] <= mean["upper"] <= 1095
    # repeated releases differ: each draw of noise is fresh (ten draws all rounding to one value would
    # need the Laplace noise to stay within one rounding bucket ten times: below 1e-4)
    largest = max(true_counts(workdir).items(), key=lambda item: item[1])[0]
    sql = f"SELECT COUNT(*) AS n FROM support_episodes WHERE region = '{largest}'"
    draws = {client.query(sql, project=PROJECT, epsilon=0.5).rows()[0]["n"] for _ in range(10)}
    assert len(draws) > 1, draws
    assert any("95%" in note for note in res.notes)


def test_zcdp_query_spends_rho(federation: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(federation.address, workdir)
    res = client.query("SELECT COUNT(*) FROM pupils", project="deprivation-mental-health", rho=0.5)
    assert res.privacy_loss == {"dfe": {"epsilon": 0.0, "rho": 0.5}}
    lines = {(line["node"], line["dataset"], line["project"]): line for line in client.budget().rows()}
    assert lines[("dfe", "dfe.pupils", "deprivation-mental-health")]["rho_spent"] >= 0.5


def test_queries_must_declare_a_project_and_a_privacy_loss(federation: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(federation.address, workdir)
    with pytest.raises(BadInput, match="declare the query's privacy loss"):
        client.query(SQL, project=PROJECT)
    with pytest.raises(BadInput, match="every query belongs to a project"):
        client.query(SQL, epsilon=1.0)
    with pytest.raises(BadInput, match="unknown project 'nope'"):
        client.query(SQL, project="nope", epsilon=1.0)
    with pytest.raises(BadInput, match="give `epsilon` or `rho`, not both"):
        client.query(SQL, project=PROJECT, epsilon=1.0, rho=1.0)
    with pytest.raises(PolicyRefused, match=r"not registered for dataset dfe\.pupils"):
        client.query("SELECT COUNT(*) FROM pupils", project=PROJECT, epsilon=1.0)


def test_noiseless_needs_test_mode_at_the_coordinator_and_at_every_node(workdir: Path) -> None:
    fed = start_federation(CHARITIES, test_mode=False)
    try:
        with pytest.raises(BadInput, match="need a federation in test mode"):
            connect_analyst(fed.address, workdir).query(SQL, project=PROJECT, noiseless=True)
    finally:
        fed.stop()
    fed = start_federation(["charity_north"])
    try:
        strict = node_config("charity_south", fed.address, fed.state)
        strict = strict.model_copy(update={"privacy": strict.privacy.model_copy(update={"allow_test_mode": False})})
        fed.start_node("charity_south", config=strict)
        with pytest.raises(PolicyRefused, match="node 'charity_south' refuses: it does not allow noiseless test mode"):
            connect_analyst(fed.address, workdir).query(SQL, project=PROJECT, noiseless=True)
        budget = {(r["node"], r["dataset"]): r for r in connect_analyst(fed.address, workdir).budget().rows()}
        assert budget[("charity_north", "charity_north.support_episodes")]["rho_spent"] == 0  # aborted, released
    finally:
        fed.stop()


def _with_approval(fed: InProcessFederation, name: str, approval: Approval | None) -> None:
    config = node_config(name, fed.address, fed.state)
    approvals = (approval,) if approval else ()
    fed.start_node(name, config=config.model_copy(update={"approvals": approvals}))


def test_the_node_is_the_final_authority(workdir: Path) -> None:
    fed = start_federation(["charity_north"])
    try:
        _with_approval(fed, "charity_south", None)
        client = connect_analyst(fed.address, workdir)
        with pytest.raises(PolicyRefused, match="node 'charity_south' refuses: project 'homelessness-outcomes' is not"):
            client.query(SQL, project=PROJECT, epsilon=1.0)
        lines = {r["node"]: r for r in client.budget().rows()}
        assert lines["charity_north"]["rho_spent"] == 0, "the other node's reservation was released"
        node_log = fed.agents["charity_south"].runtime.register.entries()
        assert node_log[-1].fields["status"] == "refused" and "not approved" in node_log[-1].fields["reason"]
    finally:
        fed.stop()
    fed = start_federation(["charity_north"])
    try:
        _with_approval(fed, "charity_south", Approval(project=PROJECT, rho=5.0, analysts=("someone-else",)))
        with pytest.raises(PolicyRefused, match="analyst 'demo-analyst' is not approved"):
            connect_analyst(fed.address, workdir).query(SQL, project=PROJECT, epsilon=1.0)
    finally:
        fed.stop()


def test_budget_exhaustion_and_concurrent_queries_never_overspend(workdir: Path) -> None:
    fed = start_federation(["charity_north"])
    try:
        _with_approval(fed, "charity_south", Approval(project=PROJECT, rho=1.0))
        client = connect_analyst(fed.address, workdir)
        client.query(SQL, project=PROJECT, epsilon=1.0)  # charged rho 0.5: 0.5 of charity_south's 1.0 left

        def attempt(_: int) -> str:
            try:
                client.query("SELECT COUNT(*) FROM support_episodes", project=PROJECT, rho=0.1)
                return "ok"
            except BudgetExhausted as exc:
                return exc.message

        with ThreadPoolExecutor(max_workers=12) as pool:
            outcomes = list(pool.map(attempt, range(24)))
        assert outcomes.count("ok") == 5, outcomes
        refusal = next(o for o in outcomes if o != "ok")
        assert (
            "budget exhausted for project 'homelessness-outcomes' on dataset 'charity_south.support_episodes'"
            in refusal
        )
        # One currency: the exhausted budget is not there to be spent again under the other measure.
        for loss in ({"epsilon": 0.05}, {"rho": 0.01}):
            with pytest.raises(BudgetExhausted, match="rho 0 left"):
                client.query("SELECT COUNT(*) FROM support_episodes", project=PROJECT, **loss)
        lines = {r["node"]: r for r in client.budget().rows()}
        assert lines["charity_south"]["rho_spent"] == pytest.approx(1.0)
        assert lines["charity_south"]["rho_remaining"] == pytest.approx(0.0)
        assert lines["charity_south"]["max_epsilon"] == pytest.approx(0.0)
        assert lines["charity_north"]["rho_spent"] == pytest.approx(1.0)  # refused queries cost it nothing
    finally:
        fed.stop()


CRASHING_NODE = """
import os, sys
from fedlink.node.config import NodeConfig
from fedlink.node.runtime import NodeRuntime
from fedlink.protocol.tasks import QueryTask
runtime = NodeRuntime(NodeConfig.model_validate_json(sys.argv[1]))
runtime.reserve(QueryTask.model_validate_json(sys.argv[2]))
os._exit(9)  # the node dies between reserve and commit
"""


def test_a_crash_between_reserve_and_commit_releases_the_budget_on_restart(workdir: Path, tmp_path: Path) -> None:
    config = node_config("charity_north", "127.0.0.1:1", tmp_path)
    runtime = NodeRuntime(config)
    plan = plan_query(
        "SELECT COUNT(*) FROM support_episodes",
        FederationCatalogue(nodes=(NodeStatus(node="charity_north", live=True, catalogue=runtime.catalogue),)),
    )
    runtime.close()
    task = QueryTask(query_id="q1", plan=plan, analyst="demo-analyst", project=PROJECT, loss=PrivacyLoss(epsilon=2.0))
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_NODE, config.model_dump_json(), task.model_dump_json()], capture_output=True
    )
    assert crashed.returncode == 9, crashed.stderr.decode()
    restarted = NodeRuntime(config)
    try:
        assert restarted.ledger.recovered == 1
        line = restarted.budget().lines[0]
        assert line.reserved == 0 and line.spent == 0 and line.remaining == 5.0
        assert restarted.register.entries()[-1].kind == "recovery"
    finally:
        restarted.close()


def test_every_use_is_on_the_registers_and_they_verify(workdir: Path) -> None:
    fed = start_federation(CHARITIES)
    try:
        client = connect_analyst(fed.address, workdir)
        res = client.query(SQL, project=PROJECT, epsilon=1.0, pet="dp")  # the coordinator sees what it releases
        with pytest.raises(AccessDenied):
            fedlink.Federation(fed.address, node_config("dfe", fed.address).tls_files()).query(
                SQL, project=PROJECT, epsilon=1.0
            )
    finally:
        fed.stop()
    coordinator_log = fed.state / "coordinator" / "register.jsonl"
    entries = [e for e in fed.coordinator.register.entries() if e.kind == "query"]
    assert entries[-1].fields["status"] == "released" and entries[-1].fields["query_id"] == res.raw.query_id
    assert entries[-1].fields["privacy_loss"] == {n: {"epsilon": 1.0, "rho": 0.0} for n in CHARITIES}
    assert entries[-1].fields["released"]["rows"][0][0] == "North East"
    projects = [e.fields["id"] for e in fed.coordinator.register.entries() if e.kind == "project"]
    assert PROJECT in projects
    for party in ("coordinator", *CHARITIES):
        assert verify_register(fed.state / party / "register.jsonl").ok
    node_entries = [e for e in fedlink_register(fed.state / "charity_north" / "register.jsonl") if e.kind == "query"]
    assert node_entries[-1].fields["released"] is None  # a node's register reveals no data
    lines = coordinator_log.read_text().splitlines()
    edited = next(i for i, line in enumerate(lines) if '"status":"released"' in line)
    lines[edited] = lines[edited].replace('"epsilon":1.0', '"epsilon":0.1')  # someone hides what was spent
    coordinator_log.write_text("\n".join(lines) + "\n")
    report = verify_register(coordinator_log)
    assert not report.ok and any(f"line {edited + 1}" in p for p in report.problems)


def fedlink_register(path: Path) -> list:
    from fedlink.transparency.register import Register

    return Register(path, path.parent.name).entries()


def test_a_reservation_never_executed_is_released_after_its_ttl(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedlink.node import runtime as node_runtime

    runtime = NodeRuntime(node_config("charity_north", "127.0.0.1:1", tmp_path))
    try:
        plan = plan_query(
            "SELECT COUNT(*) FROM support_episodes",
            FederationCatalogue(nodes=(NodeStatus(node="charity_north", live=True, catalogue=runtime.catalogue),)),
        )

        def task(query_id: str) -> QueryTask:
            return QueryTask(
                query_id=query_id, plan=plan, analyst="demo-analyst", project=PROJECT, loss=PrivacyLoss(epsilon=3.0)
            )

        runtime.reserve(task("orphan"))  # the coordinator dies before execute or abort
        assert runtime.budget().lines[0].reserved == 4.5  # epsilon 3 is rho 4.5
        monkeypatch.setattr(node_runtime, "RESERVATION_TTL_S", 0.0)
        runtime.reserve(task("next"))  # any later reservation sweeps the expired one first
        line = runtime.budget().lines[0]
        assert line.reserved == 4.5 and line.spent == 0.0  # only "next" is held now
        expired = [e for e in runtime.register.entries() if e.kind == "query" and e.fields["query_id"] == "orphan"]
        assert "expired" in expired[-1].fields["reason"]
    finally:
        runtime.close()


def test_a_node_whose_register_cannot_be_appended_never_commits(workdir: Path) -> None:
    """The probe's truncated register: the node used to commit budget on every query, then fail, so its
    spends appeared on no register. Now it checks its register as it prepares, and records the query there
    before it may commit, so it refuses before the coordinator decides."""
    fed = start_federation(CHARITIES, test_mode=False)
    try:
        client = connect_analyst(fed.address, workdir)
        client.query(SQL, project=PROJECT, epsilon=1.0)  # a first query leaves entries to cut
        log = fed.state / "charity_south" / "register.jsonl"
        lines = log.read_bytes().splitlines(keepends=True)
        log.write_bytes(b"".join(lines[:-1]))  # cut the last entry: the head file no longer matches
        with pytest.raises(Fault, match=r"node 'charity_south' failed during the query .*register.*nothing was spent"):
            client.query(SQL, project=PROJECT, epsilon=1.0)
        lines = {r["node"]: r for r in client.budget().rows()}
        for node in CHARITIES:  # only the first query is paid for, at either node
            assert lines[node]["rho_spent"] == pytest.approx(0.5) and lines[node]["rho_reserved"] == 0
    finally:
        fed.stop()
