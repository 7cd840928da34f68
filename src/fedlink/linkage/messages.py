"""What the coordinator and nodes say to each other while building a link spine."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from fedlink.pets.keyagree import Envelope, LinkKeyCard


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LinkCall(_Frozen):
    project: str
    analyst: str


class InitiateCall(LinkCall):
    cards: tuple[LinkKeyCard, ...]


class Envelopes(_Frozen):
    envelopes: tuple[Envelope, ...]


class EnvelopeCall(LinkCall):
    envelope: Envelope


class SlotsCall(LinkCall):
    slots: str  # base64 of a .npy int64 array, one slot per person in the node's own order


class LinkReport(_Frozen):
    """What an analyst learns from `fedlink link`: which nodes took part and how long each stage took.
    Overlap counts and match rates are statistics about people: they are not released here."""

    project: str
    nodes: tuple[str, ...]
    stages: dict[str, float]
