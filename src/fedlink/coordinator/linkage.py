"""The coordinator's linkage unit: orchestrates link-secret agreement among nodes (relaying sealed
envelopes it cannot open), sends them the project's linkage spec, collects keyed encodings, links
them (probabilistic matching: per-field comparisons weighed by a Fellegi-Sunter model fitted without
labels, :mod:`fedlink.linkage.probabilistic`; or, for a "clk" spec, exact match-key tiers then Dice
similarity of record-level filters; then multi-party clustering with at most one record per node in
an entity) and gives each node only the slot of each of its own people.

The spine (entity and slot of every node's person index), every pair's score, the fitted model and
the exact estimated quality stay here (``<spines>/<project>.estimate.json``); overlap counts, match
rates and the estimated quality go to the analyst only with DP noise (:func:`release_quality`).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fedlink.coordinator.linkage_spark import SparkLinkage
from fedlink.errors import Fault, FedlinkError
from fedlink.frozen import Frozen
from fedlink.linkage.cluster import assign_slots, cluster
from fedlink.linkage.concepts import LOW_VALID_SHARE
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.estimate import ExpectedCounts, QualityEstimate, estimate_quality
from fedlink.linkage.payload import slots_to_bytes
from fedlink.linkage.probabilistic import FellegiSunter
from fedlink.linkage.spec import LinkageSpec, load_spec
from fedlink.linkage.streaming import link_probabilistic_spilled, open_encodings, spill_npz
from fedlink.pets import psi
from fedlink.pets.dp import add_noise, calibrate
from fedlink.pets.keyagree import LinkKeyCard
from fedlink.protocol import rpc
from fedlink.protocol.blobs import pack, unpack, unpack_file
from fedlink.protocol.linkage import (
    EncodeAnswer,
    EnvelopeCall,
    Envelopes,
    EstimatedCounts,
    EstimatedPair,
    EstimatedQuality,
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
    SubgroupLabels,
)
from fedlink.protocol.transport import Message

log = logging.getLogger("fedlink.coordinator")


class FanOut(Protocol):
    """Calls nodes in parallel: each its own body, all one kind; a node named in ``sinks`` has its reply's
    body written to that file as it arrives (the reply returned has an empty body)."""

    def __call__(
        self, bodies: dict[str, bytes], kind: str, sinks: Mapping[str, Path] | None = None
    ) -> dict[str, Message | FedlinkError]: ...


Progress = Callable[[str, int, int], None]
#: Distinct keys per PSI batch (64-byte points: 3.2 MB), so memory per message stays bounded.
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
    spine_id: str,
    people: dict[str, int],
    pairs: dict[tuple[str, str], int],
    epsilon: float,
    estimate: QualityEstimate | None = None,
    labels: dict[str, dict[int, str]] | None = None,
) -> LinkageQuality:
    """Match rates, and the estimated quality where a model gave one, from counts with OpenDP's noise.

    Match rates: one person changes their node's count and each of its k - 1 pair overlaps by at most
    one, so the L1 sensitivity of those counts is k; discrete Laplace. With an estimate, half of
    ``epsilon`` goes to them and half to the expected false and missed links (continuous Laplace): per
    pair of nodes, a person's records take part in at most two links (each adds at most 1 to the
    expected false links) and their discounted missed pairs add at most 1 per record, so at most 4;
    summed over the k(k-1)/2 pairs, and counted again in at most two cells of each subgroup. As for
    the match rates, this bounds one person's contribution to a given spine (the spine itself is not
    re-linked without them)."""
    k = len(people)
    share = epsilon / 2 if estimate is not None else epsilon
    exact = np.array([*people.values(), *pairs.values()], dtype=float)
    spec = calibrate(float(k), epsilon=share, integer=True)
    noisy = np.maximum(add_noise(exact, spec), 0.0)
    noisy_people = dict(zip(people, noisy[: len(people)].tolist(), strict=True))
    matches = []
    for (a, b), value in zip(pairs, noisy[len(people) :].tolist(), strict=True):
        rate_a = min(1.0, value / noisy_people[a]) if noisy_people[a] >= 1 else None
        rate_b = min(1.0, value / noisy_people[b]) if noisy_people[b] >= 1 else None
        matches.append(PairMatch(a=a, b=b, rate_a=rate_a, rate_b=rate_b, overlap=value))
    estimated = None
    if estimate is not None:
        estimated = _release_estimate(
            estimate, list(people), dict(zip(pairs, noisy[len(people) :].tolist(), strict=True)), share, labels or {}
        )
    return LinkageQuality(
        spine_id=spine_id,
        epsilon=epsilon,
        scale=spec.scale,
        people=noisy_people,
        pairs=tuple(matches),
        note=f"DP counts (epsilon {share:g} at every node); rate_a = share of a's people linked to b",
        estimated=estimated,
    )


def _counts(links: float, false_links: float, missed: float) -> EstimatedCounts:
    """Released counts and the rates they give (post-processing of noisy counts)."""
    links = max(links, 0.0)
    false_links = min(max(false_links, 0.0), links)
    missed = max(missed, 0.0)
    correct = links - false_links
    return EstimatedCounts(
        links=links,
        false_links=false_links,
        missed_links=missed,
        precision=correct / links if links > 0 else None,
        recall=correct / (correct + missed) if correct + missed > 0 else None,
        f1=2 * correct / (links + correct + missed) if links + correct + missed > 0 else None,
    )


def _release_estimate(
    estimate: QualityEstimate,
    order: list[str],
    overlaps: dict[tuple[str, str], float],
    epsilon: float,
    labels: dict[str, dict[int, str]],
) -> EstimatedQuality:
    """Expected false and missed links per node pair and per subgroup label, with Laplace noise; links
    per pair from the released (noisy) overlaps, per subgroup with noise too (see release_quality)."""
    k = len(order)
    node_pairs = k * (k - 1) // 2
    subgroup_cells = [(name, code) for name, codes in estimate.subgroups.items() for code in codes]
    sensitivity = 4.0 * node_pairs * (1 + 2 * len(estimate.subgroups))
    spec = calibrate(sensitivity, epsilon=epsilon, integer=False)
    exact = []
    for p, q in sorted(estimate.pairs):
        counts = estimate.pairs[(p, q)]
        exact += [counts.links - counts.correct, counts.missed]
    for name, code in subgroup_cells:
        counts = estimate.subgroups[name][code]
        exact += [counts.links, counts.links - counts.correct, counts.missed]
    noisy = add_noise(np.array(exact, dtype=float), spec).tolist()
    released_pairs = []
    total = ExpectedCounts()
    for index, (p, q) in enumerate(sorted(estimate.pairs)):
        a, b = order[p], order[q]
        links = overlaps.get((a, b), 0.0)
        false_links, missed = noisy[2 * index], noisy[2 * index + 1]
        released_pairs.append(EstimatedPair(a=a, b=b, **_counts(links, false_links, missed).model_dump()))
        total = total + ExpectedCounts(links, links - false_links, missed)
    at = 2 * len(estimate.pairs)
    subgroups: dict[str, dict[str, EstimatedCounts]] = {}
    for index, (name, code) in enumerate(subgroup_cells):
        links, false_links, missed = noisy[at + 3 * index : at + 3 * index + 3]
        label = labels.get(name, {}).get(code, "(unknown)" if code == 0 else "(not named by any node)")
        held = subgroups.setdefault(name, {})
        if label in held:  # codes no node could name are pooled
            previous = held[label]
            links, false_links, missed = (
                links + previous.links,
                false_links + previous.false_links,
                missed + previous.missed_links,
            )
        held[label] = _counts(links, false_links, missed)
    return EstimatedQuality(
        epsilon=epsilon,
        scale=spec.scale,
        overall=_counts(total.links, total.links - total.correct, total.missed),
        pairs=tuple(released_pairs),
        subgroups=subgroups,
        note=(
            f"expected false and missed links from the fitted model, with Laplace noise of scale {spec.scale:.3g} "
            f"(epsilon {epsilon:g} at every node); links per pair are the released overlaps; pairs that no "
            "blocking rule brought together are not counted as missed"
        ),
    )


class LinkageUnit:
    def __init__(
        self, fan_out: FanOut, spines: Path, quality_epsilon: float = 0.1, spark: SparkLinkage | None = None
    ) -> None:
        self._fan_out = fan_out
        self._spines = spines
        self._quality_epsilon = quality_epsilon
        self._spark = spark  #: None: link in this process

    def run(
        self,
        project: str,
        analyst: str,
        nodes: list[str],
        progress: Progress,
        mode: LinkMode = "secret",
        spec: LinkageSpec | None = None,
    ) -> LinkReport:
        """Build the spine of ``project`` across ``nodes`` with ``spec`` (default: the shipped spec,
        wildcards resolved to nothing)."""
        if len(nodes) < 2:
            raise Fault(f"project '{project}' spans fewer than two nodes: nothing to link")
        spec = spec or load_spec().resolve(())
        stages: dict[str, float] = {}
        call = LinkCall(project=project, analyst=analyst, mode=mode, spec_hash=spec.hash)
        steps = 6
        spine_id = secrets.token_hex(16)
        started = time.perf_counter()
        order = sorted(nodes)
        warnings: list[str] = []
        estimate: QualityEstimate | None = None
        work = self._spines / f".{project}.linking"  # encodings and spilled pairs, removed once linked
        shutil.rmtree(work, ignore_errors=True)
        try:
            if mode == "psi":
                parties = self._psi(call, spec, order, progress, stages)
            else:
                parties = self._keyed(call, spec, order, progress, stages, warnings, work)

            progress("matching and clustering", 2, steps)
            mark = time.perf_counter()
            if mode == "secret" and spec.matching == "probabilistic":
                linked = (
                    self._spark.probabilistic(parties, spec)
                    if self._spark
                    else link_probabilistic_spilled(parties, spec, spill=work / "pairs")
                )
                spine = linked.spine
                subgroups = {name: [np.asarray(p.subgroups[name]) for p in parties] for name in spec.subgroups}
                estimate = estimate_quality(spine.entity, linked.scored, subgroups)
                self._keep_estimate(project, spine_id, order, spec, linked.threshold, linked.models, estimate)
                del linked
            else:
                spine = self._spark.clk(parties) if self._spark else cluster(parties)
            del parties
        finally:
            shutil.rmtree(work, ignore_errors=True)
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
                    spec_hash=spec.hash,
                )
                .model_dump_json()
                .encode()
                for i, n in enumerate(order)
            },
            rpc.LINK_SLOTS,
        )
        _first_error(sent)
        stages["distribute"] = time.perf_counter() - mark

        progress("releasing match rates and estimated quality with differential privacy", 5, steps)
        quality, refused = self._quality(
            call.model_copy(update={"spec": spec.text}), spine_id, order, people, pairs, estimate
        )
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
            spec_hash=spec.hash,
            matching="exact match keys (PSI)" if mode == "psi" else spec.matching,
            warnings=tuple(warnings),
        )

    def _keep_estimate(
        self,
        project: str,
        spine_id: str,
        order: list[str],
        spec: LinkageSpec,
        threshold: float,
        models: dict[tuple[int, int], FellegiSunter],
        estimate: QualityEstimate,
    ) -> None:
        """The exact estimated quality and the fitted models, kept by the linkage unit only."""
        self._spines.mkdir(parents=True, exist_ok=True)
        document = {
            "spine_id": spine_id,
            "spec_hash": spec.hash,
            "threshold": threshold,
            "estimated": estimate.overall.to_dict(),
            "pairs": {f"{order[p]}-{order[q]}": c.to_dict() for (p, q), c in estimate.pairs.items()},
            "models": {
                f"{order[p]}-{order[q]}": {"prior": m.prior, "levels": m.describe()} for (p, q), m in models.items()
            },
        }
        (self._spines / f"{project}.estimate.json").write_text(json.dumps(document, indent=2))

    def _keyed(
        self,
        call: LinkCall,
        spec: LinkageSpec,
        order: list[str],
        progress: Progress,
        stages: dict[str, float],
        warnings: list[str],
        work: Path,
    ) -> list[EncodedRecords]:
        """Shared-secret mode: nodes agree a link secret, then send keyed match keys and Bloom encodings,
        which are written under ``work`` as they are read and memory-mapped from there."""
        mark = time.perf_counter()
        project, analyst = call.project, call.analyst
        progress("agreeing a link secret among the nodes", 0, 6)
        answers = self._fan_out({n: b"" for n in order}, rpc.LINK_CARD)
        _first_error(answers)
        cards = tuple(LinkKeyCard.model_validate_json(a.body) for a in answers.values() if isinstance(a, Message))
        initiator = order[0]
        sealed = self._fan_out(
            {
                initiator: InitiateCall(project=project, analyst=analyst, cards=cards, spec_hash=spec.hash)
                .model_dump_json()
                .encode()
            },
            rpc.LINK_INITIATE,
        )
        _first_error(sealed)
        reply = sealed[initiator]
        assert isinstance(reply, Message)
        envelopes = Envelopes.model_validate_json(reply.body).envelopes
        delivered = self._fan_out(
            {
                e.recipient: EnvelopeCall(project=project, analyst=analyst, envelope=e, spec_hash=spec.hash)
                .model_dump_json()
                .encode()
                for e in envelopes
            },
            rpc.LINK_ENVELOPE,
        )
        _first_error(delivered)
        stages["agree secret"] = time.perf_counter() - mark

        progress(f"encoding at {len(order)} nodes", 1, 6)
        mark = time.perf_counter()
        body = call.model_copy(update={"spec": spec.text}).model_dump_json().encode()
        work.mkdir(parents=True, exist_ok=True)
        wires = {n: work / f"{n}.wire" for n in order}  # each reply written to disk as its frames arrive
        _first_error(self._fan_out({n: body for n in order}, rpc.LINK_ENCODE, wires))
        parties, heads = [], {}
        for node in order:
            header, places = unpack_file(wires[node])
            if len(places) != 1:
                raise Fault(f"node '{node}' sent {len(places)} encodings blobs, not 1; check it runs this fedlink")
            heads[node] = EncodeAnswer.model_validate_json(header)
            spill_npz(wires[node], work / node, *places[0])
            wires[node].unlink()
            parties.append(open_encodings(work / node))
        encoded_somewhere = {concept for head in heads.values() for concept in head.concepts}
        for node, head in heads.items():
            warnings.extend(_warnings(node, head, encoded_somewhere))
        stages["encode"] = time.perf_counter() - mark
        return parties

    def _psi(
        self, call: LinkCall, spec: LinkageSpec, order: list[str], progress: Progress, stages: dict[str, float]
    ) -> list[EncodedRecords]:
        """PSI mode: each node prepares its distinct match keys under a fresh scalar of its own; then
        every batch of a node's keys travels round the ring, hashed and blinded by that node, re-blinded
        by each other node, the last one hashing it to digests (:class:`_Ring`: all nodes at work at
        once, on different nodes' batches, with few batches in flight, so memory stays bounded); the
        digests, placed at each person's position, are exact match keys no one could compute alone."""
        run = secrets.token_hex(16)
        progress(f"preparing match keys at {len(order)} nodes (PSI)", 0, 6)
        mark = time.perf_counter()
        start = PsiCall(
            project=call.project, analyst=call.analyst, mode="psi", run=run, spec_hash=spec.hash, spec=spec.text
        )
        started = self._fan_out({n: start.model_dump_json().encode() for n in order}, rpc.LINK_PSI_START)
        _first_error(started)
        heads: dict[str, PsiStarted] = {}
        index: dict[tuple[str, str], np.ndarray] = {}
        for node in order:
            answer = started[node]
            assert isinstance(answer, Message)
            header, blobs = unpack(answer.body)
            heads[node] = head = PsiStarted.model_validate_json(header)
            if list(head.distinct) != list(heads[order[0]].distinct) or len(blobs) != len(head.distinct):
                raise Fault(f"node '{node}' answered PSI with other match-key tiers; all nodes need one schema")
            for tier, blob in zip(head.distinct, blobs, strict=True):
                at = np.frombuffer(blob, dtype="<i8")
                if len(at) != head.count or int(at.max(initial=-1)) >= head.distinct[tier]:
                    raise Fault(f"node '{node}' sent PSI positions that do not fit its values; nothing was linked")
                index[(node, tier)] = at
        stages["prepare"] = time.perf_counter() - mark

        mark = time.perf_counter()
        ring = _Ring(call, run, order, heads, self._fan_out)
        digests = ring.run(lambda done, total: progress(f"PSI: {done} of {total} batches round the ring", 1, 6))
        stages["hash and blind"] = time.perf_counter() - mark

        parties = []
        for node in order:
            match_keys = {}
            for tier, distinct in heads[node].distinct.items():
                table = np.array(digests[(node, tier)] or [b""], dtype=f"S{psi.DIGEST_BYTES}")
                if len(digests[(node, tier)]) != distinct:
                    raise Fault(f"the PSI ring returned the wrong number of digests for '{node}'; nothing was linked")
                at = index[(node, tier)]
                match_keys[tier] = np.where(at >= 0, table[np.maximum(at, 0)], b"")
            count = heads[node].count
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
        estimate: QualityEstimate | None,
    ) -> tuple[LinkageQuality | None, str | None]:
        """Every node spends the quality epsilon on its own ledger first (and names the subgroup codes
        it knows); a refusal releases nothing."""
        if self._quality_epsilon <= 0:
            return None, "match rates are not released (link_quality_epsilon = 0)"
        codes = {name: tuple(cells) for name, cells in estimate.subgroups.items()} if estimate else {}
        body = QualityCall(
            project=call.project,
            analyst=call.analyst,
            spine_id=spine_id,
            epsilon=self._quality_epsilon,
            subgroup_codes=codes,
            spec_hash=call.spec_hash,
            spec=call.spec,
        )
        answers = self._fan_out({n: body.model_dump_json().encode() for n in order}, rpc.LINK_QUALITY)
        refusals = [a.message for a in answers.values() if isinstance(a, FedlinkError)]
        if refusals:
            return None, f"match rates not released: {refusals[0]}"
        labels: dict[str, dict[int, str]] = {}
        for answer in answers.values():
            if isinstance(answer, Message) and answer.body:
                for name, named in SubgroupLabels.model_validate_json(answer.body).labels.items():
                    labels.setdefault(name, {}).update({int(code): label for code, label in named.items()})
        return release_quality(spine_id, people, pairs, self._quality_epsilon, estimate, labels), None


def _warnings(node: str, head: EncodeAnswer, encoded_somewhere: set[str]) -> list[str]:
    """What a user should look at in one node's encoding: concepts it lacks that another node encodes,
    or whose values are mostly invalid once normalised (a postcode of another country, dates in
    another format)."""
    found = []
    lacking = [concept for concept in head.missing if concept in encoded_somewhere]
    if lacking:
        found.append(
            f"node '{node}' encodes no {', '.join(lacking)} (not mapped in its tables, or not approved "
            "for this project): comparisons of it count as missing there"
        )
    for concept, share in sorted(head.valid.items()):
        if share < LOW_VALID_SHARE:
            found.append(
                f"node '{node}': only {share:.0%} of its people have a valid {concept} after normalisation; check "
                f"how its node.toml maps {concept} (format, coding or country)"
            )
    return found


@dataclass
class _Batch:
    """``PSI_BATCH`` distinct keys of one node's tier on their way round the ring."""

    source: int
    tier: str
    start: int
    stop: int
    stage: int = 0  #: 0: to be hashed and blinded by the source; s: to be re-blinded by source + s
    points: bytes = b""


class _Ring:
    """The PSI ring's schedule: in each round every node works on one batch (of another node's keys,
    or of its own), batches already under way first, and no more than two per node in flight."""

    def __init__(
        self, call: LinkCall, run: str, order: list[str], heads: dict[str, PsiStarted], fan_out: FanOut
    ) -> None:
        self.call, self.run_id, self.order, self.fan_out = call, run, order, fan_out
        self.waiting = deque(
            _Batch(i, tier, start, min(start + PSI_BATCH, distinct))
            for i, node in enumerate(order)
            for tier, distinct in heads[node].distinct.items()
            for start in range(0, distinct, PSI_BATCH)
        )
        self.total = len(self.waiting)
        self.parts: dict[tuple[str, str], dict[int, bytes]] = {
            (node, tier): {} for node in order for tier in heads[node].distinct
        }

    def _node(self, batch: _Batch) -> str:
        return self.order[(batch.source + batch.stage) % len(self.order)]

    def _body(self, batch: _Batch) -> tuple[str, bytes]:
        base = PsiCall(project=self.call.project, analyst=self.call.analyst, mode="psi", run=self.run_id)
        if batch.stage == 0:
            head = base.model_copy(update={"tier": batch.tier, "start": batch.start, "stop": batch.stop})
            return rpc.LINK_PSI_POINTS, head.model_dump_json().encode()
        head = base.model_copy(update={"final": batch.stage == len(self.order) - 1})
        return rpc.LINK_PSI_BLIND, pack(head.model_dump_json().encode(), [batch.points])

    def run(self, progress: Callable[[int, int], None]) -> dict[tuple[str, str], list[bytes]]:
        moving: list[_Batch] = []
        done = 0
        while self.waiting or moving:
            chosen: dict[str, _Batch] = {}
            for batch in moving:
                chosen.setdefault(self._node(batch), batch)
            while self.waiting and len(moving) < 2 * len(self.order):
                node = self._node(self.waiting[0])
                if node in chosen:
                    break
                batch = self.waiting.popleft()
                moving.append(batch)
                chosen[node] = batch
            bodies = {n: self._body(b) for n, b in chosen.items()}
            kinds = {kind for kind, _ in bodies.values()}
            by_kind = {k: {n: body for n, (kind, body) in bodies.items() if kind == k} for k in kinds}
            with ThreadPoolExecutor(max_workers=len(by_kind)) as pool:  # both kinds of call at once
                futures = [pool.submit(self.fan_out, calls, kind) for kind, calls in by_kind.items()]
                answers = {n: a for future in futures for n, a in future.result().items()}
            _first_error(answers)
            for node, batch in chosen.items():
                answer = answers[node]
                assert isinstance(answer, Message)
                batch.points = unpack(answer.body)[1][0]
                batch.stage += 1
                if batch.stage == len(self.order):
                    self.parts[(self.order[batch.source], batch.tier)][batch.start] = batch.points
                    moving.remove(batch)
                    done += 1
            progress(done, self.total)
        return {
            key: [d for start in sorted(parts) for d in psi.digests(parts[start])] for key, parts in self.parts.items()
        }


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
