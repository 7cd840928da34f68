"""Where a node's tables live: files read in place by DuckDB (the embedded default), a PostgreSQL
server, or Apache Spark (``local[N]`` or a cluster).

The node's operators are sqlglot expressions written once, against a table's relation
(:meth:`Backend.relation`) and with ``$n`` placeholders for the values the node binds (declared
categories, bins, bounds: the node's own declarations, never text from a query). Each backend renders
an expression in its own dialect (:meth:`Backend.render`): DuckDB binds the placeholders, PostgreSQL
and Spark receive them as literals. Results come back as NumPy columns, small ones at once
(:meth:`Backend.fetch`) and large ones (identifiers for linkage, per-slot rows) as a stream of batches
(:meth:`Backend.batches`), so a table of ten million rows never sits whole in Python memory.

A backend that cannot be reached raises :class:`~fedlink.errors.Fault` naming it, in one line.
"""

from __future__ import annotations

import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from sqlglot import exp

from fedlink.errors import ConfigError, Fault
from fedlink.node.config import NodeConfig, PostgresBackend, SparkBackend, TableDecl

Columns = dict[str, np.ndarray]
_DUCKDB_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "U")
_POSTGRES_NUMERIC = ("smallint", "integer", "bigint", "numeric", "real", "double precision", "decimal")
_SPARK_NUMERIC = ("tinyint", "smallint", "int", "bigint", "float", "double", "decimal")


def view_name(table: TableDecl) -> str:
    return f"t_{table.name}"


def _columns(table: pa.Table) -> Columns:
    """Arrow columns as NumPy: numbers (NULL as NaN where there is one), text as objects (NULL as None)."""
    out: Columns = {}
    for name in table.column_names:
        column = table.column(name)
        out[name] = column.to_numpy(zero_copy_only=False)
    return out


def inline(select: exp.Expr, params: Sequence[Any]) -> exp.Expr:
    """``select`` with each ``$n`` placeholder replaced by the literal (or array of literals) ``params[n-1]``."""

    def literal(value: Any) -> exp.Expr:
        if isinstance(value, list | tuple):
            return exp.Array(expressions=[literal(v) for v in value])
        if value is None:
            return exp.Null()
        if isinstance(value, bool):
            return exp.Boolean(this=value)
        return exp.Literal.string(value) if isinstance(value, str) else exp.Literal.number(value)

    def replace(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Placeholder) and str(node.name).isdigit():
            return literal(params[int(node.name) - 1])
        return node

    return select.copy().transform(replace)


class Backend(ABC):
    """One place a node's tables live, and how its operators run there."""

    dialect: str
    label: str

    def __init__(self) -> None:
        self.lock = threading.Lock()

    @abstractmethod
    def add_table(self, table: TableDecl) -> None:
        """Make ``table`` queryable (a view over a file, a checked relation); a one-line error if it is not there."""

    @abstractmethod
    def relation(self, table: TableDecl) -> exp.Expr:
        """What an operator's FROM names for ``table``."""

    @abstractmethod
    def numeric_columns(self, table: TableDecl) -> dict[str, bool]:
        """Every column of ``table`` and whether its type is a number."""

    def render(self, select: exp.Expr, params: Sequence[Any]) -> tuple[str, list[Any]]:
        return inline(select, params).sql(dialect=self.dialect), []

    @abstractmethod
    def fetch(self, select: exp.Expr, params: Sequence[Any] = ()) -> Columns:
        """Run one statement; its (small) result as NumPy columns."""

    @abstractmethod
    def batches(self, select: exp.Expr, params: Sequence[Any] = (), rows: int = 100_000) -> Iterator[Columns]:
        """Run one statement; its result as a stream of NumPy column batches of at most ``rows`` rows."""

    @abstractmethod
    def upload(self, name: str, data: pa.Table) -> None:
        """Hold ``data`` as a table ``name`` for later statements (a spine's record -> slot map)."""

    @abstractmethod
    def drop(self, name: str) -> None:
        """Forget a table made by :meth:`upload`."""

    def close(self) -> None:
        return None

    def _fault(self, exc: Exception) -> Fault:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Fault(f"{self.label} failed: {detail}; check that it is running and reachable")


class DuckDBFiles(Backend):
    """CSV and Parquet files read in place by an in-memory DuckDB (the embedded default)."""

    dialect = "duckdb"

    def __init__(self, config: NodeConfig) -> None:
        super().__init__()
        self.config = config
        self.label = f"node '{config.name}' files"
        self.connection = duckdb.connect(":memory:")

    def add_table(self, table: TableDecl) -> None:
        path = self.config.table_path(table)
        if not path.exists():
            raise ConfigError(
                f"{self.config.source}: table '{table.name}' source {path} does not exist; generate it with "
                "`fedlink synth` or fix 'source'"
            )
        reader = "read_csv_auto" if table.source_format == "csv" else "read_parquet"
        literal = str(path).replace("'", "''")
        try:
            with self.lock:
                self.connection.execute(f"CREATE VIEW \"{view_name(table)}\" AS SELECT * FROM {reader}('{literal}')")
        except duckdb.Error as exc:
            raise ConfigError(f"cannot read {path} as {table.source_format} ({str(exc).splitlines()[0]})") from exc

    def relation(self, table: TableDecl) -> exp.Expr:
        return exp.to_identifier(view_name(table), quoted=True)

    def numeric_columns(self, table: TableDecl) -> dict[str, bool]:
        with self.lock, self.connection.cursor() as cursor:
            rows = cursor.execute(f'DESCRIBE "{view_name(table)}"').fetchall()
        return {name: str(kind).upper().startswith(_DUCKDB_NUMERIC) for name, kind, *_ in rows}

    def render(self, select: exp.Expr, params: Sequence[Any]) -> tuple[str, list[Any]]:
        return select.sql(dialect="duckdb"), list(params)

    def fetch(self, select: exp.Expr, params: Sequence[Any] = ()) -> Columns:
        sql, bound = self.render(select, params)
        with self.lock, self.connection.cursor() as cursor:
            result = cursor.execute(sql, bound).fetchnumpy()
        return {
            name: np.ma.filled(values.astype(float), np.nan) if np.ma.isMaskedArray(values) else values
            for name, values in result.items()
        }

    def batches(self, select: exp.Expr, params: Sequence[Any] = (), rows: int = 100_000) -> Iterator[Columns]:
        sql, bound = self.render(select, params)
        with self.lock:
            cursor = self.connection.cursor()
        try:
            reader = cursor.sql(sql, params=bound).to_arrow_reader(rows)
            assert reader is not None
            for batch in reader:
                yield _columns(pa.Table.from_batches([batch]))
        finally:
            cursor.close()

    def upload(self, name: str, data: pa.Table) -> None:
        with self.lock, self.connection.cursor() as cursor:
            cursor.register("uploaded", data)
            cursor.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM uploaded')
            cursor.unregister("uploaded")

    def drop(self, name: str) -> None:
        with self.lock, self.connection.cursor() as cursor:
            cursor.execute(f'DROP TABLE IF EXISTS "{name}"')

    def close(self) -> None:
        self.connection.close()


class Postgres(Backend):
    """Tables in a PostgreSQL server (psycopg 3): statements over one connection, large results through a
    server-side cursor on a connection of their own, uploads as UNLOGGED tables."""

    dialect = "postgres"

    def __init__(self, name: str, decl: PostgresBackend, config: NodeConfig) -> None:
        super().__init__()
        self.decl = decl
        self.label = f"PostgreSQL backend '{name}' at {decl.host}:{decl.port}"
        self.source = config.source
        self._connection: Any = None

    def _password(self) -> str | None:
        decl = self.decl
        if decl.password_env:
            value = os.environ.get(decl.password_env)
            if value is None:
                raise ConfigError(f"{self.label}: environment variable {decl.password_env} is not set")
            return value
        if decl.password_file:
            path = Path(decl.password_file)  # resolved against node.toml's folder when it was read
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{self.label}: cannot read its password file {path} ({exc.strerror})") from exc
        return None

    @property
    def connection(self) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = self._connect()
        return self._connection

    def _connect(self) -> Any:
        import psycopg

        decl = self.decl
        options: dict[str, Any] = {
            "host": decl.host,
            "port": decl.port,
            "dbname": decl.database,
            "user": decl.user,
            "connect_timeout": decl.connect_timeout_s,
            "autocommit": True,
            "application_name": "fedlink-node",
        }
        password = self._password()
        if password is not None:
            options["password"] = password
        if decl.sslmode:
            options["sslmode"] = decl.sslmode
        try:
            return psycopg.connect(**options)
        except psycopg.Error as exc:
            raise self._fault(exc) from exc

    def _run(self, sql: str) -> Any:
        import psycopg

        try:
            cursor = self.connection.cursor()
            cursor.execute(sql)
            return cursor
        except psycopg.OperationalError as exc:
            self._reset()
            raise self._fault(exc) from exc
        except psycopg.Error as exc:
            raise Fault(f"{self.label} refused a statement: {str(exc).strip().splitlines()[0]}") from exc

    def _reset(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def add_table(self, table: TableDecl) -> None:
        if not self.numeric_columns(table):
            raise ConfigError(f"{self.label} has no relation '{table.source}' for table '{table.name}'")

    def relation(self, table: TableDecl) -> exp.Expr:
        return exp.to_table(table.source, dialect="postgres")

    def numeric_columns(self, table: TableDecl) -> dict[str, bool]:
        parts = table.source.split(".")
        schema, name = (parts[0], parts[1]) if len(parts) == 2 else ("public", parts[0])
        query = exp.select("column_name", "data_type").from_("information_schema.columns")
        query = query.where(
            exp.and_(
                exp.EQ(this=exp.column("table_schema"), expression=exp.Literal.string(schema)),
                exp.EQ(this=exp.column("table_name"), expression=exp.Literal.string(name)),
            )
        )
        rows = self.fetch(query)
        return {
            str(n): str(t).lower().startswith(_POSTGRES_NUMERIC)
            for n, t in zip(rows.get("column_name", []), rows.get("data_type", []), strict=True)
        }

    def fetch(self, select: exp.Expr, params: Sequence[Any] = ()) -> Columns:
        sql, _ = self.render(select, params)
        with self.lock:
            cursor = self._run(sql)
            names = [d.name for d in cursor.description or []]
            rows = cursor.fetchall()
        return _columns(pa.table({n: pa.array([r[i] for r in rows]) for i, n in enumerate(names)}))

    def batches(self, select: exp.Expr, params: Sequence[Any] = (), rows: int = 100_000) -> Iterator[Columns]:
        import psycopg

        sql, _ = self.render(select, params)
        # a connection of its own: several streams may be read at once (a node's tables, merged)
        try:
            with (
                self._connect() as connection,
                connection.transaction(),
                connection.cursor(name="fedlink_stream") as cursor,
            ):
                cursor.itersize = rows
                cursor.execute(sql)
                names = [d.name for d in cursor.description or []]
                while True:
                    chunk = cursor.fetchmany(rows)
                    if not chunk:
                        break
                    yield _columns(pa.table({n: pa.array([r[i] for r in chunk]) for i, n in enumerate(names)}))
        except psycopg.OperationalError as exc:
            raise self._fault(exc) from exc

    def upload(self, name: str, data: pa.Table) -> None:
        """An UNLOGGED table in the node role's default schema (a temporary table would be invisible to
        the connections that streams open): record ids and slots only, replaced with each new spine."""
        types = {pa.int64(): "bigint", pa.int32(): "integer", pa.float64(): "double precision"}
        columns = ", ".join(f'"{f.name}" {types.get(f.type, "text")}' for f in data.schema)
        with self.lock:
            self._run(f'DROP TABLE IF EXISTS "{name}"')
            self._run(f'CREATE UNLOGGED TABLE "{name}" ({columns})')
            try:
                with self.connection.cursor() as cursor, cursor.copy(f'COPY "{name}" FROM STDIN') as copy:
                    for batch in data.to_batches(100_000):
                        for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                            copy.write_row(row)
            except Exception as exc:
                raise self._fault(exc) from exc

    def drop(self, name: str) -> None:
        with self.lock:
            self._run(f'DROP TABLE IF EXISTS "{name}"')

    def close(self) -> None:
        self._reset()


class Spark(Backend):
    """Tables in Apache Spark: Parquet or CSV files (a temporary view each) or tables of its catalogue.
    Results come back through Arrow; large ones partition by partition."""

    dialect = "spark"

    def __init__(self, name: str, decl: SparkBackend, config: NodeConfig) -> None:
        super().__init__()
        self.decl = decl
        self.config = config
        self.label = f"Spark backend '{name}' ({decl.master})"
        self._session: Any = None

    @property
    def session(self) -> Any:
        if self._session is None:
            try:
                from pyspark.sql import SparkSession
            except ImportError as exc:
                raise ConfigError(f"{self.label} needs pyspark: pip install 'fedlink[spark]'") from exc
            settings = {
                "spark.ui.enabled": "false",
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.sql.execution.arrow.maxRecordsPerBatch": "50000",
                **self.decl.conf,
            }
            builder = SparkSession.builder.master(self.decl.master).appName(f"fedlink-node-{self.config.name}")
            for key, value in settings.items():
                builder = builder.config(key, value)
            # Python workers run this interpreter unless the operator chose one (a cluster's own setting)
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            try:
                # A session of its own over the process's one SparkContext: temporary views belong to a
                # session, so two nodes in one process (tests, benchmarks) never read each other's tables
                # (both name their view t_<table>). Its SQL settings are set again: a new session starts
                # from the context's, which the first session's builder fixed.
                self._session = builder.getOrCreate().newSession()
                for key, value in settings.items():
                    if key.startswith("spark.sql."):
                        self._session.conf.set(key, value)
            except Exception as exc:
                raise self._fault(exc) from exc
            self._session.sparkContext.setLogLevel("ERROR")
        return self._session

    def _is_file(self, table: TableDecl) -> bool:
        return table.source.lower().endswith((".parquet", ".csv", ".csv.gz")) or "/" in table.source

    def add_table(self, table: TableDecl) -> None:
        try:
            if self._is_file(table):
                path = self.config.table_path(table)
                if not path.exists():
                    raise ConfigError(f"{self.label}: table '{table.name}' source {path} does not exist")
                reader = self.session.read
                frame = (
                    reader.option("header", True).option("inferSchema", True).csv(str(path))
                    if table.source_format == "csv"
                    else reader.parquet(str(path))
                )
            else:
                frame = self.session.table(table.source)
            frame.createOrReplaceTempView(view_name(table))
        except ConfigError:
            raise
        except Exception as exc:
            raise self._fault(exc) from exc

    def relation(self, table: TableDecl) -> exp.Expr:
        return exp.to_identifier(view_name(table))

    def numeric_columns(self, table: TableDecl) -> dict[str, bool]:
        fields = self.session.table(view_name(table)).schema.fields
        return {f.name: f.dataType.simpleString().startswith(_SPARK_NUMERIC) for f in fields}

    def _frame(self, select: exp.Expr, params: Sequence[Any]) -> Any:
        sql, _ = self.render(select, params)
        try:
            return self.session.sql(sql)
        except Exception as exc:
            raise Fault(f"{self.label} refused a statement: {str(exc).strip().splitlines()[0]}") from exc

    def fetch(self, select: exp.Expr, params: Sequence[Any] = ()) -> Columns:
        with self.lock:
            try:
                return _columns(self._frame(select, params).toArrow())
            except Fault:
                raise
            except Exception as exc:
                raise self._fault(exc) from exc

    def batches(self, select: exp.Expr, params: Sequence[Any] = (), rows: int = 100_000) -> Iterator[Columns]:
        """Partition by partition, in order: the executors turn each Arrow batch of the result into an
        Arrow IPC message (``mapInArrow``), and only those compact messages travel to this process, so
        several streams can be read at once and none is ever held whole here."""
        from pyspark.sql.types import BinaryType, StructField, StructType

        def ipc_messages(batches: Iterator[Any]) -> Iterator[Any]:  # runs on the executors (needs pyarrow only)
            import pyarrow

            for batch in batches:
                sink = pyarrow.BufferOutputStream()
                with pyarrow.ipc.new_stream(sink, batch.schema) as writer:
                    writer.write_batch(batch)
                yield pyarrow.RecordBatch.from_pydict({"ipc": [sink.getvalue().to_pybytes()]})

        with self.lock:
            frame = self._frame(select, params)
        packed = frame.mapInArrow(ipc_messages, StructType([StructField("ipc", BinaryType())]))
        try:
            for row in packed.toLocalIterator(prefetchPartitions=True):
                table = pa.ipc.open_stream(row["ipc"]).read_all()
                for start in range(0, table.num_rows, rows):
                    yield _columns(table.slice(start, rows))
        except Exception as exc:
            raise self._fault(exc) from exc

    def upload(self, name: str, data: pa.Table) -> None:
        with self.lock:
            self.session.createDataFrame(data).createOrReplaceTempView(name)

    def drop(self, name: str) -> None:
        with self.lock:
            self.session.catalog.dropTempView(name)

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None


def open_backends(config: NodeConfig) -> dict[str | None, Backend]:
    """One backend per [backends.<name>] the node's tables use, and the files backend (key None)."""
    out: dict[str | None, Backend] = {None: DuckDBFiles(config)}
    for name, decl in config.backends.items():
        if isinstance(decl, PostgresBackend):
            out[name] = Postgres(name, decl, config)
        else:
            out[name] = Spark(name, decl, config)
    return out
