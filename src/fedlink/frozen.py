"""The base of every typed message and config model: immutable, and strict about unknown fields
(a typo in a config file or a message from a mismatched version is an error, not silently ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
