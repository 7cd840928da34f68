"""The project registry (``coordinator/projects.toml``): the Five Safes' "safe projects".

A project names its purpose, its analysts, the datasets (``node.table``) it may use, the privacy
budget it asks of each, and its linkage spec (``linkage_spec``: ``"default"`` for the shipped spec, or
a spec file relative to ``projects.toml``; :mod:`fedlink.linkage.spec`). Registration here is
necessary, not sufficient: every node approves projects in its own config, caps their budgets and
chooses which identifier concepts it encodes for them; the node is the final authority.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

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


class ProjectRegistry(ConfigFile):
    projects: tuple[Project, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> ProjectRegistry:
        ids = [p.id for p in self.projects]
        if len(set(ids)) != len(ids):
            raise ValueError("a project id is registered twice")
        return self

    def get(self, project: str | None) -> Project:
        if not project:
            raise BadInput("every query belongs to a project: pass `project=P` (or set project in your profile)")
        found = next((p for p in self.projects if p.id == project), None)
        if found is None:
            known = ", ".join(p.id for p in self.projects) or "none"
            raise BadInput(f"unknown project '{project}'; registered projects: {known}")
        return found

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


def load_projects(path: Path) -> ProjectRegistry:
    """The registry in ``path``; every project's linkage spec is read once, so a bad one fails here."""
    registry = load_model(path, ProjectRegistry, "projects")
    for project in registry.projects:
        registry.spec(project)
    return registry
