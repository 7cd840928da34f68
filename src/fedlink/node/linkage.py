"""A node's side of record linkage: its key-agreement card, the link secret, keyed encodings of its
own people, and the slots the linkage unit assigns them; or, in the PSI mode (no link secret), its
match keys hashed to secp256k1 and blinded with a scalar of its own, and other nodes' points re-blinded.

The node turns the identifier columns of the tables a project may use into one list of *people*
(records with identical identifiers are one person: at most one record per node in an entity), in a
random order that it keeps to itself. It sends the linkage unit only keyed encodings in that order,
and receives back one slot per person. Identifiers, record ids and the order never leave the node.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from fedlink.errors import PolicyRefused
from fedlink.linkage.encode import TierMessages, derive_keys, encode, match_key_messages
from fedlink.linkage.normalise import normalise
from fedlink.linkage.payload import slots_from_bytes, to_bytes
from fedlink.linkage.schema import load_schema
from fedlink.node.config import NodeConfig, TableDecl
from fedlink.node.data import NodeData
from fedlink.pets import psi
from fedlink.pets.keyagree import Envelope, LinkKeyCard, NodeKeyAgreement

log = logging.getLogger("fedlink.node")
IDENTIFIERS = ("first_name", "last_name", "dob", "sex", "postcode")
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
        people = self._people(tables, folder)
        schema = load_schema()
        encoded = encode(normalise(people), schema, derive_keys(secret, request.project, schema))
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
        people = self._people(tables, folder)
        rng = np.random.default_rng(int.from_bytes(secrets.token_bytes(16), "big"))
        tiers = {
            tier: messages.shuffled(rng)
            for tier, messages in match_key_messages(normalise(people), load_schema()).items()
        }
        with self._lock:
            now = time.monotonic()
            for key in [k for k, held in self._runs.items() if now - held.started > PSI_RUN_TTL_S]:
                del self._runs[key]
            self._runs[(request.project, run)] = _PsiRun(psi.new_scalar(), tiers, now)
        log.info(
            "prepared the match keys of %d people for project '%s' (PSI)", len(people[IDENTIFIERS[0]]), request.project
        )
        return len(people[IDENTIFIERS[0]]), {tier: (len(m), m.index) for tier, m in tiers.items()}

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

    def _people(self, tables: list[TableDecl], folder: Path) -> dict[str, list[str | None]]:
        """Distinct identifier tuples across the tables, shuffled; records -> person saved at the node."""
        con = duckdb.connect(":memory:")
        try:
            columns = ", ".join(f'CAST("{c}" AS VARCHAR) AS {c}' for c in IDENTIFIERS)
            union = " UNION ALL ".join(
                f"SELECT '{t.name}' AS source_table, CAST(record_id AS VARCHAR) AS record_id, {columns} "
                f"FROM {'read_csv_auto' if t.source_format == 'csv' else 'read_parquet'}('{self.config.table_path(t)}')"
                for t in tables
            )
            con.execute(f"CREATE TABLE records AS {union}")
            keys = ", ".join(IDENTIFIERS)
            # a random order (from a CSPRNG seed), so an encoding's position says nothing about the person
            distinct = con.sql(f"SELECT DISTINCT {keys} FROM records").to_arrow_table()
            rng = np.random.default_rng(int.from_bytes(secrets.token_bytes(16), "big"))
            ranked = distinct.append_column("person", pa.array(rng.permutation(distinct.num_rows)))
            con.register("ranked", ranked)
            con.execute("CREATE TABLE people AS SELECT * FROM ranked")
            joined = " AND ".join(f"r.{c} IS NOT DISTINCT FROM p.{c}" for c in IDENTIFIERS)
            con.execute(
                f"COPY (SELECT r.source_table, r.record_id, p.person FROM records r JOIN people p ON {joined}) "
                f"TO '{folder / 'records.parquet'}' (FORMAT parquet)"
            )
            rows = con.execute(f"SELECT {keys} FROM people ORDER BY person").fetchall()
        finally:
            con.close()
        return {column: [row[i] for row in rows] for i, column in enumerate(IDENTIFIERS)}

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
