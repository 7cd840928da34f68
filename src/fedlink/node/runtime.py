"""A node's privacy-aware query runtime: policy checks, budget reservation, noise, register.

A query reaches a node in two phases. **Reserve**: the node checks the query against its own policy
(project approved, table and analyst allowed, test mode allowed) and reserves the declared privacy
loss in its persistent ledger; a refusal here costs nothing anywhere. **Execute**: the node computes
its partial aggregate, adds calibrated noise itself (so DP never depends on the coordinator's
honesty), commits the reservation *before* anything leaves, logs the use in its own register, and
only then answers. An **abort** (another node refused, or failed) releases the reservation. A crash
between reserve and commit leaves an uncommitted reservation, which the ledger releases on restart:
nothing left the node, so nothing was spent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from fedlink.errors import BadInput, Fault, PolicyRefused
from fedlink.governance.register import Register
from fedlink.node.config import NodeConfig, TableDecl
from fedlink.node.data import NodeData
from fedlink.node.ledger import BudgetLedger, Spend

if TYPE_CHECKING:
    from fedlink.node.linkage import NodeLinkage
from fedlink.linkage.messages import QualityCall
from fedlink.node.linked import fetch_rows, node_vectors, run_step, validate_linked
from fedlink.node.operators import model_statistics, validate_model, validate_plan
from fedlink.pets import secagg
from fedlink.pets.dp import add_noise, calibrate
from fedlink.pets.he import PublicContext, Scheme, encrypt, load_public_context
from fedlink.query.catalogue import NodeCatalogue
from fedlink.query.linked import LinkedPlan
from fedlink.query.model import ModelPlan
from fedlink.query.plan import AggregatePlan, Component
from fedlink.query.results import EncryptedPartial, Noise, PartialAggregates, scheme_of
from fedlink.query.tasks import (
    BudgetLineInfo,
    BudgetReport,
    LinkedOutput,
    LinkedStep,
    ModelOutput,
    ModelStep,
    PrivacyLoss,
    QueryTask,
)
from fedlink.wire.blobs import pack

log = logging.getLogger("fedlink.node")
#: A reservation the coordinator neither executes nor aborts within this time is released.
RESERVATION_TTL_S = 600.0
#: The ledger's dataset for budget spent on releasing linkage quality (match rates).
LINKAGE_DATASET = "linkage"


def sensitivity(component: Component, table: TableDecl) -> float:
    """How much one person can change a component vector (L1, and a bound on L2)."""
    per_row = 1.0
    if component.kind == "sum":
        assert component.lower is not None and component.upper is not None
        per_row = max(abs(component.lower), abs(component.upper))
    return per_row * table.max_rows_per_person


class NodeRuntime:
    """Everything a node does for a query, behind the agent that talks to the coordinator."""

    def __init__(self, config: NodeConfig, data: NodeData | None = None) -> None:
        self.config = config
        self.name = config.name
        self.data = data or NodeData(config)
        self.ledger = BudgetLedger(config.ledger_path())
        self.register = Register(config.register_path(), config.name)
        self._linkage: NodeLinkage | None = None
        #: Reserved queries awaiting execute or abort, with when they were reserved.
        self._pending: dict[str, tuple[QueryTask, float]] = {}
        #: Rows of reserved linked queries, fetched in the background while other nodes work.
        self._prepared: dict[str, Future[list[dict[str, np.ndarray]]]] = {}
        self._preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"prepare-{config.name}")
        #: Models being fitted here: the task and the iterations already answered.
        self._models: dict[str, tuple[QueryTask, set[int]]] = {}
        self._lock = threading.Lock()
        self.register.append(
            "startup",
            {
                "tables": sorted(self.data.tables),
                "approved_projects": [a.project for a in config.approvals],
                "allow_test_mode": config.privacy.allow_test_mode,
            },
        )
        if self.ledger.recovered:
            log.warning("released %d reservation(s) left by an interrupted run", self.ledger.recovered)
            self.register.append("recovery", {"released_reservations": self.ledger.recovered})

    @property
    def linkage(self) -> NodeLinkage:
        """The node's linkage side, loaded on first use (the encoding stack is not needed for queries)."""
        if self._linkage is None:
            from fedlink.node.linkage import NodeLinkage as Linkage

            self._linkage = Linkage(self.config, self.data, self.config.ledger_path().parent)
        return self._linkage

    @property
    def catalogue(self) -> NodeCatalogue:
        return self.data.catalogue

    def _dataset(self, table: str) -> str:
        return f"{self.name}.{table}"

    def _log(self, task: QueryTask, status: str, reason: str | None) -> None:
        self.register.append("query", task.register_fields([self.name], status, reason))

    def _check_policy(self, task: QueryTask) -> list[TableDecl]:
        """The node's tables this query reads, after checking its own policy; raises a refusal otherwise."""
        plan = task.plan
        if isinstance(plan, LinkedPlan):
            tables = validate_linked(plan, self.data.tables, self.name)
        elif isinstance(plan, ModelPlan):
            table = self.data.tables.get(plan.table)
            if table is None:
                raise PolicyRefused(f"node '{self.name}' has no table '{plan.table}'")
            validate_model(plan, table, self.name)
            if self.name not in plan.nodes or len(set(plan.nodes)) < 2:
                raise PolicyRefused(
                    f"node '{self.name}' refuses: a model's statistics are only released summed with other nodes'"
                )
            if task.loss.epsilon > 0:
                raise BadInput("a model's noise is Gaussian: declare its privacy loss as --rho R (zCDP), not --epsilon")
            tables = [table]
        else:
            table = self.data.tables.get(plan.table)
            if table is None:
                raise PolicyRefused(f"node '{self.name}' has no table '{plan.table}'")
            validate_plan(plan, table, self.name)
            tables = [table]
        approval = self.config.approval(task.project)
        if approval is None:
            raise PolicyRefused(
                f"node '{self.name}' refuses: project '{task.project}' is not approved by this node; its data owner "
                "must add an [[approvals]] entry to the node's config"
            )
        for table in tables:
            if approval.tables is not None and table.name not in approval.tables:
                raise PolicyRefused(
                    f"node '{self.name}' refuses: project '{task.project}' may not use table '{table.name}'"
                )
        if approval.analysts is not None and task.analyst not in approval.analysts:
            raise PolicyRefused(
                f"node '{self.name}' refuses: analyst '{task.analyst}' is not approved for project '{task.project}'"
            )
        if task.noiseless and not self.config.privacy.allow_test_mode:
            raise PolicyRefused(f"node '{self.name}' refuses: it does not allow noiseless test mode")
        if task.loss.is_zero and not task.noiseless:
            raise BadInput("a query must declare its privacy loss: --epsilon E or --rho R")
        if isinstance(plan, LinkedPlan) and self.linkage.spine_id(task.project) is None:
            raise PolicyRefused(
                f"node '{self.name}' holds no link spine for project '{task.project}'; run `fedlink link --project "
                f"{task.project}`"
            )
        return tables

    def _expire_reservations(self) -> None:
        """Release reservations whose coordinator never came back to execute or abort them."""
        now = time.monotonic()
        with self._lock:
            stale = [qid for qid, (_, at) in self._pending.items() if now - at > RESERVATION_TTL_S]
            tasks = [self._pending.pop(qid)[0] for qid in stale]
            for qid in stale:
                self._drop_prepared(qid)
        for task in tasks:
            self.ledger.release(task.query_id)
            self._log(task, "refused", f"reservation expired after {RESERVATION_TTL_S:.0f} s without execute")

    def reserve(self, task: QueryTask, hold_s: float | None = None) -> None:
        """Check this node's policy and reserve the query's loss on its ledger (``hold_s``: keep the
        reservation that long even if this process ends, for runtimes with a process per message)."""
        self._expire_reservations()
        try:
            tables = self._check_policy(task)
            approval = self.config.approval(task.project)
            assert approval is not None
            for table in tables:
                self.ledger.reserve(
                    task.query_id,
                    task.project,
                    self._dataset(table.name),
                    Spend(epsilon=task.loss.epsilon, rho=task.loss.rho),
                    Spend(epsilon=approval.epsilon, rho=approval.rho),
                    hold_s=hold_s,
                )
        except BadInput as exc:
            self.ledger.release(task.query_id)
            self._log(task, "refused", exc.message)
            raise
        with self._lock:
            self._pending[task.query_id] = (task, time.monotonic())
            if isinstance(task.plan, LinkedPlan):
                self._prepared[task.query_id] = self._preparer.submit(self._fetch_linked, task)

    def _fetch_linked(self, task: QueryTask) -> list[dict[str, np.ndarray]]:
        assert isinstance(task.plan, LinkedPlan)
        spine_id = self.linkage.spine_id(task.project)
        if spine_id is None:
            raise Fault(f"node '{self.name}' lost its link spine for '{task.project}'; run `fedlink link` again")
        records, slots = self.linkage.slots(task.project)
        tables = [self.data.tables[s.table] for s in task.plan.sources_at(self.name)]
        link = self.data.link_table(task.project, spine_id, tables, records, slots)
        return fetch_rows(task.plan, self.name, self.data, link)

    def _drop_prepared(self, query_id: str) -> Future[list[dict[str, np.ndarray]]] | None:
        """Forget a query's prefetched rows (call with the lock held); returns them if there were any."""
        future = self._prepared.pop(query_id, None)
        if future is not None:
            future.cancel()
        return future

    def execute(
        self, query_id: str, contexts: Mapping[Scheme, str] | None = None, reserved: QueryTask | None = None
    ) -> PartialAggregates | EncryptedPartial:
        """Compute, add noise, encrypt for he+dp, commit; the caller sends the answer after this returns.

        ``reserved`` is the task as it was reserved, for a process other than the one that reserved it
        (its policy is checked again, and committing needs the reservation still open on the ledger)."""
        with self._lock:
            task = self._pending.pop(query_id, (None, 0.0))[0]
        if task is None and reserved is not None and reserved.query_id == query_id:
            self._check_policy(reserved)
            task = reserved
        if task is None:
            raise Fault(f"node '{self.name}' holds no reservation for query {query_id[:8]}; retry the query")
        try:
            noisy = self._noisy_partial(task)
            partial = self._encrypt(task, noisy, contexts or {}) if task.pet == "he+dp" else noisy
            self.ledger.commit(query_id)  # before anything leaves the node
        except BaseException as exc:
            self.ledger.release(query_id)
            self._log(task, "failed", getattr(exc, "message", type(exc).__name__))
            raise
        self._log(task, "released", None)
        return partial

    def linked_step(self, step: LinkedStep, blobs: list[bytes]) -> tuple[LinkedOutput, list[bytes]]:
        """This node's step of a linked query's encrypted chain; commits its budget before answering."""
        with self._lock:
            task = self._pending.pop(step.query_id, (None, 0.0))[0]
            prepared = self._prepared.pop(step.query_id, None)
        if task is None or prepared is None:
            raise Fault(f"node '{self.name}' holds no reservation for query {step.query_id[:8]}; retry the query")
        try:
            plan = task.plan
            if not isinstance(plan, LinkedPlan):
                raise BadInput("a linked step arrived for a query that is not linked")
            held = self.linkage.spine_id(task.project)
            if held != step.spine_id:
                raise Fault(
                    f"node '{self.name}' holds slots of another link spine for '{task.project}'; rebuild it with "
                    f"`fedlink link --project {task.project}`"
                )
            vectors = node_vectors(plan, self.name, prepared.result(), step.spine_size)
            answer = run_step(plan, self.name, step, vectors, blobs, task.loss, task.noiseless)
            self.ledger.commit(task.query_id)  # before anything leaves the node
        except BaseException as exc:
            self.ledger.release(task.query_id)
            self._log(task, "failed", getattr(exc, "message", type(exc).__name__))
            raise
        self._log(task, "released", None)
        return answer

    def model_step(self, step: ModelStep, reserved: QueryTask | None = None, answered: Sequence[int] = ()) -> bytes:
        """This node's statistics for one Newton-Raphson iteration of a model: computed on its own rows,
        with Gaussian noise for rho / iterations (unless noiseless), in fixed point under pairwise masks
        with every other node of the plan, so only the sum over all nodes can be read. The answer is a
        :class:`ModelOutput` header and the masked vector (:func:`fedlink.wire.blobs.pack`).

        The whole budget is committed at the first iteration (before anything leaves); the node answers
        each iteration of the plan at most once. ``reserved`` and ``answered``: the task and iterations
        answered so far, for a process other than the one that reserved it (Flower)."""
        with self._lock:
            held = self._models.get(step.query_id)
            if held is None and step.query_id in self._pending:
                held = (self._pending.pop(step.query_id)[0], set())
        if held is None and reserved is not None and reserved.query_id == step.query_id:
            self._check_policy(reserved)
            held = (reserved, set(answered))
        if held is None:
            raise Fault(f"node '{self.name}' holds no reservation for model {step.query_id[:8]}; fit it again")
        task, done = held
        plan = task.plan
        first = not done
        try:
            if not isinstance(plan, ModelPlan):
                raise BadInput("a model step arrived for a query that is not a model")
            if step.iteration in done or not 0 <= step.iteration < plan.iterations or len(step.beta) != plan.width:
                raise PolicyRefused(
                    f"node '{self.name}' refuses: iteration {step.iteration} of model {step.query_id[:8]} was "
                    f"answered already or is not one of its {plan.iterations}"
                )
            peers = {card.node: card for card in step.cards}
            if set(peers) != set(plan.nodes) - {self.name} or len(step.cards) != len(peers):
                raise PolicyRefused(
                    f"node '{self.name}' refuses: a model step must carry the key card of every other node of "
                    "the model, once each"
                )
            table = self.data.tables[plan.table]
            beta = np.asarray(step.beta, dtype=float)
            if not np.all(np.isfinite(beta)):
                raise BadInput("the model's coefficients are not finite; fit it again with fewer terms")
            values = model_statistics(self.data.backend(table), plan, table, self.name, beta)
            output = ModelOutput(noiseless=True)
            if not task.noiseless:
                spec = calibrate(
                    plan.sensitivity(table.max_rows_per_person), rho=task.loss.rho / plan.iterations, integer=False
                )
                values = add_noise(values, spec)
                output = ModelOutput(noise_sd=spec.scale)
            keys = self.linkage.keys
            secrets = [(name, keys.pairwise_secret(card, step.query_id)) for name, card in sorted(peers.items())]
            masked_values = secagg.masked(values, self.name, secrets, f"{step.query_id}:{step.iteration}")
            body = pack(output.model_dump_json().encode(), [masked_values])
            if first:
                self.ledger.commit(task.query_id)  # before anything leaves the node
        except BaseException as exc:
            if first:
                self.ledger.release(task.query_id)
                self._log(task, "failed", getattr(exc, "message", type(exc).__name__))
            raise
        done.add(step.iteration)
        with self._lock:
            if isinstance(plan, ModelPlan) and len(done) < plan.iterations:
                self._models[task.query_id] = (task, done)
            else:
                self._models.pop(task.query_id, None)
        if first:
            self._log(task, "released", None)
        return body

    def spend_on_link_quality(self, call: QualityCall) -> None:
        """Reserve and commit the epsilon of releasing a new spine's match rates, on dataset
        ``<node>.linkage`` under the project's cap; refused when the budget cannot pay it."""
        approval = self.config.approval(call.project)
        if approval is None:
            raise PolicyRefused(f"node '{self.name}' refuses: project '{call.project}' is not approved by this node")
        query_id = f"link-quality-{call.spine_id}"
        self.ledger.reserve(
            query_id,
            call.project,
            self._dataset(LINKAGE_DATASET),
            Spend(epsilon=call.epsilon),
            Spend(epsilon=approval.epsilon, rho=approval.rho),
        )
        self.ledger.commit(query_id)
        self.register.append(
            "link_quality",
            {
                "project": call.project,
                "spine_id": call.spine_id,
                "privacy_loss": {"epsilon": call.epsilon},
                "spec_hash": call.spec_hash,
            },
        )

    def _noisy_partial(self, task: QueryTask) -> PartialAggregates:
        assert isinstance(task.plan, AggregatePlan)
        table = self.data.tables[task.plan.table]
        exact = self.data.aggregate(task.plan)
        if task.noiseless:
            return exact.model_copy(update={"noiseless": True})
        components = task.plan.components
        share = 1.0 / len(components)  # sequential composition over the components
        vectors: dict[str, tuple[float, ...]] = {}
        noise: dict[str, Noise] = {}
        for component in components:
            spec = calibrate(
                sensitivity(component, table),
                epsilon=task.loss.epsilon * share,
                rho=task.loss.rho * share,
                integer=component.kind != "sum",
            )
            noisy = add_noise(np.asarray(exact.vectors[component.key]), spec)
            vectors[component.key] = tuple(noisy.tolist())
            noise[component.key] = Noise(mechanism=spec.mechanism, scale=spec.scale, integer=spec.integer)
        return PartialAggregates(node=self.name, vectors=vectors, noise=noise)

    def _encrypt(self, task: QueryTask, noisy: PartialAggregates, contexts: Mapping[Scheme, str]) -> EncryptedPartial:
        assert isinstance(task.plan, AggregatePlan)
        ciphertexts = {}
        loaded: dict[str, PublicContext] = {}
        for component in task.plan.components:
            scheme = scheme_of(component)
            if scheme not in contexts:
                raise BadInput(f"he+dp needs the analyst's public {scheme.upper()} context; upgrade the analyst client")
            if scheme not in loaded:
                loaded[scheme] = load_public_context(scheme, contexts[scheme])
            ciphertexts[component.key] = encrypt(loaded[scheme], np.asarray(noisy.vectors[component.key]))
        return EncryptedPartial(node=self.name, ciphertexts=ciphertexts, noise=noisy.noise, noiseless=noisy.noiseless)

    def abort(self, query_id: str) -> None:
        with self._lock:
            task = self._pending.pop(query_id, (None, 0.0))[0]
            self._drop_prepared(query_id)
        self.ledger.release(query_id)
        if task is not None:
            self._log(task, "refused", "aborted by the coordinator: another node refused or failed")

    def budget(self) -> BudgetReport:
        used = {(line.project, line.dataset): line for line in self.ledger.lines()}
        lines = []
        for approval in self.config.approvals:
            linkage = (LINKAGE_DATASET,) if (approval.project, self._dataset(LINKAGE_DATASET)) in used else ()
            for table in (*(approval.tables or tuple(self.data.tables)), *linkage):
                dataset = self._dataset(table)
                line = used.get((approval.project, dataset))
                lines.append(
                    BudgetLineInfo(
                        node=self.name,
                        project=approval.project,
                        dataset=dataset,
                        cap=PrivacyLoss(epsilon=approval.epsilon, rho=approval.rho),
                        spent=PrivacyLoss(epsilon=line.committed.epsilon, rho=line.committed.rho)
                        if line
                        else PrivacyLoss(),
                        reserved=PrivacyLoss(epsilon=line.reserved.epsilon, rho=line.reserved.rho)
                        if line
                        else PrivacyLoss(),
                        queries=line.queries if line else 0,
                    )
                )
        return BudgetReport(lines=tuple(lines))

    def close(self) -> None:
        self._preparer.shutdown(wait=True, cancel_futures=True)
        self.ledger.close()
        self.data.close()
