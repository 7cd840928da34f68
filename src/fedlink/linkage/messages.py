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
    #: Names this spine, so a linked query can check every node holds slots of the same one.
    spine_id: str = ""


class QualityCall(LinkCall):
    """Coordinator -> node: spend ``epsilon`` of the project's budget at this node on releasing the
    new spine's match rates (the node reserves and commits it on its own ledger)."""

    spine_id: str
    epsilon: float


class PairMatch(Frozen):
    """Of the people at ``a``, the share the linkage unit found at ``b`` (and the reverse), from DP counts."""

    a: str
    b: str
    rate_a: float | None
    rate_b: float | None
    overlap: float


class LinkageQuality(Frozen):
    """Match rates of a spine per node pair, released with DP (``epsilon`` at every node, counts with
    Laplace noise of ``scale``): what an analyst may know about how well the linkage went."""

    spine_id: str
    epsilon: float
    scale: float
    people: dict[str, float]
    pairs: tuple[PairMatch, ...]
    note: str = ""

    def pair(self, a: str, b: str) -> PairMatch | None:
        return next((p for p in self.pairs if {p.a, p.b} == {a, b}), None)


class LinkReport(Frozen):
    """What an analyst learns from `fedlink link`: which nodes took part, how long each stage took,
    and the spine's match rates released with DP (``quality``; None where a node's budget refused)."""

    project: str
    nodes: tuple[str, ...]
    stages: dict[str, float]
    spine_id: str = ""
    quality: LinkageQuality | None = None
    quality_refused: str | None = None
