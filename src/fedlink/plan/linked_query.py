"""The plan of a linked query (LINK): its tables at the nodes holding them, the chain of nodes an
encrypted vector passes along, and the cells it computes. Built by
:func:`fedlink.language.linked_query.plan_linked`; the chain's encryption parameters are the PET's
(:meth:`fedlink.pets.chain.ChainParams.for_chain` of :attr:`LinkedPlan.multiplications`)."""

from __future__ import annotations

from typing import Literal

from fedlink.frozen import Frozen
from fedlink.plan.aggregate import CellLayout, Predicate, predicate_columns


class LinkedSource(Frozen):
    """One table of a linked query, at the node(s) holding it, with the conditions on its rows."""

    table: str
    nodes: tuple[str, ...]
    where: Predicate | None = None

    def qualified(self, column: str) -> str:
        return f"{self.nodes[0]}.{self.table}.{column}"


class LinkedPlan(CellLayout):
    """A linked aggregate: aggregates name columns as ``node.table.column``; the group-by columns
    (bare names) belong to ``sources[group_source]``."""

    kind: Literal["linked"] = "linked"
    sources: tuple[LinkedSource, ...]
    group_source: int | None = None

    @property
    def table(self) -> str:
        return " LINK ".join(s.table if len(s.nodes) > 1 else f"{s.nodes[0]}.{s.table}" for s in self.sources)

    @property
    def union(self) -> tuple[str, ...]:
        """Nodes holding the first table together (a person at any of them counts once)."""
        return self.sources[0].nodes if len(self.sources[0].nodes) > 1 else ()

    @property
    def group_node(self) -> str | None:
        return self.sources[self.group_source].nodes[0] if self.group_source is not None else None

    @property
    def nodes(self) -> tuple[str, ...]:
        """The chain: the holders of a FROM table held by several nodes first, the group-by node last."""
        group = self.group_node
        union = list(self.union)
        others = sorted({n for s in self.sources for n in s.nodes} - set(union) - {group})
        return (*union, *others, *([group] if group else []))

    @property
    def multiplications(self) -> int:
        return len(self.nodes) - 1

    @property
    def sums(self) -> bool:
        """Whether a SUM or AVG is computed (its totals need a wider plain modulus than counts)."""
        return any(c.kind == "sum" for c in self.components)

    @property
    def noise_sources(self) -> int:
        """One node (the last of the chain) adds the noise of a linked result."""
        return 1

    def sources_at(self, node: str) -> list[LinkedSource]:
        return [s for s in self.sources if node in s.nodes]

    def datasets(self) -> list[str]:
        return sorted({f"{n}.{s.table}" for s in self.sources for n in s.nodes})


def columns_at(plan: LinkedPlan, source: LinkedSource) -> set[str]:
    """The columns of ``source`` the plan reads (predicates, group-by, aggregates)."""
    used = predicate_columns(source.where)
    if plan.group_source is not None and plan.sources[plan.group_source] == source:
        used |= {g.column for g in plan.group_by}
    prefix = f"{source.nodes[0]}.{source.table}."
    used |= {a.column.removeprefix(prefix) for a in plan.aggregates if a.column and a.column.startswith(prefix)}
    return used
