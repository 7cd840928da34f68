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

import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from fedlink.errors import BadInput, Fault, FedlinkError
from fedlink.pets import secagg
from fedlink.pets.keyagree import LinkKeyCard
from fedlink.query.disclosure import DisclosurePolicy
from fedlink.query.floor import check_informative
from fedlink.query.model import newton_step, plan_model, summary, unpack
from fedlink.query.tasks import ModelOutput, ModelRequest, ModelResult, ModelStep, QueryTask
from fedlink.wire import rpc
from fedlink.wire.blobs import unpack as unpack_blobs
from fedlink.wire.transport import Message, new_call_id

if TYPE_CHECKING:
    from fedlink.coordinator.server import Coordinator

log = logging.getLogger("fedlink.coordinator")


def fit_model(coordinator: Coordinator, request: ModelRequest, analyst: str) -> ModelResult:
    """Fit ``request``'s model over every node holding its table; returns the released coefficients."""
    started = time.perf_counter()
    project = coordinator.projects.get(request.project)
    coordinator._check_loss(request.loss, request.noiseless, coordinator.config.coordinator.test_mode)
    if request.loss.epsilon > 0:
        raise BadInput("a model's noise is Gaussian: declare its privacy loss as --rho R (zCDP), not --epsilon")
    catalogue = coordinator.catalogue()
    plan = plan_model(request.formula, request.table, catalogue, request.family, request.iterations)
    check_informative(request.loss, plan, catalogue)  # before any node reserves
    if len(plan.nodes) < 2:
        raise BadInput(
            f"table '{plan.table}' is held by one node only; a federated model needs it at two or more nodes "
            "(each node's statistics are released only inside their sum)"
        )
    project.check(analyst, [f"{n}.{plan.table}" for n in plan.nodes])
    sessions = coordinator._sessions_for(plan.nodes, f"holding table '{plan.table}'")
    task = QueryTask(
        query_id=new_call_id(),
        plan=plan,
        analyst=analyst,
        project=project.id,
        purpose=project.purpose,
        loss=request.loss,
        noiseless=request.noiseless,
        pet="secagg+dp",
    )
    coordinator._reserve(sessions, task)

    def fail(reason: str, committed: bool) -> Fault:
        if not committed:
            coordinator._abort(sessions, task.query_id)
        coordinator._log_query(task, "failed", reason, None)
        return Fault(reason)

    cards = coordinator._fan_out(sessions, rpc.LINK_CARD, b"")
    broken = {n: a for n, a in cards.items() if isinstance(a, FedlinkError)}
    if broken:
        name, error = next(iter(broken.items()))
        raise fail(f"node '{name}' sent no key card ({error.message}); nothing was released", committed=False)
    signed = [LinkKeyCard.model_validate_json(a.body) for a in cards.values() if isinstance(a, Message)]
    beta = np.zeros(plan.width)
    total = np.zeros(plan.statistics)
    outputs: dict[str, ModelOutput] = {}
    noise_sd = 0.0
    for iteration in range(plan.iterations):
        calls = {}
        for name, session in sessions.items():
            step = ModelStep(
                query_id=task.query_id,
                iteration=iteration,
                beta=tuple(beta.tolist()),
                cards=tuple(c for c in signed if c.node != name),
            )
            calls[name] = (session, step.model_dump_json().encode())
        answers = coordinator._call_each(calls, rpc.MODEL_STEP)
        failures = {n: a for n, a in answers.items() if isinstance(a, FedlinkError)}
        if failures:
            name, error = next(iter(failures.items()))
            reason = f"node '{name}' failed at iteration {iteration + 1} ({error.message}); nothing was released"
            raise fail(reason, committed=iteration > 0)
        try:
            parts = {n: unpack_blobs(a.body) for n, a in answers.items() if isinstance(a, Message)}
            outputs = {n: ModelOutput.model_validate_json(header) for n, (header, _) in parts.items()}
            mixed = any(o.noiseless != task.noiseless for o in outputs.values())
            if mixed or any(len(blobs) != 1 for _, blobs in parts.values()):
                raise Fault("nodes answered a model step inconsistently (test mode or format); nothing was released")
            total = secagg.unmasked_sum([blobs[0] for _, blobs in parts.values()], plan.statistics)
        except (ValueError, ValidationError) as exc:
            raise fail("a node's model step was malformed; nothing was released", committed=True) from exc
        except Fault as exc:
            raise fail(exc.message, committed=True) from exc
        score, information, rows, _ = unpack(plan, total)
        noise_sd = math.sqrt(sum(o.noise_sd**2 for o in outputs.values()))
        beta = newton_step(plan, beta, score, information, noise_sd)
        log.info("model %s: iteration %d of %d (rows ~%.0f)", task.query_id[:8], iteration + 1, plan.iterations, rows)
    score, information, rows, squares = unpack(plan, total)
    policy = DisclosurePolicy.strictest(s.catalogue.disclosure for s in sessions.values())
    if rows - plan.width < policy.min_cohort:
        # The noisy row count is withheld with the model: the reason names only the threshold.
        reason = (
            f"the model rests on too few rows: its noisy row count is below the {plan.width} coefficients plus the "
            f"{policy.min_cohort} rows the nodes require beyond them; nothing was released"
        )
        coordinator._log_query(task, "refused", reason, None)
        raise BadInput(reason)
    coefficients, errors = summary(plan, beta, score, information, rows, squares, noise_sd)
    result = ModelResult(
        query_id=task.query_id,
        project=project.id,
        formula=request.formula,
        table=plan.table,
        family=plan.family,
        labels=tuple(plan.labels()),
        coefficients=tuple(coefficients.tolist()),
        std_errors=tuple(errors.tolist()),
        rows=round(rows),
        iterations=plan.iterations,
        nodes=plan.nodes,
        pet=task.pet_label,
        noiseless=task.noiseless,
        privacy_loss={n: task.loss for n in plan.nodes},
        noise_sd={n: o.noise_sd for n, o in sorted(outputs.items())},
    )
    released = {
        "columns": ["term", "estimate", "std_error"],
        "rows": [[t, c, e] for t, c, e in zip(result.labels, result.coefficients, result.std_errors, strict=True)],
    }
    coordinator.register.append("query", task.register_fields(plan.nodes, "released", None, released))
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
    return result
