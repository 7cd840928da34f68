"""A node's side of record linkage: its key-agreement card, the link secret, keyed encodings of its
own people, and the slots the linkage unit assigns them; or, in the PSI mode (no link secret), its
match keys hashed to secp256k1 and blinded with a scalar of its own, and other nodes' points re-blinded.

The node reads the identifier concepts of the project's linkage spec from the columns each of its
tables maps to them (``[tables.linkage]`` in ``node.toml``), and only the concepts its operator
approved for the project (``linkage_concepts`` of the approval): a concept a table does not map, or
the operator did not approve, is missing. It turns those columns of the tables the project may use
into one list of *people* (records with identical identifiers are one person: at most one record per
node in an entity), in a random order that it keeps to itself. It sends the linkage unit only keyed
encodings in that order, and receives back one slot per person. Identifiers, record ids and the
order never leave the node.
"""

from __future__ import annotations

import hashlib
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
from fedlink.linkage.concepts import ConceptOptions, normalise_concepts, valid_counts
from fedlink.linkage.encode import TierMessages, match_key_rows
from fedlink.linkage.fields import complete, derive_spec_keys, encode_spec, known_labels, subgroup_codes
from fedlink.linkage.payload import Spool, slots_from_bytes
from fedlink.linkage.spec import SUBGROUPS_BUILT_IN, LinkageSpec, spec_from_text
from fedlink.node.config import LinkageMapping, NodeConfig, TableDecl
from fedlink.node.data import NodeData, concept_text
from fedlink.pets import psi
from fedlink.pets.keyagree import Envelope, LinkKeyCard, NodeKeyAgreement
from fedlink.protocol.blobs import pack_file
from fedlink.protocol.linkage import EncodeAnswer, SubgroupLabels

log = logging.getLogger("fedlink.node")
#: People per batch out of a backend through normalisation and encoding (bounds the working memory).
PEOPLE_PER_BATCH = 200_000


def _keyed_hash(key: str, values: list[exp.Expr]) -> exp.Expr:
    """MD5 (hex) of a fresh key and a record's identifiers, separated: a secret, uniform order of people
    that the same SQL gives in every backend."""
    parts: list[exp.Expr] = [exp.Literal.string(key)]
    for value in values:
        parts += [exp.Literal.string("\x1f"), value.copy()]
    return exp.MD5(this=exp.Concat(expressions=parts))


@dataclass(frozen=True)
class _Source:
    """One table the project may use: its mapping, and the text of each encoded concept (empty where
    the table does not map it)."""

    table: TableDecl
    mapping: LinkageMapping
    values: list[exp.Expr]


@dataclass(frozen=True)
class _Plan:
    """What this node encodes for one link: the spec, the concepts (in slot order), how they are read."""

    spec: LinkageSpec
    concepts: tuple[str, ...]
    missing: tuple[str, ...]
    options: ConceptOptions
    sources: tuple[_Source, ...]


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
    #: The project's linkage spec (canonical JSON) and its SHA-256, as the coordinator sent them.
    spec: str = ""
    spec_hash: str = ""


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

    def linkable_tables(self, project: str, analyst: str) -> list[tuple[TableDecl, LinkageMapping]]:
        """The tables the project may use that map identifier concepts, with their mappings."""
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
            mapping = table.linkage_mapping()
            if mapping is not None:
                tables.append((table, mapping))
        if not tables:
            raise PolicyRefused(
                f"node '{self.config.name}' has no table mapped for linkage for '{project}'; map its identifier "
                "columns to concepts in [tables.linkage] of its node.toml"
            )
        return tables

    def _plan(self, request: LinkRequest) -> _Plan:
        """The spec the coordinator sent (checked against its hash), and how this node reads the concepts
        it approved for the project from its tables."""
        if not request.spec:
            raise PolicyRefused(f"node '{self.config.name}' received no linkage spec; the coordinator must send one")
        if hashlib.sha256(request.spec.encode()).hexdigest() != request.spec_hash:
            raise PolicyRefused(f"node '{self.config.name}' refuses: the linkage spec sent does not match its hash")
        spec = spec_from_text(request.spec)
        tables = self.linkable_tables(request.project, request.analyst)
        approval = self.config.approval(request.project)
        approved = None if approval is None or approval.linkage_concepts is None else set(approval.linkage_concepts)
        wanted = [*spec.concepts, *(f"subgroup:{s}" for s in spec.subgroups if s not in SUBGROUPS_BUILT_IN)]
        mapped = {concept for _, mapping in tables for concept in mapping.concepts}
        concepts = tuple(c for c in wanted if c in mapped and (approved is None or c in approved))
        options: dict[str, tuple[str, str]] = {}
        for table, mapping in tables:
            for concept, option, value in (
                ("dob", "dob_format", mapping.dob_format),
                ("sex", "sex_coding", mapping.sex_coding),
                ("postcode", "postcode_country", mapping.postcode_country),
            ):
                if concept not in mapping.concepts or concept not in concepts:
                    continue
                held = options.setdefault(option, (value, table.name))
                if held[0] != value:
                    raise PolicyRefused(
                        f"node '{self.config.name}': tables '{held[1]}' and '{table.name}' write {concept} differently "
                        f"({option} '{held[0]}' and '{value}'); link them in separate projects or use one {option}"
                    )
        null = exp.cast(exp.Literal.string(""), "text")
        sources = tuple(
            _Source(
                table,
                mapping,
                [concept_text(mapping.concepts[c]) if c in mapping.concepts else null.copy() for c in concepts],
            )
            for table, mapping in tables
        )
        return _Plan(
            spec=spec,
            concepts=concepts,
            missing=tuple(c for c in spec.concepts if c not in concepts),
            options=ConceptOptions(**{option: value for option, (value, _) in options.items()}),
            sources=sources,
        )

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

    def encode(self, request: LinkRequest) -> Path:
        """Keyed encodings of this node's people, in a random order this node keeps, after a header
        (:class:`EncodeAnswer`) saying which concepts it encoded and how many of their values are valid:
        the answer's body, written to a file in this node's linkage folder (a batch of people in memory
        at a time, :class:`fedlink.linkage.payload.Spool`), sent from there a frame at a time."""
        plan = self._plan(request)
        secret = self.keys.secret(request.project)
        if secret is None:
            raise PolicyRefused(
                f"node '{self.config.name}' holds no link secret for '{request.project}'; run `fedlink link`"
            )
        folder = self._folder(request.project)
        folder.mkdir(parents=True, exist_ok=True)
        keys = derive_spec_keys(secret, request.project, plan.spec)
        spool = Spool(folder / "encodings.spool")
        valid = dict.fromkeys(plan.concepts, 0)
        labels: dict[str, set[str]] = {name: set() for name in plan.spec.subgroups if name not in SUBGROUPS_BUILT_IN}

        def consume(batch: dict[str, list[str | None]]) -> None:
            normalised = normalise_concepts(batch, plan.options)
            for concept, found in valid_counts(normalised, plan.concepts).items():
                valid[concept] += found
            for name in labels:
                labels[name] |= set(known_labels(name, normalised))
            spool.add(encode_spec(normalised, plan.spec, keys))

        count = self._people(plan, folder, consume)
        archive = folder / "encodings.npz"
        spool.write(archive)
        codes = {
            name: {str(code): label for code, label in subgroup_codes(sorted(found), keys.subgroup[name]).items()}
            for name, found in labels.items()
        }
        (folder / "subgroups.json").write_text(json.dumps(codes))
        log.info("encoded %d people for project '%s'", count, request.project)
        header = EncodeAnswer(
            count=count,
            concepts=plan.concepts,
            missing=plan.missing,
            valid={c: round(n / count, 2) if count else 0.0 for c, n in valid.items() if not c.startswith("subgroup:")},
        )
        wire = folder / "encodings.wire"
        pack_file(wire, header.model_dump_json().encode(), [archive])
        archive.unlink()
        return wire

    def subgroup_labels(self, request: LinkRequest, codes: dict[str, tuple[int, ...]]) -> SubgroupLabels:
        """The label of each keyed subgroup code this node knows: the fixed labels of sex and birth
        decade, and the labels of its own records for a column subgroup (kept from encoding)."""
        secret = self.keys.secret(request.project)
        if secret is None or not codes:
            return SubgroupLabels()
        spec = spec_from_text(request.spec) if request.spec else None
        stored_path = self._folder(request.project) / "subgroups.json"
        stored = json.loads(stored_path.read_text()) if stored_path.exists() else {}
        out: dict[str, dict[str, str]] = {}
        for name, wanted in codes.items():
            if name in SUBGROUPS_BUILT_IN and spec is not None:
                key = derive_spec_keys(secret, request.project, spec).subgroup[name]
                known = {str(c): label for c, label in subgroup_codes(known_labels(name), key).items()}
            else:
                known = stored.get(name, {})
            out[name] = {str(code): known[str(code)] for code in wanted if str(code) in known}
        return SubgroupLabels(labels=out)

    def psi_start(self, request: LinkRequest, run: str) -> tuple[int, dict[str, tuple[int, np.ndarray]]]:
        """PSI mode: draw this run's scalar and, per match-key tier, put this node's *distinct* values
        in a secret random order (a position says nothing about a value; equal values of two people are
        one, so other nodes never see how often a value occurs here). Returns the number of people and,
        per tier, the number of distinct values and each person's position (-1: a field missing); the
        blinded points themselves are fetched in batches (:meth:`psi_points`)."""
        plan = self._plan(request)
        folder = self._folder(request.project)
        folder.mkdir(parents=True, exist_ok=True)
        schema = plan.spec.schema
        batches: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []

        def consume(batch: dict[str, list[str | None]]) -> None:
            normalised = complete(normalise_concepts(batch, plan.options), plan.spec.fields)
            batches.append(match_key_rows(normalised, schema))

        count = self._people(plan, folder, consume)
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

    def _people(self, plan: _Plan, folder: Path, consume: Callable[[dict[str, list[str | None]]], None]) -> int:
        """The node's people, streamed out of each table's backend in batches: records with identical
        values of the encoded concepts (in any of the plan's tables) are one person, and people come in
        the order of a keyed hash of those values under a fresh random key, so a position says nothing
        about anyone. ``consume`` gets each batch (concept -> values); then records.parquet maps every
        record (source_table, record_id) to its person. Returns the number of people."""
        key = secrets.token_hex(16)
        concepts = plan.concepts
        hashes: list[np.ndarray] = []
        count = 0
        streams = [self._distinct(source, key) for source in plan.sources]
        batch: dict[str, list[str | None]] = {c: [] for c in concepts}
        digests: list[bytes] = []
        last = b""
        for digest, *values in heapq.merge(*streams, key=lambda r: r[0]):
            if digest <= last:
                if digest == last:
                    continue  # the same identifiers in another table: the same person
                raise Fault(f"node '{self.config.name}': a backend returned people out of order; nothing was linked")
            last = digest
            digests.append(digest)
            for concept, value in zip(concepts, values, strict=True):
                batch[concept].append(value)
            count += 1
            if len(digests) >= PEOPLE_PER_BATCH:
                consume(batch)
                hashes.append(np.array(digests, dtype="S32"))
                batch, digests = {c: [] for c in concepts}, []
        if digests or not count:
            consume(batch)
            hashes.append(np.array(digests, dtype="S32"))
        ordered = np.concatenate(hashes) if hashes else np.zeros(0, "S32")
        schema = pa.schema([("source_table", pa.string()), ("record_id", pa.string()), ("person", pa.int64())])
        with pq.ParquetWriter(folder / "records.parquet", schema) as writer:
            for source in plan.sources:
                table = source.table
                query = exp.select(
                    exp.alias_(exp.cast(exp.column(source.mapping.record_id, quoted=True), "text"), "record_id"),
                    exp.alias_(_keyed_hash(key, source.values), "h"),
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

    def _distinct(self, source: _Source, key: str) -> Iterator[tuple[bytes, *tuple[str | None, ...]]]:
        """(keyed hash, concept values...) of each distinct tuple of concept values of a table, by hash."""
        names = [f"c{i}" for i in range(len(source.values))]
        columns = [exp.alias_(value.copy(), name) for value, name in zip(source.values, names, strict=True)]
        query = (
            exp.select(exp.alias_(_keyed_hash(key, source.values), "h"), *columns)
            .from_(self.data.relation(source.table))
            .distinct()
            .order_by(exp.column("h"))
        )
        for batch in self.data.stream(source.table, query):
            hashes = [str(h).encode() for h in batch["h"]]
            values = [[None if v is None or v == "" else str(v) for v in batch[c]] for c in names]
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
        (folder / "spine.json").write_text(json.dumps({"spine_id": spine_id, "spec_hash": request.spec_hash}))
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
