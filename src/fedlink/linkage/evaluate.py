"""A data owner's local tuning tool: encode and link files against a known truth, and measure quality.

``fedlink linkage evaluate --input a.csv --input b.csv --truth t.csv`` runs on one machine the same
steps a federation runs across nodes (normalise, keyed encoding under one secret, exact tiers,
blocking, Dice, clustering) and compares the spine with the truth, so that a schema or threshold can
be tuned on data one is allowed to see before it is used on a real project. Each input is one party;
it should hold one record per person (an entity takes at most one record of each party).

Inputs are CSV or Parquet files with columns first_name, last_name, dob, sex and postcode (a missing
column other than first_name, last_name and dob is read as empty), plus the schema's text fields
(``text_fields``: e.g. address_1 and suburb with ``schemas/febrl.json``) and any subgroup columns,
which must be present.
The truth is a CSV file with columns ``input`` (0-based position of the input), ``row`` (0-based row
of that input) and ``entity`` (any label); a row absent from the truth is an entity of its own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np

from fedlink.errors import BadInput
from fedlink.linkage.cluster import cluster
from fedlink.linkage.encode import derive_keys, encode
from fedlink.linkage.match import DEFAULT_THRESHOLD
from fedlink.linkage.normalise import IDENTIFIER_COLUMNS
from fedlink.linkage.quality import pairwise_quality
from fedlink.linkage.schema import load_schema

REQUIRED_COLUMNS: Final = ("first_name", "last_name", "dob")
_PROJECT: Final = "local-evaluation"


def _source(path: Path) -> str:
    if not path.is_file():
        raise BadInput(f"input file {path} does not exist; pass a CSV or Parquet file of records")
    literal = str(path).replace("'", "''")
    if path.suffix.lower() in (".parquet", ".pq"):
        return f"read_parquet('{literal}')"
    return f"read_csv('{literal}', all_varchar = true, header = true)"


def _read(
    path: Path, columns: Sequence[str], con: duckdb.DuckDBPyConnection, needs: Sequence[str] = IDENTIFIER_COLUMNS
) -> dict[str, list[Any]]:
    """The named columns of a file, in file order (None where a value is missing); ``needs`` names
    the columns of the linkage schema, for the message when one is absent."""
    try:
        relation = con.sql(f"SELECT * FROM {_source(path)}")
        present = set(relation.columns)
        absent = [c for c in columns if c not in present and (c in REQUIRED_COLUMNS or c not in IDENTIFIER_COLUMNS)]
        if absent:
            raise BadInput(f"{path} has no column {', '.join(absent)}; the linkage schema needs {', '.join(needs)}")
        wanted = [c for c in columns if c in present]
        select = ", ".join(f'"{c}"' for c in wanted) if wanted else "1"
        rows = con.sql(f"SELECT {select} FROM {_source(path)}").fetchall()
    except duckdb.Error as exc:
        raise BadInput(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    table = {c: [row[i] for row in rows] for i, c in enumerate(wanted)}
    return {c: table.get(c, [None] * len(rows)) for c in columns}


def _truth(path: Path, sizes: Sequence[int], con: duckdb.DuckDBPyConnection) -> list[np.ndarray]:
    """The true entity of every row of every input: codes of the truth's labels, fresh ones for rows it omits."""
    try:
        relation = con.sql(f"SELECT * FROM {_source(path)}")
        if not {"input", "row", "entity"} <= set(relation.columns):
            raise BadInput(f"truth file {path} needs columns input,row,entity")
        rows = con.sql(
            f'SELECT CAST("input" AS BIGINT), CAST("row" AS BIGINT), CAST(entity AS VARCHAR) FROM {_source(path)}'
        ).fetchall()
    except duckdb.Error as exc:
        raise BadInput(
            f"cannot read truth file {path}: {str(exc).splitlines()[0]} (input and row must be integers)"
        ) from exc
    labels: dict[str, int] = {}
    entity = [np.full(size, -1, dtype=np.int64) for size in sizes]
    for number, (which, row, label) in enumerate(rows, start=2):
        if which is None or row is None or label is None or not 0 <= which < len(sizes) or not 0 <= row < sizes[which]:
            raise BadInput(f"truth file {path} line {number}: ({which}, {row}) is not a row of an input")
        if entity[which][row] >= 0:
            raise BadInput(f"truth file {path} line {number}: input {which} row {row} appears twice")
        entity[which][row] = labels.setdefault(label, len(labels))
    fresh = len(labels)
    for column in entity:
        unknown = np.flatnonzero(column < 0)
        column[unknown] = np.arange(fresh, fresh + len(unknown))
        fresh += len(unknown)
    return entity


def evaluate_files(
    schema_path: Path | None,
    inputs: Sequence[Path],
    truth: Path,
    secret: bytes | None = None,
    threshold: float | None = None,
    subgroup_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """Link ``inputs`` locally and report quality against ``truth`` (see the module docstring).

    ``secret`` defaults to a fresh random link secret: the result does not depend on it beyond
    chance. Keys of the result: precision, recall, f1, false_match_rate, missed_match_rate,
    by_subgroup (``"column=value"`` -> the same measures), counts, timings (seconds), comparisons.
    """
    if len(inputs) < 2:
        raise BadInput("linkage evaluation needs at least two input files (`inputs`)")
    schema = load_schema(schema_path)
    keys = derive_keys(secret or secrets.token_bytes(32), _PROJECT, schema)
    needs = schema.input_columns
    columns = (*needs, *(c for c in subgroup_columns if c not in needs))
    with duckdb.connect(":memory:") as con:
        tables = [_read(Path(path), columns, con, needs) for path in inputs]
        sizes = [len(table["first_name"]) for table in tables]
        true_entity = _truth(Path(truth), sizes, con)

    started = time.perf_counter()
    parties = [encode(schema.normalise({c: table[c] for c in needs}), schema, keys) for table in tables]
    encode_seconds = time.perf_counter() - started
    spine = cluster(parties, DEFAULT_THRESHOLD if threshold is None else threshold)
    subgroups = {name: [np.asarray(table[name], dtype=object) for table in tables] for name in subgroup_columns}
    report = pairwise_quality(spine.entity, true_entity, subgroups)
    seconds = spine.stats.seconds
    return {
        "precision": report.precision,
        "recall": report.recall,
        "f1": report.f1,
        "false_match_rate": report.false_match_rate,
        "missed_match_rate": report.missed_match_rate,
        "threshold": DEFAULT_THRESHOLD if threshold is None else threshold,
        "comparisons": spine.stats.comparisons,
        "by_subgroup": {
            f"{name}={value}": quality.to_dict()
            for name, values in report.by_subgroup.items()
            for value, quality in values.items()
        },
        "counts": {
            "records": sizes,
            "entities": spine.entities,
            "true_pairs": report.true_pairs,
            "predicted_pairs": report.predicted_pairs,
            "correct_pairs": report.correct_pairs,
            "candidate_pairs": spine.stats.candidates,
            "exact_links": spine.stats.exact_links,
            "fuzzy_links": spine.stats.fuzzy_links,
            "refused_merges": spine.stats.refused_merges,
        },
        "timings": {
            "encode": round(encode_seconds, 4),
            "exact": round(seconds.exact, 4),
            "block": round(seconds.block, 4),
            "compare": round(seconds.compare, 4),
            "cluster": round(seconds.assign, 4),
        },
    }
