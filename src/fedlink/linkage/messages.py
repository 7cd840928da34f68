"""What the coordinator and nodes say to each other while building a link spine."""

from __future__ import annotations

from fedlink.model import Frozen
from fedlink.pets.keyagree import Envelope, LinkKeyCard


class LinkCall(Frozen):
    project: str
    analyst: str


class InitiateCall(LinkCall):
    cards: tuple[LinkKeyCard, ...]


class Envelopes(Frozen):
    envelopes: tuple[Envelope, ...]


class EnvelopeCall(LinkCall):
    envelope: Envelope


class SlotsCall(LinkCall):
    slots: str  # base64 of a .npy int64 array, one slot per person in the node's own order


class LinkReport(Frozen):
    """What an analyst learns from `fedlink link`: which nodes took part and how long each stage took.
    Overlap counts and match rates are statistics about people: they are not released here."""

    project: str
    nodes: tuple[str, ...]
    stages: dict[str, float]
