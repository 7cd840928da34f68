"""A data owner's local linkage tool: link files with the federation's code, and see the estimated
quality without labels (``fedlink linkage run``).

Each input file (CSV or Parquet) is one party, as a node would be. Columns map to identifier concepts
(:mod:`fedlink.linkage.concepts`) with ``CONCEPT=COLUMN`` (``address=street_number,address_1`` for
several columns), options with ``CONCEPT.OPTION=VALUE`` (``dob.format=%Y%m%d``, ``sex.coding=1/2``,
``postcode.country=au``) and the record id with ``record_id=COLUMN``; a concept not mapped is read
from a column of its own name where an input has one. Then, exactly as a node and the linkage unit
do: rows with identical identifiers are one person, identifiers are normalised and encoded under a
fresh random link secret with the project spec (default: the shipped one), and the linkage unit's
code links them and estimates the quality from its fitted model (:mod:`fedlink.linkage.estimate`).

``truth`` (optional) is a CSV of ``input,row,entity`` (0-based input and row), or the ground truth
``fedlink synth`` writes (``truth/records.parquet``: ``record_id,person_id``, matched on the record
id column). Quality is then also *measured*, over cross-input pairs of people (the level linkage
works at; a person whose rows the truth splits counts as its first row's entity).

``out`` receives one line per input row: ``input,row,entity`` (entity: the row's linked cluster).
"""

from __future__ import annotations

import csv
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np

from fedlink.errors import BadInput
from fedlink.linkage.cluster import Spine, cluster
from fedlink.linkage.concepts import (
    FIELDS_OF,
    LOW_VALID_SHARE,
    MULTI_COLUMN,
    STANDARD_CONCEPTS,
    ConceptOptions,
    concept_name,
    normalise_concepts,
    valid_counts,
)
from fedlink.linkage.estimate import estimate_quality
from fedlink.linkage.fields import derive_spec_keys, encode_spec
from fedlink.linkage.probabilistic import link_probabilistic
from fedlink.linkage.quality import pairwise_quality
from fedlink.linkage.spec import SUBGROUPS_BUILT_IN, load_spec

_PROJECT: Final = "local-linkage"
_OPTIONS: Final = {"dob.format": "dob_format", "sex.coding": "sex_coding", "postcode.country": "postcode_country"}
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ColumnMap:
    """``--map`` entries: concept -> columns, the options, and the record id column."""

    concepts: dict[str, tuple[str, ...]]
    options: ConceptOptions
    record_id: str | None

    @classmethod
    def parse(cls, entries: Sequence[str]) -> ColumnMap:
        concepts: dict[str, tuple[str, ...]] = {}
        options: dict[str, str] = {}
        record_id = None
        for entry in entries:
            key, equals, value = entry.partition("=")
            key, value = key.strip(), value.strip()
            if not equals or not key or not value:
                raise BadInput(f"map entry '{entry}' must read CONCEPT=COLUMN or CONCEPT.OPTION=VALUE")
            if key in _OPTIONS:
                options[_OPTIONS[key]] = value
            elif "." in key:
                raise BadInput(f"map option '{key}' is not one of {', '.join(_OPTIONS)}")
            elif key == "record_id":
                record_id = value
            else:
                concept = concept_name(key)
                columns = tuple(c.strip() for c in value.split(",") if c.strip())
                if len(columns) > 1 and concept not in MULTI_COLUMN:
                    raise BadInput(
                        f"map entry '{entry}' names several columns; only address and middle_names take several"
                    )
                concepts[concept] = columns
        return cls(concepts, ConceptOptions(**options), record_id)


@dataclass
class _Input:
    path: Path
    rows: int
    #: concept -> one value per row (several columns joined by spaces)
    values: dict[str, list[str | None]]
    record_ids: list[str | None] | None


def _source(path: Path) -> str:
    if not path.is_file():
        raise BadInput(f"input file {path} does not exist; pass a CSV or Parquet file of records")
    literal = str(path).replace("'", "''")
    if path.suffix.lower() in (".parquet", ".pq"):
        return f"read_parquet('{literal}')"
    return f"read_csv('{literal}', all_varchar = true, header = true)"


def _read(path: Path, con: duckdb.DuckDBPyConnection) -> tuple[list[str], dict[str, list[Any]]]:
    try:
        relation = con.sql(f"SELECT * FROM {_source(path)}")
        names = list(relation.columns)
        rows = relation.fetchall()
    except duckdb.Error as exc:
        raise BadInput(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    return names, {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text.strip() or None


def _inputs(paths: Sequence[Path], mapping: ColumnMap, con: duckdb.DuckDBPyConnection) -> list[_Input]:
    tables = [(Path(p), *_read(Path(p), con)) for p in paths]
    for concept, columns in mapping.concepts.items():
        for column in columns:
            if not any(column in names for _, names, _ in tables):
                raise BadInput(
                    f"no input has column '{column}' (mapped to {concept}); columns of {tables[0][0]}: "
                    f"{', '.join(tables[0][1])}"
                )
    out = []
    for path, names, data in tables:
        rows = len(next(iter(data.values()))) if data else 0
        values: dict[str, list[str | None]] = {}
        wanted = dict(mapping.concepts)
        for concept in STANDARD_CONCEPTS:  # a column named like a concept is read as it, unless mapped
            if concept not in wanted and concept in names:
                wanted[concept] = (concept,)
        for concept, columns in wanted.items():
            present = [c for c in columns if c in names]
            if not present:
                continue
            values[concept] = [
                " ".join(t for t in (_text(data[c][r]) for c in present) if t) or None for r in range(rows)
            ]
        id_column = mapping.record_id or ("record_id" if "record_id" in names else None)
        if mapping.record_id and mapping.record_id not in names:
            raise BadInput(f"{path} has no record id column '{mapping.record_id}'")
        ids = [_text(v) for v in data[id_column]] if id_column else None
        out.append(_Input(path, rows, values, ids))
    if not any(inp.values for inp in out):
        raise BadInput(
            f"no identifier columns found in {out[0].path}: name them like the concepts "
            f"({', '.join(STANDARD_CONCEPTS)}) or map them with a `mapping` entry CONCEPT=COLUMN"
        )
    return out


def _people(values: dict[str, list[str | None]], rows: int) -> tuple[dict[str, list[str | None]], np.ndarray]:
    """One person per distinct tuple of concept values (as a node builds its person list), and the
    person of each row."""
    concepts = list(values)
    index: dict[tuple[str | None, ...], int] = {}
    person = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        person[r] = index.setdefault(tuple(values[c][r] for c in concepts), len(index))
    tuples = list(index)
    return {c: [t[i] for t in tuples] for i, c in enumerate(concepts)}, person


def _truth(path: Path, inputs: Sequence[_Input], con: duckdb.DuckDBPyConnection) -> list[np.ndarray]:
    """The true entity of every row of every input (-1: unknown; a fresh entity then)."""
    names, data = _read(path, con)
    labels: dict[str, int] = {}
    entity = [np.full(inp.rows, -1, dtype=np.int64) for inp in inputs]
    if {"input", "row", "entity"} <= set(names):
        for line, (which, row, label) in enumerate(zip(data["input"], data["row"], data["entity"], strict=True), 2):
            try:
                i, r = int(which), int(row)
            except (TypeError, ValueError):
                raise BadInput(f"truth file {path} line {line}: input and row must be integers") from None
            if not 0 <= i < len(inputs) or not 0 <= r < inputs[i].rows:
                raise BadInput(f"truth file {path} line {line}: ({i}, {r}) is not a row of an input")
            entity[i][r] = labels.setdefault(str(label), len(labels))
    elif {"record_id", "person_id"} <= set(names):
        truth = {str(rid): str(pid) for rid, pid in zip(data["record_id"], data["person_id"], strict=True)}
        for i, inp in enumerate(inputs):
            if inp.record_ids is None:
                raise BadInput(
                    f"truth file {path} names records by record_id, but {inp.path} has no record id column; "
                    "map it with a `mapping` entry record_id=COLUMN"
                )
            for r, rid in enumerate(inp.record_ids):
                if rid is not None and rid in truth:
                    entity[i][r] = labels.setdefault(truth[rid], len(labels))
    else:
        raise BadInput(f"truth file {path} needs columns input,row,entity (or record_id,person_id from fedlink synth)")
    fresh = len(labels)
    for column in entity:
        unknown = np.flatnonzero(column < 0)
        column[unknown] = np.arange(fresh, fresh + len(unknown))
        fresh += len(unknown)
    return entity


def _person_truth(row_truth: np.ndarray, person: np.ndarray, people: int) -> np.ndarray:
    """Each person's true entity: that of its first row."""
    out = np.full(people, -1, dtype=np.int64)
    first = np.unique(person, return_index=True)[1]
    out[person[first]] = row_truth[first]
    return out


def run_files(
    inputs: Sequence[Path],
    mapping: Sequence[str] = (),
    spec_path: Path | None = None,
    truth: Path | None = None,
    out: Path | None = None,
    secret: bytes | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Link ``inputs`` locally and report the estimated (and, with ``truth``, measured) quality; see
    the module docstring. ``secret`` defaults to a fresh random link secret."""
    if len(inputs) < 2:
        raise BadInput("linkage needs at least two input files (`inputs`)")
    say = progress or (lambda stage, done, total: None)
    columns = ColumnMap.parse(mapping)
    started = time.perf_counter()
    with duckdb.connect(":memory:") as con:
        say("reading the inputs", 0, 3)
        parties_in = _inputs(inputs, columns, con)
        true_rows = _truth(Path(truth), parties_in, con) if truth is not None else None
    mapped = {c for inp in parties_in for c in inp.values}
    spec = load_spec(spec_path).resolve(mapped)
    keys = derive_spec_keys(secret or secrets.token_bytes(32), _PROJECT, spec)
    say("normalising and encoding", 1, 3)
    encoded, persons, described, warnings = [], [], [], []
    for number, inp in enumerate(parties_in):
        wanted = [c for c in spec.concepts if c in inp.values]
        wanted += [
            f"subgroup:{s}" for s in spec.subgroups if s not in SUBGROUPS_BUILT_IN and f"subgroup:{s}" in inp.values
        ]
        people, person = _people({c: inp.values[c] for c in wanted}, inp.rows)
        normalised = normalise_concepts(people, columns.options)
        count = int(person.max()) + 1 if inp.rows else 0
        valid = {c: round(n / count, 4) if count else 0.0 for c, n in valid_counts(normalised, wanted).items()}
        missing = [c for c in spec.concepts if c not in wanted]
        low = [c for c, share in valid.items() if share < LOW_VALID_SHARE and c in FIELDS_OF]
        warnings += [
            f"input {number} ({inp.path.name}): only {valid[c]:.0%} of its people have a valid {c} after normalisation"
            for c in low
        ]
        described.append(
            {
                "file": str(inp.path),
                "rows": inp.rows,
                "people": count,
                "concepts": wanted,
                "missing": missing,
                "valid": valid,
            }
        )
        encoded.append(encode_spec(normalised, spec, keys))
        persons.append(person)
    encode_seconds = time.perf_counter() - started
    say("linking", 2, 3)
    mark = time.perf_counter()
    estimated: dict[str, Any] | None = None
    threshold: float | None = None
    if spec.matching == "probabilistic":
        linked = link_probabilistic(encoded, spec)
        spine: Spine = linked.spine
        subgroups = {name: [p.subgroups[name] for p in encoded] for name in spec.subgroups}
        estimate = estimate_quality(spine.entity, linked.scored, subgroups)
        estimated = estimate.overall.to_dict()
        threshold = linked.threshold
    else:
        spine = cluster(encoded)
    link_seconds = time.perf_counter() - mark
    report: dict[str, Any] = {
        "estimated": estimated,
        "matching": spec.matching,
        "spec_hash": spec.hash,
        "threshold": threshold,
        "inputs": described,
        "warnings": warnings,
        "counts": {
            "records": [inp.rows for inp in parties_in],
            "people": [len(e) for e in spine.entity],
            "entities": spine.entities,
            "candidate_pairs": spine.stats.candidates,
        },
        "timings": {"encode": round(encode_seconds, 3), "link": round(link_seconds, 3)},
    }
    if estimated is None:
        report["note"] = "a clk spec has no fitted model, so no label-free estimate; pass `truth` to measure"
    if true_rows is not None:
        truths = [
            _person_truth(rows, person, len(entity))
            for rows, person, entity in zip(true_rows, persons, spine.entity, strict=True)
        ]
        measured = pairwise_quality(spine.entity, truths)
        report["measured"] = {
            key: value
            for key, value in measured.to_dict().items()
            if key not in ("false_match_rate", "missed_match_rate")
        }
    if out is not None:
        _write_links(Path(out), spine, persons)
    say("done", 3, 3)
    return report


def _write_links(path: Path, spine: Spine, persons: Sequence[np.ndarray]) -> None:
    """One line per input row: input, row, entity."""
    try:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["input", "row", "entity"])
            for number, (entity, person) in enumerate(zip(spine.entity, persons, strict=True)):
                writer.writerows((number, row, int(e)) for row, e in enumerate(entity[person].tolist()))
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}") from exc
