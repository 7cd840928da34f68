"""The coordinator's query journal: every query's phase, the answers committed nodes delivered, and the
result kept (sealed to the analyst) until the analyst collects it.

One SQLite file beside the coordinator's register. A query is ``running`` from its start until the
coordinator decides; ``committing`` once every node has prepared and the coordinator decided to commit
(written before any node is told to commit, so a restarted coordinator knows what it promised);
``released`` once every node's answer is in and the result is stored; ``failed`` if it ended before
the decision (nothing was spent anywhere). A node's answer is stored as it arrives, so a crash of the
coordinator or a node after some nodes committed loses nothing: the query completes when the missing
nodes answer again (on reconnection, or when the analyst asks for the result).

Nothing here is readable data: answers are ciphertexts under the analyst's key, noisy vectors (dp,
which the coordinator computes on anyway), or masked model statistics; the stored result is sealed to
the analyst (:mod:`fedlink.pets.sealed`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fedlink.errors import BadInput, Fault

State = Literal["running", "committing", "released", "failed"]
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS query (
    query_id  TEXT PRIMARY KEY,
    analyst   TEXT NOT NULL,
    project   TEXT NOT NULL,
    kind      TEXT NOT NULL,
    state     TEXT NOT NULL CHECK (state IN ('running', 'committing', 'released', 'failed')),
    nodes     TEXT NOT NULL,
    task      TEXT NOT NULL,
    extra     BLOB NOT NULL,
    recipient TEXT NOT NULL,
    reason    TEXT,
    reply     TEXT,
    result    BLOB,
    created   TEXT NOT NULL,
    settled   TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS answer (
    query_id TEXT NOT NULL,
    node     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    body     BLOB NOT NULL,
    PRIMARY KEY (query_id, node)
    )""",
)


@dataclass(frozen=True)
class Finished:
    """A query's result as the coordinator releases it: the reply kind and body for the analyst, and
    what its register records (the released table, or who alone can decrypt it)."""

    reply: str
    body: bytes
    released: dict[str, Any] | None
    encrypted_for: str | None


@dataclass(frozen=True)
class JournalEntry:
    """One query as the journal holds it."""

    query_id: str
    analyst: str
    project: str
    kind: str
    state: State
    nodes: tuple[str, ...]
    task: str
    extra: bytes
    recipient: str
    reason: str | None
    reply: str | None
    result: bytes | None


class QueryJournal:
    """The journal at ``path`` (created if missing); safe across the coordinator's threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise Fault(f"cannot open the coordinator's query journal at {self.path}: {exc}; check the folder") from exc

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable`` ones (a decision, a stored result) reach the disk before
        this returns, the others (a start, a failure, an answer that the node also keeps until the result
        is stored) may be lost to a power cut without harm: recovery treats them as never written."""
        with self._lock:
            try:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise Fault(f"the coordinator's query journal at {self.path} failed: {exc}; check the disk") from exc

    def begin(
        self,
        query_id: str,
        *,
        analyst: str,
        project: str,
        kind: str,
        nodes: tuple[str, ...],
        task: str,
        extra: bytes,
        recipient: str,
    ) -> None:
        """Record a new query as running; refuses an id used before (a replayed or reused query id)."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM query WHERE query_id = ?", (query_id,)).fetchone():
                raise BadInput(f"query id {query_id[:8]} was used before; every query needs a fresh id")
            db.execute(
                "INSERT INTO query (query_id, analyst, project, kind, state, nodes, task, extra, recipient, created) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (query_id, analyst, project, kind, json.dumps(list(nodes)), task, extra, recipient, _now()),
            )

    def decide(self, query_id: str) -> None:
        """Every node has prepared: the coordinator commits (before telling any node)."""
        self._move(query_id, "running", "committing")

    def fail(self, query_id: str, reason: str) -> bool:
        """End a query before its decision; False if it was already decided (then it cannot fail)."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE query SET state = 'failed', reason = ?, settled = ? WHERE query_id = ? AND state = 'running'",
                (reason, _now(), query_id),
            ).rowcount
        return bool(changed)

    def add_answer(self, query_id: str, node: str, kind: str, body: bytes) -> None:
        """Keep a committed node's answer (the first copy wins: a node re-sends the same answer)."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO answer (query_id, node, kind, body) VALUES (?, ?, ?, ?)",
                (query_id, node, kind, body),
            )

    def answers(self, query_id: str) -> dict[str, tuple[str, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT node, kind, body FROM answer WHERE query_id = ?", (query_id,)).fetchall()
        return {node: (kind, bytes(body)) for node, kind, body in rows}

    def release(self, query_id: str, reply: str, result: bytes) -> None:
        """Store the finished result (sealed to the analyst) and drop the nodes' answers (durably: the
        nodes drop their copies once this returns)."""
        with self._write(durable=True) as db:
            db.execute(
                "UPDATE query SET state = 'released', reply = ?, result = ?, settled = ? "
                "WHERE query_id = ? AND state = 'committing'",
                (reply, result, _now(), query_id),
            )
            db.execute("DELETE FROM answer WHERE query_id = ?", (query_id,))

    def get(self, query_id: str) -> JournalEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT query_id, analyst, project, kind, state, nodes, task, extra, recipient, reason, reply, result "
                "FROM query WHERE query_id = ?",
                (query_id,),
            ).fetchone()
        return None if row is None else _entry(row)

    def in_state(self, state: State) -> list[JournalEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT query_id, analyst, project, kind, state, nodes, task, extra, recipient, reason, reply, result "
                "FROM query WHERE state = ? ORDER BY created",
                (state,),
            ).fetchall()
        return [_entry(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _move(self, query_id: str, before: State, after: State) -> None:
        with self._write(durable=True) as db:  # a decision must survive a power cut
            changed = db.execute(
                "UPDATE query SET state = ? WHERE query_id = ? AND state = ?", (after, query_id, before)
            ).rowcount
        if not changed:
            raise Fault(f"query {query_id[:8]} is no longer {before}; it cannot become {after}")


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    query_id, analyst, project, kind, state, nodes, task, extra, recipient, reason, reply, result = row
    return JournalEntry(
        query_id=query_id,
        analyst=analyst,
        project=project,
        kind=kind,
        state=state,
        nodes=tuple(json.loads(nodes)),
        task=task,
        extra=bytes(extra),
        recipient=recipient,
        reason=reason,
        reply=reply,
        result=None if result is None else bytes(result),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
