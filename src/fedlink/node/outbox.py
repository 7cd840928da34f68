"""A node's outbox: the answers it has prepared for queries, kept on disk until the coordinator settles them.

In the two-phase protocol a node computes its noisy (and, for he+dp, encrypted) answer when it
prepares, keeps it here, and lets it leave only once the coordinator has decided to commit and the
node has committed its budget. Kept on disk, the answer survives a crash of the node after it
committed: the restarted node sends the same answer again instead of losing what was paid for. An
entry is dropped when the coordinator says it has stored the result (or aborted the query).

An entry holds only what would cross the wire anyway: the task (plan, project, loss; no data) and the
answer (DP-noised vectors, ciphertexts under the analyst's key, or masked model statistics). Files are
written atomically with mode 0600.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedlink.errors import BadInput, Fault
from fedlink.protocol.blobs import pack, unpack

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class Prepared:
    """One prepared answer: the task it answers (JSON), the reply kind and its body."""

    task: bytes
    kind: str
    body: bytes


class Outbox:
    """Prepared answers in ``folder``, one file per query id."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Fault(f"cannot create the node's outbox at {self.folder}: {exc}; check the folder") from exc

    def _path(self, query_id: str) -> Path:
        if not _ID.fullmatch(query_id):
            raise BadInput(f"invalid query id {query_id[:40]!r}; query ids are letters, digits, '_' and '-'")
        return self.folder / f"{query_id}.answer"

    def put(self, query_id: str, prepared: Prepared) -> None:
        """Keep ``prepared`` for ``query_id``, on disk when this returns."""
        body = pack(prepared.task, [prepared.kind.encode(), prepared.body])
        fd, tmp = tempfile.mkstemp(prefix=".answer-", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path(query_id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, query_id: str) -> Prepared | None:
        try:
            raw = self._path(query_id).read_bytes()
        except FileNotFoundError:
            return None
        task, (kind, body) = unpack(raw)
        return Prepared(task, kind.decode(), body)

    def drop(self, query_id: str) -> None:
        self._path(query_id).unlink(missing_ok=True)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.answer"))
