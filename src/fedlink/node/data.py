"""A node's data, read in place through DuckDB, and the catalogue it publishes about it."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from fedlink.errors import ConfigError, QueryError
from fedlink.node.config import ColumnDecl, NodeConfig, TableDecl
from fedlink.node.operators import run_aggregate
from fedlink.query.catalogue import ColumnDomain, ColumnInfo, NodeCatalogue, TableInfo
from fedlink.query.disclosure import round_count
from fedlink.query.plan import AggregatePlan
from fedlink.query.results import PartialAggregates

_NUMERIC_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
)


def view_name(table: TableDecl) -> str:
    return f"t_{table.name}"


class NodeData:
    """The declared tables of one node, as DuckDB views over their CSV or Parquet files."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._connection = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._links: dict[str, tuple[str, str]] = {}  # project -> (spine id, table)
        self.tables = {t.name: t for t in config.tables}
        for table in config.tables:
            self._register(table)
        self.catalogue = self._build_catalogue()

    def _register(self, table: TableDecl) -> None:
        path = self.config.table_path(table)
        if not path.exists():
            raise ConfigError(
                f"{self.config.source}: table '{table.name}' source {path} does not exist; generate it with "
                "`fedlink synth` or fix 'source'"
            )
        reader = "read_csv_auto" if table.source_format == "csv" else "read_parquet"
        literal = str(path).replace("'", "''")
        try:
            self._connection.execute(f"CREATE VIEW \"{view_name(table)}\" AS SELECT * FROM {reader}('{literal}')")
            schema = dict(
                (name, kind) for name, kind, *_ in self._connection.execute(f'DESCRIBE "{view_name(table)}"').fetchall()
            )
        except duckdb.Error as exc:
            raise ConfigError(f"cannot read {path} as {table.source_format} ({str(exc).splitlines()[0]})") from exc
        for column in table.columns:
            self._check_column(table, column, schema)

    def _check_column(self, table: TableDecl, column: ColumnDecl, schema: dict[str, str]) -> None:
        where = f"{self.config.source}: column '{column.name}' of table '{table.name}'"
        kind = schema.get(column.name)
        if kind is None:
            raise ConfigError(f"{where} is declared but not in the data; remove it or fix the name")
        numeric = kind.startswith(_NUMERIC_TYPES)
        if column.kind == "numeric" and not numeric:
            raise ConfigError(f"{where} is declared numeric but holds {kind}; declare it as category or identifier")
        if column.kind == "category":
            assert column.categories is not None
            wants_text = any(isinstance(c, str) for c in column.categories)
            if wants_text == numeric:
                raise ConfigError(
                    f"{where} holds {kind} but its categories are {'text' if wants_text else 'numbers'}; "
                    "declare categories of the column's type"
                )

    def _build_catalogue(self) -> NodeCatalogue:
        tables = []
        with self._lock:
            for table in self.config.tables:
                view = view_name(table)
                rows = self._connection.execute(f'SELECT COUNT(*) FROM "{view}"').fetchone()
                count = int(rows[0]) if rows else 0
                columns = []
                for column in table.columns:
                    completeness = None
                    if column.kind == "identifier" and count:
                        share = self._connection.execute(
                            f'SELECT AVG(CASE WHEN "{column.name}" IS NULL OR TRIM(CAST("{column.name}" AS VARCHAR)) '
                            f"= '' THEN 0 ELSE 1 END) FROM \"{view}\""
                        ).fetchone()
                        completeness = round(float(share[0]), 2) if share else None
                    declared = column.model_dump(include=set(ColumnDomain.model_fields))
                    columns.append(ColumnInfo(**declared, completeness=completeness))
                tables.append(
                    TableInfo(
                        name=table.name,
                        description=table.description,
                        rows_rounded=int(round_count(count, 100)),
                        columns=tuple(columns),
                    )
                )
        return NodeCatalogue(
            node=self.config.name,
            description=self.config.node.description,
            tables=tuple(tables),
            disclosure=self.config.privacy.disclosure,
            projects=tuple(a.project for a in self.config.approvals),
        )

    def aggregate(self, plan: AggregatePlan) -> PartialAggregates:
        table = self.tables.get(plan.table)
        if table is None:
            raise QueryError(f"node '{self.config.name}' has no table '{plan.table}'")
        with self._lock:
            cursor = self._connection.cursor()
        try:
            return run_aggregate(cursor, plan, table, view_name(table), self.config.name)
        finally:
            cursor.close()

    def fetch_arrays(self, sql: str, params: list[object]) -> dict[str, np.ndarray]:
        """Run one read-only statement of the node's fixed operators; columns as numpy arrays."""
        with self._lock:
            result = self._connection.execute(sql, params).fetchnumpy()
        out: dict[str, np.ndarray] = {}
        for name, values in result.items():
            out[name] = np.ma.filled(values.astype(float), np.nan) if np.ma.isMaskedArray(values) else values
        return out

    def link_table(self, project: str, spine_id: str, records: Path, slot_of_person: np.ndarray) -> str:
        """A DuckDB table (source_table, record_id, slot) of a project's link spine, built once per spine
        from what the node kept at linkage and held in memory, so a linked query joins it directly."""
        name = "link_" + hashlib.sha256(f"{project}\x00{spine_id}".encode()).hexdigest()[:16]
        with self._lock:
            held = self._links.get(project)
            if held is not None and held[0] == spine_id:
                return name
            people = pa.table({"person": np.arange(len(slot_of_person)), "slot": slot_of_person})
            with self._connection.cursor() as cursor:  # the shared in-memory database, a fresh result state
                cursor.register("slots_of_people", people)
                cursor.execute(
                    f"CREATE OR REPLACE TABLE {name} AS SELECT r.source_table, r.record_id, s.slot "
                    "FROM read_parquet($1) r JOIN slots_of_people s USING (person)",
                    [str(records)],
                )
                if held is not None:
                    cursor.execute(f"DROP TABLE IF EXISTS {held[1]}")
            self._links[project] = (spine_id, name)
        return name

    def close(self) -> None:
        self._connection.close()
