"""A node's data, wherever it lives (:mod:`fedlink.node.engines.backends`: files through DuckDB, PostgreSQL,
Spark), and the catalogue it publishes about it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sqlglot import exp

from fedlink.errors import ConfigError, QueryError
from fedlink.linkage.concepts import VALID_FIELD, normalise_concepts
from fedlink.node.config import ColumnDecl, LinkageMapping, NodeConfig, TableDecl
from fedlink.node.engines.backends import Backend, Columns, open_backends
from fedlink.node.engines.operators import run_aggregate
from fedlink.plan.aggregate import AggregatePlan
from fedlink.plan.catalogue import (
    ColumnDomain,
    ColumnInfo,
    LinkageConcept,
    NodeCatalogue,
    NodeContacts,
    TableInfo,
)
from fedlink.plan.disclosure import round_count
from fedlink.protocol.results import PartialAggregates


def concept_text(columns: Sequence[str]) -> exp.Expr:
    """A concept's value as text: its column, or its columns joined by spaces (missing parts empty)."""
    parts: list[exp.Expr] = []
    for column in columns:
        text = exp.Coalesce(
            this=exp.cast(exp.column(column, quoted=True), "text"), expressions=[exp.Literal.string("")]
        )
        parts += [exp.Literal.string(" "), text] if parts else [text]
    return parts[0] if len(parts) == 1 else exp.Concat(expressions=parts)


class NodeData:
    """The declared tables of one node, each in its backend."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.backends = open_backends(config)
        self._links: dict[str, tuple[str, str]] = {}  # project -> (spine id, table name)
        self.tables = {t.name: t for t in config.tables}
        try:
            for table in config.tables:
                self.backend(table).add_table(table)
                self._check_columns(table)
                self._check_linkage(table)
            self.catalogue = self._build_catalogue()
        except BaseException:
            self.close()
            raise

    def backend(self, table: TableDecl) -> Backend:
        return self.backends[table.backend]

    def relation(self, table: TableDecl) -> exp.Expr:
        return self.backend(table).relation(table)

    def _check_columns(self, table: TableDecl) -> None:
        numeric = self.backend(table).numeric_columns(table)
        for column in table.columns:
            self._check_column(table, column, numeric)

    def _check_linkage(self, table: TableDecl) -> None:
        """Every column ``[tables.linkage]`` names is in the data."""
        mapping = table.linkage_mapping()
        if mapping is None:
            return
        present = self.backend(table).numeric_columns(table)
        where = f"node '{self.config.name}', table '{table.name}'"
        if mapping.record_id not in present:
            raise ConfigError(
                f"{where}: the record id column '{mapping.record_id}' (tables.linkage.record_id) is not in the data; "
                f"fix tables.linkage.record_id in {self.config.source}"
            )
        for concept, columns in mapping.concepts.items():
            for column in columns:
                if column not in present:
                    raise ConfigError(
                        f"{where}: column '{column}' mapped to {concept} by {mapping.key_of(concept)} is not in the "
                        f"data; fix {mapping.key_of(concept)} in {self.config.source} (or remove it if the table "
                        "lacks that concept)"
                    )

    def _linkage_concepts(self, table: TableDecl, mapping: LinkageMapping) -> tuple[LinkageConcept, ...]:
        """Each mapped concept and the share of the table's records whose value is valid once normalised
        (read once per distinct value), with those counts as the node's disclosure policy lets it publish
        them (rounded, or suppressed)."""
        found = []
        source = self.backend(table).relation(table)
        policy = self.config.privacy.disclosure
        for concept, columns in mapping.concepts.items():
            valid = None
            records = valid_records = None
            if not concept.startswith("subgroup:"):
                value = concept_text(columns)
                query = (
                    exp.select(exp.alias_(value, "v"), exp.alias_(exp.Count(this=exp.Star()), "n"))
                    .from_(source)
                    .group_by(value.copy())
                )
                rows = self.backend(table).fetch(query)
                counts = np.asarray(rows["n"], dtype=float)
                if counts.sum() > 0:
                    normalised = normalise_concepts({concept: list(rows["v"])}, mapping.options())
                    present = normalised[VALID_FIELD.get(concept, concept)] != ""
                    valid = round(float(counts[present].sum() / counts.sum()), 2)
                    records = policy.publish_count(int(counts.sum()))
                    valid_records = policy.publish_count(int(counts[present].sum()))
            found.append(
                LinkageConcept(
                    concept=concept, columns=columns, valid=valid, records_rounded=records, valid_rounded=valid_records
                )
            )
        return tuple(found)

    def _check_column(self, table: TableDecl, column: ColumnDecl, numeric: dict[str, bool]) -> None:
        where = f"{self.config.source}: column '{column.name}' of table '{table.name}'"
        if column.name not in numeric:
            raise ConfigError(f"{where} is declared but not in the data; remove it or fix the name")
        is_number = numeric[column.name]
        if column.kind == "numeric" and not is_number:
            raise ConfigError(f"{where} is declared numeric but holds text; declare it as category or identifier")
        if column.kind == "category":
            assert column.categories is not None
            wants_text = any(isinstance(c, str) for c in column.categories)
            if wants_text == is_number:
                raise ConfigError(
                    f"{where} holds {'numbers' if is_number else 'text'} but its categories are "
                    f"{'text' if wants_text else 'numbers'}; declare categories of the column's type"
                )

    def _build_catalogue(self) -> NodeCatalogue:
        tables = []
        for table in self.config.tables:
            backend = self.backend(table)
            source = backend.relation(table)
            picks: list[exp.Expr] = [exp.alias_(exp.Count(this=exp.Star()), "n")]
            identifiers = [c for c in table.columns if c.kind == "identifier"]
            for i, column in enumerate(identifiers):
                value = exp.Trim(this=exp.cast(exp.column(column.name, quoted=True), "text"))
                present = (
                    exp.Case()
                    .when(
                        exp.Or(
                            this=exp.Is(this=value, expression=exp.Null()),
                            expression=exp.EQ(this=value.copy(), expression=exp.Literal.string("")),
                        ),
                        exp.Literal.number(0),
                    )
                    .else_(exp.Literal.number(1))
                )
                picks.append(exp.alias_(exp.Avg(this=present), f"c{i}"))
            row = backend.fetch(exp.select(*picks).from_(source))
            count = int(row["n"][0]) if len(row["n"]) else 0
            columns = []
            for column in table.columns:
                completeness = None
                if column.kind == "identifier" and count:
                    share = row[f"c{identifiers.index(column)}"][0]
                    completeness = round(float(share), 2) if share is not None else None
                declared = column.model_dump(include=set(ColumnDomain.model_fields))
                columns.append(ColumnInfo(**declared, completeness=completeness))
            mapping = table.linkage_mapping()
            tables.append(
                TableInfo(
                    name=table.name,
                    description=table.description,
                    rows_rounded=int(round_count(count, 100)),
                    columns=tuple(columns),
                    linkage=self._linkage_concepts(table, mapping) if mapping else (),
                    legal_gateways=table.legal_gateways,
                    update_frequency=table.update_frequency,
                )
            )
        return NodeCatalogue(
            node=self.config.name,
            description=self.config.node.description,
            tables=tuple(tables),
            contacts=NodeContacts.model_validate(self.config.contacts.model_dump()),
            disclosure=self.config.privacy.disclosure,
            projects=tuple(a.project for a in self.config.all_approvals()),
        )

    def aggregate(self, plan: AggregatePlan) -> PartialAggregates:
        table = self.tables.get(plan.table)
        if table is None:
            raise QueryError(f"node '{self.config.name}' has no table '{plan.table}'")
        return run_aggregate(self.backend(table), plan, table, self.config.name)

    def fetch(self, table: TableDecl, select: exp.Expr, params: Sequence[Any] = ()) -> Columns:
        """One read-only statement of the node's fixed operators over ``table``'s backend."""
        return self.backend(table).fetch(select, params)

    def stream(
        self, table: TableDecl, select: exp.Expr, params: Sequence[Any] = (), rows: int = 100_000
    ) -> Iterator[Columns]:
        """Like :meth:`fetch`, as batches of at most ``rows`` rows."""
        return self.backend(table).batches(select, params, rows)

    def link_table(
        self, project: str, spine_id: str, tables: Sequence[TableDecl], records: Path, slots: np.ndarray
    ) -> str:
        """A table (source_table, record_id, slot) of a project's link spine in the backend of each of
        ``tables``, built once per spine from what the node kept at linkage, so a linked query joins it
        where the data is."""
        key = f"{self.config.name}\x00{project}\x00{spine_id}"
        name = "link_" + hashlib.sha256(key.encode()).hexdigest()[:16]
        held = self._links.get(project)
        if held is not None and held[0] == spine_id:
            return name
        import pyarrow.parquet as pq

        mapped = pq.read_table(records)
        people = mapped.column("person").to_numpy()
        if len(people) and int(people.max()) >= len(slots):
            raise QueryError(f"node '{self.config.name}' holds records of people beyond its slots; run `fedlink link`")
        data = pa.table(
            {
                "source_table": mapped.column("source_table"),
                "record_id": mapped.column("record_id"),
                "slot": pa.array(slots[people] if len(people) else np.zeros(0, np.int64), type=pa.int64()),
            }
        )
        for backend in {id(self.backend(t)): self.backend(t) for t in tables}.values():
            backend.upload(name, data)
            if held is not None:
                backend.drop(held[1])
        self._links[project] = (spine_id, name)
        return name

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
