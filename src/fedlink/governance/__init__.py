"""Governance: the transparency register every party keeps, and its public export.

from fedlink.governance import Register, export_register
register = Register(Path("state/register.jsonl"), party="coordinator")
register.append("project", {"id": "p1", "title": "...", "purpose": "...", "analysts": [], "datasets": []})
assert register.verify().ok
export_register([("coordinator", register.path)], Path("public"))
"""

from __future__ import annotations

from fedlink.governance.export import export_register
from fedlink.transparency.register import (
    Register,
    RegisterEntry,
    VerifyReport,
    read_register,
    verify_register,
)

__all__ = ["Register", "RegisterEntry", "VerifyReport", "export_register", "read_register", "verify_register"]
