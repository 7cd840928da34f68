"""The coordinator's side of a horizontal query: the same table at every node holding it, each node's
noisy aggregate vectors added up.

For ``dp`` the coordinator adds the nodes' noisy vectors, applies disclosure control and returns the
table. For ``he+dp`` it only ever holds ciphertexts: it adds them and returns the sums to the analyst,
whose client decrypts and applies the same disclosure control.
"""

from __future__ import annotations

import json
import logging
import time

from fedlink.coordinator.floor import check_informative
from fedlink.coordinator.journal import Finished, JournalEntry
from fedlink.coordinator.lifecycle import QueryLifecycle, released_table
from fedlink.coordinator.projects import ProjectRegistry
from fedlink.errors import BadInput, Fault
from fedlink.language.sql import plan_query
from fedlink.pets.he import PublicContext, Scheme, add, load_public_context
from fedlink.plan.aggregate import AggregatePlan
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.protocol import rpc
from fedlink.protocol.results import (
    EncryptedPartial,
    EncryptedResult,
    PartialAggregates,
    build_result,
    combine,
    scheme_of,
)
from fedlink.protocol.tasks import ExecuteTask, QueryRequest, QueryTask
from fedlink.protocol.transport import Message

log = logging.getLogger("fedlink.coordinator")


def run_query(
    queries: QueryLifecycle, projects: ProjectRegistry, request: QueryRequest, analyst: str
) -> tuple[str, bytes]:
    """Plan, reserve at every node, prepare, decide, commit, combine, store and release; returns the
    reply kind and body (sealed to the analyst when the request carried a result key)."""
    started = time.perf_counter()
    project = projects.get(request.project)
    queries.check_loss(request.loss, request.noiseless)
    catalogue = queries.roster.catalogue()
    plan = plan_query(request.sql, catalogue)
    check_informative(request.loss, plan, catalogue)  # before any node reserves
    project.check(analyst, [f"{n}.{plan.table}" for n in plan.nodes])
    loaded: dict[Scheme, PublicContext] = {}
    if request.pet == "he+dp":
        missing = sorted({scheme_of(c) for c in plan.components} - set(request.contexts))
        if missing:
            raise BadInput(f"he+dp needs the analyst's public {', '.join(m.upper() for m in missing)} context")
        # loaded once here to refuse a context that carries a secret key before anything is reserved
        loaded = {scheme: load_public_context(scheme, encoded) for scheme, encoded in request.contexts.items()}
    sessions = queries.roster.sessions_for(plan.nodes, f"holding table '{plan.table}'")
    task = queries.new_task(
        request,
        plan=plan,
        analyst=analyst,
        project=project.id,
        purpose=project.purpose,
        loss=request.loss,
        noiseless=request.noiseless,
        pet=request.pet,
    )
    policy = DisclosurePolicy.strictest(s.catalogue.disclosure for s in sessions.values())
    contexts = dict(request.contexts) if task.pet == "he+dp" else {}
    extra = {"policy": policy.model_dump(), "contexts": contexts}
    run = queries.begin(task, "horizontal", extra, request.result_key, sessions)
    execute = ExecuteTask(query_id=task.query_id, contexts=contexts)
    executed = run.fan_out(rpc.EXECUTE, execute.model_dump_json().encode())
    run.decide(executed, "during the query")
    # finished here with the contexts already loaded; a result completed later loads them from the journal
    reply = run.deliver(lambda entry, answers: finish_horizontal(entry, answers, loaded))
    log.info(
        "query %s (%s) by analyst '%s' for project '%s' over '%s' at %d nodes (%d cells) answered in %.0f ms",
        task.query_id[:8],
        task.pet_label,
        analyst,
        project.id,
        plan.table,
        len(plan.nodes),
        plan.cells,
        1000 * (time.perf_counter() - started),
    )
    return reply


def finish_horizontal(
    entry: JournalEntry, answers: dict[str, tuple[str, bytes]], contexts: dict[Scheme, PublicContext] | None = None
) -> Finished:
    """The analyst's result from every node's committed vectors: for ``dp`` the table, for ``he+dp`` the
    summed ciphertexts (``contexts``: the analyst's public contexts if already loaded)."""
    task = QueryTask.model_validate_json(entry.task)
    assert isinstance(task.plan, AggregatePlan)
    extra = json.loads(entry.extra)
    policy = DisclosurePolicy.model_validate(extra["policy"])
    replies = [Message("", *answers[n]) for n in entry.nodes]
    if task.pet == "he+dp":
        contexts = contexts or {
            scheme: load_public_context(scheme, encoded) for scheme, encoded in extra["contexts"].items()
        }
        encrypted = _add_encrypted(task, contexts, replies, policy)
        return Finished(rpc.ENCRYPTED_RESULT, encrypted.model_dump_json().encode(), None, task.analyst)
    partials = [PartialAggregates.model_validate_json(m.body) for m in replies if m.kind == rpc.PARTIAL]
    policy = DisclosurePolicy.strictest([policy, *(p.disclosure for p in partials if p.disclosure is not None)])
    noiseless = _agreed_noiseless(task, [p.noiseless for p in partials], len(replies))
    result = build_result(
        task.plan,
        combine(task.plan, partials),
        query_id=task.query_id,
        project=task.project,
        pet=task.pet_label,
        noise={} if noiseless else dict(partials[0].noise),
        noiseless=noiseless,
        privacy_loss={n: task.loss for n in task.plan.nodes},
        policy=policy,
    )
    return Finished(rpc.RESULT, result.model_dump_json().encode(), released_table(result), None)


def _agreed_noiseless(task: QueryTask, flags: list[bool], replies: int) -> bool:
    if len(flags) != replies or len(set(flags)) > 1 or (flags and flags[0] != task.noiseless):
        raise Fault("nodes answered inconsistently (test mode or protection); nothing was released")
    return task.noiseless


def _add_encrypted(
    task: QueryTask, contexts: dict[Scheme, PublicContext], replies: list[Message], policy: DisclosurePolicy
) -> EncryptedResult:
    assert isinstance(task.plan, AggregatePlan)
    partials = [EncryptedPartial.model_validate_json(m.body) for m in replies if m.kind == rpc.ENCRYPTED_PARTIAL]
    policy = DisclosurePolicy.strictest([policy, *(p.disclosure for p in partials if p.disclosure is not None)])
    noiseless = _agreed_noiseless(task, [p.noiseless for p in partials], len(replies))
    sums = {c.key: add(contexts[scheme_of(c)], [p.ciphertexts[c.key] for p in partials]) for c in task.plan.components}
    return EncryptedResult(
        query_id=task.query_id,
        plan=task.plan,
        project=task.project,
        pet=task.pet_label,
        noiseless=noiseless,
        privacy_loss={n: task.loss for n in task.plan.nodes},
        policy=policy,
        noise={} if noiseless else dict(partials[0].noise),
        ciphertexts=sums,
    )
