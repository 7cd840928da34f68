"""A node's own configuration (``nodes/<dept>/node.toml``): who it is, where its data lives, and what
it declares about that data. The node is the final authority over everything declared here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from fedlink.config import ConfigFile, ConfigModel, ConfigPath, EnvStr, TlsSection, load_model, one_currency
from fedlink.errors import BadInput
from fedlink.linkage.concepts import MULTI_COLUMN, ConceptOptions, concept_name
from fedlink.pki import TlsFiles
from fedlink.plan.catalogue import ColumnDomain
from fedlink.plan.disclosure import DisclosurePolicy

_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


def _identifier(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError(f"'{value}' must be lower-case letters, digits and '_', starting with a letter")
    return value


class ColumnDecl(ColumnDomain):
    _name = field_validator("name")(_identifier)

    @model_validator(mode="after")
    def _consistent(self) -> ColumnDecl:
        if self.kind == "category" and not self.categories:
            raise ValueError(f"categorical column '{self.name}' needs a non-empty 'categories' list")
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise ValueError(f"column '{self.name}' lists a category twice")
        if self.kind == "numeric":
            if self.bounds is None or not self.bounds[0] < self.bounds[1]:
                raise ValueError(f"numeric column '{self.name}' needs 'bounds = [low, high]' with low < high")
            if self.bins is not None and (
                len(self.bins) < 2 or any(b >= c for b, c in zip(self.bins, self.bins[1:], strict=False))
            ):
                raise ValueError(f"'bins' of column '{self.name}' must be at least two increasing edges")
        elif self.bounds is not None or self.bins is not None:
            raise ValueError(f"only numeric columns take 'bounds' or 'bins' ('{self.name}' is {self.kind})")
        return self


class PostgresBackend(ConfigModel):
    """A PostgreSQL server holding some of this node's tables. Credentials come from a file or an
    environment variable named here, never from this file (a ``password`` key is refused)."""

    kind: Literal["postgresql"]
    host: EnvStr = "localhost"
    port: int = Field(default=5432, ge=1, le=65535)
    database: EnvStr
    user: EnvStr
    #: A file holding the password (mode 0600, outside the repository), relative to this config.
    password_file: ConfigPath | None = None
    #: An environment variable holding the password.
    password_env: str | None = None
    #: libpq's sslmode (e.g. "verify-full" in production).
    sslmode: EnvStr | None = None
    connect_timeout_s: int = Field(default=10, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: object) -> object:
        if isinstance(data, dict) and ("password" in data or "dsn" in data):
            raise ValueError(
                "a PostgreSQL backend takes no inline password or dsn; put the password in a file "
                "(password_file) or an environment variable (password_env)"
            )
        return data


class SparkBackend(ConfigModel):
    """Apache Spark: ``local[N]`` on the node's machine, or a cluster URL (``spark://host:7077``)."""

    kind: Literal["spark"]
    master: EnvStr = "local[*]"
    #: Extra Spark settings (e.g. {"spark.executor.memory" = "8g"}).
    conf: dict[str, str] = Field(default_factory=dict)


BackendDecl = Annotated[PostgresBackend | SparkBackend, Field(discriminator="kind")]


#: The identifier columns a table without ``[tables.linkage]`` is read by, when it declares them.
LEGACY_CONCEPTS = ("first_name", "last_name", "dob", "sex", "postcode")
_MAPPING_OPTIONS = ("record_id", "dob_format", "sex_coding", "postcode_country")


class LinkageMapping(ConfigModel):
    """``[tables.linkage]``: which of a table's own columns hold which identifier concept
    (:mod:`fedlink.linkage.concepts`), how they are written, and the record id column. A concept
    not named here is missing in this table (never faked)."""

    record_id: str
    dob_format: str = "auto"
    sex_coding: str = "auto"
    postcode_country: str = "uk"
    #: Concept -> the columns holding it (several only for address and middle names).
    concepts: dict[str, tuple[str, ...]]
    #: Concept -> the key it was written under (for messages: ``nhs_number`` is ``id:nhs_number``).
    keys: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _concept_keys(cls, data: object) -> object:
        if not isinstance(data, dict) or "concepts" in data:
            return data
        if "record_id" not in data:
            raise ValueError('[tables.linkage] needs record_id = "COLUMN": the column of each record\'s own id')
        concepts: dict[str, tuple[str, ...]] = {}
        keys: dict[str, str] = {}
        for key, value in data.items():
            if key in _MAPPING_OPTIONS:
                continue
            try:
                concept = concept_name(key)
            except BadInput as exc:
                raise ValueError(f"tables.linkage.{key}: {exc.message}") from None
            columns = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
            if not columns or not all(isinstance(c, str) and c for c in columns):
                raise ValueError(f"tables.linkage.{key} must name a column (or a list of columns)")
            if len(columns) > 1 and concept not in MULTI_COLUMN:
                raise ValueError(
                    f"tables.linkage.{key} names {len(columns)} columns; only address and middle_names take several"
                )
            if concept in concepts:
                raise ValueError(f"tables.linkage maps {concept} twice ({keys[concept]} and {key}); keep one")
            concepts[concept], keys[concept] = columns, key
        return {**{k: data[k] for k in _MAPPING_OPTIONS if k in data}, "concepts": concepts, "keys": keys}

    @model_validator(mode="after")
    def _options(self) -> LinkageMapping:
        try:
            self.options()
        except BadInput as exc:
            raise ValueError(f"[tables.linkage]: {exc.message}") from None
        return self

    def options(self) -> ConceptOptions:
        return ConceptOptions(
            dob_format=self.dob_format, sex_coding=self.sex_coding, postcode_country=self.postcode_country
        )

    def key_of(self, concept: str) -> str:
        """The ``node.toml`` key that maps ``concept``."""
        return f"tables.linkage.{self.keys.get(concept, concept)}"


class TableDecl(ConfigModel):
    name: str
    #: A CSV or Parquet file (DuckDB reads it in place, the default), or with ``backend``: a relation
    #: of that backend (``schema.table`` in PostgreSQL; a file or a catalogue table in Spark). A file's
    #: environment references and relative path are resolved when it is read (``NodeConfig.table_path``).
    source: str
    #: The name of one of the node's [backends.<name>] (default: files read by DuckDB).
    backend: str | None = None
    format: Literal["parquet", "csv"] | None = None
    description: str = ""
    columns: tuple[ColumnDecl, ...]
    #: Contribution bound: at most this many rows of one person count in any query. DP noise is
    #: calibrated to it, so it is what "one person" means for the privacy guarantee.
    max_rows_per_person: int = Field(default=1, ge=1)
    #: Local identifier columns that tell this node's rows of one person apart; when given, rows
    #: beyond ``max_rows_per_person`` per person are dropped before aggregating (enforcing the bound).
    person_key: tuple[str, ...] | None = None
    #: Which columns hold which identifier concepts for linkage (``[tables.linkage]``).
    linkage: LinkageMapping | None = None
    #: The legal gateways under which this dataset may be shared for research (for example "Digital
    #: Economy Act 2017, Part 5, Chapter 5"); an application claims one of them per dataset.
    legal_gateways: tuple[str, ...] = ()
    update_frequency: UpdateFrequency = "unknown"

    _name = field_validator("name")(_identifier)

    @model_validator(mode="after")
    def _unique_columns(self) -> TableDecl:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"table '{self.name}' declares a column twice")
        return self

    @model_validator(mode="after")
    def _person_key_declared(self) -> TableDecl:
        names = {c.name for c in self.columns}
        for column in self.person_key or ():
            if column not in names:
                raise ValueError(f"person_key column '{column}' of table '{self.name}' is not declared")
        return self

    def linkage_mapping(self) -> LinkageMapping | None:
        """The table's linkage mapping: ``[tables.linkage]``, else, for a table that declares identifier
        columns named like the concepts (``first_name``, ``last_name``, ``dob``, ``sex``, ``postcode``)
        and a ``record_id`` column, those; else None (the table takes no part in linkage)."""
        if self.linkage is not None:
            return self.linkage
        declared = {c.name for c in self.columns if c.kind == "identifier"}
        concepts: dict[str, tuple[str, ...]] = {name: (name,) for name in LEGACY_CONCEPTS if name in declared}
        if "record_id" not in {c.name for c in self.columns} or not concepts:
            return None
        return LinkageMapping(record_id="record_id", concepts=concepts, keys={})

    @property
    def source_format(self) -> str:
        if self.format:
            return self.format
        return "csv" if self.source.lower().endswith((".csv", ".csv.gz")) else "parquet"


#: How often a dataset is refreshed: the words of the EU "frequency" vocabulary that DCAT's
#: ``accrualPeriodicity`` uses (``http://publications.europa.eu/resource/authority/frequency/``).
UpdateFrequency = Literal[
    "daily", "weekly", "monthly", "quarterly", "biannual", "annual", "irregular", "never", "unknown"
]

#: The teams a project must consult at a node (the checklist's rows): who owns the information asset,
#: who speaks for data protection, who for ethics, who runs the technical side.
ContactRole = Literal["information asset owner", "data protection", "ethics", "technical", "other"]


class Team(ConfigModel):
    """One team or person to consult at this node about a project (``[[contacts.teams]]``)."""

    role: ContactRole
    name: str
    email: str = ""
    notes: str = ""


class Contacts(ConfigModel):
    """How to ask this node for its data, published in the catalogue and a project's checklist
    (``[contacts]``). Public by design: put team inboxes here, never a person's private details."""

    #: The inbox where applicants ask about this node's data.
    inbox: str = ""
    #: How to apply: a sentence or an address of the department's own guidance.
    how_to_apply: str = ""
    teams: tuple[Team, ...] = ()


class NodeSection(ConfigModel):
    name: str
    description: str = ""
    coordinator: EnvStr
    #: TLS name to expect on the coordinator's certificate when it differs from the address's host.
    coordinator_name: str | None = None

    _name = field_validator("name")(_identifier)


class Approval(ConfigModel):
    """This node's approval of a project: the node, not the coordinator, is the final authority."""

    project: str
    #: The cap on this project's total privacy loss at each of this node's tables, in zCDP's rho: the one
    #: currency of the ledger (an epsilon-DP query is charged epsilon^2 / 2; see :mod:`fedlink.node.ledger`).
    rho: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: Tables the project may use (default: all of this node's tables).
    tables: tuple[str, ...] | None = None
    #: Analysts allowed (default: whoever the project registers).
    analysts: tuple[str, ...] | None = None
    #: Identifier concepts this node encodes for the project's linkage (default: every concept its
    #: tables map); the project's spec may use others, which are then missing at this node.
    linkage_concepts: tuple[str, ...] | None = None

    @field_validator("linkage_concepts")
    @classmethod
    def _known_concepts(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        try:
            return tuple(concept_name(name) for name in value)
        except BadInput as exc:
            raise ValueError(exc.message) from None

    #: Minimum cohort for this project, on every kind of query it runs: an aggregate or linked result
    #: whose noisy cohort is below it has every cell suppressed, a model whose noisy rows beyond its
    #: coefficients are fewer is refused (stricter than ``[privacy.disclosure]`` only).
    min_cohort: int | None = Field(default=None, ge=0)
    #: The project whose link spine this project may reuse (broader use): this node's consent to it.
    spine_of: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_currency(cls, data: object) -> object:
        project = data.get("project", "?") if isinstance(data, dict) else "?"
        return one_currency(data, f"the approval of project {project!r}")


class PrivacySection(ConfigModel):
    ledger: ConfigPath
    transparency_register: ConfigPath
    #: Allow noiseless answers when the coordinator runs in test mode (never in production).
    allow_test_mode: bool = False
    disclosure: DisclosurePolicy = DisclosurePolicy()
    #: Optional caps (rho) on a dataset's total privacy loss across all projects, by table name (and
    #: ``linkage`` for the budget spent releasing linkage quality): loss adds up across projects that
    #: use one dataset, and this bounds the sum, whatever each project's approval allows.
    dataset_caps: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(default_factory=dict)


class NodeConfig(ConfigFile):
    node: NodeSection
    tls: TlsSection
    privacy: PrivacySection
    approvals: tuple[Approval, ...] = ()
    contacts: Contacts = Contacts()
    #: Database backends some tables live in, by name (tables without ``backend`` are files).
    backends: dict[str, BackendDecl] = Field(default_factory=dict)
    tables: tuple[TableDecl, ...]

    @model_validator(mode="after")
    def _unique_tables(self) -> NodeConfig:
        if self.tls.revoked is not None:
            raise ValueError("tls.revoked is read by the coordinator only; remove it from node.toml")
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError("a table name is declared twice")
        for decl in self.tables:
            if decl.backend is not None and decl.backend not in self.backends:
                raise ValueError(
                    f"table '{decl.name}' names backend '{decl.backend}', which no [backends.{decl.backend}] declares"
                )
        for approval in self.approvals:
            for table in approval.tables or ():
                if table not in names:
                    raise ValueError(f"approval of project '{approval.project}' names unknown table '{table}'")
        for table in self.privacy.dataset_caps:
            if table not in names and table != "linkage":
                raise ValueError(
                    f"privacy.dataset_caps names '{table}', which is neither a declared table nor 'linkage'"
                )
        return self

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def coordinator_address(self) -> str:
        return self.node.coordinator

    def tls_files(self) -> TlsFiles:
        return self.tls.files()

    def table_path(self, table: TableDecl) -> Path:
        return self.resolve(table.source)

    def backend_of(self, table: TableDecl) -> PostgresBackend | SparkBackend | None:
        return self.backends[table.backend] if table.backend is not None else None

    # Path(): a section built with model_copy in code holds what it was given
    def ledger_path(self) -> Path:
        return Path(self.privacy.ledger)

    def register_path(self) -> Path:
        return Path(self.privacy.transparency_register)

    def approvals_path(self) -> Path:
        """The node's machine-written decisions (``fedlink project approve|reject``), beside its ledger."""
        return self.ledger_path().with_name("approvals.toml")

    def all_approvals(self) -> tuple[Approval, ...]:
        """The approvals in this file, then those decided with ``fedlink project approve`` (read afresh
        when that store changes, so a running node honours a decision at once)."""
        from fedlink.node.approvals import decided_approvals  # the store's module imports this one

        return (*self.approvals, *decided_approvals(self.approvals_path(), {a.project for a in self.approvals}))

    def approval(self, project: str) -> Approval | None:
        return next((a for a in self.all_approvals() if a.project == project), None)


def load_node_config(path: Path) -> NodeConfig:
    return load_model(path, NodeConfig, "node")
