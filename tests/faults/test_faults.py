"""Fault injection on a federation of real processes: a node killed (SIGKILL) or stalled (SIGSTOP) while it
reserves, executes or commits, and the coordinator killed mid-query, before and after its decision.

For each: budgets (read from the nodes' own ledgers once every party has stopped), registers (every
party's outcome for the query, by query id) and results (what the analyst can collect) are as the
two-phase protocol promises: a query that ends before the decision costs nothing anywhere and every
register says it failed; a query decided to commit is paid exactly once at every node and its result
is never lost, completing when the missing party is back. Faults are injected at named points of the
parties' own code (:mod:`fedlink.faults`), so each lands exactly where it should.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fedlink
from fedlink.errors import Fault, FedlinkError, ResultPending
from fedlink.faults import ENV
from fedlink.node.ledger import BudgetLedger
from fedlink.transparency.register import Register
from fedlink_tools.demo import LocalFederation

from ..conftest import ANALYST, ROOT

pytestmark = pytest.mark.slow
CHARITIES = ["charity_north", "charity_south"]
PROJECT = "homelessness-outcomes"
SQL = "SELECT outcome, COUNT(*) AS n FROM support_episodes GROUP BY outcome"
#: The coordinator's query timeout here: short, so that a stalled node is given up on quickly.
TIMEOUT_S = 4.0
#: Generous bound on waiting for a party to settle (nodes reconnect with back-off up to 10 s).
SETTLE_S = 60.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test federation's configs with a short query timeout."""
    target = tmp_path_factory.mktemp("fault-configs")
    shutil.copytree(ROOT / "nodes", target / "nodes")
    shutil.copytree(ROOT / "coordinator", target / "coordinator")
    config = target / "coordinator" / "coordinator.toml"
    text = config.read_text()
    assert "query_timeout_s = 30.0" in text
    config.write_text(text.replace("query_timeout_s = 30.0", f"query_timeout_s = {TIMEOUT_S}"))
    return target


class Faulty:
    """A coordinator and the two charity nodes as processes, some started with failpoints armed."""

    def __init__(
        self, workdir: Path, root: Path, tmp: Path, failpoints: dict[str, str], nodes: list[str] = CHARITIES
    ) -> None:
        self.home = tmp / "federation"
        self.home.mkdir()
        for shared in ("pki", "data"):
            (self.home / shared).symlink_to(workdir / shared)
        self.failpoints = dict(failpoints)
        self.nodes = nodes
        self.fed = LocalFederation(workdir=self.home, root=root, nodes=nodes, launcher=self._launcher)
        self.results = tmp / "results"

    def _launcher(self, party: str) -> tuple[list[str], dict[str, str]]:
        armed = self.failpoints.pop(party, None)  # a restarted party runs without it
        return [], ({ENV: armed} if armed else {})

    def start(self) -> None:
        self.fed.start()
        self.fed.listen = self.fed.address  # a restarted coordinator comes back where the nodes look for it

    def analyst(self) -> fedlink.Federation:
        pki = self.home / "pki"
        return fedlink.connect(
            self.fed.address,
            cert=pki / f"analyst-{ANALYST}.crt",
            key=pki / f"analyst-{ANALYST}.key",
            ca=pki / "ca.crt",
            timeout_s=60,
            results_dir=self.results,
        )

    def pid(self, party: str) -> int:
        return self.fed.processes[party].pid

    def killed(self, party: str) -> None:
        """Wait for a party that killed itself, and forget it."""
        assert self.fed.processes.pop(party).wait(SETTLE_S) == -signal.SIGKILL

    def stopped(self, party: str) -> None:
        """Wait until a party has stopped itself (SIGSTOP)."""
        status = f"/proc/{self.pid(party)}/stat"
        wait_for(lambda: Path(status).read_text().split(") ")[1].startswith("T"), f"{party} to stop")

    def register(self, party: str) -> Register:
        return Register(self.fed.state / party / "register.jsonl", party)

    def statuses(self, party: str, query_id: str) -> list[str]:
        return [
            str(e.fields["status"])
            for e in self.register(party).entries()
            if e.kind == "query" and e.fields.get("query_id") == query_id
        ]

    def spent(self, party: str, table: str = "support_episodes") -> tuple[float, float, int]:
        """(committed, reserved, committed queries) on one of a node's tables, from its own ledger."""
        with BudgetLedger(self.fed.state / party / "ledger.sqlite") as ledger:
            lines = [line for line in ledger.lines() if line.dataset == f"{party}.{table}"]
        return (lines[0].committed, lines[0].reserved, lines[0].queries) if lines else (0.0, 0.0, 0)

    def stop(self) -> None:
        for process in self.fed.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a stopped party cannot handle SIGTERM
        self.fed.stop()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after :data:`SETTLE_S` (a bound on a hung test, not a timing)."""
    deadline = time.monotonic() + SETTLE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def faulty(workdir: Path, root: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Faulty]:
    failpoints, nodes = request.param if isinstance(request.param, tuple) else (request.param, CHARITIES)
    federation = Faulty(workdir, root, tmp_path, failpoints, nodes)
    try:
        federation.start()
        yield federation
    finally:
        federation.stop()


def last_query(client: fedlink.Federation) -> str:
    return client.results()[-1]["query_id"]


def nothing_spent(faulty: Faulty, query_id: str) -> None:
    """Every party stopped: no budget committed or held, and every register says the query failed."""
    for node in CHARITIES:
        assert faulty.spent(node)[:2] == (0.0, 0.0), node
        assert "released" not in faulty.statuses(node, query_id), node
    assert faulty.statuses("coordinator", query_id)[-1] in ("failed", "refused")


def paid_once(faulty: Faulty, query_id: str) -> None:
    """Every party stopped: each node committed the query's rho (epsilon 1 -> 0.5) exactly once, and every
    register ends with it released."""
    for node in CHARITIES:
        assert faulty.spent(node) == (pytest.approx(0.5), 0.0, 1), node
        assert faulty.statuses(node, query_id).count("released") == 1, node
    assert faulty.statuses("coordinator", query_id)[-1] == "released"


@pytest.mark.parametrize("faulty", [{"charity_south": "node.reserve=kill"}], indirect=True)
def test_a_node_killed_while_reserving_costs_nobody_anything(faulty: Faulty) -> None:
    client = faulty.analyst()
    with pytest.raises(FedlinkError, match="charity_south"):
        client.query(SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    faulty.killed("charity_south")
    faulty.fed.start_node("charity_south")  # its ledger releases the dead process's reservation
    faulty.stop()
    nothing_spent(faulty, query_id)


@pytest.mark.parametrize("faulty", [{"charity_south": "node.execute=stop"}], indirect=True)
def test_a_node_stalled_past_the_deadline_never_executes_the_query(faulty: Faulty) -> None:
    """The probe's stalled node: it resumes after the query has failed, and must neither execute nor spend."""
    client = faulty.analyst()
    started = time.time()
    with pytest.raises(Fault, match="nothing was spent"):
        client.query(SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    faulty.stopped("charity_south")
    wait_for(lambda: time.time() > started + TIMEOUT_S + 1, "the query's deadline to pass")
    os.kill(faulty.pid("charity_south"), signal.SIGCONT)
    wait_for(lambda: "failed" in faulty.statuses("charity_south", query_id), "the resumed node to refuse the task")
    faulty.stop()
    nothing_spent(faulty, query_id)
    assert faulty.statuses("charity_south", query_id) == ["failed"]  # refused the late task, nothing more


@pytest.mark.parametrize("faulty", [{"charity_south": "node.prepare=stop"}], indirect=True)
def test_a_node_stalled_after_preparing_is_aborted_and_releases(faulty: Faulty) -> None:
    client = faulty.analyst()
    with pytest.raises(Fault, match="nothing was spent"):
        client.query(SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    faulty.stopped("charity_south")
    os.kill(faulty.pid("charity_south"), signal.SIGCONT)  # it now reads the coordinator's abort
    wait_for(lambda: faulty.statuses("charity_south", query_id)[-1:] == ["failed"], "the abort to reach the node")
    faulty.stop()
    nothing_spent(faulty, query_id)
    assert faulty.statuses("charity_south", query_id) == ["failed"]  # released by the abort


@pytest.mark.parametrize("faulty", [{"charity_south": "node.commit=kill"}], indirect=True)
def test_a_node_killed_at_commit_delivers_its_answer_when_it_is_back(faulty: Faulty) -> None:
    client = faulty.analyst()
    with pytest.raises(ResultPending, match="fedlink result get") as pending:
        client.query(SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    assert query_id in str(pending.value)
    faulty.killed("charity_south")
    faulty.fed.start_node("charity_south")  # it rejoins; the coordinator asks for what it owes
    result = client.result(query_id)
    assert isinstance(result, fedlink.Result)
    assert result.raw.query_id == query_id and set(result.privacy_loss) == set(CHARITIES)
    assert any(row["n"] is not None for row in result.rows())
    faulty.stop()
    paid_once(faulty, query_id)
    assert faulty.statuses("coordinator", query_id) == ["pending", "released"]


@pytest.mark.parametrize("faulty", [{"charity_south": "node.commit=stop"}], indirect=True)
def test_a_node_stalled_at_commit_completes_the_result_when_it_resumes(faulty: Faulty) -> None:
    client = faulty.analyst()
    with pytest.raises(ResultPending):
        client.query(SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    faulty.stopped("charity_south")
    with pytest.raises(ResultPending, match="charity_south"):
        client.result(query_id)  # still stalled: still pending, nothing lost
    os.kill(faulty.pid("charity_south"), signal.SIGCONT)
    result = client.result(query_id)
    assert isinstance(result, fedlink.Result) and result.raw.query_id == query_id
    assert client.result(query_id).rows() == result.rows()  # collected again: the same stored result
    faulty.stop()
    paid_once(faulty, query_id)


@pytest.mark.parametrize("faulty", [{"coordinator": "coordinator.decided=kill"}], indirect=True)
def test_a_coordinator_killed_after_its_decision_completes_the_query_on_restart(faulty: Faulty) -> None:
    client = faulty.analyst()
    with pytest.raises(Fault):
        client.query(SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    faulty.killed("coordinator")
    faulty.fed.start_coordinator()  # same address; the nodes reconnect and hand over their prepared answers
    wait_for(lambda: "released" in faulty.statuses("coordinator", query_id), "the restarted coordinator to complete")
    result = client.result(query_id)
    assert isinstance(result, fedlink.Result) and result.raw.query_id == query_id
    faulty.stop()
    paid_once(faulty, query_id)


@pytest.mark.parametrize("faulty", [{"coordinator": "coordinator.reserved=kill"}], indirect=True)
def test_a_coordinator_killed_before_its_decision_costs_nothing(faulty: Faulty) -> None:
    client = faulty.analyst()
    with pytest.raises(Fault):
        client.query(SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    faulty.killed("coordinator")
    faulty.fed.start_coordinator()  # it records the query as failed; the nodes released when it vanished
    with pytest.raises(Fault, match="failed"):
        client.result(query_id)
    faulty.stop()
    nothing_spent(faulty, query_id)


#: The homelessness project's nodes: a linked query runs its chain over both charities (a union) and DWP.
LINKED_NODES = [*CHARITIES, "dwp", "nhs"]
LINKED_SQL = (
    "SELECT dwp.claims.employment, COUNT(*) AS n FROM support_episodes LINK dwp.claims GROUP BY dwp.claims.employment"
)
#: What a linked query at epsilon 1 costs each node of its chain, in rho, on the table it reads there.
CHAIN = {"charity_north": "support_episodes", "charity_south": "support_episodes", "dwp": "claims"}


def linked_spent(faulty: Faulty) -> dict[str, tuple[float, float, int]]:
    return {node: faulty.spent(node, table) for node, table in CHAIN.items()}


@pytest.mark.parametrize("faulty", [({"charity_south": "node.prepare=kill"}, LINKED_NODES)], indirect=True)
def test_a_node_killed_mid_chain_costs_the_chain_nothing(faulty: Faulty) -> None:
    """The probe's node killed mid linked query: the nodes before it had already run their steps."""
    client = faulty.analyst()
    client.link(PROJECT)
    with pytest.raises(FedlinkError, match="charity_south"):
        client.query(LINKED_SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    faulty.killed("charity_south")
    faulty.fed.start_node("charity_south")  # it rejoins holding a prepared answer; the coordinator aborts it
    wait_for(lambda: faulty.statuses("charity_south", query_id) == ["failed"], "the abort to reach the node")
    faulty.stop()
    assert linked_spent(faulty) == {node: (0.0, 0.0, 0) for node in CHAIN}
    assert faulty.statuses("charity_north", query_id) == ["failed"]  # its step ran, then the abort released it
    assert faulty.statuses("coordinator", query_id)[-1] == "failed"


@pytest.mark.parametrize("faulty", [({"dwp": "node.commit=kill"}, LINKED_NODES)], indirect=True)
def test_the_last_node_of_a_chain_killed_at_commit_delivers_the_cells_when_back(faulty: Faulty) -> None:
    client = faulty.analyst()
    client.link(PROJECT)
    with pytest.raises(ResultPending, match="dwp"):
        client.query(LINKED_SQL, project=PROJECT, epsilon=1.0)
    query_id = last_query(client)
    faulty.killed("dwp")
    faulty.fed.start_node("dwp")
    result = client.result(query_id)
    assert isinstance(result, fedlink.Result) and result.raw.query_id == query_id
    assert [row["employment"] for row in result.rows()] == ["employed", "unemployed", "inactive"]
    faulty.stop()
    assert linked_spent(faulty) == {node: (pytest.approx(0.5), 0.0, 1) for node in CHAIN}
    assert faulty.statuses("coordinator", query_id) == ["pending", "released"]
