"""Safe projects as a workflow: what an analyst applies for, what each node decides, and what the
coordinator and the nodes say to each other about it.

An application names the datasets (``node.table``) it asks for and the legal gateway it claims for
each, the identifier concepts it links on, its purposes, outputs, end date and requested budget. Every
node whose data it names (and, for a project that reuses another project's link spine, every node of
that spine) decides: approved, with conditions, or rejected. The coordinator activates the project
only when all of them have approved, and retires it at its end date.

Everything here is public by design (it goes on the registers and the public page) except a node's
budget cap, which stays with the node.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedlink.frozen import Frozen

#: pending: waiting for nodes; active: every node approved; rejected: a node said no; retired: its end
#: date passed. Only an active project can be queried.
ProjectState = Literal["pending", "active", "rejected", "retired"]
Decision = Literal["pending", "approved", "rejected"]
_PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DATASET = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


def check_project_id(value: str) -> str:
    if not _PROJECT_ID.match(value):
        raise ValueError(f"project id {value!r} must be 1-64 lower-case letters, digits, '-' or '_'")
    return value


class DatasetClaim(Frozen):
    """One dataset an application asks for, and the legal gateway claimed for sharing it."""

    dataset: str
    legal_gateway: str = Field(min_length=1)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if not _DATASET.match(value):
            raise ValueError(f"dataset {value!r} must be written node.table, e.g. dfe.pupils")
        return value

    @property
    def node(self) -> str:
        return self.dataset.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.dataset.split(".", 1)[1]


class ProjectApplication(Frozen):
    """What an analyst asks for (``fedlink project apply``)."""

    id: str
    title: str = Field(min_length=1)
    #: Broader use: one application may serve several purposes, each approved together.
    purposes: tuple[str, ...] = Field(min_length=1)
    public_benefit: str = Field(min_length=1)
    #: The analysts working on the project (the applicant is always one of them).
    analysts: tuple[str, ...] = ()
    datasets: tuple[DatasetClaim, ...] = Field(min_length=1)
    #: The identifier concepts the project links on (e.g. first_name, dob, postcode).
    identifiers: tuple[str, ...] = ()
    outputs: tuple[str, ...] = Field(min_length=1)
    end_date: date
    #: The budget asked of each dataset, in rho (zCDP).
    rho: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: Reuse the link spine of this (earlier) project instead of linking again; every node of that
    #: spine must approve the reuse.
    spine_of: str | None = None

    _id = field_validator("id")(check_project_id)

    @field_validator("purposes", "outputs")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not text.strip() for text in value):
            raise ValueError("an empty purpose or output; write each as a sentence")
        return value

    @model_validator(mode="after")
    def _unique_datasets(self) -> ProjectApplication:
        names = [claim.dataset for claim in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("a dataset is named twice; claim one legal gateway per dataset")
        if self.spine_of == self.id:
            raise ValueError("a project cannot reuse its own link spine")
        return self

    @property
    def purpose(self) -> str:
        """The purposes as one line (what the query records and the registry show)."""
        return "; ".join(self.purposes)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted({claim.node for claim in self.datasets}))

    def tables_at(self, node: str) -> tuple[str, ...]:
        return tuple(claim.table for claim in self.datasets if claim.node == node)


class ContactTeam(Frozen):
    role: str
    name: str
    email: str = ""
    notes: str = ""


class NodeContacts(Frozen):
    """A node's public contacts (its ``[contacts]``): where to ask, how to apply, whom to consult."""

    node: str
    description: str = ""
    inbox: str = ""
    how_to_apply: str = ""
    teams: tuple[ContactTeam, ...] = ()


class NodeDecision(Frozen):
    """One node's decision on a project, with its public conditions (its budget cap stays private)."""

    node: str
    decision: Decision
    decided_at: str = ""
    reason: str = ""
    #: Below this many people (noisy count) the node's contribution is suppressed.
    min_cohort: int | None = None
    #: Tables the project may use at the node (None: those it asked for).
    tables: tuple[str, ...] | None = None
    #: Identifier concepts the node encodes for the project (None: those it asked for).
    identifiers: tuple[str, ...] | None = None
    #: The project whose link spine the node agreed this project may reuse.
    spine_of: str | None = None
    contacts: NodeContacts | None = None
    #: The legal gateways each of the node's tables in the application declares.
    gateways: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    def public_conditions(self) -> dict[str, object]:
        return {
            "min_cohort": self.min_cohort,
            "tables": list(self.tables) if self.tables is not None else None,
            "identifiers": list(self.identifiers) if self.identifiers is not None else None,
            "spine_of": self.spine_of,
        }


class ProjectRecord(Frozen):
    """An application and where it stands: its state, and each node's last known decision."""

    application: ProjectApplication
    applicant: str
    state: ProjectState = "pending"
    applied_at: str
    changed_at: str
    #: Why it was rejected or retired.
    reason: str = ""
    #: The nodes that must approve it: those named by its datasets and, for spine reuse, the spine's.
    approvers: tuple[str, ...]
    decisions: tuple[NodeDecision, ...] = ()

    @property
    def id(self) -> str:
        return self.application.id

    def decision(self, node: str) -> NodeDecision | None:
        return next((d for d in self.decisions if d.node == node), None)

    def approved_by(self, node: str) -> bool:
        """Whether ``node`` approved the project (and, when it reuses a link spine, that reuse)."""
        d = self.decision(node)
        spine = self.application.spine_of
        return d is not None and d.decision == "approved" and (spine is None or d.spine_of == spine)

    def outstanding(self) -> list[str]:
        """The approvers that have not approved yet."""
        return [n for n in self.approvers if not self.approved_by(n)]


class ProjectRef(Frozen):
    project: str


class ProjectList(Frozen):
    projects: tuple[ProjectRecord, ...] = ()


class NodeDecisions(Frozen):
    """Node -> coordinator: its decision on each project it was told about, by project id."""

    decisions: dict[str, NodeDecision] = Field(default_factory=dict)
