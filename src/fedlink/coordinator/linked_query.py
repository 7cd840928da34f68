"""The coordinator's side of a linked query: reserve at every node of the chain, pass the ciphertexts
from node to node, check the last node's cells, and return them to the analyst.

The coordinator sees the plan, the spine's id and size, and ciphertexts under the analyst's key, each
re-randomised by the node that sent it (so it cannot divide one by the next); it never holds a
noiseless aggregate (the last node adds the noise and the mask under encryption) nor any secret key.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from fedlink.coordinator.floor import check_informative
from fedlink.coordinator.journal import Finished, JournalEntry
from fedlink.coordinator.lifecycle import QueryLifecycle
from fedlink.coordinator.linkage import load_spine_meta
from fedlink.coordinator.projects import ProjectRegistry
from fedlink.errors import BadInput, Fault, FedlinkError
from fedlink.language.linked_query import plan_linked
from fedlink.pets.chain import MAX_MULTIPLICATIONS, ChainEvaluator, ChainParams
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.plan.linked_query import LinkedPlan
from fedlink.protocol import rpc
from fedlink.protocol.blobs import pack, unpack
from fedlink.protocol.linkage import LinkageQuality
from fedlink.protocol.results import LinkedEncryptedResult
from fedlink.protocol.tasks import LinkedOutput, LinkedStep, QueryRequest, QueryTask

log = logging.getLogger("fedlink.coordinator")
#: A chain step over a million people moves and multiplies hundreds of ciphertexts: allow it time.
STEP_TIMEOUT_S = 600.0


def run_linked_query(
    queries: QueryLifecycle,
    projects: ProjectRegistry,
    spines: Path,
    request: QueryRequest,
    analyst: str,
    window_chunks: int = 64,
) -> tuple[str, bytes]:
    """Run a LINK query over the link spines kept in ``spines``; returns the reply kind and the packed
    :class:`LinkedEncryptedResult` with its masked cells (sealed to the analyst when the request carried
    a result key).

    Two-phase, like every query (:mod:`fedlink.coordinator.lifecycle`): each node of the chain reserves,
    then runs its step and prepares; the middle nodes' ciphertexts travel on at once, the last node's
    noisy cells wait in its outbox; once all have prepared the coordinator decides and every node
    commits, the last one sending its cells.

    The chain runs over the spine a window of ``window_chunks`` ciphertexts per stream at a time (every
    node of the chain, then the next window), so that no party holds the ciphertexts of a whole national
    spine; the last node adds its cells up across windows and adds noise once, after the last."""
    started = time.perf_counter()
    project = projects.get(request.project)
    queries.check_loss(request.loss, request.noiseless)
    if request.pet != "he+dp":
        raise BadInput("linked queries always run encrypted (he+dp); drop `pet=dp`")
    catalogue = queries.roster.catalogue()
    plan = plan_linked(request.sql, catalogue, MAX_MULTIPLICATIONS)
    check_informative(request.loss, plan, catalogue)  # before any node reserves
    project.check(analyst, plan.datasets())
    if not request.link_key:
        raise BadInput("a linked query needs the analyst's public key for the chain; upgrade the analyst client")
    params = ChainParams.for_chain(plan.multiplications, sums=plan.sums)
    ChainEvaluator(params, request.link_key)  # refuses a key that does not fit the plan, before reserving
    spine = project.spine_of or project.id  # broader use: a project may run over another's spine
    meta = load_spine_meta(spines, spine)
    if meta is None:
        raise BadInput(f"project '{spine}' has no link spine yet; run `fedlink link --project {spine}`")
    outside = sorted(set(plan.nodes) - set(meta.nodes))
    if outside:
        raise BadInput(
            f"the link spine of '{spine}' does not cover node(s) {', '.join(outside)}; rebuild it with "
            f"`fedlink link --project {spine}`"
        )
    sessions = queries.roster.sessions_for(plan.nodes, "holding a linked table")
    chain = plan.nodes
    step_timeout = max(queries.timeout_s, STEP_TIMEOUT_S)
    task = queries.new_task(
        request,
        plan=plan,
        analyst=analyst,
        project=project.id,
        purpose=project.purpose,
        loss=request.loss,
        noiseless=request.noiseless,
        pet="he+dp",
        extra_s=step_timeout * len(chain),
        spine_of=project.spine_of,
    )
    policy = DisclosurePolicy.strictest(sessions[n].catalogue.disclosure for n in chain)
    extra = {
        "policy": policy.model_dump(),
        "link_key": request.link_key,
        "linkage": None if meta.quality is None else meta.quality.model_dump(mode="json"),
        "linkage_note": meta.quality_refused,
    }
    run = queries.begin(task, "linked", extra, request.result_key, sessions)

    windows = math.ceil(math.ceil(meta.size / params.slots) / window_chunks)
    for window in range(windows):
        output = LinkedOutput(streams={}, chunks=0)
        blobs: list[bytes] = []
        for position, node in enumerate(chain):
            role = _role(position, len(chain), node in plan.union)
            step = LinkedStep(
                query_id=task.query_id,
                role=role,
                public_key=request.link_key,
                spine_id=meta.spine_id,
                spine_size=meta.size,
                streams=output.streams,
                chunks=output.chunks,
                units=output.units,
                window=window,
                windows=windows,
                window_chunks=window_chunks,
            )
            body = pack(step.model_dump_json().encode(), blobs)
            answer = run.call_each({node: body}, rpc.LINKED_STEP, step_timeout)[node]
            if isinstance(answer, FedlinkError) or (role == "last" and window == windows - 1):
                run.decide({node: answer}, "during the linked query")
            elif role != "last":
                header, blobs = unpack(answer.body)
                output = LinkedOutput.model_validate_json(header)
    reply = run.deliver()
    log.info(
        "linked query %s by '%s' for '%s' over %s (%d cells, %d people in the spine) answered in %.0f ms",
        task.query_id[:8],
        analyst,
        project.id,
        " -> ".join(chain),
        plan.cells,
        meta.size,
        1000 * (time.perf_counter() - started),
    )
    return reply


def finish_linked(entry: JournalEntry, answers: dict[str, tuple[str, bytes]]) -> Finished:
    """The analyst's linked result from the last node's committed cells (the other nodes' commits carry
    only their header, no ciphertext): checked to be ciphertexts of this query's parameters, packed with
    their header, under the strictest disclosure policy of the nodes' catalogues and of what each node's
    answer says it requires for the project (an approval's minimum cohort)."""
    task = QueryTask.model_validate_json(entry.task)
    plan = task.plan
    assert isinstance(plan, LinkedPlan)
    extra = json.loads(entry.extra)
    kind, body = answers[plan.nodes[-1]]
    if kind != rpc.RESULT:
        raise Fault("the last node of the chain committed without its cells; nothing was released")
    header, blobs = unpack(body)
    output = LinkedOutput.model_validate_json(header)
    if output.noiseless != task.noiseless or sum(output.streams.values()) != len(plan.components) * plan.cells:
        raise Fault("the last node of the chain answered inconsistently; nothing was released")
    policy = DisclosurePolicy.strictest(
        [DisclosurePolicy.model_validate(extra["policy"]), *_required(answers, plan.nodes[-1], output)]
    )
    evaluator = ChainEvaluator(ChainParams.for_chain(plan.multiplications, sums=plan.sums), extra["link_key"])
    for blob in blobs:
        evaluator.load(blob)  # the analyst receives only ciphertexts of this query's parameters
    quality = extra.get("linkage")
    result = LinkedEncryptedResult(
        query_id=task.query_id,
        plan=plan,
        project=task.project,
        pet=task.pet_label,
        noiseless=task.noiseless,
        privacy_loss={n: task.loss for n in plan.nodes},
        policy=policy,
        noise=output.noise,
        units=output.units,
        linkage=None if quality is None else LinkageQuality.model_validate(quality),
        linkage_note=extra.get("linkage_note"),
    )
    return Finished(rpc.LINKED_RESULT, pack(result.model_dump_json().encode(), blobs), None, task.analyst)


def _required(answers: dict[str, tuple[str, bytes]], last: str, output: LinkedOutput) -> list[DisclosurePolicy]:
    """The disclosure policies the nodes' committed answers require for the query's project."""
    outputs = [output]
    for node, (_, body) in answers.items():
        if node != last and body:
            try:
                outputs.append(LinkedOutput.model_validate_json(body))
            except ValidationError as exc:
                raise Fault(f"node '{node}' committed a malformed linked answer; nothing was released") from exc
    return [o.disclosure for o in outputs if o.disclosure is not None]


def _role(position: int, length: int, in_union: bool) -> Literal["first", "union", "middle", "last"]:
    if position == 0:
        return "first"
    if position == length - 1:
        return "last"
    return "union" if in_union else "middle"
