"""The privacy-budget ledger: arithmetic, refusals, concurrency across threads and processes, crash recovery."""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import shutil
import signal
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fedlink.errors import BadInput, BudgetExhausted, Fault
from fedlink.node.ledger import TOLERANCE, BudgetLedger, BudgetLine, Spend

SPAWN = multiprocessing.get_context("spawn")
#: Generous: a spawned child imports fedlink before it can signal; this only bounds a hung test.
CHILD_TIMEOUT_S = 60


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[BudgetLedger]:
    with BudgetLedger(tmp_path / "node" / "budget.sqlite") as opened:
        yield opened


def test_epsilon_and_rho_are_charged_in_one_currency_rho_plus_half_epsilon_squared(ledger: BudgetLedger) -> None:
    cap = 1.0
    ledger.reserve("q1", "p", "dfe.pupils", Spend(epsilon=0.5, rho=0.125), cap)  # 0.125 + 0.5^2 / 2 = 0.25
    assert ledger.remaining("p", "dfe.pupils", cap) == 0.75
    ledger.commit("q1")
    ledger.reserve("q2", "p", "dfe.pupils", Spend(epsilon=1.0), cap)  # 0.5
    assert ledger.remaining("p", "dfe.pupils", cap) == 0.25
    ledger.release("q2")
    assert ledger.remaining("p", "dfe.pupils", cap) == 0.75
    ledger.reserve("q3", "p", "dfe.pupils", Spend(rho=0.375), cap)
    assert ledger.lines() == [BudgetLine("p", "dfe.pupils", 0.25, 0.375, queries=1)]
    ledger.commit("q3")
    assert ledger.remaining("p", "dfe.pupils", cap) == 0.375
    assert ledger.lines() == [BudgetLine("p", "dfe.pupils", 0.625, 0.0, queries=2)]


def test_an_exhausted_epsilon_budget_cannot_be_spent_again_as_rho(ledger: BudgetLedger) -> None:
    """The probe's averaging attack: once repeats of an epsilon query exhaust the cap, the same query
    declared in rho is refused too; there is one budget, not one per measure."""
    cap = 2.0
    for i in range(4):
        ledger.reserve(f"eps{i}", "p", "d", Spend(epsilon=1.0), cap)
        ledger.commit(f"eps{i}")
    with pytest.raises(BudgetExhausted, match=r"rho 0 left, epsilon 1 \(rho 0\.5 in all\) asked"):
        ledger.reserve("eps4", "p", "d", Spend(epsilon=1.0), cap)
    with pytest.raises(BudgetExhausted, match=r"rho 0 left, rho 0\.1 asked"):
        ledger.reserve("rho0", "p", "d", Spend(rho=0.1), cap)
    assert ledger.remaining("p", "d", cap) == 0.0


def test_a_dataset_cap_bounds_the_sum_over_all_projects(ledger: BudgetLedger) -> None:
    ledger.reserve("a1", "alpha", "nhs.diagnoses", Spend(rho=3.0), 5.0, dataset_cap=4.0)
    ledger.commit("a1")
    ledger.reserve("b1", "beta", "nhs.diagnoses", Spend(rho=0.5), 5.0, dataset_cap=4.0)  # held, not yet spent
    assert ledger.remaining("beta", "nhs.diagnoses", 5.0) == 4.5  # its own cap alone
    assert ledger.remaining("beta", "nhs.diagnoses", 5.0, dataset_cap=4.0) == 0.5
    with pytest.raises(BudgetExhausted, match=r"on dataset 'nhs.diagnoses' across all projects .*rho 0\.5 left"):
        ledger.reserve("b2", "beta", "nhs.diagnoses", Spend(rho=1.0), 5.0, dataset_cap=4.0)
    ledger.reserve("other", "beta", "nhs.prescriptions", Spend(rho=1.0), 5.0, dataset_cap=4.0)  # another dataset
    ledger.release("b1")
    ledger.reserve("b2", "beta", "nhs.diagnoses", Spend(rho=1.0), 5.0, dataset_cap=4.0)


def test_budgets_are_kept_per_project_and_dataset_and_lines_are_sorted(ledger: BudgetLedger) -> None:
    cap = 1.0
    ledger.reserve("q1", "zeta", "dwp.claims", Spend(rho=0.5), cap)
    ledger.reserve("q1", "zeta", "dfe.pupils", Spend(rho=0.25), cap)
    ledger.reserve("q2", "alpha", "dfe.pupils", Spend(rho=1.0), cap)
    ledger.reserve("q3", "alpha", "dwp.claims", Spend(rho=0.125), cap)
    ledger.commit("q1")  # both datasets of q1
    ledger.release("q3")
    assert ledger.remaining("zeta", "dfe.pupils", cap) == 0.75
    assert ledger.remaining("alpha", "dfe.pupils", cap) == 0.0
    assert ledger.remaining("alpha", "dwp.claims", cap) == 1.0
    assert ledger.remaining("nobody", "dfe.pupils", cap) == 1.0
    assert ledger.lines() == [
        BudgetLine("alpha", "dfe.pupils", 0.0, 1.0, queries=0),
        BudgetLine("alpha", "dwp.claims", 0.0, 0.0, queries=0),  # only a released row
        BudgetLine("zeta", "dfe.pupils", 0.25, 0.0, queries=1),
        BudgetLine("zeta", "dwp.claims", 0.5, 0.0, queries=1),
    ]


def test_exhaustion_is_refused_with_a_one_line_message_and_records_nothing(ledger: BudgetLedger) -> None:
    cap = 1.0
    ledger.reserve("q1", "p", "dfe.pupils", Spend(rho=0.5), cap)
    ledger.commit("q1")
    ledger.reserve("q2", "p", "dfe.pupils", Spend(rho=0.25), cap)
    before = ledger.lines()
    with pytest.raises(BudgetExhausted) as refused:
        ledger.reserve("q3", "p", "dfe.pupils", Spend(rho=0.5), cap)
    assert str(refused.value) == (
        "budget exhausted for project 'p' on dataset 'dfe.pupils': rho 0.25 left, rho 0.5 asked; "
        "ask the data owner for more or spend less"
    )
    assert refused.value.exit_code == 2
    assert ledger.lines() == before
    with pytest.raises(Fault, match="reserved no budget"):
        ledger.commit("q3")
    ledger.reserve("q3", "p", "dfe.pupils", Spend(rho=0.25), cap)  # the refused id is still free, and exactly fits


@pytest.mark.parametrize("cap", [-1.0, math.nan, math.inf])
def test_a_cap_must_be_a_finite_rho(ledger: BudgetLedger, cap: float) -> None:
    with pytest.raises(BadInput, match="a budget cap must be a finite rho"):
        ledger.reserve("q1", "p", "d", Spend(rho=0.1), cap)
    with pytest.raises(BadInput, match="a budget cap must be a finite rho"):
        ledger.reserve("q1", "p", "d", Spend(rho=0.1), 1.0, dataset_cap=cap)


def test_floating_point_sums_get_a_tiny_tolerance_and_zero_caps_allow_zero_spends(ledger: BudgetLedger) -> None:
    cap = 0.7
    for i in range(7):  # 0.1 added seven times is 0.7000000000000001
        ledger.reserve(f"q{i}", "p", "d", Spend(rho=0.1), cap)
    with pytest.raises(BudgetExhausted, match="rho 0 left, rho 1e-09 asked"):
        ledger.reserve("q7", "p", "d", Spend(rho=1e-9), cap)
    ledger.reserve("free", "p", "d", Spend(), cap)
    ledger.reserve("zero", "p", "other", Spend(), 0.0)
    with pytest.raises(BudgetExhausted, match="rho 0 left"):
        ledger.reserve("zcdp", "p", "other", Spend(rho=0.01), 0.0)


def test_prepared_reservations_wait_for_a_decision_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    dropped = BudgetLedger(path)
    dropped.reserve("held", "p", "d", Spend(rho=0.5), 1.0)
    dropped.prepare("held")
    dropped.reserve("open", "p", "d", Spend(rho=0.25), 1.0)
    assert dropped.state("held") == "prepared" and dropped.state("open") == "reserved"
    del dropped
    gc.collect()
    with BudgetLedger(path) as ledger:
        assert ledger.recovered == 1  # only the open one
        assert ledger.prepared() == ["held"]
        assert ledger.remaining("p", "d", 1.0) == 0.5  # the prepared charge still counts
        with pytest.raises(Fault, match="cannot prepare query 'open'"):
            ledger.prepare("open")
        ledger.commit("held")
        assert ledger.state("held") == "committed" and ledger.prepared() == []
        ledger.reserve("later", "p", "d", Spend(rho=0.5), 1.0)
        ledger.prepare("later")
        ledger.release("later")  # the coordinator's abort
        assert ledger.state("later") == "released" and ledger.state("never") is None


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "0.1", True])
def test_a_spend_must_be_a_finite_non_negative_number(value: Any) -> None:
    with pytest.raises(BadInput, match="must be a finite number >= 0"):
        Spend(epsilon=value)
    with pytest.raises(BadInput, match="rho must be"):
        Spend(rho=value)


def test_a_query_reserves_each_dataset_once_and_names_must_not_be_empty(ledger: BudgetLedger) -> None:
    cap = 1.0
    ledger.reserve("q1", "p", "d", Spend(rho=0.1), cap)
    with pytest.raises(BadInput, match="already reserved budget on dataset 'd'"):
        ledger.reserve("q1", "p", "d", Spend(rho=0.1), cap)
    ledger.release("q1")
    with pytest.raises(BadInput, match="fresh id"):
        ledger.reserve("q1", "p", "d", Spend(rho=0.1), cap)
    for names in (("", "p", "d"), ("q2", "", "d"), ("q2", "p", "")):
        with pytest.raises(BadInput, match="must be a non-empty string"):
            ledger.reserve(*names, Spend(rho=0.1), cap)
    assert ledger.remaining("p", "d", cap) == 1.0


def test_release_never_undoes_a_commit_and_commit_refuses_unknown_or_released_queries(ledger: BudgetLedger) -> None:
    cap = 1.0
    ledger.reserve("q1", "p", "d", Spend(rho=0.5), cap)
    ledger.commit("q1")
    ledger.release("q1")
    ledger.commit("q1")  # committing again changes nothing
    assert ledger.remaining("p", "d", cap) == 0.5
    with pytest.raises(Fault, match="cannot commit query 'ghost': it reserved no budget here"):
        ledger.commit("ghost")
    ledger.release("ghost")  # releasing is idempotent, even for a query never seen
    ledger.reserve("q2", "p", "d", Spend(rho=0.25), cap)
    ledger.release("q2")
    ledger.release("q2")
    with pytest.raises(Fault, match="reservation was released") as refused:
        ledger.commit("q2")
    assert refused.value.exit_code == 1
    assert ledger.lines() == [BudgetLine("p", "d", 0.5, 0.0, queries=1)]


def test_many_threads_at_a_nearly_exhausted_budget_never_overspend(ledger: BudgetLedger) -> None:
    cap = 1.0
    for i in range(3):
        ledger.reserve(f"early{i}", "p", "d", Spend(rho=0.1), cap)
        ledger.commit(f"early{i}")
    threads, attempts = 32, 5
    start = threading.Barrier(threads)
    won: list[str] = []

    def spend(thread: int) -> None:
        start.wait()
        for attempt in range(attempts):
            query = f"t{thread}-{attempt}"
            try:
                ledger.reserve(query, "p", "d", Spend(rho=0.1), cap)
            except BudgetExhausted:
                continue
            won.append(query)
            ledger.commit(query)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(spend, range(threads)))
    assert len(won) == 7
    [line] = ledger.lines()
    assert line.queries == 10
    assert line.reserved == 0.0
    assert line.committed <= cap + TOLERANCE


def _spend_in_a_process(path: str, start: Barrier, attempts: int, won: Any) -> None:
    ledger = BudgetLedger(Path(path))
    start.wait()
    count = 0
    for attempt in range(attempts):
        query = f"{os.getpid()}-{attempt}"
        try:
            ledger.reserve(query, "p", "d", Spend(0.1, 0.095), 1.0)  # charged 0.1
        except BudgetExhausted:
            continue
        ledger.commit(query)
        count += 1
    ledger.close()
    won.put(count)


@pytest.mark.slow
def test_several_processes_sharing_the_file_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    cap = 1.0
    with BudgetLedger(path) as ledger:
        for i in range(2):
            ledger.reserve(f"early{i}", "p", "d", Spend(rho=0.1), cap)
            ledger.commit(f"early{i}")
        # Still open while the children open the same file: a live process's reservation is not "recovered".
        ledger.reserve("in-flight", "p", "d", Spend(rho=0.1), cap)
        processes, start, won = 4, SPAWN.Barrier(4), SPAWN.Queue()
        children = [
            SPAWN.Process(target=_spend_in_a_process, args=(str(path), start, 10, won)) for _ in range(processes)
        ]
        for child in children:
            child.start()
        counts = [won.get(timeout=CHILD_TIMEOUT_S) for _ in children]
        for child in children:
            child.join(CHILD_TIMEOUT_S)
            assert child.exitcode == 0
        assert sum(counts) == 7
        ledger.commit("in-flight")
        [line] = ledger.lines()
        assert line.queries == 10
        assert line.committed <= cap + TOLERANCE
        assert line.committed == pytest.approx(1.0)
        assert line.reserved == 0.0


def _open_together(path: str, start: Barrier) -> None:
    start.wait()
    BudgetLedger(Path(path)).close()


@pytest.mark.slow
def test_processes_can_create_a_new_ledger_at_the_same_time(tmp_path: Path) -> None:
    path = tmp_path / "new" / "budget.sqlite"
    start = SPAWN.Barrier(4)
    children = [SPAWN.Process(target=_open_together, args=(str(path), start)) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(CHILD_TIMEOUT_S)
        assert child.exitcode == 0
    with BudgetLedger(path) as ledger:
        assert ledger.recovered == 0
        assert ledger.lines() == []
    assert list(path.with_name("budget.sqlite.owners").glob("*.lock")) == []


def _reserve_and_hang(path: str, reserved: Event) -> None:
    ledger = BudgetLedger(Path(path))
    cap = 1.0
    ledger.reserve("done", "p", "d", Spend(0.5, 0.125), cap)  # charged 0.25
    ledger.commit("done")
    ledger.reserve("in-flight", "p", "d", Spend(0.5, 0.25), cap)  # charged 0.375
    ledger.reserve("in-flight", "p", "e", Spend(rho=0.5), cap)
    reserved.set()
    threading.Event().wait()  # until killed, before it could commit


def _killed_while_reserved(path: Path) -> None:
    reserved = SPAWN.Event()
    child = SPAWN.Process(target=_reserve_and_hang, args=(str(path), reserved))
    child.start()
    assert reserved.wait(CHILD_TIMEOUT_S)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(CHILD_TIMEOUT_S)
    assert child.exitcode == -signal.SIGKILL


@pytest.mark.slow
def test_a_reservation_of_a_killed_process_is_released_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    _killed_while_reserved(path)
    with BudgetLedger(path) as ledger:
        assert ledger.recovered == 2  # the query's rows on both datasets
        assert ledger.lines() == [
            BudgetLine("p", "d", 0.25, 0.0, queries=1),
            BudgetLine("p", "e", 0.0, 0.0, queries=0),
        ]
        with pytest.raises(Fault, match="released"):
            ledger.commit("in-flight")
    with BudgetLedger(path) as again:
        assert again.recovered == 0


@pytest.mark.slow
def test_a_live_ledger_releases_a_dead_processes_reservation_before_refusing(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    with BudgetLedger(path) as ledger:
        _killed_while_reserved(path)
        assert ledger.remaining("p", "d", 1.0) == 0.375
        ledger.reserve("next", "p", "d", Spend(rho=0.75), 1.0)  # fits only without the dead reservation
        assert ledger.remaining("p", "d", 1.0) == 0.0


def test_a_ledger_dropped_without_close_has_its_reservations_released_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    cap = 1.0
    dropped = BudgetLedger(path)
    dropped.reserve("done", "p", "d", Spend(rho=0.25), cap)
    dropped.commit("done")
    dropped.reserve("lost", "p", "d", Spend(rho=0.5), cap)
    del dropped
    gc.collect()
    with BudgetLedger(path) as ledger:
        assert ledger.recovered == 1
        assert ledger.remaining("p", "d", cap) == 0.75
        assert ledger.lines() == [BudgetLine("p", "d", 0.25, 0.0, queries=1)]


def test_opening_a_ledger_leaves_the_reservations_of_another_open_one_alone(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    with BudgetLedger(path) as first:
        first.reserve("q1", "p", "d", Spend(rho=0.5), 1.0)
        with BudgetLedger(path) as second:
            assert second.recovered == 0
            assert second.remaining("p", "d", 1.0) == 0.5
        first.commit("q1")


def test_rows_hold_only_ids_names_loss_state_and_utc_times(ledger: BudgetLedger) -> None:
    ledger.reserve("q1", "p", "d", Spend(rho=0.5), 1.0)
    ledger.commit("q1")
    with sqlite3.connect(ledger.path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(reservation)")]
        reserved_at, settled_at = db.execute("SELECT reserved_at, settled_at FROM reservation").fetchone()
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert columns == [
        "query_id",
        "dataset",
        "project",
        "epsilon",
        "rho",
        "state",
        "owner",
        "reserved_at",
        "settled_at",
    ]
    assert mode == "wal"
    for stamp in (reserved_at, settled_at):
        assert datetime.fromisoformat(stamp).tzinfo == UTC


def test_a_closed_or_unreadable_ledger_is_a_fault(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "budget.sqlite")
    ledger.close()
    ledger.close()
    with pytest.raises(Fault, match="is closed; open it again"):
        ledger.remaining("p", "d", 1.0)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Fault, match=r"budget ledger at \S+garbage.sqlite\b.*file is not a database"):
        BudgetLedger(garbage)


CAP = 0.75
LOSS = st.one_of(st.sampled_from([0.0, 0.1, 0.125, 0.25, 0.5]), st.floats(0.0, 0.6))


class LedgerAgainstAModel(RuleBasedStateMachine):
    """Any sequence of reserve/commit/release/reopen keeps the ledger equal to a plain model, under the cap."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="ledger-"))
        self.ledger = BudgetLedger(self.folder / "budget.sqlite")
        #: (query, dataset) -> (project, loss, state)
        self.rows: dict[tuple[str, str], tuple[str, Spend, str]] = {}

    def used(self, project: str, dataset: str, states: tuple[str, ...] = ("reserved", "committed")) -> float:
        mine = [s for (_, d), (p, s, state) in self.rows.items() if (p, d) == (project, dataset) and state in states]
        return math.fsum(s.rho + s.epsilon * s.epsilon / 2 for s in mine)

    @rule(
        query=st.sampled_from([f"q{i}" for i in range(6)]),
        project=st.sampled_from(["p", "r"]),
        dataset=st.sampled_from(["a", "b"]),
        epsilon=LOSS,
        rho=LOSS,
    )
    def reserve(self, query: str, project: str, dataset: str, epsilon: float, rho: float) -> None:
        spend = Spend(epsilon, rho)
        if (query, dataset) in self.rows:
            with pytest.raises(BadInput):
                self.ledger.reserve(query, project, dataset, spend, CAP)
            return
        margin = CAP + TOLERANCE - self.used(project, dataset) - spend.charge
        try:
            self.ledger.reserve(query, project, dataset, spend, CAP)
        except BudgetExhausted:
            # Sums in another order may differ in the last bits; only a clear margin decides the outcome.
            assert margin < 1e-14
            return
        assert margin > -1e-14
        self.rows[query, dataset] = (project, spend, "reserved")

    @rule(query=st.sampled_from([f"q{i}" for i in range(6)]))
    def commit(self, query: str) -> None:
        mine = {key: row for key, row in self.rows.items() if key[0] == query}
        if not mine or any(state == "released" for _, _, state in mine.values()):
            with pytest.raises(Fault):
                self.ledger.commit(query)
            return
        self.ledger.commit(query)
        for key, (project, spend, _) in mine.items():
            self.rows[key] = (project, spend, "committed")

    @rule(query=st.sampled_from([f"q{i}" for i in range(6)]))
    def release(self, query: str) -> None:
        self.ledger.release(query)
        for key, (project, spend, state) in list(self.rows.items()):
            if key[0] == query and state == "reserved":
                self.rows[key] = (project, spend, "released")

    @rule()
    def reopen(self) -> None:
        self.ledger.close()
        self.ledger = BudgetLedger(self.folder / "budget.sqlite")
        open_rows = [key for key, (_, _, state) in self.rows.items() if state == "reserved"]
        assert self.ledger.recovered == len(open_rows)
        for key in open_rows:
            project, spend, _ = self.rows[key]
            self.rows[key] = (project, spend, "released")

    @invariant()
    def agrees_with_the_model_and_stays_under_the_cap(self) -> None:
        lines = self.ledger.lines()
        assert [(line.project, line.dataset) for line in lines] == sorted(
            {(p, d) for (_, d), (p, _, _) in self.rows.items()}
        )
        for line in lines:
            committed, reserved = (
                self.used(line.project, line.dataset, ("committed",)),
                self.used(line.project, line.dataset, ("reserved",)),
            )
            assert line.committed == pytest.approx(committed, abs=1e-12)
            assert line.reserved == pytest.approx(reserved, abs=1e-12)
            assert line.queries == sum(
                1 for (_, d), (p, _, s) in self.rows.items() if (p, d, s) == (line.project, line.dataset, "committed")
            )
            assert line.committed + line.reserved <= CAP + TOLERANCE
            left = self.ledger.remaining(line.project, line.dataset, CAP)
            assert left == pytest.approx(max(0.0, CAP - self.used(line.project, line.dataset)), abs=1e-12)

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.folder)


LedgerAgainstAModel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_the_ledger_agrees_with_a_model = LedgerAgainstAModel.TestCase


def test_budgets_are_configured_in_rho_only() -> None:
    """An epsilon cap (a node's approval) or request (a project) is refused with the conversion to write."""
    from pydantic import ValidationError

    from fedlink.coordinator.projects import Project
    from fedlink.node.config import Approval

    assert Approval.model_validate({"project": "p", "rho": 5.0}).rho == 5.0
    with pytest.raises(ValidationError, match=r"approval of project 'p' gives an epsilon budget.*write rho = R"):
        Approval.model_validate({"project": "p", "epsilon": 10.0})
    with pytest.raises(ValidationError, match=r"project 'p' gives an epsilon budget.*rho = epsilon\^2 / 2"):
        Project.model_validate(
            {"id": "p", "title": "t", "purpose": "x", "analysts": ["a"], "datasets": ["n.t"], "epsilon": 1.0}
        )


def test_close_waits_for_an_operation_running_in_another_thread(tmp_path: Path) -> None:
    """A node stopping while a settle thread reads its ledger: close() must not close the connection
    under the running statement (SQLite can crash), and refuses new operations at once."""
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    inside, finish, closed = threading.Event(), threading.Event(), threading.Event()

    def settle() -> None:
        with ledger._errors():  # an operation in flight, held open until told
            ledger._connection().execute("SELECT COUNT(*) FROM reservation").fetchone()
            inside.set()
            finish.wait(30)
            ledger._connection().execute("SELECT COUNT(*) FROM reservation").fetchone()

    def stop() -> None:
        ledger.close()
        closed.set()

    worker = threading.Thread(target=settle)
    worker.start()
    assert inside.wait(30)
    closer = threading.Thread(target=stop)
    closer.start()
    assert not closed.wait(0.3), "close() returned while another thread's statement was running"
    with pytest.raises(Fault, match="closed"):
        ledger.state("q1")
    finish.set()
    worker.join(30)
    closer.join(30)
    assert closed.is_set() and not worker.is_alive()
