"""The coordinator's linkage unit: orchestrates link-secret agreement among nodes (relaying sealed
envelopes it cannot open), collects keyed encodings, links them (exact match-key tiers, then Dice
similarity over keyed blocks, then multi-party clustering with at most one record per node in an
entity) and gives each node only the slot of each of its own people.

The spine (entity and slot of every node's person index) stays here. Similarity scores never leave
this module; exact overlap counts and match rates are not released to anyone.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedlink.errors import Fault, FedlinkError
from fedlink.linkage.cluster import assign_slots, cluster
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.messages import (
    EnvelopeCall,
    Envelopes,
    InitiateCall,
    LinkageQuality,
    LinkCall,
    LinkMode,
    LinkReport,
    PairMatch,
    PsiCall,
    PsiStarted,
    QualityCall,
    SlotsCall,
)
from fedlink.linkage.payload import from_bytes, slots_to_bytes
from fedlink.model import Frozen
from fedlink.pets import psi
from fedlink.pets.dp import add_noise, calibrate
from fedlink.pets.keyagree import LinkKeyCard
from fedlink.wire import rpc
from fedlink.wire.blobs import pack, unpack
from fedlink.wire.transport import Message

log = logging.getLogger("fedlink.coordinator")
FanOut = Callable[[dict[str, bytes], str], dict[str, Message | FedlinkError]]
Progress = Callable[[str, int, int], None]
#: Points per PSI re-blinding call (64 bytes each: 3.2 MB), so memory per message stays bounded.
PSI_BATCH = 50_000


def _first_error(answers: dict[str, Message | FedlinkError]) -> None:
    for name, answer in answers.items():
        if isinstance(answer, FedlinkError):
            raise type(answer)(answer.message if name in answer.message else f"node '{name}': {answer.message}")


def overlap_counts(entity: list[np.ndarray], order: list[str]) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Exact people per node and entities shared by each node pair (seen by the linkage unit only)."""
    people = {n: int(entity[i].size) for i, n in enumerate(order)}
    pairs = {}
    for i, a in enumerate(order):
        for j in range(i + 1, len(order)):
            pairs[(a, order[j])] = int(np.intersect1d(entity[i], entity[j]).size)
    return people, pairs


def release_quality(
    spine_id: str, people: dict[str, int], pairs: dict[tuple[str, str], int], epsilon: float
) -> LinkageQuality:
    """Match rates from counts with OpenDP's discrete Laplace noise: one person changes their node's
    count and each of its k - 1 pair overlaps by at most one, so the L1 sensitivity is k."""
    exact = np.array([*people.values(), *pairs.values()], dtype=float)
    spec = calibrate(float(len(people)), epsilon=epsilon, integer=True)
    noisy = np.maximum(add_noise(exact, spec), 0.0)
    noisy_people = dict(zip(people, noisy[: len(people)].tolist(), strict=True))
    matches = []
    for (a, b), value in zip(pairs, noisy[len(people) :].tolist(), strict=True):
        rate_a = min(1.0, value / noisy_people[a]) if noisy_people[a] >= 1 else None
        rate_b = min(1.0, value / noisy_people[b]) if noisy_people[b] >= 1 else None
        matches.append(PairMatch(a=a, b=b, rate_a=rate_a, rate_b=rate_b, overlap=value))
    return LinkageQuality(
        spine_id=spine_id,
        epsilon=epsilon,
        scale=spec.scale,
        people=noisy_people,
        pairs=tuple(matches),
        note=f"DP counts (epsilon {epsilon:g} at every node); rate_a = share of a's people linked to b",
    )


class LinkageUnit:
    def __init__(self, fan_out: FanOut, spines: Path, quality_epsilon: float = 0.1) -> None:
        self._fan_out = fan_out
        self._spines = spines
        self._quality_epsilon = quality_epsilon

    def run(
        self, project: str, analyst: str, nodes: list[str], progress: Progress, mode: LinkMode = "secret"
    ) -> LinkReport:
        if len(nodes) < 2:
            raise Fault(f"project '{project}' spans fewer than two nodes: nothing to link")
        stages: dict[str, float] = {}
        call = LinkCall(project=project, analyst=analyst, mode=mode)
        steps = 6
        spine_id = secrets.token_hex(16)
        started = time.perf_counter()
        order = sorted(nodes)
        if mode == "psi":
            parties = self._psi(call, order, progress, stages)
        else:
            parties = self._keyed(call, order, progress, stages)

        progress("matching and clustering", 2, steps)
        mark = time.perf_counter()
        spine = cluster(parties)
        slots = assign_slots(spine, secrets.token_bytes(32))
        stages["link"] = time.perf_counter() - mark

        progress("saving the spine", 3, steps)
        self._spines.mkdir(parents=True, exist_ok=True)
        arrays = {f"entity:{n}": spine.entity[i] for i, n in enumerate(order)}
        arrays.update({f"slot:{n}": slots[i] for i, n in enumerate(order)})
        np.savez(self._spines / f"{project}.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
        people, pairs = overlap_counts(spine.entity, order)
        meta = SpineMeta(project=project, spine_id=spine_id, size=int(spine.entities), nodes=tuple(order))

        progress("giving each node the slots of its own people", 4, steps)
        mark = time.perf_counter()
        sent = self._fan_out(
            {
                n: SlotsCall(
                    project=project,
                    analyst=analyst,
                    slots=base64.b64encode(slots_to_bytes(slots[i])).decode(),
                    spine_id=spine_id,
                )
                .model_dump_json()
                .encode()
                for i, n in enumerate(order)
            },
            rpc.LINK_SLOTS,
        )
        _first_error(sent)
        stages["distribute"] = time.perf_counter() - mark

        progress("releasing match rates with differential privacy", 5, steps)
        quality, refused = self._quality(call, spine_id, order, people, pairs)
        meta = meta.model_copy(update={"quality": quality, "quality_refused": refused})
        (self._spines / f"{project}.json").write_text(meta.model_dump_json(indent=2))
        progress("done", steps, steps)
        stages["total"] = time.perf_counter() - started
        log.info("linked project '%s' across %d nodes in %.1f s", project, len(nodes), stages["total"])
        return LinkReport(
            project=project,
            nodes=tuple(order),
            mode=mode,
            stages={k: round(v, 3) for k, v in stages.items()},
            spine_id=spine_id,
            quality=quality,
            quality_refused=refused,
        )

    def _keyed(
        self, call: LinkCall, order: list[str], progress: Progress, stages: dict[str, float]
    ) -> list[EncodedRecords]:
        """Shared-secret mode: nodes agree a link secret, then send keyed match keys and Bloom encodings."""
        mark = time.perf_counter()
        project, analyst = call.project, call.analyst
        progress("agreeing a link secret among the nodes", 0, 6)
        answers = self._fan_out({n: b"" for n in order}, rpc.LINK_CARD)
        _first_error(answers)
        cards = tuple(LinkKeyCard.model_validate_json(a.body) for a in answers.values() if isinstance(a, Message))
        initiator = order[0]
        sealed = self._fan_out(
            {initiator: InitiateCall(project=project, analyst=analyst, cards=cards).model_dump_json().encode()},
            rpc.LINK_INITIATE,
        )
        _first_error(sealed)
        reply = sealed[initiator]
        assert isinstance(reply, Message)
        envelopes = Envelopes.model_validate_json(reply.body).envelopes
        delivered = self._fan_out(
            {
                e.recipient: EnvelopeCall(project=project, analyst=analyst, envelope=e).model_dump_json().encode()
                for e in envelopes
            },
            rpc.LINK_ENVELOPE,
        )
        _first_error(delivered)
        stages["agree secret"] = time.perf_counter() - mark

        progress(f"encoding at {len(order)} nodes", 1, 6)
        mark = time.perf_counter()
        encoded_answers = self._fan_out({n: call.model_dump_json().encode() for n in order}, rpc.LINK_ENCODE)
        _first_error(encoded_answers)
        parties = [from_bytes(encoded_answers[n].body) for n in order]  # type: ignore[union-attr]
        stages["encode"] = time.perf_counter() - mark
        return parties

    def _psi(
        self, call: LinkCall, order: list[str], progress: Progress, stages: dict[str, float]
    ) -> list[EncodedRecords]:
        """PSI mode: each node hashes and blinds its distinct match keys with a scalar of its own; each
        node's points then go round the ring, every other node re-blinding them (the last one hashing
        them to digests), all nodes working at once on different nodes' points; the digests, placed
        back at each person's index, are exact match keys that no one could compute alone."""
        run = secrets.token_hex(16)
        body = PsiCall(project=call.project, analyst=call.analyst, mode="psi", run=run).model_dump_json().encode()
        progress(f"hashing and blinding match keys at {len(order)} nodes (PSI)", 0, 6)
        mark = time.perf_counter()
        started = self._fan_out({n: body for n in order}, rpc.LINK_PSI_START)
        _first_error(started)
        counts: dict[str, int] = {}
        points: dict[tuple[str, str], bytes] = {}
        index: dict[tuple[str, str], np.ndarray] = {}
        tiers: tuple[str, ...] = ()
        for node in order:
            answer = started[node]
            assert isinstance(answer, Message)
            header, blobs = unpack(answer.body)
            reply = PsiStarted.model_validate_json(header)
            if (tiers and reply.tiers != tiers) or len(blobs) != 2 * len(reply.tiers):
                raise Fault(f"node '{node}' answered PSI with other match-key tiers; all nodes need one schema")
            tiers, counts[node] = reply.tiers, reply.count
            for i, tier in enumerate(tiers):
                points[(node, tier)] = blobs[2 * i]
                index[(node, tier)] = np.frombuffer(blobs[2 * i + 1], dtype="<i8")
                if len(index[(node, tier)]) != reply.count:
                    raise Fault(f"node '{node}' sent a PSI index of the wrong length; nothing was linked")
        stages["hash and blind"] = time.perf_counter() - mark

        mark = time.perf_counter()
        for step in range(1, len(order)):
            final = step == len(order) - 1
            progress(f"re-blinding round {step} of {len(order) - 1} (PSI)", 1, 6)
            holder = {source: order[(i + step) % len(order)] for i, source in enumerate(order)}
            queues: dict[str, list[tuple[str, str, int, bytes]]] = {n: [] for n in order}
            for (source, tier), blob in points.items():
                for b, start in enumerate(range(0, max(len(blob), 1), PSI_BATCH * psi.POINT_BYTES)):
                    batch = blob[start : start + PSI_BATCH * psi.POINT_BYTES]
                    queues[holder[source]].append((source, tier, b, batch))
            done: dict[tuple[str, str], dict[int, bytes]] = {key: {} for key in points}
            blind = PsiCall(project=call.project, analyst=call.analyst, mode="psi", run=run, final=final)
            head = blind.model_dump_json().encode()
            while any(queues.values()):
                jobs = {n: q.pop(0) for n, q in queues.items() if q}
                answers = self._fan_out({n: pack(head, [job[3]]) for n, job in jobs.items()}, rpc.LINK_PSI_BLIND)
                _first_error(answers)
                for node, (source, tier, b, _) in jobs.items():
                    answer = answers[node]
                    assert isinstance(answer, Message)
                    done[(source, tier)][b] = unpack(answer.body)[1][0]
            points = {key: b"".join(parts[b] for b in sorted(parts)) for key, parts in done.items()}
        stages["re-blind"] = time.perf_counter() - mark

        parties = []
        for node in order:
            match_keys = {}
            for tier in tiers:
                digests = np.array(psi.digests(points[(node, tier)]) or [b""], dtype=f"S{psi.DIGEST_BYTES}")
                at = index[(node, tier)]
                if len(at) and int(at.max(initial=-1)) >= len(psi.digests(points[(node, tier)])):
                    raise Fault(f"node '{node}' sent a PSI index beyond its points; nothing was linked")
                match_keys[tier] = np.where(at >= 0, digests[np.maximum(at, 0)], b"")
            count = counts[node]
            parties.append(
                EncodedRecords(
                    count=count,
                    match_keys=match_keys,
                    blooms=np.zeros((count, 0), dtype=np.uint64),
                    popcounts=np.zeros(count, dtype=np.int32),
                    block_keys={},
                )
            )
        return parties

    def _quality(
        self,
        call: LinkCall,
        spine_id: str,
        order: list[str],
        people: dict[str, int],
        pairs: dict[tuple[str, str], int],
    ) -> tuple[LinkageQuality | None, str | None]:
        """Every node spends the quality epsilon on its own ledger first; a refusal releases nothing."""
        if self._quality_epsilon <= 0:
            return None, "match rates are not released (link_quality_epsilon = 0)"
        body = QualityCall(project=call.project, analyst=call.analyst, spine_id=spine_id, epsilon=self._quality_epsilon)
        answers = self._fan_out({n: body.model_dump_json().encode() for n in order}, rpc.LINK_QUALITY)
        refusals = [a.message for a in answers.values() if isinstance(a, FedlinkError)]
        if refusals:
            return None, f"match rates not released: {refusals[0]}"
        return release_quality(spine_id, people, pairs, self._quality_epsilon), None


class SpineMeta(Frozen):
    """What the coordinator keeps beside a spine's arrays: its id, size, nodes and released quality."""

    project: str
    spine_id: str
    size: int
    nodes: tuple[str, ...]
    quality: LinkageQuality | None = None
    quality_refused: str | None = None


def load_spine_meta(spines: Path, project: str) -> SpineMeta | None:
    path = spines / f"{project}.json"
    if not path.exists():
        return None
    return SpineMeta.model_validate_json(path.read_text())
