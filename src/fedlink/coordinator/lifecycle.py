"""A query's lifecycle at the coordinator, the same for every query kind (horizontal, linked, model).

A query runs as a two-phase commit, so that nothing paid for is ever lost: **reserve** at every node
(one node's refusal costs no other node anything), **prepare** at every node (each computes its noisy
answer, keeps it and marks its reservation prepared; every task carries a deadline after which no node
prepares it), then the coordinator **decides** (journaled before any node hears of it) and asks every
node to **commit**: each records the use, commits its budget and only then sends its answer. A failure
before the decision **aborts** the query everywhere and nothing is spent. After it, every node's answer
is kept as it arrives, the result is stored sealed to the analyst and **registered**, and a node that
crashed or stalled at the commit delivers its (same) answer when it is back, on reconnection or when
the analyst collects the result with ``fedlink result get ID``; the analyst is told the result is
pending, not lost.

A query kind says only what differs: how it plans and checks a request, what its prepare phase asks
of the nodes (:meth:`QueryRun.fan_out`, :meth:`QueryRun.call_each`), and how it builds the result
from the nodes' committed answers (a :data:`Finisher`, registered here by kind, so that a query a node
completes later is finished the same way).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from fedlink.coordinator.journal import Finished, JournalEntry, QueryJournal
from fedlink.coordinator.revocation import raise_if_call_revoked
from fedlink.coordinator.sessions import NodeRoster, NodeSession
from fedlink.errors import AccessDenied, BadInput, Fault, FedlinkError, ResultPending
from fedlink.faults import failpoint
from fedlink.pets.sealed import seal
from fedlink.protocol import rpc
from fedlink.protocol.results import QueryResult
from fedlink.protocol.tasks import ModelRequest, PendingReport, PrivacyLoss, QueryRequest, QueryTask, TaskRef
from fedlink.protocol.transport import Message, new_call_id
from fedlink.transparency.register import Register

log = logging.getLogger("fedlink.coordinator")

#: Builds a decided query's result from its journal entry and every node's committed answer (kind, body).
Finisher = Callable[[JournalEntry, dict[str, tuple[str, bytes]]], Finished]


def released_table(result: QueryResult) -> dict[str, Any]:
    """A released table as the register records it."""
    return {
        "columns": [*result.key_columns, *result.value_columns],
        "rows": [[*r.keys, *(c.value for c in r.cells)] for r in result.rows],
    }


class QueryLifecycle:
    """Runs every query through reserve, prepare, decide, commit or abort, and register.

    ``finishers`` builds each kind's result (:data:`Finisher`); ``test_mode`` is the federation's
    explicit test mode (noiseless queries possible); ``timeout_s`` is every task's time to answer.
    """

    def __init__(
        self,
        roster: NodeRoster,
        journal: QueryJournal,
        register: Register,
        finishers: Mapping[str, Finisher],
        *,
        timeout_s: float,
        test_mode: bool,
    ) -> None:
        self.roster = roster
        self.journal = journal
        self.register = register
        self.timeout_s = timeout_s
        self.test_mode = test_mode
        self._finishers = dict(finishers)
        self._lock = threading.Lock()
        self._pending_logged: set[str] = set()
        self._delivering: dict[str, threading.Lock] = {}

    # --- before anything is reserved ----------------------------------------------------------------
    def check_loss(self, loss: PrivacyLoss, noiseless: bool) -> None:
        """Refuse a request without a privacy loss, or a noiseless one outside test mode."""
        if noiseless and not self.test_mode:
            raise BadInput("noiseless queries need a federation in test mode; declare `epsilon` or `rho` instead")
        if loss.is_zero and not noiseless:
            raise BadInput("declare the query's privacy loss: `epsilon=E` (pure DP) or `rho=R` (zCDP)")

    def new_task(self, request: QueryRequest | ModelRequest, extra_s: float = 0.0, **fields: Any) -> QueryTask:
        """The task of a request, with its id (the analyst's, or a fresh one) and its deadline (the
        query timeout, plus ``extra_s`` for a query of several rounds)."""
        return QueryTask(
            query_id=request.query_id or new_call_id(),
            deadline=time.time() + self.timeout_s + extra_s,
            **fields,
        )

    def begin(
        self, task: QueryTask, kind: str, extra: Mapping[str, Any], recipient: str, sessions: dict[str, NodeSession]
    ) -> QueryRun:
        """Journal a new query (before anything reaches a node; a reused query id is refused) and reserve
        it at every node of ``sessions``; if any refuses, release the others, record the refusal and
        raise it. ``extra`` is what the kind's :data:`Finisher` needs beyond the task; ``recipient`` the
        analyst's key the stored result is sealed to."""
        self.journal.begin(
            task.query_id,
            analyst=task.analyst,
            project=task.project,
            kind=kind,
            nodes=tuple(task.plan.nodes),
            task=task.model_dump_json(),
            extra=json.dumps(extra).encode(),
            recipient=recipient,
        )
        run = QueryRun(self, task, sessions)
        run.reserve()
        return run

    # --- after the decision -------------------------------------------------------------------------
    def deliver(self, query_id: str, finisher: Finisher | None = None) -> tuple[str, bytes]:
        """The result of a decided query: collected from the nodes, finished (by ``finisher``, default
        its kind's), sealed to the analyst and stored (once); raises :class:`ResultPending` while a node
        still owes its answer."""
        with self._lock:
            guard = self._delivering.setdefault(query_id, threading.Lock())
        with guard:  # the analyst and a reconnecting node may both complete a query: only one does
            return self._deliver(query_id, finisher)

    def _deliver(self, query_id: str, finisher: Finisher | None) -> tuple[str, bytes]:
        entry = self.entry(query_id)
        if entry.state == "released":
            assert entry.reply is not None and entry.result is not None
            return entry.reply, entry.result
        if entry.state == "failed":
            raise Fault(f"query {query_id[:8]} failed ({entry.reason}); nothing was released and nothing was spent")
        if entry.state == "running":
            raise ResultPending(f"query {query_id[:8]} is still running; ask again in a moment", query_id)
        answers = self.collect(query_id)
        waiting = [n for n in entry.nodes if n not in answers]
        if waiting:
            reason = (
                f"the budget is committed but node(s) {', '.join(waiting)} have not delivered their answers; the "
                f"result is kept and completes when they are back: collect it with `fedlink result get {query_id}`"
            )
            if query_id not in self._pending_logged:
                self._pending_logged.add(query_id)
                self.record_unreleased(QueryTask.model_validate_json(entry.task), "pending", reason)
            raise ResultPending(f"query {query_id}: {reason}", query_id)
        finish = finisher or self._finishers[entry.kind]
        return self.release(entry, finish(entry, answers))

    def collect(self, query_id: str) -> dict[str, tuple[str, bytes]]:
        """Ask every live node of a decided query that has not delivered yet to commit, and keep what it
        sends; returns every answer in so far."""
        entry = self.entry(query_id)
        answers = self.journal.answers(query_id)
        live = self.roster.live(n for n in entry.nodes if n not in answers)
        body = TaskRef(query_id=query_id).model_dump_json().encode()
        for name, answer in self.roster.fan_out(live, rpc.COMMIT, body).items():
            if isinstance(answer, Message):
                self.journal.add_answer(query_id, name, answer.kind, answer.body)
            else:
                log.warning("node '%s' did not deliver query %s: %s", name, query_id[:8], answer.message)
        return self.journal.answers(query_id)

    def release(self, entry: JournalEntry, finished: Finished) -> tuple[str, bytes]:
        """Store a decided query's finished result sealed to its analyst, record it on the register, tell
        the nodes to drop their kept answers, and return the reply. A result withheld by disclosure control
        (``finished.reply`` is an error) is stored and recorded the same way, as "suppressed"."""
        task = QueryTask.model_validate_json(entry.task)
        refused = finished.reply == rpc.ERROR  # withheld by disclosure control: a message, no data, not sealed
        sealed = finished.body
        if entry.recipient and not refused:
            sealed = seal(entry.recipient, entry.query_id, finished.body)
        self.journal.release(entry.query_id, finished.reply, sealed)
        self._pending_logged.discard(entry.query_id)
        with self._lock:
            self._delivering.pop(entry.query_id, None)
        status, reason = "released", None
        if refused:
            status, reason = "suppressed", str(json.loads(finished.body).get("message", ""))
        self.register.append(
            "query",
            task.register_fields(task.plan.nodes, status, reason, finished.released, finished.encrypted_for),
        )
        body = TaskRef(query_id=entry.query_id).model_dump_json().encode()
        self.roster.notify(self.roster.live(entry.nodes), rpc.SETTLE, body)  # only tidies the nodes' outboxes
        return finished.reply, sealed

    # --- a restart, a node back ---------------------------------------------------------------------
    def recover(self) -> None:
        """A query the coordinator left running (it stopped before deciding) failed: nothing was spent
        (nodes release a prepared reservation when told; an open one when they restart)."""
        for entry in self.journal.in_state("running"):
            reason = "the coordinator stopped before every node had prepared; nothing was spent"
            if self.journal.fail(entry.query_id, reason):
                self.record_unreleased(QueryTask.model_validate_json(entry.task), "failed", reason)

    def settle(self, session: NodeSession) -> None:
        """A node (re)joined: settle the answers it holds. Decided queries complete with its answer
        (it sends the same one again); queries never decided are aborted (its reservation is released)."""
        try:
            reply = session.call(rpc.PENDING, b"", self.timeout_s)
            held = PendingReport.model_validate_json(reply.body).answers
        except (FedlinkError, ValidationError) as exc:
            log.warning("could not ask node '%s' for its pending answers: %s", session.name, exc)
            return
        for answer in held:
            entry = self.journal.get(answer.query_id)
            try:
                if entry is None or entry.state == "failed":
                    session.call(rpc.ABORT, TaskRef(query_id=answer.query_id).model_dump_json().encode(), 30.0)
                elif entry.state == "committing":
                    self.deliver(answer.query_id)
                elif entry.state == "released":
                    session.call(rpc.SETTLE, TaskRef(query_id=answer.query_id).model_dump_json().encode(), 30.0)
            except ResultPending:
                continue
            except FedlinkError as exc:
                log.warning("could not settle query %s with node '%s': %s", answer.query_id[:8], session.name, exc)

    # --- shared -------------------------------------------------------------------------------------
    def entry(self, query_id: str) -> JournalEntry:
        """The journal's entry of a query, or BadInput if there is none."""
        entry = self.journal.get(query_id)
        if entry is None:
            raise BadInput(f"no query {query_id[:8]} at this coordinator; check the id")
        return entry

    def record_unreleased(self, task: QueryTask, status: str, reason: str) -> None:
        """Put a query that released nothing (refused, failed, pending) on the register."""
        self.register.append("query", task.register_fields(task.plan.nodes, status, reason))


class QueryRun:
    """One query between its reservation and its release: the calls of its prepare phase, the decision,
    and its result. Made by :meth:`QueryLifecycle.begin`."""

    def __init__(self, lifecycle: QueryLifecycle, task: QueryTask, sessions: dict[str, NodeSession]) -> None:
        self.lifecycle = lifecycle
        self.task = task
        self.sessions = sessions

    @property
    def query_id(self) -> str:
        return self.task.query_id

    def reserve(self) -> None:
        """Reserve the task at every node; if any refuses, release the others, record the refusal, raise it."""
        roster, journal = self.lifecycle.roster, self.lifecycle.journal
        reserved = roster.fan_out(self.sessions, rpc.RESERVE, self.task.model_dump_json().encode())
        refusals = {n: a for n, a in reserved.items() if isinstance(a, FedlinkError)}
        if refusals:
            self._abort()  # every node: one that timed out may have reserved late
            first = next(iter(refusals.values()))
            journal.fail(self.query_id, first.message)
            self.lifecycle.record_unreleased(self.task, "refused", first.message)
            raise first
        try:
            raise_if_call_revoked()
        except AccessDenied as exc:
            self._abort()
            journal.fail(self.query_id, exc.message)
            self.lifecycle.record_unreleased(self.task, "refused", exc.message)
            raise
        failpoint("coordinator.reserved")

    def fan_out(self, kind: str, body: bytes) -> dict[str, Message | FedlinkError]:
        """Call every node of the query in parallel with the same body."""
        return self.lifecycle.roster.fan_out(self.sessions, kind, body)

    def call_each(
        self, bodies: Mapping[str, bytes], kind: str, timeout_s: float | None = None
    ) -> dict[str, Message | FedlinkError]:
        """Call each node named in ``bodies`` with its own body, in parallel."""
        calls = {name: (self.sessions[name], body) for name, body in bodies.items()}
        return self.lifecycle.roster.call_each(calls, kind, timeout_s)

    def fail(self, reason: str) -> Fault:
        """End the query before its decision: abort it at every node (they release, prepared or not),
        journal and register the failure; returns the error to raise."""
        self._abort()
        self.lifecycle.journal.fail(self.query_id, reason)
        self.lifecycle.record_unreleased(self.task, "failed", reason)
        return Fault(reason)

    def decide(self, prepared: Mapping[str, object], during: str) -> None:
        """Decide the query from its nodes' answers to the prepare phase: if any node failed, abort it
        everywhere and raise (nothing is spent); else commit, journaled before any node is told, so the
        decision survives a crash."""
        failures = {n: a for n, a in prepared.items() if isinstance(a, FedlinkError)}
        if failures:
            name, error = next(iter(failures.items()))
            raise self.fail(f"node '{name}' failed {during} ({error.message}); nothing was spent")
        self.lifecycle.journal.decide(self.query_id)
        failpoint("coordinator.decided")

    def collect(self) -> dict[str, tuple[str, bytes]]:
        """Ask the decided query's nodes to commit; returns every answer in so far."""
        return self.lifecycle.collect(self.query_id)

    def deliver(self, finisher: Finisher | None = None) -> tuple[str, bytes]:
        """The decided query's result (see :meth:`QueryLifecycle.deliver`)."""
        return self.lifecycle.deliver(self.query_id, finisher)

    def release(self, finished: Finished) -> tuple[str, bytes]:
        """Store, register and return the result the query kind finished itself."""
        return self.lifecycle.release(self.lifecycle.entry(self.query_id), finished)

    def _abort(self) -> None:
        body = TaskRef(query_id=self.query_id).model_dump_json().encode()
        for name, answer in self.lifecycle.roster.fan_out(self.sessions, rpc.ABORT, body).items():
            if isinstance(answer, FedlinkError):
                log.warning("could not abort query %s at node '%s': %s", self.query_id[:8], name, answer.message)
