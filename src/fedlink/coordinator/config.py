"""The coordinator's configuration (``coordinator/coordinator.toml``): where it listens, its
certificate, and the registry of nodes allowed to join the federation."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from fedlink.config import expand, load_model, resolve_path
from fedlink.model import Frozen
from fedlink.wire.transport import TlsFiles


class CoordinatorSection(Frozen):
    name: str = "coordinator"
    listen: str = "127.0.0.1:7443"
    query_timeout_s: float = Field(default=30.0, gt=0)
    #: The project registry (TOML), relative to this file.
    projects: str = "projects.toml"
    #: The coordinator's transparency register (JSON Lines, hash-chained).
    transparency_register: str
    #: Explicit test mode: noiseless queries become possible (where nodes allow it too). Logged.
    test_mode: bool = False
    #: Epsilon every node spends (on its ``<node>.linkage`` budget line) to release a new spine's
    #: match rates with DP; 0 releases none.
    link_quality_epsilon: float = Field(default=0.1, ge=0)


class TlsSection(Frozen):
    cert: str
    key: str
    ca: str
    #: Optional revocation list written by `fedlink pki revoke`.
    revoked: str | None = None


class RegisteredNode(Frozen):
    name: str
    description: str = ""


class CoordinatorConfig(Frozen):
    coordinator: CoordinatorSection
    tls: TlsSection
    nodes: tuple[RegisteredNode, ...]
    source: Path = Path("coordinator.toml")

    @model_validator(mode="after")
    def _unique(self) -> CoordinatorConfig:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("a node is registered twice in [[nodes]]")
        return self

    @property
    def listen(self) -> str:
        return expand(self.coordinator.listen, self.source)

    def tls_files(self) -> TlsFiles:
        return TlsFiles(
            cert=resolve_path(self.tls.cert, self.source),
            key=resolve_path(self.tls.key, self.source),
            ca=resolve_path(self.tls.ca, self.source),
        )

    def projects_path(self) -> Path:
        return resolve_path(self.coordinator.projects, self.source)

    def register_path(self) -> Path:
        return resolve_path(self.coordinator.transparency_register, self.source)

    def revoked_path(self) -> Path | None:
        return resolve_path(self.tls.revoked, self.source) if self.tls.revoked else None


def load_coordinator_config(path: Path) -> CoordinatorConfig:
    config = load_model(path, CoordinatorConfig, "coordinator")
    return config.model_copy(update={"source": path.resolve()})
