"""The coordinator's configuration (``coordinator/coordinator.toml``): where it listens, its
certificate, and the registry of nodes allowed to join the federation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fedlink.config import ConfigFile, ConfigModel, ConfigPath, EnvStr, TlsSection, load_model
from fedlink.pki import TlsFiles


class CoordinatorSection(ConfigModel):
    name: str = "coordinator"
    listen: EnvStr = "127.0.0.1:7443"
    query_timeout_s: float = Field(default=30.0, gt=0)
    #: The project registry (TOML), relative to this file.
    projects: ConfigPath = Field(default=Path("projects.toml"), validate_default=True)
    #: The coordinator's transparency register (JSON Lines, hash-chained).
    transparency_register: ConfigPath
    #: Explicit test mode: noiseless queries become possible (where nodes allow it too). Logged.
    test_mode: bool = False
    #: Epsilon every node spends (on its ``<node>.linkage`` budget line) to release a new spine's
    #: match rates with DP; 0 releases none.
    link_quality_epsilon: float = Field(default=0.1, ge=0)
    #: Whether this coordinator runs a linkage unit. False: no link spine is built and every LINK query
    #: is refused, so analysts get horizontal aggregates only (each node's own tables, never joined).
    linkage_service: bool = True
    #: A linked query's chain passes this many ciphertexts per stream (each covering 8,192 or 16,384
    #: people of the spine) from node to node at a time, so that memory stays bounded whatever the
    #: spine's size; the last node adds its cells up across windows before adding noise once.
    linked_window_chunks: int = Field(default=64, ge=1)


class LinkageEngineSection(ConfigModel):
    """``[linkage]``: where the linkage unit links the encodings it receives."""

    #: "in-process": in the coordinator's own process; "spark": on a Spark cluster (the ``spark`` extra).
    engine: Literal["in-process", "spark"] = "in-process"
    #: The Spark master: ``local[N]`` (N cores of this machine), ``spark://host:7077``, ``yarn``, ...
    spark_master: EnvStr = "local[2]"
    #: Partitions each blocking key's records are spread over (a few per executor core).
    spark_partitions: int = Field(default=16, ge=1)
    #: Storage every executor can read, where a run stages the encodings as Parquet (removed when it
    #: ends); unset: the system's temporary folder, which only local mode can use.
    spark_work_dir: ConfigPath | None = None
    #: Further Spark settings, e.g. ``spark.executor.memory``.
    spark_conf: dict[str, str] = Field(default_factory=dict)


class RegisteredNode(ConfigModel):
    name: str
    description: str = ""


class CoordinatorConfig(ConfigFile):
    coordinator: CoordinatorSection
    tls: TlsSection
    nodes: tuple[RegisteredNode, ...]
    linkage: LinkageEngineSection = LinkageEngineSection()

    @model_validator(mode="after")
    def _unique(self) -> CoordinatorConfig:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("a node is registered twice in [[nodes]]")
        return self

    @property
    def listen(self) -> str:
        return self.coordinator.listen

    def tls_files(self) -> TlsFiles:
        return self.tls.files()

    # Path(): a section built with model_copy in code holds what it was given
    def projects_path(self) -> Path:
        return Path(self.coordinator.projects)

    def register_path(self) -> Path:
        return Path(self.coordinator.transparency_register)

    def applications_path(self) -> Path:
        """The machine-written store of project applications (``fedlink project apply``), beside the register."""
        return self.register_path().parent / "applications.toml"

    def revoked_path(self) -> Path | None:
        return Path(self.tls.revoked) if self.tls.revoked else None


def load_coordinator_config(path: Path) -> CoordinatorConfig:
    return load_model(path, CoordinatorConfig, "coordinator")
