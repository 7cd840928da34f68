"""What the coordinator asks of nodes for one query, and the privacy terms attached to it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fedlink.errors import BadInput
from fedlink.frozen import Frozen
from fedlink.language.sql import check_name, check_query_text
from fedlink.pets.dp import NoiseSpec
from fedlink.pets.he import Scheme
from fedlink.pets.keyagree import LinkKeyCard
from fedlink.plan.aggregate import AggregatePlan
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.plan.linked_query import LinkedPlan
from fedlink.plan.model import Family, ModelPlan
from fedlink.transparency.records import bounded

#: How a query's aggregates travel: "he+dp" encrypts every node's noisy vector under the analyst's key,
#: so the coordinator adds ciphertexts and only the analyst ever sees numbers; "dp" sends noisy
#: vectors in the clear to the coordinator (weaker; recorded as such on the register).
Pet = Literal["dp", "he+dp"]
#: A task's protection: a query's pet, or "secagg+dp" for a model (noisy statistics under pairwise masks).
TaskPet = Literal["dp", "he+dp", "secagg+dp"]


class Noise(Frozen):
    mechanism: Literal["laplace", "gaussian"]
    scale: float
    integer: bool
    #: The released number is the noisy integer times ``unit`` (fixed-point sums of linked queries).
    unit: float = 1.0

    def spec(self) -> NoiseSpec:
        return NoiseSpec(self.mechanism, self.scale, self.integer)


class PrivacyLoss(Frozen):
    """Privacy loss (or a cap on it) at one dataset: ``epsilon`` (pure DP) and/or ``rho`` (zCDP)."""

    epsilon: float = Field(default=0.0, ge=0)
    rho: float = Field(default=0.0, ge=0)

    @property
    def is_zero(self) -> bool:
        return self.epsilon == 0 and self.rho == 0

    @property
    def is_finite(self) -> bool:
        return math.isfinite(self.epsilon) and math.isfinite(self.rho)


def declared_loss(epsilon: object = None, rho: object = None) -> PrivacyLoss:
    """The privacy loss an analyst declares for a query: at most one of ``epsilon`` and ``rho``, each a
    positive, finite number (None: not given; a noiseless test-mode query gives neither)."""
    numbers: dict[str, float] = {}
    for name, value in (("epsilon", epsilon), ("rho", rho)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadInput(f"`{name}` must be a number, not {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise BadInput(f"`{name}` must be a positive, finite number, not {value!r}; e.g. `{name}=1`")
        numbers[name] = float(value)
    if len(numbers) > 1:
        raise BadInput("give `epsilon` or `rho`, not both")
    return PrivacyLoss(epsilon=numbers.get("epsilon", 0.0), rho=numbers.get("rho", 0.0))


class QueryTask(Frozen):
    """Sent to every node in the reserve phase; the execute and abort phases refer to it by id."""

    query_id: str
    plan: Annotated[AggregatePlan | LinkedPlan | ModelPlan, Field(discriminator="kind")]
    analyst: str
    project: str
    purpose: str = ""
    loss: PrivacyLoss
    #: Explicit, logged test mode: no noise. Honoured only if the coordinator runs in test mode AND
    #: the node's own policy allows it.
    noiseless: bool = False
    pet: TaskPet = "dp"
    #: When the coordinator gives up on the query (UTC, seconds since the epoch; 0: no deadline). A node
    #: never prepares an answer after it: a node that stalled and resumes late refuses the task instead.
    deadline: float = 0.0
    #: The project whose link spine a linked query runs over, when the project reuses another's
    #: (broader use); each node checks it approved that reuse.
    spine_of: str | None = None

    @property
    def spine_project(self) -> str:
        """The project whose link spine this task's linked query runs over."""
        return self.spine_of or self.project

    @property
    def pet_label(self) -> str:
        return f"{self.pet}, TEST MODE (no noise)" if self.noiseless else self.pet

    def register_fields(
        self,
        nodes: Sequence[str],
        status: str,
        reason: str | None,
        released: dict[str, Any] | None = None,
        encrypted_for: str | None = None,
    ) -> dict[str, Any]:
        """The public record of this query, as every party's register keeps it (``nodes``: whose loss
        this party records). ``encrypted_for`` names who alone holds an he+dp result's values."""
        return {
            "query_id": self.query_id,
            "analyst": self.analyst,
            "project": self.project,
            "purpose": self.purpose,
            "query": bounded(self.plan.sql),  # comment-free: the plan was built from the text without them
            "pet": self.pet_label,
            "privacy_loss": {n: self.loss.model_dump() for n in nodes},
            "status": status,
            "reason": reason,
            "released": released,
            "encrypted_for": encrypted_for,
        }


class TaskRef(Frozen):
    query_id: str


class PendingAnswer(Frozen):
    """An answer a node holds for a query awaiting the coordinator: ``prepared`` (its budget is reserved,
    waiting for the decision) or ``committed`` (spent; the answer may not have reached the coordinator)."""

    query_id: str
    state: Literal["prepared", "committed"]


class PendingReport(Frozen):
    answers: tuple[PendingAnswer, ...] = ()


class ExecuteTask(Frozen):
    """The execute phase: for he+dp, the analyst's public HE contexts (base64, by scheme)."""

    query_id: str
    contexts: dict[Scheme, str] = Field(default_factory=dict)


class BudgetLineInfo(Frozen):
    """One node's budget for one project and dataset, as shown by `fedlink budget`: everything in rho
    (zCDP), the ledger's one currency (an epsilon-DP query is charged epsilon^2 / 2)."""

    node: str
    project: str
    dataset: str
    #: The project's cap on this dataset, what it has committed, and what it holds reserved now.
    cap: float
    spent: float
    reserved: float
    queries: int
    #: The node's cap on the dataset across all projects (None: no such cap), and what all projects
    #: together have committed and reserved on it.
    dataset_cap: float | None = None
    dataset_spent: float = 0.0
    dataset_reserved: float = 0.0

    @property
    def remaining(self) -> float:
        """What this project can still spend here: the tighter of its own cap and the dataset's."""
        left = self.cap - self.spent - self.reserved
        if self.dataset_cap is not None:
            left = min(left, self.dataset_cap - self.dataset_spent - self.dataset_reserved)
        return max(0.0, left)


class BudgetReport(Frozen):
    lines: tuple[BudgetLineInfo, ...]


class QueryRequest(Frozen):
    """What an analyst sends: the SQL, the project it is for, and the privacy loss it may spend."""

    sql: str
    project: str
    loss: PrivacyLoss = PrivacyLoss()
    noiseless: bool = False
    pet: Pet = "he+dp"
    #: Public TenSEAL contexts by scheme ("bfv", "ckks"), base64: never a secret key.
    contexts: dict[Scheme, str] = Field(default_factory=dict)
    #: For a linked query: the analyst's fresh BFV public key for the chain (base64), never a secret key.
    link_key: str = ""
    #: The query's id, chosen by the analyst's client so that it can collect the result later whatever
    #: happens to the call (32 hex digits; empty: the coordinator picks one).
    query_id: str = Field(default="", pattern=r"^([0-9a-f]{32})?$")
    #: The analyst's fresh X25519 public key for this query (base64): the coordinator seals the result it
    #: keeps to it (:mod:`fedlink.pets.sealed`). Empty: the result is stored unsealed.
    result_key: str = ""

    @field_validator("sql")
    @classmethod
    def _readable(cls, sql: str) -> str:
        # Raises QueryError (not ValueError): the coordinator refuses an oversized query in one line
        # before it tokenises or parses any of it.
        return check_query_text(sql)

    @field_validator("project")
    @classmethod
    def _project(cls, project: str) -> str:
        return check_name(project, "project name")

    @model_validator(mode="after")
    def _one_measure(self) -> QueryRequest:
        if self.loss.epsilon > 0 and self.loss.rho > 0:
            raise ValueError("give `epsilon` or `rho`, not both")
        if not self.loss.is_finite:
            raise ValueError("the privacy loss must be a finite number")
        return self


class LinkedStep(Frozen):
    """One node's step of a linked query's encrypted chain (the header of a binary body whose blobs
    are the ciphertexts, component by component, stream by stream, chunk by chunk)."""

    query_id: str
    role: Literal["first", "union", "middle", "last"]
    #: The analyst's BFV public key for this query (base64); parameters follow from the plan.
    public_key: str
    spine_id: str
    spine_size: int = Field(ge=1)
    #: Per component key, how many streams (vectors over all slots) the blobs hold.
    streams: dict[str, int] = Field(default_factory=dict)
    chunks: int = 0
    #: Per SUM component, the fixed-point unit its values were scaled by (value = integer * unit).
    units: dict[str, float] = Field(default_factory=dict)
    #: The chain runs over the spine a window at a time: this step's window, how many there are, and
    #: how many ciphertexts (of the plan's slot count each) a window spans (0: the whole spine at once).
    window: int = Field(default=0, ge=0)
    windows: int = Field(default=1, ge=1)
    window_chunks: int = Field(default=0, ge=0)

    def slot_range(self, slots: int) -> tuple[int, int]:
        """The slots of the spine this step's window covers: [start, stop)."""
        if self.window_chunks == 0:
            return 0, self.spine_size
        start = self.window * self.window_chunks * slots
        return start, min(self.spine_size, start + self.window_chunks * slots)


class LinkedOutput(Frozen):
    """What a node's step sends back (header; the ciphertexts follow in the same order)."""

    streams: dict[str, int]
    chunks: int
    units: dict[str, float] = Field(default_factory=dict)
    #: Only from the last node: the noise it added to each component's cells.
    noise: dict[str, Noise] = Field(default_factory=dict)
    noiseless: bool = False
    #: The node's disclosure policy for the query's project when stricter than its catalogue's (an
    #: approval's minimum cohort), in every node's committed answer; the result gets the strictest.
    disclosure: DisclosurePolicy | None = None


class ModelRequest(Frozen):
    """What an analyst sends to fit a model."""

    formula: str
    table: str
    project: str
    family: Family = "logistic"
    iterations: int | None = None
    loss: PrivacyLoss = PrivacyLoss()
    noiseless: bool = False
    query_id: str = Field(default="", pattern=r"^([0-9a-f]{32})?$")
    result_key: str = ""

    @field_validator("formula")
    @classmethod
    def _readable(cls, formula: str) -> str:
        return check_query_text(formula, "formula")

    @field_validator("project", "table")
    @classmethod
    def _name(cls, name: str, info: ValidationInfo) -> str:
        return check_name(name, f"{info.field_name} name")

    @model_validator(mode="after")
    def _finite(self) -> ModelRequest:
        if not self.loss.is_finite:
            raise ValueError("the privacy loss must be a finite number")
        return self


class ModelStep(Frozen):
    """One Newton-Raphson iteration at one node: the current coefficients (on the [0, 1] scale) and the
    signed key cards of every other node of the plan, for the pairwise masks."""

    query_id: str
    iteration: int = Field(ge=0)
    beta: tuple[float, ...]
    cards: tuple[LinkKeyCard, ...]


class ModelOutput(Frozen):
    """What a node's model step sends back (header; its masked statistics follow)."""

    #: Standard deviation of the Gaussian noise the node added to each statistic (0 when noiseless).
    noise_sd: float = 0.0
    noiseless: bool = False
    #: As in :class:`LinkedOutput`: the coefficients are released only under the strictest policy.
    disclosure: DisclosurePolicy | None = None


class ModelResult(Frozen):
    """A fitted model as released: coefficients on the columns' own scale with standard errors that
    include both the estimator's sampling error and the DP noise's (see
    :func:`fedlink.plan.model.summary`)."""

    query_id: str
    project: str
    formula: str
    table: str
    family: Family
    labels: tuple[str, ...]
    coefficients: tuple[float, ...]
    #: Standard errors, sampling and DP noise together; None when no honest ones can be given.
    std_errors: tuple[float, ...] | None
    #: Rows used, summed over the nodes (noisy unless noiseless).
    rows: float
    iterations: int
    nodes: tuple[str, ...]
    pet: str
    noiseless: bool
    privacy_loss: dict[str, PrivacyLoss]
    #: Per node, the standard deviation of the Gaussian noise it added to each statistic, per iteration.
    noise_sd: dict[str, float] = Field(default_factory=dict)
    #: The DP noise's part of each standard error (they add in quadrature with the sampling part).
    noise_errors: tuple[float, ...] | None = None
    #: Why there are no standard errors (the noise swamps the rows, or the fit had not converged).
    errors_withheld: str | None = None
    #: What the reader must know (e.g. a fit stopped early because a node failed after the budget was spent).
    notes: tuple[str, ...] = ()

    def table_rows(self) -> list[dict[str, float | str | None]]:
        """One row per coefficient: estimate, standard error (sampling and DP noise), the noise's part
        of it, z and a 95% interval; the last four are None when the errors are withheld."""
        errors = self.std_errors or (None,) * len(self.labels)
        noise = self.noise_errors or (None,) * len(self.labels)
        out: list[dict[str, float | str | None]] = []
        for label, value, error, part in zip(self.labels, self.coefficients, errors, noise, strict=True):
            out.append(
                {
                    "term": label,
                    "estimate": value,
                    "std_error": error,
                    "noise_error": part,
                    "z": None if error is None else value / error if error > 0 else float("nan"),
                    "lower": None if error is None else value - 1.959964 * error,
                    "upper": None if error is None else value + 1.959964 * error,
                }
            )
        return out
