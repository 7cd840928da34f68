"""The project registry (``coordinator/projects.toml``): the Five Safes' "safe projects".

A project names its purpose, its analysts, the datasets (``node.table``) it may use, the privacy
budget it asks of each, and its linkage spec (``linkage_spec``: ``"default"`` for the shipped spec, or
a spec file relative to ``projects.toml``; :mod:`fedlink.linkage.spec`). Registration here is
necessary, not sufficient: every node approves projects in its own config, caps their budgets and
chooses which identifier concepts it encodes for them; the node is the final authority.

Projects applied for with ``fedlink project apply`` (:mod:`fedlink.coordinator.applications`) join the
registry once every node they need has approved them; until then, and after their end date, asking
for them is refused with the reason.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from pydantic import Field, PrivateAttr, model_validator

from fedlink.config import ConfigFile, ConfigModel, load_model, one_currency
from fedlink.errors import AccessDenied, BadInput, ConfigError, PolicyRefused
from fedlink.linkage.spec import LinkageSpec, load_spec


class Project(ConfigModel):
    id: str
    title: str
    purpose: str
    analysts: tuple[str, ...]
    datasets: tuple[str, ...]
    #: The budget the project asks of each dataset, in rho (zCDP): the ledgers' one currency. Each node
    #: grants its own cap in its approval; this is the request on the public record.
    rho: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: "default" (the shipped linkage spec) or a spec file, relative to projects.toml.
    linkage_spec: str = "default"
    #: The last day the project may run; after it the project is retired and its queries refused.
    end_date: date | None = None
    #: The project whose link spine this one reuses (broader use; every node of that spine consents).
    spine_of: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_currency(cls, data: object) -> object:
        return one_currency(data, f"project {data.get('id', '?') if isinstance(data, dict) else '?'!r}")

    def check(self, analyst: str, datasets: list[str]) -> None:
        if analyst not in self.analysts:
            raise AccessDenied(f"analyst '{analyst}' is not registered on project '{self.id}'; ask its lead to add you")
        missing = [d for d in datasets if d not in self.datasets]
        if missing:
            raise PolicyRefused(
                f"project '{self.id}' is not registered for dataset {', '.join(missing)}; register it in projects.toml"
            )


def today() -> date:
    return datetime.now(UTC).date()


class ProjectRegistry(ConfigFile):
    projects: tuple[Project, ...] = ()
    #: Applications not (or no longer) active, by id: why asking for them is refused.
    _closed: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> ProjectRegistry:
        ids = [p.id for p in self.projects]
        if len(set(ids)) != len(ids):
            raise ValueError("a project id is registered twice")
        return self

    def get(self, project: str | None) -> Project:
        if not project:
            raise BadInput("every query belongs to a project: pass `project=P` (or set project in your profile)")
        if project in self._closed:
            raise PolicyRefused(self._closed[project])
        found = next((p for p in self.projects if p.id == project), None)
        if found is not None and found.end_date is not None and today() > found.end_date:
            raise PolicyRefused(
                f"project '{project}' ended on {found.end_date.isoformat()} and is retired; its queries are refused"
            )
        if found is None:
            known = ", ".join(p.id for p in self.projects) or "none"
            raise BadInput(f"unknown project '{project}'; registered projects: {known}")
        return found

    def with_applications(self, active: tuple[Project, ...], closed: dict[str, str]) -> ProjectRegistry:
        """This registry plus the active applications, refusing the others with their reasons."""
        registry = self.model_copy(update={"projects": (*self.projects, *active)})
        registry.refuse(closed)
        return registry

    def refuse(self, closed: dict[str, str]) -> None:
        """Refuse asking for each project in ``closed`` with its reason (applications not active)."""
        self._closed = dict(closed)

    def of_analyst(self, analyst: str) -> list[Project]:
        return [p for p in self.projects if analyst in p.analysts]

    def spec(self, project: Project) -> LinkageSpec:
        """The project's linkage spec (its wildcards not yet resolved against the nodes' concepts)."""
        if project.linkage_spec == "default":
            return load_spec()
        try:
            return load_spec(self.resolve(project.linkage_spec))
        except ConfigError as exc:
            raise ConfigError(f"project '{project.id}': {exc.message} (linkage_spec in {self.source})") from exc


def load_projects(path: Path, applications: Path | None = None) -> ProjectRegistry:
    """The registry in ``path``, with the active projects of the application store ``applications``;
    every project's linkage spec is read once, so a bad one fails here."""
    registry = load_model(path, ProjectRegistry, "projects")
    if applications is not None:
        from fedlink.coordinator.applications import ApplicationStore  # it builds on this module

        active, closed = ApplicationStore(applications).projects()
        registry = registry.with_applications(active, closed)
    for project in registry.projects:
        registry.spec(project)
    return registry
