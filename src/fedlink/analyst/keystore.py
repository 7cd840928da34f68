"""The analyst's own keys for each query, kept on the analyst's disk so a result can be collected later.

Before a query leaves the analyst's process, its client writes that query's keys here (one file per
query, mode 0600): the X25519 key the coordinator seals the stored result to, and the secret half of
the query's fresh encryption keys (TenSEAL contexts for he+dp, the chain's BFV key for a linked
query). Whatever happens to the call afterwards (the client crashes, a node stalls after the budget
was committed), ``fedlink result get ID`` opens the stored result with them. The keys of one query
open that query's result only, and never leave this folder.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from fedlink.errors import BadInput, ConfigError
from fedlink.pki import write_private

QueryKind = Literal["query", "linked", "model"]
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class QueryKeys:
    """One query's keys: what kind of query it was, the result key, and the decryption keys."""

    query_id: str
    kind: QueryKind
    coordinator: str
    result_key: bytes
    he: dict[str, bytes] = field(default_factory=dict)
    chain: bytes | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))


class KeyStore:
    """The folder of an analyst's query keys (created on first use)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, query_id: str) -> Path:
        if not _ID.fullmatch(query_id):
            raise BadInput(
                f"'{query_id[:40]}' is not a query id; query ids are 32 hex digits (see `fedlink result list`)"
            )
        return self.folder / f"{query_id}.json"

    def save(self, keys: QueryKeys) -> Path:
        """Write ``keys`` (mode 0600) before the query is sent; refuses to overwrite a query's keys."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self._path(keys.query_id)
            write_private(
                path,
                json.dumps(
                    {
                        "query_id": keys.query_id,
                        "kind": keys.kind,
                        "coordinator": keys.coordinator,
                        "created": keys.created,
                        "result_key": _b64(keys.result_key),
                        "he": {scheme: _b64(blob) for scheme, blob in keys.he.items()},
                        "chain": _b64(keys.chain) if keys.chain is not None else None,
                    }
                ).encode(),
            )
        except FileExistsError as exc:
            raise BadInput(f"keys for query {keys.query_id[:8]} exist already; every query needs a fresh id") from exc
        except OSError as exc:
            raise ConfigError(
                f"cannot keep this query's keys in {self.folder} ({exc.strerror}); make the folder writable or "
                "pass results_dir / set FEDLINK_RESULTS"
            ) from exc
        return path

    def load(self, query_id: str) -> QueryKeys:
        path = self._path(query_id)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise BadInput(
                f"no keys for query {query_id[:8]} in {self.folder}; only the analyst (and client) that ran a query "
                "can collect its result: check the id with `fedlink result list`"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the keys of query {query_id[:8]} at {path} cannot be read ({exc})") from exc
        return QueryKeys(
            query_id=raw["query_id"],
            kind=raw["kind"],
            coordinator=raw["coordinator"],
            created=raw["created"],
            result_key=base64.b64decode(raw["result_key"]),
            he={scheme: base64.b64decode(blob) for scheme, blob in raw["he"].items()},
            chain=base64.b64decode(raw["chain"]) if raw["chain"] else None,
        )

    def drop(self, query_id: str) -> None:
        """Forget a query's keys (it was refused before anything was reserved: there is no result)."""
        self._path(query_id).unlink(missing_ok=True)

    def queries(self) -> list[dict[str, str]]:
        """Every query kept here, oldest first: id, kind, coordinator and when it was sent."""
        found = []
        for path in self.folder.glob("*.json") if self.folder.is_dir() else ():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found.append({key: str(raw.get(key, "")) for key in ("query_id", "kind", "coordinator", "created")})
        return sorted(found, key=lambda q: q["created"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
