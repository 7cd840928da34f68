"""A node's privacy-aware query runtime: policy checks, budget reservation, noise, register.

A query reaches a node in phases. **Reserve**: the node checks the query against its own policy
(project approved, table and analyst allowed, test mode allowed) and reserves the declared privacy
loss in its persistent ledger; a refusal here costs nothing anywhere. **Execute** (prepare): before
the task's deadline only, the node computes its partial aggregate, adds calibrated noise itself (so
DP never depends on the coordinator's honesty), encrypts it for he+dp, checks that its register can
take the query's entry, keeps the answer in its outbox (:mod:`fedlink.node.outbox`) and marks the
reservation prepared: nothing has left the node yet. **Commit**: once every node has prepared, the coordinator
decides to commit; the node records "released" on its register (if the register cannot be appended,
it does not commit), commits the budget and only then sends the answer. A node asked again (its
answer was lost in a crash) sends the same answer, never a new one. An **abort** (another node
refused, failed or missed the deadline) releases the reservation, prepared or not, never a committed
one. A crash before the decision leaves a reservation: an open one is released when the node restarts
(nothing left the node), a prepared one waits for the coordinator's decision.

In a linked query's chain a node's encrypted per-slot vector has to travel on to the next node before
the last node adds the noise; it leaves before the commit, as a ciphertext under the analyst's key that
nobody but the analyst can read, and only the last node's noisy cells wait in an outbox for the commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from fedlink.errors import BadInput, Fault, FedlinkError, PolicyRefused, Timeout
from fedlink.faults import failpoint
from fedlink.node.binding import check_state
from fedlink.node.config import NodeConfig, TableDecl
from fedlink.node.data import NodeData
from fedlink.node.ledger import BudgetLedger, Spend
from fedlink.node.outbox import Outbox, Prepared
from fedlink.transparency.register import Register

if TYPE_CHECKING:
    from fedlink.node.linkage import NodeLinkage
from fedlink.node.engines.operators import model_statistics, validate_model, validate_plan
from fedlink.node.linked_query import ChainCarry, NodeVectors, fetch_rows, node_vectors, run_step, validate_linked
from fedlink.pets import secagg
from fedlink.pets.dp import add_noise, calibrate, iteration_noise
from fedlink.pets.he import PublicContext, Scheme, encrypt, load_public_context
from fedlink.plan.aggregate import AggregatePlan, Component
from fedlink.plan.catalogue import NodeCatalogue
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.plan.linked_query import LinkedPlan
from fedlink.plan.model import ModelPlan
from fedlink.protocol import rpc
from fedlink.protocol.blobs import pack
from fedlink.protocol.linkage import QualityCall
from fedlink.protocol.results import EncryptedPartial, Noise, PartialAggregates, scheme_of
from fedlink.protocol.tasks import (
    BudgetLineInfo,
    BudgetReport,
    LinkedOutput,
    LinkedStep,
    ModelOutput,
    ModelStep,
    PendingAnswer,
    PendingReport,
    QueryTask,
)

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
        check_state(config)  # before anything is opened: state of another federation, or half of it, is refused
        self.config = config
        self.name = config.name
        self.data = data or NodeData(config)
        self.ledger = BudgetLedger(config.ledger_path())
        self.register = Register(config.register_path(), config.name)
        self.outbox = Outbox(config.ledger_path().parent / "outbox")
        self._linkage: NodeLinkage | None = None
        #: Reserved queries awaiting execute or abort, with when they were reserved.
        self._pending: dict[str, tuple[QueryTask, float]] = {}
        #: Rows of reserved linked queries, fetched in the background while other nodes work.
        self._prepared: dict[str, Future[list[dict[str, np.ndarray]]]] = {}
        self._preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"prepare-{config.name}")
        #: Models being fitted here: the task and the iterations already answered.
        self._models: dict[str, tuple[QueryTask, set[int]]] = {}
        #: Linked queries part-way through their chain's windows: the task, this node's per-slot vectors
        #: and what it carries from window to window.
        self._chains: dict[str, tuple[QueryTask, NodeVectors, ChainCarry]] = {}
        self._lock = threading.Lock()
        self.register.append(
            "startup",
            {
                "tables": sorted(self.data.tables),
                "approved_projects": [a.project for a in config.all_approvals()],
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
                raise BadInput("a model's noise is Gaussian: declare its privacy loss as `rho=R` (zCDP), not `epsilon`")
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
            raise BadInput("a query must declare its privacy loss: `epsilon=E` or `rho=R`")
        # broader use: a project runs over another's spine only where the node consented to that reuse
        # in its approval and approves the spine's own project
        reused = isinstance(plan, LinkedPlan) and task.spine_of is not None
        if reused and (approval.spine_of != task.spine_of or self.config.approval(task.spine_project) is None):
            raise PolicyRefused(
                f"node '{self.name}' refuses: project '{task.project}' may not use the link spine of project "
                f"'{task.spine_of}'; this node has not approved that reuse"
            )
        if isinstance(plan, LinkedPlan) and self.linkage.spine_id(task.spine_project) is None:
            raise PolicyRefused(
                f"node '{self.name}' holds no link spine for project '{task.spine_project}'; run `fedlink link "
                f"--project {task.spine_project}`"
            )
        return tables

    def _expire_reservations(self) -> None:
        """Release reservations whose coordinator never came back to execute or abort them: past the
        task's deadline, or :data:`RESERVATION_TTL_S` after reserving for a task without one."""
        now, wall = time.monotonic(), time.time()
        with self._lock:
            stale = [
                qid
                for qid, (task, at) in self._pending.items()
                if (task.deadline and wall > task.deadline) or now - at > RESERVATION_TTL_S
            ]
            tasks = [self._pending.pop(qid)[0] for qid in stale]
            for qid in stale:
                self._drop_prepared(qid)
        for task in tasks:
            self.ledger.release(task.query_id)
            self._log(task, "refused", "reservation expired: the coordinator neither executed nor aborted it in time")

    def _check_deadline(self, task: QueryTask) -> None:
        if task.deadline and time.time() > task.deadline:
            raise Timeout(
                f"node '{self.name}' refuses query {task.query_id[:8]}: its deadline passed before the node could "
                "answer (the coordinator has given up on it); run the query again"
            )

    def reserve(self, task: QueryTask, hold_s: float | None = None) -> None:
        """Check this node's policy and reserve the query's loss on its ledger (``hold_s``: keep the
        reservation that long even if this process ends, for runtimes with a process per message)."""
        self._expire_reservations()
        try:
            self._check_deadline(task)
            tables = self._check_policy(task)
            approval = self.config.approval(task.project)
            assert approval is not None
            for table in tables:
                self.ledger.reserve(
                    task.query_id,
                    task.project,
                    self._dataset(table.name),
                    Spend(epsilon=task.loss.epsilon, rho=task.loss.rho),
                    approval.rho,
                    hold_s=hold_s,
                    dataset_cap=self.config.privacy.dataset_caps.get(table.name),
                )
        except (BadInput, Timeout) as exc:
            self.ledger.release(task.query_id)
            self._log(task, "refused", exc.message)
            raise
        with self._lock:
            self._pending[task.query_id] = (task, time.monotonic())
            if isinstance(task.plan, LinkedPlan):
                self._prepared[task.query_id] = self._preparer.submit(self._fetch_linked, task)
        failpoint("node.reserve", self.name)

    def _fetch_linked(self, task: QueryTask) -> list[dict[str, np.ndarray]]:
        assert isinstance(task.plan, LinkedPlan)
        spine_id = self.linkage.spine_id(task.spine_project)
        if spine_id is None:
            raise Fault(f"node '{self.name}' lost its link spine for '{task.spine_project}'; run `fedlink link` again")
        records, slots = self.linkage.slots(task.spine_project)
        tables = [self.data.tables[s.table] for s in task.plan.sources_at(self.name)]
        link = self.data.link_table(task.spine_project, spine_id, tables, records, slots)
        return fetch_rows(task.plan, self.name, self.data, link)

    def _drop_prepared(self, query_id: str) -> Future[list[dict[str, np.ndarray]]] | None:
        """Forget a query's prefetched rows (call with the lock held); returns them if there were any."""
        future = self._prepared.pop(query_id, None)
        if future is not None:
            future.cancel()
        return future

    def execute(
        self, query_id: str, contexts: Mapping[Scheme, str] | None = None, reserved: QueryTask | None = None
    ) -> None:
        """Prepare: compute, add noise, encrypt for he+dp, keep the answer in the outbox and mark the
        reservation prepared; nothing leaves the node until :meth:`commit`.

        ``reserved`` is the task as it was reserved, for a process other than the one that reserved it
        (its policy is checked again, and preparing needs the reservation still open on the ledger)."""
        with self._lock:
            task = self._pending.pop(query_id, (None, 0.0))[0]
        failpoint("node.execute", self.name)
        if task is None and reserved is not None and reserved.query_id == query_id:
            self._check_policy(reserved)
            task = reserved
        if task is None:
            raise Fault(f"node '{self.name}' holds no reservation for query {query_id[:8]}; retry the query")
        try:
            self._check_deadline(task)
            noisy = self._noisy_partial(task)
            partial = self._encrypt(task, noisy, contexts or {}) if task.pet == "he+dp" else noisy
            kind = rpc.ENCRYPTED_PARTIAL if isinstance(partial, EncryptedPartial) else rpc.PARTIAL
            self._prepare(task, Prepared(task.model_dump_json().encode(), kind, partial.model_dump_json().encode()))
        except BaseException as exc:
            self._fail(task, exc)
            raise

    def _prepare(self, task: QueryTask, answer: Prepared) -> None:
        """Check that the register can take the query's entry (a node whose register cannot be appended
        refuses here, before the coordinator decides, and never goes on to spend), keep ``answer`` in the
        outbox, and mark the reservation prepared."""
        self._check_deadline(task)
        self.register.check_appendable()
        self.outbox.put(task.query_id, answer)
        self.ledger.prepare(task.query_id)
        failpoint("node.prepare", self.name)

    def _fail(self, task: QueryTask, exc: BaseException) -> None:
        """A query failed here before its commit: release its budget, forget its answer, say why (if the
        register can take it: a broken register is itself a reason the query failed)."""
        self.ledger.release(task.query_id)
        self.outbox.drop(task.query_id)
        try:
            self._log(task, "failed", getattr(exc, "message", type(exc).__name__))
        except FedlinkError as broken:
            log.warning("query %s failed and could not be registered: %s", task.query_id[:8], broken.message)

    def commit(self, query_id: str) -> tuple[str, bytes]:
        """The coordinator decided: record "released", commit the budget, then return the prepared answer
        (reply kind and body) to send. Asked again for a query already committed here, returns the same
        answer without spending again. Raises :class:`Fault` if the query was aborted or never prepared."""
        answer = self.outbox.get(query_id)
        state = self.ledger.state(query_id)
        if answer is None or state not in ("prepared", "committed"):
            raise Fault(
                f"node '{self.name}' cannot commit query {query_id[:8]}: it holds no prepared answer for it "
                f"(the query was {'aborted' if state == 'released' else 'never prepared'} here)"
            )
        if state == "prepared":
            task = QueryTask.model_validate_json(answer.task)
            self._log(task, "released", None)  # on the register before the budget is spent
            self.ledger.commit(query_id)
            failpoint("node.commit", self.name)
        return answer.kind, answer.body

    def settle(self, query_id: str) -> None:
        """The coordinator has stored the result: the prepared answer is no longer needed."""
        if self.ledger.state(query_id) != "prepared":
            self.outbox.drop(query_id)

    def pending(self) -> PendingReport:
        """The answers held for the coordinator's decision or delivery (after a restart, say)."""
        answers = []
        for query_id in self.outbox.ids():
            state = self.ledger.state(query_id)
            if state == "prepared":
                answers.append(PendingAnswer(query_id=query_id, state="prepared"))
            elif state == "committed":
                answers.append(PendingAnswer(query_id=query_id, state="committed"))
            else:
                self.outbox.drop(query_id)  # aborted or released while this node was away: nothing to keep
        return PendingReport(answers=tuple(answers))

    def linked_step(self, step: LinkedStep, blobs: list[bytes]) -> tuple[LinkedOutput, list[bytes]] | None:
        """This node's step of a linked query's encrypted chain over one window of the spine; after the
        last window the reservation is prepared. A middle node's ciphertexts go on at once (they are under
        the analyst's key, without noise, and useless without the last node); the last node adds each
        window's cells up and, after the last window, its noisy cells wait in the outbox for the commit
        (None is returned for every window of the last node: nothing to send yet)."""
        with self._lock:
            chain = self._chains.get(step.query_id)
            if chain is None:
                task = self._pending.pop(step.query_id, (None, 0.0))[0]
                prepared = self._prepared.pop(step.query_id, None)
            else:
                task, prepared = chain[0], None
        if task is None or (chain is None and prepared is None):
            raise Fault(f"node '{self.name}' holds no reservation for query {step.query_id[:8]}; retry the query")
        try:
            self._check_deadline(task)
            plan = task.plan
            if not isinstance(plan, LinkedPlan):
                raise BadInput("a linked step arrived for a query that is not linked")
            held = self.linkage.spine_id(task.spine_project)
            if held != step.spine_id:
                raise Fault(
                    f"node '{self.name}' holds slots of another link spine for '{task.spine_project}'; rebuild it "
                    f"with `fedlink link --project {task.spine_project}`"
                )
            if chain is None:
                assert prepared is not None
                chain = (task, node_vectors(plan, self.name, prepared.result(), step.spine_size), ChainCarry())
                with self._lock:
                    self._chains[step.query_id] = chain
            output, out_blobs = run_step(plan, self.name, step, chain[1], blobs, task.loss, task.noiseless, chain[2])
            output = output.model_copy(update={"disclosure": self._project_disclosure(task.project)})
            last = step.role == "last"
            if step.window == step.windows - 1:
                with self._lock:
                    self._chains.pop(step.query_id, None)
                # every node's committed answer carries its policy for the project; only the last one's has cells
                header = output.model_dump_json().encode()
                body = pack(header, out_blobs) if last else header
                self._prepare(task, Prepared(task.model_dump_json().encode(), rpc.RESULT if last else rpc.ACK, body))
        except BaseException as exc:
            with self._lock:
                self._chains.pop(step.query_id, None)
            self._fail(task, exc)
            raise
        return None if last else (output, out_blobs)

    def model_step(
        self, step: ModelStep, reserved: QueryTask | None = None, answered: Sequence[int] = ()
    ) -> bytes | None:
        """This node's statistics for one Newton-Raphson iteration of a model: computed on its own rows,
        with Gaussian noise for rho / iterations (unless noiseless), in fixed point under pairwise masks
        with every other node of the plan, so only the sum over all nodes can be read. The answer is a
        :class:`ModelOutput` header and the masked vector (:func:`fedlink.protocol.blobs.pack`).

        The first iteration's statistics are prepared (kept in the outbox, None returned) and leave only
        with the commit of the whole budget (:meth:`commit`); later iterations answer at once. The node
        answers each iteration of the plan at most once. ``reserved`` and ``answered``: the task and
        iterations answered so far, for a process other than the one that reserved it (Flower)."""
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
            disclosure = self._project_disclosure(task.project)
            output = ModelOutput(noiseless=True, disclosure=disclosure)
            if not task.noiseless:
                spec = iteration_noise(plan.sensitivity(table.max_rows_per_person), plan.iterations, task.loss.rho)
                values = add_noise(values, spec)
                output = ModelOutput(noise_sd=spec.scale, disclosure=disclosure)
            keys = self.linkage.keys
            secrets = [(name, keys.pairwise_secret(card, step.query_id)) for name, card in sorted(peers.items())]
            masked_values = secagg.masked(values, self.name, secrets, f"{step.query_id}:{step.iteration}")
            body = pack(output.model_dump_json().encode(), [masked_values])
            if first:  # the first statistics wait in the outbox until every node has prepared and committed
                self._prepare(task, Prepared(task.model_dump_json().encode(), rpc.RESULT, body))
        except BaseException as exc:
            if first:
                self._fail(task, exc)
            raise
        done.add(step.iteration)
        with self._lock:
            if isinstance(plan, ModelPlan) and len(done) < plan.iterations:
                self._models[task.query_id] = (task, done)
            else:
                self._models.pop(task.query_id, None)
        return None if first else body

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
            approval.rho,
            dataset_cap=self.config.privacy.dataset_caps.get(LINKAGE_DATASET),
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
        disclosure = self._project_disclosure(task.project)
        if task.noiseless:
            return exact.model_copy(update={"noiseless": True, "disclosure": disclosure})
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
        return PartialAggregates(node=self.name, vectors=vectors, noise=noise, disclosure=disclosure)

    def _project_disclosure(self, project: str) -> DisclosurePolicy | None:
        """This node's disclosure policy for ``project`` when its approval is stricter than the node's own
        (a minimum cohort): it travels with the node's answer to every kind of query (aggregate, linked,
        model), and the strictest policy applies. The node cannot check the cohort itself: it is a noisy
        total over every node (and, linked, known only to the analyst's client), and refusing on its own
        exact count would disclose it."""
        approval = self.config.approval(project)
        policy = self.config.privacy.disclosure
        if approval is None or approval.min_cohort is None or approval.min_cohort <= policy.min_cohort:
            return None
        return policy.model_copy(update={"min_cohort": approval.min_cohort})

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
        return EncryptedPartial(
            node=self.name,
            ciphertexts=ciphertexts,
            noise=noisy.noise,
            noiseless=noisy.noiseless,
            disclosure=noisy.disclosure,
        )

    def abandon_open(self) -> None:
        """The coordinator's session ended: release every reservation not yet prepared (whoever was to
        execute it is gone; prepared ones wait for the coordinator's decision when it is back)."""
        with self._lock:
            tasks = [task for task, _ in self._pending.values()] + [task for task, _, _ in self._chains.values()]
            self._pending.clear()
            self._chains.clear()
            for task in tasks:
                self._drop_prepared(task.query_id)
        for task in tasks:
            self.ledger.release(task.query_id)
            self._log(task, "failed", "the coordinator's session ended before the query was executed")

    def abort(self, query_id: str) -> None:
        """The coordinator gave up on the query: release its reservation, prepared or not (a committed
        one stays spent), and forget its answer."""
        with self._lock:
            task = self._pending.pop(query_id, (None, 0.0))[0]
            chain = self._chains.pop(query_id, None)
            task = task if task is not None or chain is None else chain[0]
            self._drop_prepared(query_id)
            self._models.pop(query_id, None)
        state = self.ledger.state(query_id)
        answer = self.outbox.get(query_id)
        if task is None and answer is not None:
            task = QueryTask.model_validate_json(answer.task)
        self.ledger.release(query_id)
        if state != "committed":
            self.outbox.drop(query_id)
        if task is not None and state in ("reserved", "prepared"):
            self._log(task, "failed", "aborted by the coordinator: another node refused or failed, or time ran out")

    def budget(self) -> BudgetReport:
        """Every approved project's line per dataset, in rho, with the dataset's totals across projects."""
        lines = self.ledger.lines()
        used = {(line.project, line.dataset): line for line in lines}
        totals: dict[str, tuple[float, float]] = {}
        for line in lines:
            spent, reserved = totals.get(line.dataset, (0.0, 0.0))
            totals[line.dataset] = (spent + line.committed, reserved + line.reserved)
        caps = self.config.privacy.dataset_caps
        out = []
        for approval in self.config.all_approvals():
            linkage = (LINKAGE_DATASET,) if (approval.project, self._dataset(LINKAGE_DATASET)) in used else ()
            for table in (*(approval.tables or tuple(self.data.tables)), *linkage):
                dataset = self._dataset(table)
                mine = used.get((approval.project, dataset))
                all_spent, all_reserved = totals.get(dataset, (0.0, 0.0))
                out.append(
                    BudgetLineInfo(
                        node=self.name,
                        project=approval.project,
                        dataset=dataset,
                        cap=approval.rho,
                        spent=mine.committed if mine else 0.0,
                        reserved=mine.reserved if mine else 0.0,
                        queries=mine.queries if mine else 0,
                        dataset_cap=caps.get(table),
                        dataset_spent=all_spent,
                        dataset_reserved=all_reserved,
                    )
                )
        return BudgetReport(lines=tuple(out))

    def close(self) -> None:
        self._preparer.shutdown(wait=True, cancel_futures=True)
        self.ledger.close()
        self.data.close()
