"""The federation's data dictionary: what each node declares about its tables.

A node publishes only metadata a data owner chose to make public: column kinds, descriptions, the
declared categories of categorical columns (so group-by keys are public and leak nothing), declared
clamping bounds and histogram bins of numeric columns, which columns are identifiers and how complete
they are, and row counts rounded to 100. Nothing here is derived from individual values except the
rounded counts and completeness shares.
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


class TableInfo(Frozen):
    name: str
    description: str = ""
    #: Row count rounded to the nearest 100, so the catalogue itself discloses nothing exact.
    rows_rounded: int
    columns: tuple[ColumnInfo, ...]
    #: The identifier concepts the table maps for linkage, and how many of their values are valid.
    linkage: tuple[LinkageConcept, ...] = ()

    def column(self, name: str) -> ColumnInfo | None:
        return next((c for c in self.columns if c.name == name), None)


class NodeCatalogue(Frozen):
    node: str
    description: str = ""
    tables: tuple[TableInfo, ...]
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
