"""The transparency register: an append-only, hash-chained log of what each party did and why.

The coordinator and every node keep one register each, a JSON Lines file. Each line is one
:class:`RegisterEntry` written in canonical JSON (sorted keys, no whitespace, UTF-8). An entry's
``hash`` is the SHA-256 of the canonical JSON of all its other fields, ``prev_hash`` included, so
each entry commits to every entry before it. The register is public by design: entries say who
asked, under which project, for what purpose, with which query, at what privacy loss and what was
released. They never hold identifiers or row-level data; callers are responsible for passing only
such fields.

Beside ``<name>`` sits ``<name>.head``, a small JSON file ``{"seq": N, "hash": H}`` naming the last
entry, replaced atomically after every append, and ``<name>.lock``, the lock that serialises
appends across threads and processes.

:meth:`Register.verify` detects an edited field (hash mismatch, or a line no longer in canonical
form), a deleted, inserted or reordered line (seq gap, prev_hash mismatch), a malformed line, and a
log whose end does not match its head file (entries cut from or added to the end). Appending to a
register whose log does not match its head file is refused, so that a truncation cannot be
papered over by the next append.

Residual risk: the register holds no secret, so anyone who can write the files can rewrite the log
from some entry onwards, recompute every hash and replace the head file to match. A register on its
own cannot detect that. It is detected by comparing with the other parties' registers (every query
is recorded by the coordinator and by each node it touched) and with published copies: the public
export states each register's head hash, and any later copy whose chain does not pass through that
hash has been rewritten.

A stopped process can leave the log one entry ahead of its head file (it stops between writing the
entry and replacing the head); verify reports that as entries added without updating the head, and
appends are refused until an operator has checked the entry and restored the head file.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedlink.errors import BadInput, Fault

GENESIS = "0" * 64
_KIND = re.compile(r"[a-z][a-z0-9_]*")
_ENTRY_KEYS = frozenset({"seq", "time", "party", "kind", "fields", "prev_hash", "hash"})
# Appends within one process also take a process-wide lock: flock alone is enough between open
# file descriptions, but this keeps one process's threads from contending on the same lock file.
_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
#: Where :func:`appended_here` collects the entries appended in its block (None outside one).
_APPENDED_HERE: ContextVar[list[RegisterEntry] | None] = ContextVar("fedlink_register_appended_here", default=None)


@dataclass(frozen=True)
class RegisterEntry:
    """One line of a register."""

    seq: int
    time: str
    party: str
    kind: str
    fields: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object (a deep copy: changing it does not change the entry)."""
        return {
            "seq": self.seq,
            "time": self.time,
            "party": self.party,
            "kind": self.kind,
            "fields": copy.deepcopy(self.fields),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of checking one register: ``problems`` holds one line per thing found wrong."""

    ok: bool
    entries: int
    problems: tuple[str, ...]


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8, finite numbers only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def entry_hash(seq: int, time: str, party: str, kind: str, fields: Mapping[str, Any], prev_hash: str) -> str:
    """The hex SHA-256 that an entry with these fields must carry."""
    body = {"seq": seq, "time": time, "party": party, "kind": kind, "fields": fields, "prev_hash": prev_hash}
    return hashlib.sha256(canonical(body)).hexdigest()


def head_path(path: Path) -> Path:
    """Where the head file of the register at ``path`` lives."""
    return path.with_name(path.name + ".head")


def lock_path(path: Path) -> Path:
    """Where the lock file of the register at ``path`` lives."""
    return path.with_name(path.name + ".lock")


class Register:
    """One party's transparency register at ``path``, kept by ``party``."""

    def __init__(self, path: Path, party: str, *, clock: Callable[[], datetime] | None = None) -> None:
        """``clock`` gives the time recorded in each entry (UTC now unless given; tests pass a fixed one)."""
        if not isinstance(party, str) or not party.strip():
            raise BadInput("a register needs the name of the party that keeps it, e.g. 'coordinator'")
        self.path = Path(path)
        self.party = party
        self._clock = clock or (lambda: datetime.now(UTC))
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, kind: str, fields: Mapping[str, Any]) -> RegisterEntry:
        """Record one entry and return it; safe across threads and processes, on disk when it returns."""
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise BadInput(f"register entry kind {kind!r} is not a lower-case name such as 'query' or 'test_mode'")
        payload = _normalised(fields)
        with _locked(self.path, exclusive=True):
            last = self._appendable_after()
            seq = 1 if last is None else last.seq + 1
            prev = GENESIS if last is None else last.hash
            time = self._clock().astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            digest = entry_hash(seq, time, self.party, kind, payload, prev)
            entry = RegisterEntry(seq, time, self.party, kind, payload, prev, digest)
            _append_line(self.path, canonical(entry.to_json()) + b"\n")
            _write_head(self.path, seq, digest)
        collected = _APPENDED_HERE.get()
        if collected is not None:
            collected.append(entry)
        return RegisterEntry(seq, time, self.party, kind, copy.deepcopy(payload), prev, digest)

    def check_appendable(self) -> None:
        """Raise as :meth:`append` would if the register cannot take an entry now (its end does not match
        its head file, or another party keeps it), without writing anything."""
        with _locked(self.path, exclusive=True):
            self._appendable_after()

    def _appendable_after(self) -> RegisterEntry | None:
        """The last entry, once the log is known to end where its head says and to be this party's."""
        last = _last_entry(self.path)
        _check_head_before_append(self.path, last)
        if last is not None and last.party != self.party:
            raise BadInput(f"register {self.path} is kept by '{last.party}', not '{self.party}'; open it as that party")
        return last

    def entries(self) -> list[RegisterEntry]:
        """Every entry, in order; raises :class:`Fault` if a line is not a valid entry (run verify)."""
        with _locked(self.path, exclusive=False):
            scan = _scan(self.path)
        if scan.unreadable:
            number, problem = scan.unreadable[0]
            raise Fault(f"register {self.path} line {number} is not a valid entry ({problem}); run verify on it")
        return [entry for _, entry in scan.entries]

    def verify(self) -> VerifyReport:
        """Check the chain, every hash, the head file, and that this party kept every entry."""
        if not self.path.exists() and not head_path(self.path).exists():
            return VerifyReport(ok=True, entries=0, problems=())
        with _locked(self.path, exclusive=False):
            scan = _scan(self.path)
        return _verify(scan, self.party)


@contextmanager
def appended_here() -> Iterator[list[RegisterEntry]]:
    """Collect the entries this thread appends to any register during the block (in order), so a
    caller can tell whether the work it ran already recorded itself. The block must not span a
    ``yield``: the collection belongs to the thread's context."""
    collected: list[RegisterEntry] = []
    token = _APPENDED_HERE.set(collected)
    try:
        yield collected
    finally:
        _APPENDED_HERE.reset(token)


def verify_register(path: Path, party: str | None = None) -> VerifyReport:
    """Check the register at ``path`` (a live one or a published copy).

    Every entry must be kept by ``party``; without it, by whoever kept the first entry.
    """
    return read_register(path, party)[1]


def read_register(path: Path, party: str | None = None) -> tuple[tuple[RegisterEntry, ...], VerifyReport]:
    """The entries of the register at ``path`` that parse, and its verify report, from one snapshot.

    Unlike :meth:`Register.entries` this does not fail on a damaged register: the public export
    shows what can be read and states what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no register at {path}; give the path of a register file (JSON Lines)")
    with _locked(path, exclusive=False):
        scan = _scan(path)
    return tuple(entry for _, entry in scan.entries), _verify(scan, party)


@dataclass(frozen=True)
class _Scan:
    """What a register file holds: the entries that parse (with their line numbers) and the lines that don't."""

    entries: tuple[tuple[int, RegisterEntry], ...]
    unreadable: tuple[tuple[int, str], ...]
    non_canonical: tuple[int, ...]
    head: tuple[int, str] | None
    head_problem: str | None


def _scan(path: Path) -> _Scan:
    """Parse the register at ``path`` leniently: every line that parses, and why the others don't."""
    entries: list[tuple[int, RegisterEntry]] = []
    unreadable: list[tuple[int, str]] = []
    non_canonical: list[int] = []
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    partial = lines.pop()  # empty when the file ends with a newline, as every complete register does
    for number, raw in enumerate(lines, start=1):
        try:
            entry = _parse(raw)
            written = canonical(entry.to_json())  # a number too large for a float reads as infinity
        except ValueError as exc:
            unreadable.append((number, str(exc)))
            continue
        entries.append((number, entry))
        if written != raw:
            non_canonical.append(number)
    if partial:
        unreadable.append((len(lines) + 1, "no newline at the end: the line was cut short or added by hand"))
    head, head_problem = _read_head(path)
    return _Scan(tuple(entries), tuple(unreadable), tuple(non_canonical), head, head_problem)


def _normalised(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` as it will read back from the file, so that the hash recomputes exactly."""
    if not isinstance(fields, Mapping):
        raise BadInput("register entry fields must be a mapping of names to JSON values")
    if not all(isinstance(k, str) for k in fields):
        raise BadInput("register entry field names must be strings")
    try:
        loaded = json.loads(canonical(dict(fields)))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"register entry fields must be JSON values with finite numbers: {exc}") from exc
    assert isinstance(loaded, dict)
    return loaded


def _parse(raw: bytes) -> RegisterEntry:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or set(obj) != _ENTRY_KEYS:
        raise ValueError("not an entry: expected exactly the keys " + ", ".join(sorted(_ENTRY_KEYS)))
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("seq is not an integer")
    for key in ("time", "party", "kind", "prev_hash", "hash"):
        if not isinstance(obj[key], str):
            raise ValueError(f"{key} is not a string")
    if not isinstance(obj["fields"], dict):
        raise ValueError("fields is not an object")
    return RegisterEntry(seq, obj["time"], obj["party"], obj["kind"], obj["fields"], obj["prev_hash"], obj["hash"])


def _verify(scan: _Scan, party: str | None) -> VerifyReport:
    found: list[tuple[int, str]] = [(n, f"line {n}: malformed: {why}") for n, why in scan.unreadable]
    found += [(n, f"line {n}: not in canonical form: the line was edited by hand") for n in scan.non_canonical]
    keeper = party if party is not None else (scan.entries[0][1].party if scan.entries else None)
    expected_seq, expected_prev, prev_line = 1, GENESIS, 0
    for number, entry in scan.entries:
        if entry_hash(entry.seq, entry.time, entry.party, entry.kind, entry.fields, entry.prev_hash) != entry.hash:
            found.append((number, f"line {number}: hash mismatch: the entry was edited"))
        if entry.seq != expected_seq:
            found.append(
                (
                    number,
                    f"line {number}: seq {entry.seq} where {expected_seq} was expected: an entry was deleted, "
                    "inserted or moved",
                )
            )
        if entry.prev_hash != expected_prev:
            before = f"line {prev_line}" if prev_line else "the start of the register"
            found.append(
                (
                    number,
                    f"line {number}: prev_hash does not match {before}: an entry was deleted, inserted, moved "
                    "or edited",
                )
            )
        if keeper is not None and entry.party != keeper:
            found.append((number, f"line {number}: kept by '{entry.party}' in a register kept by '{keeper}'"))
        # Carry on from this line as written, so one tampered line is reported once, not on every line after it.
        expected_seq, expected_prev, prev_line = entry.seq + 1, entry.hash, number
    problems = [text for _, text in sorted(found, key=lambda item: item[0])]
    problems += _head_problems(scan)
    return VerifyReport(ok=not problems, entries=len(scan.entries), problems=tuple(problems))


def _head_problems(scan: _Scan) -> list[str]:
    if scan.head_problem is not None:
        return [f"head: {scan.head_problem}"]
    last = scan.entries[-1][1] if scan.entries else None
    if scan.head is None:
        return (
            ["head: the head file is missing: the register cannot show that nothing was cut from its end"]
            if last
            else []
        )
    head_seq, head_hash = scan.head
    if last is None:
        return [f"head: the log has no entries but its head file names seq {head_seq}: the log was emptied"]
    if (last.seq, last.hash) == (head_seq, head_hash):
        return []
    where = (
        f"the last entry is seq {last.seq} ({last.hash[:12]}…) "
        f"but the head file names seq {head_seq} ({head_hash[:12]}…)"
    )
    if last.seq < head_seq:
        return [f"head: {where}: entries were removed from the end"]
    if last.seq > head_seq:
        return [f"head: {where}: entries were added to the end without updating the head"]
    return [f"head: {where}: the last entry was replaced"]


def _read_head(path: Path) -> tuple[tuple[int, str] | None, str | None]:
    head = head_path(path)
    if not head.exists():
        return None, None
    try:
        obj = json.loads(head.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, f"the head file {head.name} is not valid JSON"
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("seq"), int)
        or isinstance(obj.get("seq"), bool)
        or not isinstance(obj.get("hash"), str)
    ):
        return None, f"the head file {head.name} does not hold {{seq, hash}}"
    return (obj["seq"], obj["hash"]), None


def _last_entry(path: Path) -> RegisterEntry | None:
    """The last entry of the log, reading only its tail."""
    if not path.exists():
        return None
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        tail = b""
        position = size
        while position > 0 and tail.count(b"\n") < 2:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
    if not tail.endswith(b"\n"):
        raise Fault(f"register {path} ends in a partial line (an interrupted write?); run verify and restore it")
    raw = tail[:-1].rsplit(b"\n", 1)[-1]
    try:
        return _parse(raw)
    except ValueError as exc:
        raise Fault(f"register {path} ends in a malformed entry ({exc}); run verify and restore it") from None


def _check_head_before_append(path: Path, last: RegisterEntry | None) -> None:
    head, problem = _read_head(path)
    if problem is not None:
        raise Fault(f"register {path}: {problem}; run verify and restore it before appending")
    actual = None if last is None else (last.seq, last.hash)
    if head != actual:
        raise Fault(
            f"register {path} does not match its head file {head_path(path).name} (cut short or added to?); "
            "run verify and restore it from a published copy before appending"
        )


def _append_line(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_head(path: Path, seq: int, digest: str) -> None:
    head = head_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{head.name}.", suffix=".tmp", dir=head.parent)
    try:
        os.fchmod(fd, 0o644)  # public, like the log; mkstemp makes files private
        with os.fdopen(fd, "wb") as handle:
            handle.write(canonical({"seq": seq, "hash": digest}) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, head)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(head.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold the register's lock file; readers of a read-only published copy go without a lock."""
    key = path.resolve()
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
    with thread_lock:
        try:
            fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            if exclusive:
                raise
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)


def find_registers(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """``(party, file)`` for each path: a register file, or a folder searched for ``*/register.jsonl``
    (the layout of a federation's state folder: one sub-folder per party)."""
    found: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_dir():
            found.extend((p.parent.name, p) for p in sorted(path.glob("*/register.jsonl")))
        elif path.exists():
            found.append((path.parent.name, path))
        else:
            raise BadInput(f"no register at {path}; pass a register.jsonl file or a state folder holding them")
    if not found:
        raise BadInput("no registers found; pass register.jsonl files or a state folder (e.g. .fedlink/state)")
    return found
