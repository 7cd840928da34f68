"""What the coordinator asks of nodes for one query, and the privacy terms attached to it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedlink.pets.he import Scheme
from fedlink.query.plan import AggregatePlan

#: How a query's aggregates travel: "he+dp" encrypts every node's noisy vector under the analyst's key,
#: so the coordinator adds ciphertexts and only the analyst ever sees numbers; "dp" sends noisy
#: vectors in the clear to the coordinator (weaker; recorded as such on the register).
Pet = Literal["dp", "he+dp"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PrivacyLoss(_Frozen):
    """Privacy loss (or a cap on it) at one dataset: ``epsilon`` (pure DP) and/or ``rho`` (zCDP)."""

    epsilon: float = Field(default=0.0, ge=0)
    rho: float = Field(default=0.0, ge=0)

    @property
    def is_zero(self) -> bool:
        return self.epsilon == 0 and self.rho == 0


class QueryTask(_Frozen):
    """Sent to every node in the reserve phase; the execute and abort phases refer to it by id."""

    query_id: str
    plan: AggregatePlan
    analyst: str
    project: str
    purpose: str = ""
    loss: PrivacyLoss
    #: Explicit, logged test mode: no noise. Honoured only if the coordinator runs in test mode AND
    #: the node's own policy allows it.
    noiseless: bool = False
    pet: Pet = "dp"

    @property
    def pet_label(self) -> str:
        return f"{self.pet}, TEST MODE (no noise)" if self.noiseless else self.pet


class TaskRef(_Frozen):
    query_id: str


class ExecuteTask(_Frozen):
    """The execute phase: for he+dp, the analyst's public HE contexts (base64, by scheme)."""

    query_id: str
    contexts: dict[Scheme, str] = {}


class BudgetLineInfo(_Frozen):
    """One node's budget for one project and dataset, as shown by `fedlink budget`."""

    node: str
    project: str
    dataset: str
    cap: PrivacyLoss
    spent: PrivacyLoss
    reserved: PrivacyLoss
    queries: int

    @property
    def remaining(self) -> PrivacyLoss:
        return PrivacyLoss(
            epsilon=max(0.0, self.cap.epsilon - self.spent.epsilon - self.reserved.epsilon),
            rho=max(0.0, self.cap.rho - self.spent.rho - self.reserved.rho),
        )


class BudgetReport(_Frozen):
    lines: tuple[BudgetLineInfo, ...]


class QueryRequest(_Frozen):
    """What an analyst sends: the SQL, the project it is for, and the privacy loss it may spend."""

    sql: str
    project: str
    loss: PrivacyLoss = PrivacyLoss()
    noiseless: bool = False
    pet: Pet = "he+dp"
    #: Public TenSEAL contexts by scheme ("bfv", "ckks"), base64: never a secret key.
    contexts: dict[Scheme, str] = {}

    @model_validator(mode="after")
    def _one_measure(self) -> QueryRequest:
        if self.loss.epsilon > 0 and self.loss.rho > 0:
            raise ValueError("give --epsilon or --rho, not both")
        return self
