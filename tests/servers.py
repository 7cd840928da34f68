"""Database servers the backend and spec tests start and stop themselves: a private PostgreSQL cluster made
with the installed PostgreSQL binaries (Debian's ``postgresql`` package; ``.ci/run`` installs it), on
a free loopback port, with a password user; and a check for a usable Spark (pyspark and a JVM)."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fedlink.node.config import NodeConfig, PostgresBackend, SparkBackend


def _bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster: ``user`` with a password (in ``password_file``) owns ``database``."""

    folder: Path
    port: int
    user: str = "fedlink"
    database: str = "departments"
    password: str = ""
    password_file: Path = Path()
    bindir: Path = Path()
    as_owner: list[str] = field(default_factory=list)  #: how to run the server's tools (not as root)

    @classmethod
    def unavailable(cls) -> str | None:
        if _bindir() is None:
            return "PostgreSQL's server binaries are not installed (Debian: apt-get install postgresql)"
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "running as root needs runuser to start PostgreSQL as another user"
        return None

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = _bindir()
        assert bindir is not None
        folder = Path(tempfile.mkdtemp(prefix="fedlink-pg-"))
        server = cls(folder=folder, port=free_port(), password=secrets.token_hex(12), bindir=bindir)
        server.password_file = folder / "password"
        server.password_file.write_text(server.password)
        server.password_file.chmod(0o600)
        data, sockets = folder / "data", folder / "sockets"
        sockets.mkdir()
        (folder / "pw").write_text(server.password)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            for path in (folder, sockets, folder / "pw"):
                shutil.chown(path, "postgres")
            server.as_owner = ["runuser", "-u", "postgres", "--"]
        as_owner = server.as_owner
        run = {"check": True, "capture_output": True, "text": True}
        subprocess.run(
            [*as_owner, str(bindir / "initdb"), "-D", str(data), "-U", server.user, "--pwfile", str(folder / "pw"),
             "-A", "scram-sha-256", "--no-sync"],
            **run,
        )  # fmt: skip
        options = f"-p {server.port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w",
             "start"],
            **run,
        )  # fmt: skip
        server.sql(f'CREATE DATABASE "{server.database}"', database="postgres")
        return server

    def connect(self, database: str | None = None):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database or self.database,
            autocommit=True,
        )

    def sql(self, statement: str, database: str | None = None) -> None:
        with self.connect(database) as connection:
            connection.execute(statement)

    def load_parquet(self, relation: str, path: Path) -> None:
        """A table ``relation`` holding the rows of a Parquet file (column types from Arrow's)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)

        def kind(field: pa.Field) -> str:
            if pa.types.is_integer(field.type):
                return "bigint"
            if pa.types.is_floating(field.type):
                return "double precision"
            return "boolean" if pa.types.is_boolean(field.type) else "text"

        columns = ", ".join(f'"{f.name}" {kind(f)}' for f in table.schema)
        with self.connect() as connection:
            connection.execute(f"CREATE TABLE {relation} ({columns})")
            with connection.cursor() as cursor, cursor.copy(f"COPY {relation} FROM STDIN") as copy:
                for batch in table.to_batches(50_000):
                    for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                        copy.write_row(row)

    def copy_csv(self, relation: str, csv: Path) -> None:
        """``COPY relation FROM`` a CSV file with a header, read by the server itself (fast for millions
        of rows): the file is moved into the server's folder first, where its user can read it."""
        inside = self.folder / "load.csv"
        shutil.move(csv, inside)
        if self.as_owner:
            shutil.chown(inside, "postgres")
        try:
            self.sql(f"COPY {relation} FROM '{inside}' CSV HEADER")
        finally:
            inside.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the server and delete its files."""
        self.halt()
        shutil.rmtree(self.folder, ignore_errors=True)

    def halt(self) -> None:
        """Stop the server and keep its files (a backend that went down)."""
        pg_ctl = str(self.bindir / "pg_ctl")
        subprocess.run(
            [*self.as_owner, pg_ctl, "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop"], capture_output=True
        )


def spark_unavailable() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install 'fedlink[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Spark needs a Java runtime (Debian: apt-get install openjdk-17-jre-headless)"
    return None


def in_postgres(config: NodeConfig, server: PostgresServer) -> NodeConfig:
    backend = PostgresBackend(
        kind="postgresql",
        port=server.port,
        host="127.0.0.1",
        database=server.database,
        user=server.user,
        password_file=str(server.password_file),
    )
    tables = tuple(t.model_copy(update={"backend": "db", "source": f"{config.name}.{t.name}"}) for t in config.tables)
    return config.model_copy(update={"backends": {"db": backend}, "tables": tables})


def in_spark(config: NodeConfig) -> NodeConfig:
    tables = tuple(t.model_copy(update={"backend": "lake", "source": str(config.table_path(t))}) for t in config.tables)
    backend = SparkBackend(kind="spark", master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})
    return config.model_copy(update={"backends": {"lake": backend}, "tables": tables})
