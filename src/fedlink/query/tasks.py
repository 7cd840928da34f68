"""What the coordinator asks of nodes for one query, and the privacy terms attached to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from fedlink.model import Frozen
from fedlink.pets.he import Scheme
from fedlink.query.plan import AggregatePlan

#: How a query's aggregates travel: "he+dp" encrypts every node's noisy vector under the analyst's key,
#: so the coordinator adds ciphertexts and only the analyst ever sees numbers; "dp" sends noisy
#: vectors in the clear to the coordinator (weaker; recorded as such on the register).
Pet = Literal["dp", "he+dp"]


class PrivacyLoss(Frozen):
    """Privacy loss (or a cap on it) at one dataset: ``epsilon`` (pure DP) and/or ``rho`` (zCDP)."""

    epsilon: float = Field(default=0.0, ge=0)
    rho: float = Field(default=0.0, ge=0)

    @property
    def is_zero(self) -> bool:
        return self.epsilon == 0 and self.rho == 0


class QueryTask(Frozen):
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
            "query": self.plan.sql,
            "pet": self.pet_label,
            "privacy_loss": {n: self.loss.model_dump() for n in nodes},
            "status": status,
            "reason": reason,
            "released": released,
            "encrypted_for": encrypted_for,
        }


class TaskRef(Frozen):
    query_id: str


class ExecuteTask(Frozen):
    """The execute phase: for he+dp, the analyst's public HE contexts (base64, by scheme)."""

    query_id: str
    contexts: dict[Scheme, str] = Field(default_factory=dict)


class BudgetLineInfo(Frozen):
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

    @model_validator(mode="after")
    def _one_measure(self) -> QueryRequest:
        if self.loss.epsilon > 0 and self.loss.rho > 0:
            raise ValueError("give --epsilon or --rho, not both")
        return self
