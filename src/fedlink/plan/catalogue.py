"""The federation's data dictionary: what each node declares about its tables.

A node publishes only metadata a data owner chose to make public: column kinds, descriptions, the
declared categories of categorical columns (so group-by keys are public and leak nothing), declared
clamping bounds and histogram bins of numeric columns, which columns are identifiers and how complete
they are, and row counts rounded to 100; for linkage, how many values of each identifier concept are
valid once normalised; and how to apply for the data (contacts, legal gateways, update frequency).
Nothing here is derived from individual values except the rounded counts and shares.
"""

from __future__ import annotations

from typing import Literal

from fedlink.frozen import Frozen
from fedlink.plan.disclosure import DisclosurePolicy

Category = str | int
ColumnKind = Literal["category", "numeric", "identifier"]


class ColumnDomain(Frozen):
    """A column as its owner declares it: a node's config and the catalogue share this shape."""

    name: str
    kind: ColumnKind
    description: str = ""
    categories: tuple[Category, ...] | None = None
    bounds: tuple[float, float] | None = None
    bins: tuple[float, ...] | None = None

    def same_domain(self, other: ColumnDomain) -> bool:
        """Whether two nodes declare this column identically (needed to add their aggregates)."""
        return (self.kind, self.categories, self.bounds, self.bins) == (
            other.kind,
            other.categories,
            other.bounds,
            other.bins,
        )


class ColumnInfo(ColumnDomain):
    #: Share of records with a non-empty value, rounded to 0.01 (identifiers only).
    completeness: float | None = None


class LinkageConcept(Frozen):
    """An identifier concept a table maps for linkage (``[tables.linkage]`` in its node's config)."""

    concept: str
    columns: tuple[str, ...]
    #: Share of records whose value is valid after normalisation (a postcode of the declared country,
    #: a complete date of birth...), rounded to 0.01.
    valid: float | None = None
    #: The table's records and those with a valid value, each rounded to the node's ``round_to`` and
    #: None where below its ``suppress_below`` (what the public catalogue publishes: see
    #: :meth:`DisclosurePolicy.publish_count`).
    records_rounded: int | None = None
    valid_rounded: int | None = None

    def published_share(self) -> float | None:
        """The share of valid values derived from the rounded counts only (None when either is suppressed)."""
        if self.records_rounded is None or self.valid_rounded is None or self.records_rounded <= 0:
            return None
        return min(self.valid_rounded / self.records_rounded, 1.0)


class TableInfo(Frozen):
    name: str
    description: str = ""
    #: Row count rounded to the nearest 100, so the catalogue itself discloses nothing exact.
    rows_rounded: int
    columns: tuple[ColumnInfo, ...]
    #: The identifier concepts the table maps for linkage, and how many of their values are valid.
    linkage: tuple[LinkageConcept, ...] = ()
    #: The legal gateways under which the dataset may be shared for research.
    legal_gateways: tuple[str, ...] = ()
    #: How often it is refreshed, a word of the EU frequency vocabulary (``annual``, ``monthly``...).
    update_frequency: str = "unknown"

    def column(self, name: str) -> ColumnInfo | None:
        return next((c for c in self.columns if c.name == name), None)


class ContactTeam(Frozen):
    """A team to consult at a node about a project (its ``[[contacts.teams]]``)."""

    role: str
    name: str
    email: str = ""
    notes: str = ""


class NodeContacts(Frozen):
    """How to ask a node for its data (its ``[contacts]``): public by design."""

    inbox: str = ""
    how_to_apply: str = ""
    teams: tuple[ContactTeam, ...] = ()


class NodeCatalogue(Frozen):
    node: str
    description: str = ""
    tables: tuple[TableInfo, ...]
    #: Where and how to apply for this node's data.
    contacts: NodeContacts = NodeContacts()
    #: The node's own disclosure-control policy, applied to every result drawing on it.
    disclosure: DisclosurePolicy = DisclosurePolicy()
    #: Projects this node has approved (ids only; caps stay private to the node).
    projects: tuple[str, ...] = ()

    def table(self, name: str) -> TableInfo | None:
        return next((t for t in self.tables if t.name == name), None)


class NodeStatus(Frozen):
    node: str
    live: bool
    catalogue: NodeCatalogue | None = None


class FederationCatalogue(Frozen):
    """Every registered node, whether it is connected, and what it last declared."""

    nodes: tuple[NodeStatus, ...]

    def declaring(self, table: str) -> list[tuple[NodeStatus, TableInfo]]:
        """The nodes (live or not) whose catalogue declares ``table``."""
        found = []
        for status in self.nodes:
            info = status.catalogue.table(table) if status.catalogue else None
            if info is not None:
                found.append((status, info))
        return found
