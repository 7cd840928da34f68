"""Machine-written TOML state files (project applications, node approvals): written whole and atomically,
with a header saying that fedlink writes them, so that nobody has to edit them by hand and a crash never
leaves half a file. Hand-written configuration (``node.toml``, ``projects.toml``) is never rewritten."""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fedlink.errors import ConfigError

HEADER = "# Written by fedlink (`fedlink project ...`); do not edit by hand: the registers record every change.\n"


def read_store(path: Path) -> dict[str, Any]:
    """The document in ``path`` ({} when there is none yet)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); restore it from a backup") from exc


def write_store(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` with ``document`` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = HEADER + tomli_w.dumps(document)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
