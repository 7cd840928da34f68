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
from fedlink.linkage.messages import EnvelopeCall, Envelopes, InitiateCall, LinkCall, LinkReport, SlotsCall
from fedlink.linkage.payload import from_bytes, slots_to_bytes
from fedlink.pets.keyagree import LinkKeyCard
from fedlink.wire import rpc
from fedlink.wire.transport import Message

log = logging.getLogger("fedlink.coordinator")
FanOut = Callable[[dict[str, bytes], str], dict[str, Message | FedlinkError]]
Progress = Callable[[str, int, int], None]


def _first_error(answers: dict[str, Message | FedlinkError]) -> None:
    for name, answer in answers.items():
        if isinstance(answer, FedlinkError):
            raise type(answer)(answer.message if name in answer.message else f"node '{name}': {answer.message}")


class LinkageUnit:
    def __init__(self, fan_out: FanOut, spines: Path) -> None:
        self._fan_out = fan_out
        self._spines = spines

    def run(self, project: str, analyst: str, nodes: list[str], progress: Progress) -> LinkReport:
        if len(nodes) < 2:
            raise Fault(f"project '{project}' spans fewer than two nodes: nothing to link")
        stages: dict[str, float] = {}
        call = LinkCall(project=project, analyst=analyst)
        steps = 5
        started = time.perf_counter()

        progress("agreeing a link secret among the nodes", 0, steps)
        answers = self._fan_out({n: b"" for n in nodes}, rpc.LINK_CARD)
        _first_error(answers)
        cards = tuple(LinkKeyCard.model_validate_json(a.body) for a in answers.values() if isinstance(a, Message))
        initiator = sorted(nodes)[0]
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
        stages["agree secret"] = time.perf_counter() - started

        progress(f"encoding at {len(nodes)} nodes", 1, steps)
        mark = time.perf_counter()
        encoded_answers = self._fan_out({n: call.model_dump_json().encode() for n in nodes}, rpc.LINK_ENCODE)
        _first_error(encoded_answers)
        order = sorted(nodes)
        parties = [from_bytes(encoded_answers[n].body) for n in order]  # type: ignore[union-attr]
        stages["encode"] = time.perf_counter() - mark

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

        progress("giving each node the slots of its own people", 4, steps)
        mark = time.perf_counter()
        sent = self._fan_out(
            {
                n: SlotsCall(
                    project=project, analyst=analyst, slots=base64.b64encode(slots_to_bytes(slots[i])).decode()
                )
                .model_dump_json()
                .encode()
                for i, n in enumerate(order)
            },
            rpc.LINK_SLOTS,
        )
        _first_error(sent)
        stages["distribute"] = time.perf_counter() - mark
        progress("done", steps, steps)
        stages["total"] = time.perf_counter() - started
        log.info("linked project '%s' across %d nodes in %.1f s", project, len(nodes), stages["total"])
        return LinkReport(project=project, nodes=tuple(order), stages={k: round(v, 3) for k, v in stages.items()})
