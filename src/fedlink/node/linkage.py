"""A node's side of record linkage: its key-agreement card, the link secret, keyed encodings of its
own people, and the slots the linkage unit assigns them; or, in the PSI mode (no link secret), its
match keys hashed to secp256k1 and blinded with a scalar of its own, and other nodes' points re-blinded.

The node turns the identifier columns of the tables a project may use into one list of *people*
(records with identical identifiers are one person: at most one record per node in an entity), in a
random order that it keeps to itself. It sends the linkage unit only keyed encodings in that order,
and receives back one slot per person. Identifiers, record ids and the order never leave the node.
"""

from __future__ import annotations

import heapq
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from fedlink.errors import Fault, PolicyRefused
from fedlink.linkage.encode import EncodedRecords, TierMessages, concatenate, derive_keys, encode, match_key_rows
from fedlink.linkage.normalise import normalise
from fedlink.linkage.payload import slots_from_bytes, to_bytes
from fedlink.linkage.schema import load_schema
from fedlink.node.config import NodeConfig, TableDecl
from fedlink.node.data import NodeData
from fedlink.pets import psi
from fedlink.pets.keyagree import Envelope, LinkKeyCard, NodeKeyAgreement

log = logging.getLogger("fedlink.node")
IDENTIFIERS = ("first_name", "last_name", "dob", "sex", "postcode")
#: People per batch out of a backend through normalisation and encoding (bounds the working memory).
PEOPLE_PER_BATCH = 200_000


def _text(column: str) -> exp.Expr:
    return exp.Coalesce(this=exp.cast(exp.column(column, quoted=True), "text"), expressions=[exp.Literal.string("")])


def _keyed_hash(key: str) -> exp.Expr:
    """MD5 (hex) of a fresh key and a record's identifiers, separated: a secret, uniform order of people
    that the same SQL gives in every backend."""
    parts: list[exp.Expr] = [exp.Literal.string(key)]
    for column in IDENTIFIERS:
        parts += [exp.Literal.string("\x1f"), _text(column)]
    return exp.MD5(this=exp.Concat(expressions=parts))


#: A PSI run's scalar is forgotten once the node has its slots, or after this long.
PSI_RUN_TTL_S = 3600.0


@dataclass(frozen=True)
class _PsiRun:
    scalar: bytes
    tiers: dict[str, TierMessages]
    started: float


@dataclass(frozen=True)
class LinkRequest:
    project: str
    analyst: str


class NodeLinkage:
    def __init__(self, config: NodeConfig, data: NodeData, state: Path) -> None:
        self.config = config
        self.data = data
        self.state = state
        tls = config.tls_files()
        cert, key, ca = tls.read()
        self.keys = NodeKeyAgreement(config.name, state / "keys", cert, key, ca)
        #: (project, run) -> this node's PSI scalar and prepared values for the run; memory only.
        self._runs: dict[tuple[str, str], _PsiRun] = {}
        self._lock = threading.Lock()

    def _folder(self, project: str) -> Path:
        return self.state / "linkage" / project

    def linkable_tables(self, project: str, analyst: str) -> list[TableDecl]:
        approval = self.config.approval(project)
        if approval is None:
            raise PolicyRefused(f"node '{self.config.name}' refuses: project '{project}' is not approved by this node")
        if approval.analysts is not None and analyst not in approval.analysts:
            raise PolicyRefused(
                f"node '{self.config.name}' refuses: analyst '{analyst}' is not approved for '{project}'"
            )
        names = approval.tables or tuple(self.data.tables)
        tables = []
        for name in names:
            table = self.data.tables[name]
            kinds = {c.name: c.kind for c in table.columns}
            if all(kinds.get(column) == "identifier" for column in IDENTIFIERS):
                tables.append(table)
        if not tables:
            raise PolicyRefused(
                f"node '{self.config.name}' has no table with identifier columns "
                f"{', '.join(IDENTIFIERS)} for '{project}'"
            )
        return tables

    def card(self) -> LinkKeyCard:
        return self.keys.card()

    def initiate(self, request: LinkRequest, cards: list[LinkKeyCard]) -> list[Envelope]:
        self.linkable_tables(request.project, request.analyst)
        return self.keys.initiate(request.project, cards)

    def receive(self, request: LinkRequest, envelope: Envelope) -> None:
        self.linkable_tables(request.project, request.analyst)
        if envelope.project != request.project:
            raise PolicyRefused(f"an envelope for project '{envelope.project}' arrived for '{request.project}'")
        self.keys.store(request.project, self.keys.open(envelope))

    def encode(self, request: LinkRequest) -> bytes:
        """Keyed encodings of this node's people, in a random order this node keeps."""
        tables = self.linkable_tables(request.project, request.analyst)
        secret = self.keys.secret(request.project)
        if secret is None:
            raise PolicyRefused(
                f"node '{self.config.name}' holds no link secret for '{request.project}'; run `fedlink link`"
            )
        folder = self._folder(request.project)
        folder.mkdir(parents=True, exist_ok=True)
        schema = load_schema()
        keys = derive_keys(secret, request.project, schema)
        parts: list[EncodedRecords] = []
        self._people(tables, folder, lambda batch: parts.append(encode(normalise(batch), schema, keys)))
        encoded = concatenate(parts)
        log.info("encoded %d people for project '%s'", encoded.count, request.project)
        return to_bytes(encoded)

    def psi_start(self, request: LinkRequest, run: str) -> tuple[int, dict[str, tuple[int, np.ndarray]]]:
        """PSI mode: draw this run's scalar and, per match-key tier, put this node's *distinct* values
        in a secret random order (a position says nothing about a value; equal values of two people are
        one, so other nodes never see how often a value occurs here). Returns the number of people and,
        per tier, the number of distinct values and each person's position (-1: a field missing); the
        blinded points themselves are fetched in batches (:meth:`psi_points`)."""
        tables = self.linkable_tables(request.project, request.analyst)
        folder = self._folder(request.project)
        folder.mkdir(parents=True, exist_ok=True)
        schema = load_schema()
        batches: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        count = self._people(tables, folder, lambda batch: batches.append(match_key_rows(normalise(batch), schema)))
        rng = np.random.default_rng(int.from_bytes(secrets.token_bytes(16), "big"))
        tiers = {tier: TierMessages.of([b[tier] for b in batches]).shuffled(rng) for tier, _ in schema.match_keys}
        with self._lock:
            now = time.monotonic()
            for key in [k for k, held in self._runs.items() if now - held.started > PSI_RUN_TTL_S]:
                del self._runs[key]
            self._runs[(request.project, run)] = _PsiRun(psi.new_scalar(), tiers, now)
        log.info("prepared the match keys of %d people for project '%s' (PSI)", count, request.project)
        return count, {tier: (len(m), m.index) for tier, m in tiers.items()}

    def _run(self, request: LinkRequest, run: str) -> _PsiRun:
        self.linkable_tables(request.project, request.analyst)
        with self._lock:
            held = self._runs.get((request.project, run))
        if held is None:
            raise PolicyRefused(
                f"node '{self.config.name}' holds no PSI run {run[:8]} for '{request.project}'; "
                "run `fedlink link --mode psi` again"
            )
        return held

    def psi_points(self, request: LinkRequest, run: str, tier: str, start: int, stop: int) -> bytes:
        """PSI mode: this node's distinct values ``start:stop`` of ``tier``, hashed to the group and
        multiplied by this run's scalar."""
        held = self._run(request, run)
        messages = held.tiers.get(tier)
        if messages is None or not 0 <= start <= stop <= len(messages):
            raise PolicyRefused(f"node '{self.config.name}' has no values {start}:{stop} of tier '{tier}'")
        return psi.hash_and_blind(messages.messages(start, stop), psi.domain(request.project, tier), held.scalar)

    def psi_blind(self, request: LinkRequest, run: str, blobs: list[bytes], final: bool) -> list[bytes]:
        """PSI mode: other nodes' points times this node's scalar of ``run`` (digests when ``final``)."""
        held = self._run(request, run)
        return [psi.reblind(blob, held.scalar, final=final) for blob in blobs]

    def _people(
        self, tables: list[TableDecl], folder: Path, consume: Callable[[dict[str, list[str | None]]], None]
    ) -> int:
        """The node's people, streamed out of each table's backend in batches: records with identical
        identifiers (in any of ``tables``) are one person, and people come in the order of a keyed
        hash of their identifiers under a fresh random key, so a position says nothing about anyone.
        ``consume`` gets each batch (identifier column -> values); then records.parquet maps every
        record (source_table, record_id) to its person. Returns the number of people."""
        key = secrets.token_hex(16)
        hashes: list[np.ndarray] = []
        count = 0
        streams = [self._distinct(table, key) for table in tables]
        batch: dict[str, list[str | None]] = {c: [] for c in IDENTIFIERS}
        digests: list[bytes] = []
        last = b""
        for digest, *values in heapq.merge(*streams, key=lambda r: r[0]):
            if digest <= last:
                if digest == last:
                    continue  # the same identifiers in another table: the same person
                raise Fault(f"node '{self.config.name}': a backend returned people out of order; nothing was linked")
            last = digest
            digests.append(digest)
            for column, value in zip(IDENTIFIERS, values, strict=True):
                batch[column].append(value)
            count += 1
            if len(digests) >= PEOPLE_PER_BATCH:
                consume(batch)
                hashes.append(np.array(digests, dtype="S32"))
                batch, digests = {c: [] for c in IDENTIFIERS}, []
        if digests or not count:
            consume(batch)
            hashes.append(np.array(digests, dtype="S32"))
        ordered = np.concatenate(hashes) if hashes else np.zeros(0, "S32")
        schema = pa.schema([("source_table", pa.string()), ("record_id", pa.string()), ("person", pa.int64())])
        with pq.ParquetWriter(folder / "records.parquet", schema) as writer:
            for table in tables:
                query = exp.select(
                    exp.alias_(exp.cast(exp.column("record_id", quoted=True), "text"), "record_id"),
                    exp.alias_(_keyed_hash(key), "h"),
                ).from_(self.data.relation(table))
                for columns in self.data.stream(table, query):
                    found = np.asarray(columns["h"], dtype="S32")
                    person = np.searchsorted(ordered, found)
                    if len(found) and not np.array_equal(ordered[np.minimum(person, len(ordered) - 1)], found):
                        raise Fault(
                            f"node '{self.config.name}': records changed while linking; run `fedlink link` again"
                        )
                    writer.write_table(
                        pa.table(
                            {
                                "source_table": pa.array([table.name] * len(found), pa.string()),
                                "record_id": pa.array(columns["record_id"], pa.string()),
                                "person": pa.array(person, pa.int64()),
                            },
                            schema=schema,
                        )
                    )
        return count

    def _distinct(self, table: TableDecl, key: str) -> Iterator[tuple[bytes, *tuple[str | None, ...]]]:
        """(keyed hash, identifiers...) of each distinct identifier tuple of ``table``, by hash."""
        columns = [exp.alias_(_text(c), c) for c in IDENTIFIERS]
        query = (
            exp.select(exp.alias_(_keyed_hash(key), "h"), *columns)
            .from_(self.data.relation(table))
            .distinct()
            .order_by(exp.column("h"))
        )
        for batch in self.data.stream(table, query):
            hashes = [str(h).encode() for h in batch["h"]]
            values = [[None if v is None or v == "" else str(v) for v in batch[c]] for c in IDENTIFIERS]
            yield from zip(hashes, *values, strict=True)

    def store_slots(self, request: LinkRequest, blob: bytes, spine_id: str = "") -> int:
        slots = slots_from_bytes(blob)
        folder = self._folder(request.project)
        with duckdb.connect(":memory:") as con:
            query = f"SELECT COUNT(DISTINCT person) FROM read_parquet('{folder / 'records.parquet'}')"
            people = con.execute(query).fetchone()
        if people is None or int(people[0]) != len(slots):
            raise PolicyRefused(f"node '{self.config.name}' received {len(slots)} slots for a different person list")
        np.save(folder / "slots.npy", slots, allow_pickle=False)
        (folder / "spine.json").write_text(json.dumps({"spine_id": spine_id}))
        with self._lock:  # a PSI run of this project is over
            for key in [k for k in self._runs if k[0] == request.project]:
                del self._runs[key]
        return len(slots)

    def spine_id(self, project: str) -> str | None:
        """The id of the spine whose slots this node holds for ``project`` (None before any link)."""
        path = self._folder(project) / "spine.json"
        if not path.exists() or not (self._folder(project) / "slots.npy").exists():
            return None
        return str(json.loads(path.read_text()).get("spine_id") or "") or None

    def slots(self, project: str) -> tuple[Path, np.ndarray]:
        """(records.parquet with source_table, record_id, person; slot of each person) of the last link."""
        folder = self._folder(project)
        return folder / "records.parquet", np.load(folder / "slots.npy", allow_pickle=False)
