"""The coordinator's side of a federated model: plan the formula, reserve at every node holding the
table, then run Newton-Raphson, one round per iteration, on the sum of the nodes' masked statistics.

In each round every node sends its statistics for the current coefficients (score vector,
information matrix, rows) with its own Gaussian noise added, in fixed point under pairwise masks
(:mod:`fedlink.pets.secagg`): the coordinator can read only the sum over all nodes, never one node's
statistics. It takes the Newton step itself and sends the new coefficients out for the next round.
The coefficients it releases are a function of noisy sums alone, so each node's privacy loss is the
rho it committed (rho / iterations per round, composed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import NamedTuple

import numpy as np
from pydantic import ValidationError

from fedlink.coordinator.floor import check_informative
from fedlink.coordinator.journal import Finished, JournalEntry
from fedlink.coordinator.lifecycle import QueryLifecycle
from fedlink.coordinator.projects import ProjectRegistry
from fedlink.errors import BadInput, Fault, FedlinkError
from fedlink.language.model_formula import plan_model
from fedlink.pets import secagg
from fedlink.pets.keyagree import LinkKeyCard
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.plan.model import ModelPlan, newton_fit, summary
from fedlink.protocol import rpc
from fedlink.protocol.blobs import unpack as unpack_blobs
from fedlink.protocol.tasks import ModelOutput, ModelRequest, ModelResult, ModelStep, QueryTask
from fedlink.protocol.transport import Message

log = logging.getLogger("fedlink.coordinator")


def fit_model(
    queries: QueryLifecycle, projects: ProjectRegistry, request: ModelRequest, analyst: str
) -> tuple[str, bytes]:
    """Fit ``request``'s model over every node holding its table; returns the reply kind and the
    released :class:`ModelResult` (sealed to the analyst when the request carried a result key).

    The first iteration is the query's two-phase commit: every node prepares its first statistics,
    the coordinator decides, every node commits its whole budget and sends them. Later iterations
    answer at once. A node failing after the commit stops the fit there: the estimate so far is
    released (its budget was spent), with a note saying so."""
    started = time.perf_counter()
    project = projects.get(request.project)
    queries.check_loss(request.loss, request.noiseless)
    if request.loss.epsilon > 0:
        raise BadInput("a model's noise is Gaussian: declare its privacy loss as `rho=R` (zCDP), not `epsilon`")
    catalogue = queries.roster.catalogue()
    plan = plan_model(request.formula, request.table, catalogue, request.family, request.iterations)
    check_informative(request.loss, plan, catalogue)  # before any node reserves
    if len(plan.nodes) < 2:
        raise BadInput(
            f"table '{plan.table}' is held by one node only; a federated model needs it at two or more nodes "
            "(each node's statistics are released only inside their sum)"
        )
    project.check(analyst, [f"{n}.{plan.table}" for n in plan.nodes])
    sessions = queries.roster.sessions_for(plan.nodes, f"holding table '{plan.table}'")
    task = queries.new_task(
        request,
        plan=plan,
        analyst=analyst,
        project=project.id,
        purpose=project.purpose,
        loss=request.loss,
        noiseless=request.noiseless,
        pet="secagg+dp",
        extra_s=queries.timeout_s * plan.iterations,
    )
    policy = DisclosurePolicy.strictest(s.catalogue.disclosure for s in sessions.values())
    extra = {"policy": policy.model_dump(), "formula": request.formula}
    run = queries.begin(task, "model", extra, request.result_key, sessions)

    cards = run.fan_out(rpc.LINK_CARD, b"")
    broken = {n: a for n, a in cards.items() if isinstance(a, FedlinkError)}
    if broken:
        name, error = next(iter(broken.items()))
        raise run.fail(f"node '{name}' sent no key card ({error.message}); nothing was spent")
    signed = [LinkKeyCard.model_validate_json(a.body) for a in cards.values() if isinstance(a, Message)]

    def step(iteration: int, beta: np.ndarray) -> dict[str, Message | FedlinkError]:
        bodies = {}
        for name in sessions:
            body = ModelStep(
                query_id=task.query_id,
                iteration=iteration,
                beta=tuple(beta.tolist()),
                cards=tuple(c for c in signed if c.node != name),
            )
            bodies[name] = body.model_dump_json().encode()
        return run.call_each(bodies, rpc.MODEL_STEP)

    run.decide(step(0, np.zeros(plan.width)), "at iteration 1")
    answers = run.collect()
    if set(answers) != set(plan.nodes):
        return run.deliver()  # a node owes its first statistics: the result is pending
    rounds = [_summed(plan, task, {n: body for n, (_, body) in answers.items()})]
    notes: list[str] = []

    def run_round(iteration: int, beta: np.ndarray) -> tuple[np.ndarray, float]:
        if iteration == 0:  # committed above
            return rounds[0].total, _sd(rounds[0].noise)
        replies = step(iteration, beta)
        failed = {n: a for n, a in replies.items() if isinstance(a, FedlinkError)}
        if failed:
            name, error = next(iter(failed.items()))
            raise _Stopped(f"node '{name}' failed at iteration {iteration + 1} ({error.message})")
        rounds.append(_summed(plan, task, {n: a.body for n, a in replies.items() if isinstance(a, Message)}))
        log.info("model %s: iteration %d of %d", task.query_id[:8], iteration + 1, plan.iterations)
        return rounds[-1].total, _sd(rounds[-1].noise)

    try:
        newton_fit(plan, run_round)  # drives the rounds; _finished replays those received
    except (_Stopped, Fault) as exc:
        notes.append(
            f"stopped after {len(rounds)} of {plan.iterations} iterations: {exc.message}; the budget was spent "
            "at the start, so the fit so far is released"
        )
    finished = _finished(plan, task, policy, rounds, notes)
    reply = run.release(finished)
    log.info(
        "model %s (%s, %d iterations) by analyst '%s' for project '%s' over '%s' at %d nodes fitted in %.0f ms",
        task.query_id[:8],
        task.pet_label,
        plan.iterations,
        analyst,
        project.id,
        plan.table,
        len(plan.nodes),
        1000 * (time.perf_counter() - started),
    )
    return reply


class _Stopped(FedlinkError):
    """A fit stopped after its budget was committed (a node failed at a later iteration)."""


class _Round(NamedTuple):
    """One iteration as the coordinator can read it: the sum of the nodes' masked statistics (only the
    sum can be read), the standard deviation of each node's noise, and the disclosure policies the
    nodes' answers require for the project (an approval's minimum cohort)."""

    total: np.ndarray
    noise: dict[str, float]
    required: tuple[DisclosurePolicy, ...]


def _summed(plan: ModelPlan, task: QueryTask, bodies: dict[str, bytes]) -> _Round:
    """One iteration's :class:`_Round` from the nodes' answers; a malformed or inconsistent answer is a
    :class:`Fault`."""
    try:
        parts = {n: unpack_blobs(body) for n, body in bodies.items()}
        outputs = {n: ModelOutput.model_validate_json(header) for n, (header, _) in parts.items()}
        mixed = any(o.noiseless != task.noiseless for o in outputs.values())
        if mixed or any(len(blobs) != 1 for _, blobs in parts.values()) or set(parts) != set(plan.nodes):
            raise Fault("nodes answered a model step inconsistently (test mode or format)")
        total = secagg.unmasked_sum([blobs[0] for _, blobs in parts.values()], plan.statistics)
    except (ValueError, ValidationError) as exc:
        raise Fault("a node's model step was malformed") from exc
    required = tuple(o.disclosure for _, o in sorted(outputs.items()) if o.disclosure is not None)
    return _Round(total, {n: o.noise_sd for n, o in sorted(outputs.items())}, required)


def _sd(noise: dict[str, float]) -> float:
    """The standard deviation of the noise on each summed statistic: the nodes' noises add up."""
    return math.sqrt(sum(sd**2 for sd in noise.values()))


def _finished(
    plan: ModelPlan,
    task: QueryTask,
    policy: DisclosurePolicy,
    rounds: list[_Round],
    notes: list[str],
) -> Finished:
    """The released model from the rounds of summed statistics received (all of the plan's, or fewer when
    the fit stopped early: it is then the fit of that many iterations), or, with too few rows for
    disclosure control (the strictest of ``policy``, from the nodes' catalogues, and of the policies
    their answers require), the refusal that is released instead."""
    policy = DisclosurePolicy.strictest([policy, *(p for r in rounds for p in r.required)])
    done = plan.model_copy(update={"iterations": len(rounds)})
    fit = newton_fit(done, lambda iteration, _: (rounds[iteration].total, _sd(rounds[iteration].noise)))
    rows = float(fit.statistics[-2])
    if rows - plan.width < policy.min_cohort:
        refusal = BadInput(
            f"the model rests on too few rows for its {plan.width} coefficients (the nodes require "
            f"{policy.min_cohort} rows beyond them); nothing was released"
        )
        return Finished(rpc.ERROR, rpc.error_message("", refusal).body, None, None)
    estimate = summary(done, fit)
    result = ModelResult(
        query_id=task.query_id,
        project=task.project,
        formula=plan.sql,
        table=plan.table,
        family=plan.family,
        labels=tuple(plan.labels()),
        coefficients=tuple(estimate.coefficients.tolist()),
        std_errors=None if estimate.std_errors is None else tuple(estimate.std_errors.tolist()),
        noise_errors=None if estimate.noise_errors is None else tuple(estimate.noise_errors.tolist()),
        errors_withheld=estimate.withheld,
        rows=round(rows),
        iterations=len(rounds),
        nodes=plan.nodes,
        pet=task.pet_label,
        noiseless=task.noiseless,
        privacy_loss={n: task.loss for n in plan.nodes},
        noise_sd=rounds[-1].noise,
        notes=tuple(notes),
    )
    released = {
        "columns": ["term", "estimate", "std_error"],
        "rows": [[r["term"], r["estimate"], r["std_error"]] for r in result.table_rows()],
    }
    return Finished(rpc.RESULT, result.model_dump_json().encode(), released, None)


def finish_model(entry: JournalEntry, answers: dict[str, tuple[str, bytes]]) -> Finished:
    """A fit whose first statistics arrived only after the call ended (a node crashed or stalled at the
    commit): the one Newton step they allow is released, since the whole budget was spent."""
    task = QueryTask.model_validate_json(entry.task)
    plan = task.plan
    assert isinstance(plan, ModelPlan)
    policy = DisclosurePolicy.model_validate(json.loads(entry.extra)["policy"])
    rounds = [_summed(plan, task, {n: body for n, (_, body) in answers.items()})]
    note = (
        f"stopped after 1 of {plan.iterations} iterations: a node delivered its first statistics only after the "
        "fit's call had ended; the budget was spent at the start, so that step is released"
    )
    return _finished(plan, task, policy, rounds, [note] if plan.iterations > 1 else [])
