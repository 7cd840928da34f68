"""A node's state bound to its federation: its budget ledger and register are valid only in the
federation they were made in, and only together.

At its first start a node writes ``<ledger>.federation.json`` beside its ledger: its name and the
SHA-256 fingerprint of its federation's CA certificate (and records the binding on its register).
Every start checks, before the node opens anything, that

- its own certificate was issued by the CA it is configured with;
- the binding names this node and this CA: state made in another federation is refused;
- the ledger and the register are there together: a missing ledger whose register records queries,
  or a missing register whose ledger records spent budget, is refused, since starting afresh would
  reset the spent budget to zero (or spend with no public record); so is a binding whose ledger and
  register are both gone.

Each refusal is one line naming the files and what to do. This does not stop the node's operator
from deleting the whole state folder deliberately; it stops a command, a wrong path or a swapped CA
from starting a node's budgets again without anyone deciding to.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from fedlink.errors import ConfigError
from fedlink.frozen import Frozen
from fedlink.node.config import NodeConfig
from fedlink.pki import fingerprint, issued_by
from fedlink.transparency.register import Register, read_register

#: Register entries that only a node with a ledger can have written.
_BUDGET_KINDS = ("query", "link_quality")


class FederationBinding(Frozen):
    """Which node's state this is, and the fingerprint of the CA of the federation it was made in."""

    node: str
    ca_sha256: str
    bound_at: str


def binding_path(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".federation.json")


def check_state(config: NodeConfig) -> FederationBinding:
    """Refuse (:class:`ConfigError`) to start a node whose certificate, CA and state do not belong
    together; bind fresh or older unbound state to the node's federation. Returns the binding."""
    name = config.name
    tls = config.tls_files()
    cert_pem, _, ca_pem = tls.read()
    if not issued_by(cert_pem, ca_pem):
        raise ConfigError(
            f"node '{name}': {tls.cert} was not issued by the federation CA {tls.ca}; point [tls] at this node's "
            f"certificate and its federation's CA (`fedlink pki issue --role node --name {name}`)"
        )
    ca = fingerprint(ca_pem)
    ledger, register = config.ledger_path(), config.register_path()
    path = binding_path(ledger)
    bound = _read(path)
    if bound is not None and bound.node != name:
        raise ConfigError(
            f"the state beside {ledger} belongs to node '{bound.node}', not '{name}'; point [privacy] ledger and "
            f"transparency_register at the state of node '{name}'"
        )
    if bound is not None and bound.ca_sha256 != ca:
        raise ConfigError(
            f"the ledger and register of node '{name}' ({ledger.parent}) were made in the federation whose CA has "
            f"fingerprint {bound.ca_sha256[:16]}..., not in that of {tls.ca} ({ca[:16]}...); point [tls] ca at "
            "the CA they were made under, or [privacy] at this federation's state for the node"
        )
    has_ledger, has_register = ledger.is_file(), register.is_file()
    if not has_ledger and has_register:
        queries = _register_queries(register, name)
        if queries:
            raise ConfigError(
                f"the budget ledger of node '{name}' ({ledger}) is missing, but its register records {queries} "
                "queries; restore the ledger from a backup (a new one would start every budget at zero again)"
            )
    if has_ledger and not has_register:
        spends = _ledger_spends(ledger)
        if spends:
            raise ConfigError(
                f"the register of node '{name}' ({register}) is missing, but its budget ledger records {spends} "
                "spends; restore the register from a backup or a published copy"
            )
    if bound is not None and not has_ledger and not has_register:
        raise ConfigError(
            f"the ledger ({ledger}) and register of node '{name}' are gone (the node was bound to its "
            f"federation at {bound.bound_at}); restore them from a backup, or point [privacy] at a new state folder "
            "if the node joins another federation"
        )
    if bound is None:
        bound = FederationBinding(
            node=name, ca_sha256=ca, bound_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        _write(path, bound)
        Register(register, name).append("federation", {"ca_sha256": ca, "state_found": has_ledger or has_register})
    return bound


def _read(path: Path) -> FederationBinding | None:
    try:
        return FederationBinding.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        raise ConfigError(
            f"cannot read {path}, which binds the node's state to its federation ({type(exc).__name__}); "
            "restore it from a backup"
        ) from exc


def _write(path: Path, binding: FederationBinding) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(binding.model_dump(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _register_queries(register: Path, node: str) -> int:
    entries, _ = read_register(register, node)
    return sum(1 for entry in entries if entry.kind in _BUDGET_KINDS)


def _ledger_spends(ledger: Path) -> int:
    """Committed spends in the ledger, read without creating or changing anything (0 if unreadable:
    opening the ledger proper reports what is wrong with it)."""
    try:
        db = sqlite3.connect(ledger.resolve().as_uri() + "?mode=rw", uri=True)
        try:
            row = db.execute("SELECT COUNT(*) FROM reservation WHERE state = 'committed'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    return int(row[0])
