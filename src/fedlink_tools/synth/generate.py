"""``synthesize``: build a population and write every department's tables and the ground truth.

The output appears all at once: everything is written into a hidden sibling directory that is
renamed to the requested one at the end, so an interrupted run leaves no half-written federation.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedlink.errors import BadInput
from fedlink_tools.synth import departments
from fedlink_tools.synth.config import CorruptionRates, default_corruption
from fedlink_tools.synth.corrupt import record_identities
from fedlink_tools.synth.departments import ATTRIBUTE_SCHEMAS, IDENTIFIER_SCHEMA, DepartmentRows
from fedlink_tools.synth.draws import stream
from fedlink_tools.synth.geography import POSTCODES, REGIONS
from fedlink_tools.synth.layout import (
    CHARITY_NORTH,
    CHARITY_SOUTH,
    CLAIMS,
    CONVICTIONS,
    DIAGNOSES,
    MANIFEST,
    NODES,
    OFFENDER_CHILDREN,
    PRESCRIPTIONS,
    PRISONER_CHILDREN,
    PUPILS,
    SENTENCES,
    TABLES,
    TRUTH_PEOPLE,
    TRUTH_RECORDS,
    TableRef,
)
from fedlink_tools.synth.namebook import NameBook, build_name_book
from fedlink_tools.synth.names import ORIGINS
from fedlink_tools.synth.outcomes import Outcomes, build_outcomes
from fedlink_tools.synth.population import Population, build_population
from fedlink_tools.synth.recording import RECORDING_STYLES

MIN_PEOPLE: Final = 100
MAX_PEOPLE: Final = 20_000_000
#: Version of the generator's output for a given seed; bumped whenever the same seed gives other data.
SYNTH_VERSION: Final = 1

_COMPRESSION: Final = "zstd"

PEOPLE_SCHEMA: Final = pa.schema(
    [
        ("person_id", pa.int64()),
        ("first_name", pa.string()),
        ("last_name", pa.string()),
        ("dob", pa.date32()),
        ("sex", pa.string()),
        ("postcode", pa.string()),
        ("region", pa.string()),
        ("name_origin", pa.string()),
        ("birth_year", pa.int16()),
        ("parent_id", pa.int64()),
    ]
)
RECORDS_SCHEMA: Final = pa.schema(
    [("node", pa.string()), ("table", pa.string()), ("record_id", pa.string()), ("person_id", pa.int64())]
)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize` wrote."""

    out: Path
    people: int
    seed: int
    #: ``(node, table, rows)`` for every department table, in layout order.
    row_counts: tuple[tuple[str, str, int], ...]
    elapsed_seconds: float

    def rows(self, node: str, table: str) -> int:
        """Number of rows written to ``node``'s ``table``."""
        for row_node, row_table, count in self.row_counts:
            if (row_node, row_table) == (node, table):
                return count
        raise BadInput(f"no table {node}/{table} in this synthetic federation; see row_counts for the tables")


def synthesize(
    people: int,
    seed: int,
    out: Path,
    rates: CorruptionRates | None = None,
    progress: bool | None = None,
) -> SynthSummary:
    """Generate ``people`` people and their records at every department into the directory ``out``.

    The same ``people``, ``seed`` and ``rates`` give the same data. ``rates`` defaults to the shipped
    ``default_corruption.toml``. ``progress=None`` shows a progress bar only when stderr is a terminal.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "federation"
    >>> summary = synthesize(people=1_000, seed=7, out=out, progress=False)
    >>> summary.rows("dfe", "pupils") > 0, (out / "truth" / "people.parquet").exists()
    (True, True)
    """
    _check_arguments(people, seed)
    out = Path(out)
    _check_output_directory(out)
    rates = default_corruption() if rates is None else rates
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with _progress_steps(progress) as step:
            row_counts = _write_federation(people, seed, rates, staging, step)
        (staging / MANIFEST).write_text(_manifest(people, seed, rates, row_counts), encoding="utf-8")
        _check_output_directory(out)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SynthSummary(
        out=out,
        people=people,
        seed=seed,
        row_counts=tuple((ref.node, ref.table, row_counts[ref]) for ref in TABLES),
        elapsed_seconds=time.perf_counter() - started,
    )


def _check_arguments(people: int, seed: int) -> None:
    if isinstance(people, bool) or not isinstance(people, int | np.integer):
        raise BadInput(f"people must be a whole number, not {people!r}")
    if not MIN_PEOPLE <= people <= MAX_PEOPLE:
        raise BadInput(f"people is {people:,}; choose between {MIN_PEOPLE:,} and {MAX_PEOPLE:,}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise BadInput(f"seed must be a non-negative whole number, not {seed!r}")


def _check_output_directory(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f"output path {out} is a file; choose a new directory for `out`")
    if out.is_dir() and any(out.iterdir()):
        raise BadInput(f"output directory {out} is not empty; choose a new `out` or delete it")


class _Step:
    """Reports one finished step of synthesis to a progress bar, or to nothing."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._task = progress.add_task("population", total=2 + len(NODES)) if progress is not None else None

    def done(self, what: str, next_step: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, description=f"{next_step} ({what} done)")


@contextmanager
def _progress_steps(show: bool | None) -> Iterator[_Step]:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield _Step(None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield _Step(progress)


def _write_federation(
    people: int, seed: int, rates: CorruptionRates, staging: Path, step: _Step
) -> dict[TableRef, int]:
    population = build_population(people, stream(seed, "population"))
    outcomes = build_outcomes(population, stream(seed, "outcomes"))
    book = build_name_book(population.vocabulary, population.barrel_parts)
    step.done("population", NODES[0])

    row_counts: dict[TableRef, int] = {}
    records: list[pa.Table] = []
    for index, node in enumerate(NODES):
        for table_rows in _registers(node, population, outcomes, seed):
            persons = np.unique(np.concatenate([rows.person for rows in table_rows]))
            identities = record_identities(
                population,
                book,
                persons,
                rates.for_node(node),
                RECORDING_STYLES[node],
                stream(seed, f"identities/{table_rows[0].ref.path}"),
            )
            for rows in table_rows:
                record_ids, person = _write_table(rows, identities, persons, population, staging, seed)
                row_counts[rows.ref] = len(record_ids)
                records.append(_truth_records(rows.ref, record_ids, person))
        step.done(node, NODES[index + 1] if index + 1 < len(NODES) else "ground truth")

    _write_parquet(_truth_people(population, book), staging / TRUTH_PEOPLE)
    _write_parquet(pa.concat_tables(records), staging / TRUTH_RECORDS)
    step.done("ground truth", "done")
    return row_counts


def _registers(node: str, population: Population, outcomes: Outcomes, seed: int) -> list[list[DepartmentRows]]:
    """The node's tables, grouped by the register of people whose identifiers they share.

    A department records a person once, so the NHS's diagnoses and prescriptions carry the same
    identifiers for one patient; a prison records its prisoners, and separately their children.
    """

    def rng(ref: TableRef) -> np.random.Generator:
        return stream(seed, f"rows/{ref.path}")

    if node == "dfe":
        return [[departments.pupils(population, outcomes, rng(PUPILS))]]
    if node == "dwp":
        return [[departments.claims(population, outcomes, rng(CLAIMS))]]
    if node == "nhs":
        return [
            [
                departments.diagnoses(population, outcomes, rng(DIAGNOSES)),
                departments.prescriptions(population, outcomes, rng(PRESCRIPTIONS)),
            ]
        ]
    if node == "hmps":
        return [
            [departments.sentences(population, outcomes, rng(SENTENCES))],
            [departments.prisoner_children(population, outcomes, rng(PRISONER_CHILDREN))],
        ]
    if node == "pnc":
        # The same stream as for HMPS, so every sentence there is a custody conviction here.
        custody = departments.sentences(population, outcomes, rng(SENTENCES))
        return [
            [departments.convictions(population, outcomes, custody, rng(CONVICTIONS))],
            [departments.offender_children(population, outcomes, rng(OFFENDER_CHILDREN))],
        ]
    charity = CHARITY_NORTH if node == CHARITY_NORTH.node else CHARITY_SOUTH
    return [[departments.support_episodes(charity, population, outcomes, rng(charity))]]


def _write_table(
    rows: DepartmentRows,
    identities: pa.Table,
    persons: np.ndarray,
    population: Population,
    staging: Path,
    seed: int,
) -> tuple[pa.Array, np.ndarray]:
    """Attach identifiers, shuffle, number and write one table; return its record ids and people."""
    order = stream(seed, f"order/{rows.ref.path}").permutation(rows.person.size)
    person = rows.person[order]
    recorded = identities.take(pa.array(np.searchsorted(persons, person)))
    record_ids = _record_ids(rows.ref.record_prefix, person.size)
    region = pa.array(REGIONS, pa.string()).take(pa.array(population.region[person]))
    attributes = rows.attributes.take(pa.array(order))
    schema = pa.schema(list(IDENTIFIER_SCHEMA) + list(ATTRIBUTE_SCHEMAS[rows.ref]))
    columns = [record_ids, *(recorded[name] for name in recorded.column_names), region, *attributes.columns]
    _write_parquet(pa.Table.from_arrays(columns, schema=schema), staging / rows.ref.path)
    return record_ids, person


def _record_ids(prefix: str, count: int) -> pa.Array:
    """``prefix`` and a zero-padded running number: "DFE0000000", "DFE0000001", ..."""
    width = max(7, len(str(max(count - 1, 0))))
    numbers = pc.utf8_lpad(pc.cast(pa.array(np.arange(count, dtype=np.int64)), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, numbers, "")


def _truth_records(ref: TableRef, record_ids: pa.Array, person: np.ndarray) -> pa.Table:
    count = len(record_ids)
    return pa.Table.from_arrays(
        [
            pa.repeat(pa.scalar(ref.node, pa.string()), count),
            pa.repeat(pa.scalar(ref.table, pa.string()), count),
            record_ids,
            pa.array(person, pa.int64()),
        ],
        schema=RECORDS_SCHEMA,
    )


def _truth_people(population: Population, book: NameBook) -> pa.Table:
    names = pa.array(book.vocabulary, pa.string())
    parent = population.parent
    return pa.Table.from_arrays(
        [
            pa.array(np.arange(population.size, dtype=np.int64)),
            names.take(pa.array(population.first_name)),
            names.take(pa.array(population.last_name)),
            pa.array(population.dob.astype("datetime64[D]"), pa.date32()),
            pa.array(["M", "F"]).take(pa.array(population.sex)),
            POSTCODES.render(population.outward, population.inward),
            pa.array(REGIONS, pa.string()).take(pa.array(population.region)),
            pa.array(ORIGINS, pa.string()).take(pa.array(population.origin)),
            pa.array(population.birth_year, pa.int16()),
            pa.array(parent, pa.int64(), mask=parent < 0),
        ],
        schema=PEOPLE_SCHEMA,
    )


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression=_COMPRESSION)


def _manifest(people: int, seed: int, rates: CorruptionRates, row_counts: dict[TableRef, int]) -> str:
    counts: dict[str, dict[str, int]] = {}
    for ref in TABLES:
        counts.setdefault(ref.node, {})[ref.table] = row_counts[ref]
    document = {
        "generator": "fedlink synth",
        "synth_version": SYNTH_VERSION,
        "fedlink_version": _fedlink_version(),
        "people": people,
        "seed": seed,
        "corruption": rates.as_dict(),
        "row_counts": counts,
        "truth": {"people": TRUTH_PEOPLE, "records": TRUTH_RECORDS},
    }
    return json.dumps(document, indent=2) + "\n"


def _fedlink_version() -> str:
    try:
        return metadata.version("fedlink")
    except metadata.PackageNotFoundError:
        return "unknown"
