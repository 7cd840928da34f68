"""What the coordinator and nodes say to each other while building a link spine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedlink.frozen import Frozen
from fedlink.pets.keyagree import Envelope, LinkKeyCard

LinkMode = Literal["secret", "psi"]


class LinkCall(Frozen):
    project: str
    analyst: str
    #: "secret": nodes agree a link secret and send keyed match keys and Bloom encodings (exact and
    #: fuzzy tiers); "psi": no shared secret, exact match-key tiers through ECDH PSI.
    mode: LinkMode = "secret"
    #: SHA-256 of the project's linkage spec (resolved for this link); on every register entry of it.
    spec_hash: str = ""
    #: The spec itself (canonical JSON), sent with the calls that encode: what every node encodes.
    spec: str = ""


class EncodeAnswer(Frozen):
    """Node -> coordinator, before its encodings (binary body after this header): what it encoded."""

    count: int
    #: The spec's concepts this node encoded (mapped in its tables and approved for the project).
    concepts: tuple[str, ...]
    #: The spec's concepts this node did not encode (not mapped, or not approved): missing there.
    missing: tuple[str, ...] = ()
    #: Per encoded concept, the share of this node's people whose value is valid (rounded to 0.01).
    valid: dict[str, float] = Field(default_factory=dict)


class PsiCall(LinkCall):
    """Coordinator -> node in the PSI mode: start a run (a fresh scalar and this node's distinct match
    keys, kept for ``run``); send the blinded points ``start:stop`` of ``tier``; or re-blind other
    nodes' points (binary body: this header, then the points; ``final``: the last of the ring,
    answer 16-byte digests)."""

    run: str
    tier: str = ""
    start: int = 0
    stop: int = 0
    final: bool = False


class PsiStarted(Frozen):
    """Node -> coordinator: its number of people and, per tier, its number of distinct values (binary
    body: then, per tier, as int64, each person's position among them or -1 where a field is missing)."""

    count: int
    distinct: dict[str, int]


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
    new spine's match rates and estimated quality (the node reserves and commits it on its own
    ledger), and name the keyed subgroup codes it can (the node answers :class:`SubgroupLabels`)."""

    spine_id: str
    epsilon: float
    subgroup_codes: dict[str, tuple[int, ...]] = Field(default_factory=dict)


class SubgroupLabels(Frozen):
    """Node -> coordinator: the label of each keyed subgroup code it knows (subgroup -> code -> label)."""

    labels: dict[str, dict[str, str]] = Field(default_factory=dict)


class EstimatedCounts(Frozen):
    """Expected linkage errors from the fitted model, released with DP: links (from the released
    overlaps), expected false and missed links (noisy), and the precision, recall and F1 they give."""

    links: float
    false_links: float
    missed_links: float
    precision: float | None
    recall: float | None
    f1: float | None


class EstimatedPair(EstimatedCounts):
    a: str
    b: str


class EstimatedQuality(Frozen):
    """Label-free linkage quality of a spine (:mod:`fedlink.linkage.estimate`), released with DP:
    overall, per node pair and by subgroup; counts with Laplace noise of ``scale``."""

    epsilon: float
    scale: float
    overall: EstimatedCounts
    pairs: tuple[EstimatedPair, ...]
    #: subgroup -> label -> counts.
    subgroups: dict[str, dict[str, EstimatedCounts]] = Field(default_factory=dict)
    note: str = ""


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
    #: Expected precision, recall and F1 from the fitted model (probabilistic matching only).
    estimated: EstimatedQuality | None = None

    def pair(self, a: str, b: str) -> PairMatch | None:
        return next((p for p in self.pairs if {p.a, p.b} == {a, b}), None)


class LinkReport(Frozen):
    """What an analyst learns from `fedlink link`: which nodes took part, how long each stage took,
    and the spine's match rates released with DP (``quality``; None where a node's budget refused)."""

    project: str
    nodes: tuple[str, ...]
    stages: dict[str, float]
    mode: LinkMode = "secret"
    spine_id: str = ""
    quality: LinkageQuality | None = None
    quality_refused: str | None = None
    #: SHA-256 of the linkage spec the spine was built with, and its matching ("probabilistic", "clk").
    spec_hash: str = ""
    matching: str = ""
    #: What a user should look at: concepts a node lacks, or whose values are mostly invalid.
    warnings: tuple[str, ...] = ()
