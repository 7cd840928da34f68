"""A node's persistent privacy-budget ledger: reserve before work, commit before the answer leaves, release on failure.

Each node keeps its own ledger, one SQLite file, with one row per (query, dataset). A row is
``reserved`` while the query runs, ``committed`` once the node is about to let a noisy answer leave, and
``released`` if the query failed. Every reservation checks committed + reserved + asked against the caps
inside one ``BEGIN IMMEDIATE`` transaction, so threads of one node and several processes sharing the
file can never overspend.

**One currency.** Pure-DP and zCDP spend against one cap, kept in zCDP's rho: a query declared as
``epsilon``-DP is charged ``rho = epsilon**2 / 2`` (an epsilon-DP mechanism is (epsilon^2/2)-zCDP, Bun and
Steinke 2016, Proposition 1.4), a zCDP query its ``rho``. zCDP composes by adding rho, so mixing the two
measures can never give an attacker two budgets for one dataset; rho converts to (epsilon, delta)-DP
for any delta as ``rho + 2 sqrt(rho ln(1/delta))``. Each row keeps the loss as declared; the charge is
derived from it. A reservation must fit under the project's cap on that dataset and, when the node's
operator sets one, under the dataset's cap across all projects::

    >>> import tempfile
    >>> from pathlib import Path
    >>> with BudgetLedger(Path(tempfile.mkdtemp()) / "budget.sqlite") as ledger:
    ...     ledger.reserve("q1", "p", "dfe.pupils", Spend(epsilon=1.0), cap=2.0)
    ...     ledger.commit("q1")
    ...     ledger.reserve("q2", "p", "dfe.pupils", Spend(rho=0.5), cap=2.0)
    ...     ledger.remaining("p", "dfe.pupils", cap=2.0)
    1.0

The node commits *before* any noisy output leaves it, so a reservation still open when its process
died means nothing left the node: reopening the ledger releases it. To tell a dead process from a live
one that shares the file, each open ledger holds an exclusive ``flock`` on its own file in
``<ledger>.owners/``; the kernel drops that lock when the process dies, however it dies.

A query of a two-phase protocol is ``prepare``d once the node holds its answer: the reservation then
outlives the process (a restarted node still holds it) until the coordinator's decision commits or
releases it.

Only ids, project, dataset, privacy loss, state and UTC times are stored, never data values.
"""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from weakref import WeakSet

from fedlink.errors import BadInput, BudgetExhausted, Fault

#: The owner of a reservation held for a while regardless of processes: this prefix, then its deadline.
_HELD = "held-until:"
#: The owner of a prepared reservation: held until the coordinator's decision, whatever happens to processes.
_PREPARED = "prepared"
#: What one row charges to a cap, in rho (zCDP): its rho plus its epsilon converted as epsilon^2 / 2.
_CHARGE = "(rho + epsilon * epsilon / 2.0)"
#: Slack when comparing sums of floats with a cap, so that e.g. seven spends of 0.1 fit a cap of 0.7.
TOLERANCE = 1e-12
#: How long a call waits for another thread or process holding the ledger's write lock.
BUSY_TIMEOUT_S = 10.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reservation (
    query_id    TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    project     TEXT NOT NULL,
    epsilon     REAL NOT NULL CHECK (epsilon >= 0),
    rho         REAL NOT NULL CHECK (rho >= 0),
    state       TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    owner       TEXT NOT NULL,
    reserved_at TEXT NOT NULL,
    settled_at  TEXT,
    PRIMARY KEY (query_id, dataset)
    )""",
    "CREATE INDEX IF NOT EXISTS reservation_by_budget ON reservation (project, dataset, state, epsilon, rho)",
    "CREATE INDEX IF NOT EXISTS reservation_by_state ON reservation (state, owner)",
)


@dataclass(frozen=True)
class Spend:
    """Privacy loss of one query at one dataset, or a budget of it: pure-DP ``epsilon`` and zCDP ``rho``."""

    epsilon: float = 0.0
    rho: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epsilon", "rho"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise BadInput(f"{name} must be a finite number >= 0, not {value!r}; give a non-negative privacy loss")

    @property
    def charge(self) -> float:
        """What this loss costs against a cap, in rho (zCDP): ``rho + epsilon**2 / 2``."""
        return self.rho + self.epsilon * self.epsilon / 2.0

    def describe(self) -> str:
        """The loss as declared and, for epsilon, what it is charged: "epsilon 1 (rho 0.5)"."""
        parts = []
        if self.epsilon:
            parts.append(f"epsilon {self.epsilon:.6g}")
        if self.rho or not self.epsilon:
            parts.append(f"rho {self.rho:.6g}")
        text = " and ".join(parts)
        return f"{text} (rho {self.charge:.6g} in all)" if self.epsilon else text


@dataclass(frozen=True)
class BudgetLine:
    """What one (project, dataset) has spent, in rho: committed and still-reserved charges, and committed queries."""

    project: str
    dataset: str
    committed: float
    reserved: float
    queries: int


class _Connection(sqlite3.Connection):
    """A plain connection; subclassed only so the ledger can hold it in a :class:`WeakSet`."""


class BudgetLedger:
    """The privacy-budget ledger in one SQLite file, safe across threads and processes.

    Use one object per process, shared by its threads (each thread gets its own connection). Open it in
    the process that uses it, not before a fork. ``recovered`` counts the reservations of dead processes
    that opening the ledger released.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.owner = uuid.uuid4().hex
        self._closed = False
        self._guard = threading.Lock()
        #: Operations running now, so that close() never closes a connection under a running statement
        #: (SQLite's C library may crash when a connection is closed from another thread mid-statement).
        self._active = 0
        self._idle = threading.Condition(self._guard)
        self._local = threading.local()
        self._connections: WeakSet[_Connection] = WeakSet()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._owners = self.path.with_name(self.path.name + ".owners")
            self._owners.mkdir(exist_ok=True)
            self._owner_lock = _hold_owner_lock(self._owners, self.owner)
        except OSError as exc:
            raise Fault(f"cannot open the budget ledger at {self.path}: {exc}; check the folder is writable") from exc
        try:
            # Switching a new file to WAL does not wait for the busy timeout, so openers take turns.
            with _exclusive(self._owners / "opening"), self._errors():
                db = self._connection()
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                with self._write() as db:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    self.recovered = self._release_dead_owners(db)
                for lock in self._owners.glob("*.lock"):
                    _owner_alive(self._owners, lock.stem)  # tidies the lock files of owners that died idle
        except BaseException:
            self.close()
            raise

    def reserve(
        self,
        query_id: str,
        project: str,
        dataset: str,
        spend: Spend,
        cap: float,
        hold_s: float | None = None,
        dataset_cap: float | None = None,
    ) -> None:
        """Set ``spend`` aside for ``query_id`` on (``project``, ``dataset``), or refuse if it would pass
        ``cap`` (the project's cap on the dataset, in rho) or ``dataset_cap`` (the dataset's cap across
        all projects, in rho; None: no such cap).

        The reservation belongs to this process and is released if the process dies first; with
        ``hold_s`` it outlives the process for that many seconds instead (for runtimes that answer each
        message in a fresh process, like Flower's), then a later opener releases it.

        Raises :class:`BudgetExhausted` (recording nothing) when committed + reserved + ``spend`` would
        exceed a cap, and :class:`BadInput` for empty names, a negative cap or a (query, dataset) already
        reserved. A query may reserve several datasets, one call each.
        """
        for name, value in (("query id", query_id), ("project", project), ("dataset", dataset)):
            if not isinstance(value, str) or not value:
                raise BadInput(f"the {name} must be a non-empty string, not {value!r}")
        for limit in (cap, dataset_cap):
            if limit is not None and (not math.isfinite(limit) or limit < 0):
                raise BadInput(f"a budget cap must be a finite rho >= 0, not {limit!r}; fix the node's config")
        with self._write() as db:
            taken = db.execute(
                "SELECT state FROM reservation WHERE query_id = ? AND dataset = ?", (query_id, dataset)
            ).fetchone()
            if taken is not None:
                raise BadInput(
                    f"query {query_id!r} has already reserved budget on dataset {dataset!r} ({taken[0]}); "
                    "give each query a fresh id"
                )
            shortfall = _shortfall(db, project, dataset, spend, cap, dataset_cap)
            if shortfall and self._release_dead_owners(db):
                shortfall = _shortfall(db, project, dataset, spend, cap, dataset_cap)
            if shortfall:
                raise BudgetExhausted(f"{shortfall}; ask the data owner for more or spend less")
            owner = self.owner if hold_s is None else f"{_HELD}{time.time() + hold_s:.3f}"
            db.execute(
                "INSERT INTO reservation (query_id, dataset, project, epsilon, rho, state, owner, reserved_at) "
                "VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?)",
                (query_id, dataset, project, float(spend.epsilon), float(spend.rho), owner, _now()),
            )

    def commit(self, query_id: str) -> None:
        """Turn every reservation of ``query_id`` into spent budget; call it before the answer leaves the node.

        Committing again is a no-op. Raises :class:`Fault` if the query reserved nothing here or any of
        its reservations was released (after a failure or a restart): its answer must not be released.
        """
        with self._write() as db:
            states = {row[0] for row in db.execute("SELECT state FROM reservation WHERE query_id = ?", (query_id,))}
            if not states:
                raise Fault(f"cannot commit query {query_id!r}: it reserved no budget here; reserve before running it")
            if "released" in states:
                raise Fault(
                    f"cannot commit query {query_id!r}: its budget reservation was released (after a failure or a "
                    "restart); do not release its answer, run the query again"
                )
            db.execute(
                "UPDATE reservation SET state = 'committed', settled_at = ? WHERE query_id = ? AND state = 'reserved'",
                (_now(), query_id),
            )

    def prepare(self, query_id: str) -> None:
        """Mark every open reservation of ``query_id`` prepared: the node holds the query's answer and the
        reservation now waits for the coordinator's decision (:meth:`commit` or :meth:`release`), even
        across a crash of this process. Raises :class:`Fault` if the query holds no open reservation."""
        with self._write() as db:
            states = {row[0] for row in db.execute("SELECT state FROM reservation WHERE query_id = ?", (query_id,))}
            if "reserved" not in states or "released" in states:
                raise Fault(
                    f"cannot prepare query {query_id[:8]!r}: it holds no open reservation here (released after a "
                    "failure, an abort or a restart); run the query again"
                )
            db.execute(
                "UPDATE reservation SET owner = ? WHERE query_id = ? AND state = 'reserved'", (_PREPARED, query_id)
            )

    def prepared(self) -> list[str]:
        """The ids of queries prepared here and still awaiting the coordinator's decision, oldest first."""
        with self._errors():
            rows = (
                self._connection()
                .execute(
                    "SELECT query_id FROM reservation WHERE state = 'reserved' AND owner = ? "
                    "GROUP BY query_id ORDER BY MIN(reserved_at)",
                    (_PREPARED,),
                )
                .fetchall()
            )
        return [row[0] for row in rows]

    def state(self, query_id: str) -> str | None:
        """``reserved``, ``prepared``, ``committed`` or ``released`` (None: never reserved here)."""
        with self._errors():
            rows = (
                self._connection()
                .execute("SELECT state, owner FROM reservation WHERE query_id = ?", (query_id,))
                .fetchall()
            )
        states = {"prepared" if (state, owner) == ("reserved", _PREPARED) else state for state, owner in rows}
        for state in ("committed", "released", "prepared", "reserved"):
            if state in states:
                return state
        return None

    def release(self, query_id: str) -> None:
        """Give back every open reservation of ``query_id``; committed budget stays spent. Idempotent."""
        with self._write() as db:
            db.execute(
                "UPDATE reservation SET state = 'released', settled_at = ? WHERE query_id = ? AND state = 'reserved'",
                (_now(), query_id),
            )

    def remaining(self, project: str, dataset: str, cap: float, dataset_cap: float | None = None) -> float:
        """The rho that can still be reserved on (``project``, ``dataset``) under ``cap`` and, if given,
        the dataset's cap across all projects (never below zero)."""
        with self._errors():
            db = self._connection()
            left = cap - _used(db, dataset, project)
            if dataset_cap is not None:
                left = min(left, dataset_cap - _used(db, dataset))
        return max(0.0, left)

    def lines(self) -> list[BudgetLine]:
        """One line per (project, dataset) that has any reservation, sorted by project then dataset."""
        with self._errors():
            rows = (
                self._connection()
                .execute(
                    "SELECT project, dataset, "
                    f"TOTAL(CASE WHEN state = 'committed' THEN {_CHARGE} END), "
                    f"TOTAL(CASE WHEN state = 'reserved' THEN {_CHARGE} END), "
                    "SUM(state = 'committed') "
                    "FROM reservation GROUP BY project, dataset ORDER BY project, dataset"
                )
                .fetchall()
            )
        return [BudgetLine(p, d, committed, reserved, int(n)) for p, d, committed, reserved, n in rows]

    def close(self) -> None:
        """Close every connection and give up this object's owner lock. Idempotent. New operations are
        refused at once; one still running in another thread (a settle in flight) is waited for, up to
        the busy timeout, before the connections close.

        Reservations still open stay reserved until a ledger is next opened (or a reservation would
        otherwise be refused), which then releases them because their owner is gone.
        """
        with self._guard:
            if self._closed:
                return
            self._closed = True
            mine = getattr(self._local, "depth", 0)  # close() called inside an operation of this thread
            self._idle.wait_for(lambda: self._active <= mine, timeout=BUSY_TIMEOUT_S + 1.0)
            connections = list(self._connections)
        for db in connections:
            db.close()
        if hasattr(self, "_owner_lock"):
            (self._owners / f"{self.owner}.lock").unlink(missing_ok=True)
            self._owner_lock.close()

    def __enter__(self) -> BudgetLedger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use; it closes when the thread ends or on :meth:`close`."""
        db: _Connection | None = getattr(self._local, "db", None)
        if db is not None:
            if self._closed and not getattr(self._local, "depth", 0):  # an operation under way may finish
                raise Fault(f"the budget ledger at {self.path} is closed; open it again")
            return db
        with self._guard:
            if self._closed:
                raise Fault(f"the budget ledger at {self.path} is closed; open it again")
            try:
                db = sqlite3.connect(
                    self.path,
                    timeout=BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,  # only so that close() may close it from another thread
                    factory=_Connection,
                )
                # An answer leaves the node right after commit(), so the commit must survive a power cut.
                db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise Fault(f"cannot open the budget ledger at {self.path}: {exc}; check the file") from exc
            self._connections.add(db)
        self._local.db = db
        return db

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """One operation on the ledger: counted while it runs (see :meth:`close`), SQLite's errors as a Fault."""
        with self._guard:
            if self._closed:
                raise Fault(f"the budget ledger at {self.path} is closed; open it again")
            self._active += 1
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        except sqlite3.Error as exc:
            raise Fault(f"the budget ledger at {self.path} failed: {exc}; check the file and the disk") from exc
        finally:
            self._local.depth -= 1
            with self._guard:
                self._active -= 1
                self._idle.notify_all()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from its start, so checks stay true."""
        with self._errors():
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite may already have rolled back, e.g. on a full disk
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _release_dead_owners(self, db: sqlite3.Connection) -> int:
        """Release the open reservations of processes that have died; call inside :meth:`_write`."""
        owners = [
            row[0]
            for row in db.execute(
                "SELECT DISTINCT owner FROM reservation WHERE state = 'reserved' AND owner != ?", (self.owner,)
            )
        ]
        released = 0
        for owner in owners:
            if owner == _PREPARED:
                continue  # waits for the coordinator's decision, whoever holds the ledger
            if owner.startswith(_HELD):
                alive = time.time() < float(owner.removeprefix(_HELD))
            else:
                alive = _owner_alive(self._owners, owner)
            if not alive:
                released += db.execute(
                    "UPDATE reservation SET state = 'released', settled_at = ? WHERE owner = ? AND state = 'reserved'",
                    (_now(), owner),
                ).rowcount
        return released


def _used(db: sqlite3.Connection, dataset: str, project: str | None = None) -> float:
    """Committed plus reserved charge (rho) on a dataset, for one project or (None) across all projects."""
    scope, args = ("AND project = ?", (dataset, project)) if project is not None else ("", (dataset,))
    (used,) = db.execute(
        f"SELECT TOTAL({_CHARGE}) FROM reservation WHERE dataset = ? {scope} AND state IN ('reserved', 'committed')",
        args,
    ).fetchone()
    return float(used)


def _shortfall(
    db: sqlite3.Connection, project: str, dataset: str, spend: Spend, cap: float, dataset_cap: float | None
) -> str:
    """Empty if ``spend`` fits under both caps; otherwise which cap it passes, what is left and what was asked."""
    asked = spend.describe()
    left = cap - _used(db, dataset, project)
    if spend.charge > left + TOLERANCE:
        return (
            f"budget exhausted for project {project!r} on dataset {dataset!r}: rho {max(0.0, left):.6g} left, "
            f"{asked} asked"
        )
    if dataset_cap is not None:
        left = dataset_cap - _used(db, dataset)
        if spend.charge > left + TOLERANCE:
            return (
                f"budget exhausted on dataset {dataset!r} across all projects (the node's cap for the dataset): "
                f"rho {max(0.0, left):.6g} left, {asked} asked"
            )
    return ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), waiting for other processes and objects."""
    with open(path, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _hold_owner_lock(folder: Path, owner: str) -> BinaryIO:
    """Create ``<owner>.lock`` already locked (made under a temporary name, then renamed) and keep it open.

    Creating it locked means a process tidying dead owners' files can never take it for a dead one's.
    """
    temporary = folder / f"{owner}.tmp"
    handle = open(temporary, "wb", buffering=0)  # noqa: SIM115 - held open for the ledger's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        temporary.rename(folder / f"{owner}.lock")
    except OSError:
        handle.close()
        raise
    return handle


def _owner_alive(folder: Path, owner: str) -> bool:
    """Whether the process that opened ledger ``owner`` still holds its lock; a dead owner's file is removed."""
    path = folder / f"{owner}.lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        path.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)
