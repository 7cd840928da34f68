"""Published outcomes: analysts' plain-language summaries of their projects' released outputs.

An analyst on a project publishes a summary for some of the project's released outputs (or, naming
none, for all of them). The coordinator checks each output against its query journal (released, of
this project, not withheld by disclosure control), builds the :class:`Publication` from the journal's
record of each query (the text, PET, datasets and privacy loss its register entry already shows: no
value), stores it and records it on its register, both or neither.

Re-publishing: a new publication supersedes every current publication of the same project that names
any of the same outputs; publications about other outputs of the project stand beside it. Nothing is
deleted: the older publication stays in the store and on the register, marked as superseded.

The store is one SQLite file beside the register (``publications.sqlite``). A publication is inserted
and recorded on the register in one transaction that commits only once the register entry is on disk;
if the register refuses the entry, nothing is stored. Should the commit itself then fail, the register
holds a publication the store lacks: :meth:`PublicationStore.recover` restores it from the register
when the coordinator starts.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from pydantic import ValidationError

from fedlink.coordinator.journal import JournalEntry, QueryJournal
from fedlink.coordinator.projects import ProjectRegistry
from fedlink.errors import BadInput, Fault
from fedlink.plan.linked_query import LinkedPlan
from fedlink.protocol import rpc
from fedlink.protocol.publication import (
    REGISTER_KIND,
    OutputKind,
    Publication,
    PublishedOutput,
    PublishRequest,
    check_summary,
)
from fedlink.protocol.tasks import QueryTask
from fedlink.transparency.records import bounded
from fedlink.transparency.register import Register, RegisterEntry

_SCHEMA = """CREATE TABLE IF NOT EXISTS publication (
    publication_id TEXT PRIMARY KEY,
    project        TEXT NOT NULL,
    published_at   TEXT NOT NULL,
    body           TEXT NOT NULL,
    superseded_by  TEXT
)"""


class PublicationStore:
    """The coordinator's publications in the SQLite file ``path`` (created if missing); thread safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a publication is promised once stored
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise Fault(f"cannot open the coordinator's publications at {self.path}: {exc}; check the folder") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise Fault(f"the coordinator's publications at {self.path} failed: {exc}; check the disk") from exc

    def add(self, publication: Publication, register: Register) -> Publication:
        """Store ``publication`` (its ``supersedes`` set here: the current publications of its project
        that name any of its outputs) and record it on ``register``, together; returns it as stored."""
        with self._transaction() as db:
            named = set(publication.query_ids)
            current = self._current(db, publication.project)
            replaced = tuple(p.publication_id for p in current if named & set(p.query_ids))
            stored = publication.model_copy(update={"supersedes": replaced})
            self._insert(db, stored)
            register.append(REGISTER_KIND, stored.register_fields())  # on disk before the commit below
        return stored

    def publications(self, project: str | None = None) -> list[Publication]:
        """Every publication (of ``project``), oldest first, superseded ones included."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM publication WHERE ?1 IS NULL OR project = ?1 ORDER BY published_at, rowid",
                (project,),
            ).fetchall()
        return [Publication.model_validate_json(body) for (body,) in rows]

    def current(self, project: str) -> list[Publication]:
        """The publications of ``project`` that no later one superseded, oldest first."""
        with self._lock:
            return self._current(self._db, project)

    def superseded_by(self, publication_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT superseded_by FROM publication WHERE publication_id = ?", (publication_id,)
            ).fetchone()
        return None if row is None else row[0]

    def recover(self, entries: Iterable[RegisterEntry]) -> int:
        """Store every publication the register records but the store lacks (its commit failed after
        the register entry was written); returns how many were restored."""
        restored = 0
        with self._transaction() as db:
            known = {row[0] for row in db.execute("SELECT publication_id FROM publication")}
            for entry in entries:
                if entry.kind != REGISTER_KIND or entry.fields.get("publication_id") in known:
                    continue
                try:
                    publication = Publication.model_validate(entry.fields)
                except ValidationError as exc:
                    raise Fault(
                        f"register entry {entry.seq} is not a valid publication ({exc.errors()[0]['msg']}); "
                        "run `fedlink register verify`"
                    ) from exc
                self._insert(db, publication)
                known.add(publication.publication_id)
                restored += 1
        return restored

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _current(db: sqlite3.Connection, project: str) -> list[Publication]:
        rows = db.execute(
            "SELECT body FROM publication WHERE project = ? AND superseded_by IS NULL ORDER BY published_at, rowid",
            (project,),
        ).fetchall()
        return [Publication.model_validate_json(body) for (body,) in rows]

    @staticmethod
    def _insert(db: sqlite3.Connection, publication: Publication) -> None:
        db.execute(
            "INSERT INTO publication (publication_id, project, published_at, body) VALUES (?, ?, ?, ?)",
            (publication.publication_id, publication.project, publication.published_at, publication.model_dump_json()),
        )
        for older in publication.supersedes:
            db.execute(
                "UPDATE publication SET superseded_by = ? WHERE publication_id = ? AND superseded_by IS NULL",
                (publication.publication_id, older),
            )


def publish(
    request: PublishRequest,
    analyst: str,
    projects: ProjectRegistry,
    journal: QueryJournal,
    store: PublicationStore,
    register: Register,
) -> Publication:
    """Check ``request`` from ``analyst`` and publish it: stored and on ``register``, or, on any bad
    input, nothing written anywhere."""
    project = projects.get(request.project)
    project.check(analyst, [])
    summary = check_summary(request.summary)
    if request.results:
        named = list(dict.fromkeys(request.results))  # each output once, in the order given
        entries = [_released_output(journal, project.id, query_id) for query_id in named]
    else:
        entries = [e for e in journal.in_state("released") if e.project == project.id and e.reply != rpc.ERROR]
        if not entries:
            raise BadInput(f"project '{project.id}' has no released outputs yet; run its queries first, then publish")
    publication = Publication(
        publication_id=uuid.uuid4().hex,
        project=project.id,
        analyst=analyst,
        published_at=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        summary=summary,
        outputs=tuple(_output(entry) for entry in entries),
    )
    return store.add(publication, register)


def _released_output(journal: QueryJournal, project: str, query_id: str) -> JournalEntry:
    """The journal's entry of ``query_id`` if it is a released output of ``project``; else why not."""
    entry = journal.get(query_id)
    shown = query_id[:8]
    if entry is None:
        raise BadInput(f"no result {shown} at this coordinator; check the id (`fedlink result list`)")
    if entry.project != project:
        raise BadInput(f"result {shown} belongs to project '{entry.project}', not '{project}'; publish it there")
    if entry.state == "failed":
        raise BadInput(f"result {shown} failed and released nothing; there is nothing to publish")
    if entry.state != "released":
        raise BadInput(
            f"result {shown} is not released yet ({entry.state}); collect it with `fedlink result get {query_id}` "
            "once its nodes have answered, then publish"
        )
    if entry.reply == rpc.ERROR:
        raise BadInput(
            f"result {shown} was withheld by disclosure control and released nothing; there is nothing to publish"
        )
    return entry


def _output(entry: JournalEntry) -> PublishedOutput:
    task = QueryTask.model_validate_json(entry.task)
    plan = task.plan
    datasets = plan.datasets() if isinstance(plan, LinkedPlan) else [f"{node}.{plan.table}" for node in plan.nodes]
    return PublishedOutput(
        query_id=entry.query_id,
        kind=cast(OutputKind, entry.kind),  # the journal's kinds are its finishers': the same three names
        query=bounded(plan.sql),
        pet=task.pet_label,
        datasets=tuple(datasets),
        privacy_loss={node: task.loss for node in plan.nodes},
    )
