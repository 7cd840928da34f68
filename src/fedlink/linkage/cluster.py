"""Multi-party clustering: the link spine, one entity per person, at most one record per party.

:func:`cluster` links every pair of parties (:func:`fedlink.linkage.match.link_pair`) and merges the
links into entities in descending order of score (exact links first, ties broken by party pair and
record order, so the result is deterministic). A union-find refuses a merge that would put two
records of one party into one entity: the weaker link loses. Every record gets an entity; a record
linked to nothing is an entity of its own.

:func:`assign_slots` numbers the entities in a random order drawn from a secret seed, so that a
slot number says nothing about the position of a record in any party's list.

>>> import numpy as np
>>> spine = Spine(entity=[np.array([0, 1]), np.array([1, 2])], entities=3)
>>> [slots.tolist() for slots in assign_slots(spine, b"secret")]
[[2, 0], [0, 1]]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from fedlink.errors import BadInput
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.match import DEFAULT_MAX_BLOCK, DEFAULT_THRESHOLD, PairLinks, StageSeconds, link_pair

_SLOT_LABEL: Final = b"fedlink link spine slots\x00"


@dataclass(frozen=True)
class LinkStats:
    """What linkage did, for the linkage unit's own log and for local evaluation: never released."""

    candidates: int = 0  #: candidate pairs over all party pairs
    comparisons: int = 0  #: Dice coefficients computed over all party pairs
    exact_links: int = 0  #: pair links made by an exact tier
    fuzzy_links: int = 0  #: pair links made by Dice similarity
    refused_merges: int = 0  #: pair links refused because they would put two records of a party together
    seconds: StageSeconds = field(default_factory=StageSeconds)


@dataclass(frozen=True)
class Spine:
    """The link spine: ``entity[p][r]`` is the entity of record ``r`` of party ``p``; entities are
    numbered 0 .. ``entities`` - 1 and hold at most one record per party."""

    entity: list[np.ndarray]
    entities: int
    stats: LinkStats = field(default_factory=LinkStats)


class _Entities:
    """Union-find over all records, each root knowing the set of parties in its entity (a bit mask)."""

    def __init__(self, party_of: list[int]) -> None:
        self.parent = list(range(len(party_of)))
        self.parties = [1 << p for p in party_of]

    def root(self, x: int) -> int:
        parent = self.parent
        top = x
        while parent[top] != top:
            top = parent[top]
        while parent[x] != top:
            parent[x], x = top, parent[x]
        return top

    def merge(self, x: int, y: int) -> bool:
        """Join the entities of x and y unless they share a party; True if joined (or already one)."""
        rx, ry = self.root(x), self.root(y)
        if rx == ry:
            return True
        if self.parties[rx] & self.parties[ry]:
            return False
        if rx > ry:  # the smaller record id stays root: deterministic and independent of merge order
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.parties[rx] |= self.parties[ry]
        return True


def _merge_order(links: list[tuple[int, int, PairLinks]], offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global record ids (x, y) of every pair link, strongest first."""
    xs = np.concatenate([offsets[p] + pl.ia for p, _, pl in links])
    ys = np.concatenate([offsets[q] + pl.ib for _, q, pl in links])
    score = np.concatenate([pl.score for _, _, pl in links]).astype(np.float64)
    exact = np.concatenate([pl.via >= 0 for _, _, pl in links])
    order = np.lexsort((ys, xs, -score, ~exact))
    return xs[order], ys[order]


def cluster(
    parties: Sequence[EncodedRecords],
    threshold: float = DEFAULT_THRESHOLD,
    max_block: int = DEFAULT_MAX_BLOCK,
    workers: int | None = None,
) -> Spine:
    """The link spine of ``parties`` (each party's encodings in its own record order), linked pair by
    pair with exact tiers and Dice similarity of record-level filters."""
    if not parties:
        raise BadInput("clustering needs at least one party's encodings")
    links: list[tuple[int, int, PairLinks]] = []
    for p in range(len(parties)):
        for q in range(p + 1, len(parties)):
            links.append((p, q, link_pair(parties[p], parties[q], threshold, max_block, workers)))
    return cluster_links([p.count for p in parties], links)


def cluster_links(counts: Sequence[int], links: Sequence[tuple[int, int, PairLinks]]) -> Spine:
    """The link spine of parties of ``counts`` records from their pairwise links: merged strongest
    first (exact links, then by score), never two records of one party in an entity."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    seconds = sum((pl.seconds for _, _, pl in links), StageSeconds())
    mark = time.perf_counter()
    total = int(offsets[-1])
    refused = 0
    if links and sum(len(pl) for _, _, pl in links):
        xs, ys = _merge_order(list(links), offsets)
        entities = _Entities(np.repeat(np.arange(len(counts)), counts).tolist())
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            refused += not entities.merge(x, y)
        roots = np.arange(total, dtype=np.int64)
        linked = np.unique(np.concatenate([xs, ys]))
        roots[linked] = [entities.root(x) for x in linked.tolist()]
    else:
        roots = np.arange(total, dtype=np.int64)
    # entity ids in order of each entity's first record
    distinct, label = np.unique(roots, return_inverse=True)
    entity = label.astype(np.int64)
    stats = LinkStats(
        candidates=sum(pl.candidates for _, _, pl in links),
        comparisons=sum(pl.comparisons for _, _, pl in links),
        exact_links=sum(int((pl.via >= 0).sum()) for _, _, pl in links),
        fuzzy_links=sum(int((pl.via < 0).sum()) for _, _, pl in links),
        refused_merges=refused,
        seconds=seconds + StageSeconds(assign=time.perf_counter() - mark),
    )
    return Spine(
        entity=[entity[offsets[p] : offsets[p + 1]] for p in range(len(counts))],
        entities=len(distinct),
        stats=stats,
    )


def assign_slots(spine: Spine, seed: bytes) -> list[np.ndarray]:
    """Per party, the slot (int64) of each record: entity ids permuted by a keyed random order.

    The order comes from SHAKE-256 over ``seed`` (keep it secret, e.g. 32 random bytes per run):
    one 64-bit draw per entity, entities sorted by draw. The same seed gives the same slots.
    """
    if not seed:
        raise BadInput("slot assignment needs a non-empty secret seed")
    draws = np.frombuffer(hashlib.shake_256(_SLOT_LABEL + seed).digest(8 * spine.entities), dtype="<u8")
    slot_of_entity = np.empty(spine.entities, dtype=np.int64)
    slot_of_entity[np.argsort(draws, kind="stable")] = np.arange(spine.entities, dtype=np.int64)
    return [slot_of_entity[entity] for entity in spine.entity]
