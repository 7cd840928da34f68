"""The linkage unit on Apache Spark: the same spine as the in-process unit, for populations beyond one machine.

:func:`link_on_spark` links the parties of a project on a Spark cluster (``local[N]`` in tests) and
returns what :func:`fedlink.linkage.probabilistic.link_probabilistic` (a probabilistic spec) or
:func:`fedlink.linkage.cluster.cluster` (a "clk" spec) return in process, equal to them on the same
encodings. What runs where:

Storage
    Each party's encodings are written once as Parquet under ``work_dir`` (storage every executor
    reads: a local folder in ``local[N]`` mode, a shared file system or object store on a cluster)
    and removed when the run ends. They are the encodings the linkage unit receives from the nodes
    (keyed digests, keyed Bloom filters, keyed blocking hashes) and nothing else.
Exact tiers, as joins
    Tier by tier, the records whose digest is unique among each side's unlinked records are joined on
    it; the linked records leave the next tier's join (anti-joins).
Blocking, as partitioning
    Per blocking key, both sides' unlinked records are partitioned by a hash of the key and each
    partition's records are co-grouped: an executor joins equal keys (:func:`fedlink.linkage.match.block_join`)
    and drops pairs an earlier key produced, as in process; a block of more than ``max_block`` pairs
    is found by counting and skipped.
Similarity kernel and comparison levels, in executors
    Arrow batches of pairs (``applyInArrow`` over co-groups, ``mapInArrow`` over joined pairs) go
    through fedlink's own functions on NumPy arrays: :func:`fedlink.linkage.probabilistic.comparison_levels`
    and :func:`~fedlink.linkage.probabilistic.pattern_ids`, or :func:`fedlink.linkage.match.dice`.
EM from aggregated tallies
    Executors give every pair its pattern of levels; Spark counts pairs per pattern (counts add up
    across executors) and the driver fits the model on those counts with
    :func:`fedlink.linkage.probabilistic.fit_model`, as in process (so on equal counts, in the same
    order, it fits the same model). Chance agreement (u) comes from the same random pairs, drawn by
    the driver from the same seeded generator, scored in executors and tallied the same way.
Scoring, in executors
    Each pair's posterior comes from a table of its pattern's weight (computed once on the driver by
    the fitted model), adjusted by the term frequency of an exactly agreeing name (counted by Spark).
Clustering, distributed
    Connected components of the links by iterative min-label propagation (joins); a component with
    at most one record per party is one entity; a component where some party appears twice is
    clustered in an executor by :func:`fedlink.linkage.cluster.cluster_links` (strongest link first,
    never two records of one party in an entity), which decides it exactly as a global pass would,
    since a merge only ever looks at the two entities it joins.

The driver keeps what the in-process unit keeps beside the spine: the pairs scored at or above
:data:`fedlink.linkage.probabilistic.POSTERIOR_FLOOR` (a few per person: the threshold rule and the
quality estimate need them), the one-to-one assignment of those pairs, and the spine itself.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fedlink.errors import BadInput, Fault
from fedlink.linkage.cluster import LinkStats, Spine, cluster_links
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.estimate import ScoredPairs
from fedlink.linkage.match import (
    DEFAULT_MAX_BLOCK,
    DEFAULT_THRESHOLD,
    FUZZY,
    PairLinks,
    StageSeconds,
    block_join,
    dice,
    one_to_one,
)
from fedlink.linkage.probabilistic import (
    HOUSEHOLD_MAX,
    LEVEL_BITS,
    POSTERIOR_FLOOR,
    RANDOM_PAIRS,
    RATIO_PSEUDO_COUNT,
    WITHIN_PAIRS,
    ChanceTally,
    FellegiSunter,
    ProbabilisticLinkage,
    check_linkable,
    comparison_levels,
    fit_models,
    flip_probability_hides_equality,
    links_at_threshold,
    pattern_ids,
    scored_pairs,
)
from fedlink.linkage.spec import LinkageSpec

#: Partitions of a blocking key's co-group (and of Spark's shuffles) unless the operator says otherwise.
DEFAULT_PARTITIONS: Final = 16
#: The seed link_probabilistic draws its random pairs from: the same pairs give the same model.
_SEED: Final = 20170095
#: Rounds of min-label propagation before giving up (each round at least halves no distance, but
#: link graphs are shallow: an entity spans few parties).
_MAX_ROUNDS: Final = 200
Progress = Callable[[str], None]


def spark_session(
    master: str = "local[2]", conf: Mapping[str, str] | None = None, name: str = "fedlink-linkage"
) -> Any:
    """A Spark session for the linkage unit (pyspark is imported here: it is an optional extra)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise BadInput("the Spark linkage unit needs pyspark: pip install 'fedlink[spark]'") from exc
    import os
    import sys

    settings = {
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(DEFAULT_PARTITIONS),
        "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",
        "spark.sql.adaptive.enabled": "true",
        **(conf or {}),
    }
    builder = SparkSession.builder.master(master).appName(name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM's own errors: no Java, a master that does not answer
        raise Fault(f"could not start Spark at '{master}': {str(exc).splitlines()[0]}") from exc
    session.sparkContext.setLogLevel("ERROR")
    return session


# ---------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Column:
    """One array of a party's encodings as a Spark column: its name there, dtype and row width."""

    column: str
    dtype: str
    width: int  #: words (uint64) per row of a 2-D array (0 for a 1-D one, or rows of no words)
    itemsize: int = 0  #: bytes of a fixed-width digest ("S" dtype)
    rows: bool = False  #: a 2-D array (a filter per record)


@dataclass(frozen=True)
class _Layout:
    """Where each array of one party's encodings lives in its table."""

    tiers: dict[str, _Column]
    blocks: dict[str, _Column]
    fields: dict[str, _Column]
    bloom: _Column | None


def _layouts(parties: Sequence[EncodedRecords]) -> list[_Layout]:
    """Column names shared by all parties (one per array name), dtypes and widths per party."""
    tiers = {t: f"m{i}" for i, t in enumerate(dict.fromkeys(t for p in parties for t in p.match_keys))}
    blocks = {b: f"k{i}" for i, b in enumerate(dict.fromkeys(b for p in parties for b in p.block_keys))}
    fields = {f: f"f{i}" for i, f in enumerate(dict.fromkeys(f for p in parties for f in p.fields))}

    def column(name: str, array: np.ndarray) -> _Column:
        width = array.shape[1] if array.ndim == 2 else 0
        itemsize = array.dtype.itemsize if array.dtype.kind == "S" else 0
        return _Column(name, array.dtype.str, width, itemsize, array.ndim == 2)

    return [
        _Layout(
            tiers={t: column(tiers[t], a) for t, a in p.match_keys.items()},
            blocks={b: column(blocks[b], a) for b, a in p.block_keys.items()},
            fields={f: column(fields[f], a) for f, a in p.fields.items()},
            bloom=column("bloom", p.blooms) if p.blooms.shape[1] else None,
        )
        for p in parties
    ]


def _to_arrow(array: np.ndarray) -> pa.Array:
    if array.dtype.kind == "S" or array.ndim == 2:  # digests and filters: one binary value per row
        rows = np.ascontiguousarray(array)
        width = rows.dtype.itemsize * (rows.shape[1] if rows.ndim == 2 else 1)
        if width == 0:
            return pa.array([b""] * len(rows), pa.binary())
        fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(rows), [None, pa.py_buffer(rows.tobytes())])
        return fixed.cast(pa.binary())
    if array.dtype.kind == "u":  # Spark has no unsigned types: the same bits, signed
        return pa.array(array.view(array.dtype.str.replace("u", "i")))
    return pa.array(array)


def _from_arrow(values: pa.Array | pa.ChunkedArray, spec: _Column) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    count = len(values)
    if dtype.kind == "S" or spec.rows:
        width = spec.itemsize or spec.width * 8
        if width == 0 or count == 0:
            return np.zeros((count, spec.width), dtype) if spec.rows else np.zeros(count, dtype)
        big = pa.types.is_large_binary(values.type)
        offsets = np.frombuffer(values.buffers()[1], np.int64 if big else np.int32)[values.offset :][: count + 1]
        data = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        if len(data) != width * count:
            raise Fault("an encoding column changed width on its way through Spark; nothing was linked")
        flat = data.view(dtype) if dtype.kind == "S" else data.view(np.uint64)
        return flat.reshape(count, spec.width) if spec.rows else flat.copy()
    plain = values.to_numpy(zero_copy_only=False)
    return plain.view(dtype) if dtype.kind == "u" else plain.astype(dtype, copy=False)


def _party_table(records: EncodedRecords, layout: _Layout) -> pa.Table:
    columns: dict[str, pa.Array] = {"row": pa.array(np.arange(records.count, dtype=np.int64))}
    for group, arrays in ((layout.tiers, records.match_keys), (layout.blocks, records.block_keys)):
        for name, spec in group.items():
            columns[spec.column] = _to_arrow(arrays[name])
    for name, spec in layout.fields.items():
        columns[spec.column] = _to_arrow(records.fields[name])
    if layout.bloom is not None:
        columns["bloom"] = _to_arrow(records.blooms)
        columns["pop"] = pa.array(records.popcounts.astype(np.int32))
    return pa.table(columns)


def _records(table: pa.Table, layout: _Layout, prefix: str = "", fields: bool = True) -> EncodedRecords:
    """The encodings of the rows of ``table`` (columns named ``prefix`` + column) as EncodedRecords."""
    count = table.num_rows
    bloom = layout.bloom
    return EncodedRecords(
        count=count,
        match_keys={},
        blooms=(
            _from_arrow(table[prefix + "bloom"], bloom)
            if bloom is not None and prefix + "bloom" in table.column_names
            else np.zeros((count, 0), np.uint64)
        ),
        popcounts=(
            _from_arrow(table[prefix + "pop"], _Column("pop", "<i4", 0))
            if prefix + "pop" in table.column_names
            else np.zeros(count, np.int32)
        ),
        block_keys={},
        fields={name: _from_arrow(table[prefix + spec.column], spec) for name, spec in layout.fields.items()}
        if fields
        else {},
    )


def _big_endian(keys: np.ndarray) -> pa.Array:
    """uint64 keys as 8-byte big-endian binaries: Spark orders those as NumPy orders the numbers."""
    return _to_arrow(keys.astype(">u8").view("S8"))


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """One linkage on Spark: the session, the parties' tables and layouts, the spec."""

    session: Any
    layouts: list[_Layout]
    counts: list[int]
    tables: list[Any]  #: Spark DataFrames of the parties' encodings
    spec: LinkageSpec | None
    partitions: int
    clk_threshold: float = DEFAULT_THRESHOLD

    # ------------------------------------------------------------------------------------ exact tiers

    def exact_links(self, pairs: Sequence[tuple[int, int]], tiers: Sequence[str]) -> list[tuple[Any, Any, Any]]:
        """Per pair of parties: links (ia, ib, stage = tier index, k1 = digest) by unique digests, tier
        by tier, as joins; and both parties' records left unlinked. Each tier is one Spark job for
        every pair of parties together."""
        from pyspark.sql import functions as F

        sides = [[self.tables[p], self.tables[q]] for p, q in pairs]
        found: list[Any] = [None] * len(pairs)
        for index, tier in enumerate(tiers):
            tier_links = None
            for i, (p, q) in enumerate(pairs):
                if tier not in self.layouts[p].tiers or tier not in self.layouts[q].tiers:
                    raise BadInput(
                        f"match-key tier '{tier}' is missing from one party's encodings; encode with one schema"
                    )
                column = self.layouts[p].tiers[tier].column
                empty = bytes(self.layouts[p].tiers[tier].itemsize)

                def unique(side: Any, name: str, column: str = column, empty: bytes = empty) -> Any:
                    return (
                        side.where(F.col(column) != F.lit(empty))
                        .groupBy(column)
                        .agg(F.count("*").alias("n"), F.min("row").alias(name))
                        .where("n = 1")
                        .drop("n")
                    )

                links = (
                    unique(sides[i][0], "ia")
                    .join(unique(sides[i][1], "ib"), column)
                    .select(F.lit(i).alias("pair"), "ia", "ib", F.lit(index).alias("stage"), F.col(column).alias("k1"))
                )
                tier_links = links if tier_links is None else tier_links.unionByName(links)
            assert tier_links is not None
            tier_links = tier_links.localCheckpoint()
            for i in range(len(pairs)):
                links = tier_links.where(F.col("pair") == i).drop("pair")
                found[i] = links if found[i] is None else found[i].unionByName(links)
                sides[i][0] = sides[i][0].join(links.select(F.col("ia").alias("row")), "row", "left_anti")
                sides[i][1] = sides[i][1].join(links.select(F.col("ib").alias("row")), "row", "left_anti")
        empty_links = self.session.createDataFrame([], "ia long, ib long, stage int, k1 binary")
        return [(found[i] if found[i] is not None else empty_links, a, b) for i, (a, b) in enumerate(sides)]

    # ------------------------------------------------------------------------------------ blocking

    def candidates(self, p: int, q: int, free_a: Any, free_b: Any, stage0: int, kind: str, max_block: int) -> Any:
        """The candidate pairs of the unlinked records, key by key as in process: per pair, its
        pattern (probabilistic) or its Dice score when at the threshold (clk, with one row of counts
        per partition)."""
        from pyspark.sql import functions as F

        la, lb = self.layouts[p], self.layouts[q]
        names = [name for name in la.blocks if name in lb.blocks]
        columns = [la.blocks[n].column for n in names]

        def values(side: Any, count: str) -> Any:
            keyed = F.explode(
                F.array(*[F.struct(F.lit(k).alias("k"), F.col(c).alias("v")) for k, c in enumerate(columns)])
            )
            return (
                side.select(keyed.alias("e"))
                .select("e.k", "e.v")
                .where("v != 0")
                .groupBy("k", "v")
                .count()
                .withColumnRenamed("count", count)
            )

        giant: dict[int, list[int]] = {}
        if columns:  # one job counts every key's blocks on both sides
            for k, v in (
                values(free_a, "na")
                .join(values(free_b, "nb"), ["k", "v"])
                .where(F.col("na") * F.col("nb") > max_block)
                .select("k", "v")
                .collect()
            ):
                giant.setdefault(k, []).append(v)
        effective_a, effective_b = free_a, free_b
        for k, values_of in giant.items():  # a block too big to compare costs quadratic time and separates little
            column = columns[k]
            effective_a = effective_a.withColumn(
                column, F.when(F.col(column).isin(values_of), F.lit(0)).otherwise(F.col(column))
            )
            effective_b = effective_b.withColumn(
                column, F.when(F.col(column).isin(values_of), F.lit(0)).otherwise(F.col(column))
            )
        spec, threshold = self.spec, self.clk_threshold
        out_schema = (
            "ia long, ib long, pattern long, stage int, k1 binary"
            if kind == "patterns"
            else "ia long, ib long, score float"
        )
        found = None
        for k, column in enumerate(columns):
            earlier = columns[:k]

            bucket = F.pmod(F.xxhash64(F.col(column)), F.lit(self.partitions))
            left = effective_a.where(F.col(column) != 0).withColumn("bucket", bucket)
            right = effective_b.where(F.col(column) != 0).withColumn("bucket", bucket)
            pairs = (
                left.groupBy("bucket")
                .cogroup(right.groupBy("bucket"))
                .applyInArrow(_block_pairs(kind, spec, la, lb, threshold, column, earlier, stage0 + k), out_schema)
            )
            found = pairs if found is None else found.unionByName(pairs)
        if found is None:
            found = self.session.createDataFrame([], out_schema)
        return found

    # ------------------------------------------------------------------------------------ pairs by index

    def pair_patterns(self, p: int, q: int, pairs: Any, keep: Sequence[str] = ()) -> Any:
        """The pattern of each pair (ia of p, ib of q) of ``pairs``, joined to both parties' encodings
        and scored in executors (``mapInArrow``); the columns ``keep`` pass through."""
        from pyspark.sql import functions as F

        assert self.spec is not None
        spec, la, lb = self.spec, self.layouts[p], self.layouts[q]
        a = self.tables[p].select([F.col(c).alias(f"a_{c}") for c in ["row", *(s.column for s in la.fields.values())]])
        b = self.tables[q].select([F.col(c).alias(f"b_{c}") for c in ["row", *(s.column for s in lb.fields.values())]])
        joined = pairs.join(a, pairs.ia == a.a_row).join(b, pairs.ib == b.b_row)
        kept = list(keep)

        def levels(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                table = pa.Table.from_batches([batch])
                index = np.arange(table.num_rows)
                found = pattern_ids(
                    comparison_levels(spec, _records(table, la, "a_"), _records(table, lb, "b_"), index, index, 1)
                )
                yield pa.RecordBatch.from_arrays(
                    [table["ia"].combine_chunks(), table["ib"].combine_chunks(), pa.array(found)]
                    + [table[c].combine_chunks() for c in kept],
                    names=["ia", "ib", "pattern", *kept],
                )

        schema = pairs.select("ia", "ib", *kept).schema.add("pattern", "long")
        ordered = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in schema if f.name in ("ia", "ib"))
        rest = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in schema if f.name in kept)
        return joined.mapInArrow(levels, f"{ordered}, pattern long" + (f", {rest}" if rest else ""))

    def index_pairs(self, ia: np.ndarray, ib: np.ndarray) -> Any:
        return self.session.createDataFrame(pa.table({"ia": pa.array(ia, pa.int64()), "ib": pa.array(ib, pa.int64())}))

    def pattern_counts(self, patterns: Any) -> tuple[np.ndarray, np.ndarray]:
        """Distinct patterns (sorted) and their counts, summed by Spark across executors."""
        rows = patterns.groupBy("pattern").count().toArrow()
        order = np.argsort(rows["pattern"].to_numpy(), kind="stable")
        return rows["pattern"].to_numpy()[order], rows["count"].to_numpy()[order]


def _block_pairs(
    kind: str,
    spec: LinkageSpec | None,
    la: _Layout,
    lb: _Layout,
    threshold: float,
    column: str,
    earlier: list[str],
    stage: int,
) -> Callable[[pa.Table, pa.Table], pa.Table]:
    """The executors' work on one partition of a blocking key: the pairs of its records that share
    the key and no earlier key, with their pattern (probabilistic) or Dice score at the threshold."""

    def in_block(left: pa.Table, right: pa.Table) -> pa.Table:
        ka = _from_arrow(left[column], _Column(column, "<u8", 0))
        kb = _from_arrow(right[column], _Column(column, "<u8", 0))
        ia, ib = block_join(ka, kb, None)
        fresh = np.ones(len(ia), dtype=bool)
        for other in earlier:  # a pair an earlier key produced was compared there
            ea = _from_arrow(left[other], _Column(other, "<u8", 0))[ia]
            eb = _from_arrow(right[other], _Column(other, "<u8", 0))[ib]
            fresh &= (ea == 0) | (ea != eb)
        ia, ib = ia[fresh], ib[fresh]
        rows_a, rows_b = left["row"].to_numpy(), right["row"].to_numpy()
        if kind == "patterns":
            assert spec is not None
            a, b = _records(left, la), _records(right, lb)
            patterns = pattern_ids(comparison_levels(spec, a, b, ia, ib, workers=1))
            return pa.table(
                {
                    "ia": pa.array(rows_a[ia]),
                    "ib": pa.array(rows_b[ib]),
                    "pattern": pa.array(patterns),
                    "stage": pa.array(np.full(len(ia), stage, np.int32)),
                    "k1": _big_endian(ka[ia]),
                }
            )
        a, b = _records(left, la, fields=False), _records(right, lb, fields=False)
        pa_, pb_ = a.popcounts.astype(np.int64)[ia], b.popcounts.astype(np.int64)[ib]
        possible = 2 * np.minimum(pa_, pb_) >= threshold * (pa_ + pb_) - 1e-6
        ia, ib = ia[possible], ib[possible]
        scores = dice(a.blooms, a.popcounts, b.blooms, b.popcounts, ia, ib, workers=1)
        above = scores >= threshold
        # one more row carries this partition's counts: ia = -1 - comparisons, ib = candidates
        return pa.table(
            {
                "ia": pa.array(np.concatenate([rows_a[ia[above]], [-1 - len(ia)]])),
                "ib": pa.array(np.concatenate([rows_b[ib[above]], [int(fresh.sum())]])),
                "score": pa.array(np.concatenate([scores[above], [0.0]]), pa.float32()),
            }
        )

    return in_block


def _levels_of_counts(patterns: np.ndarray, counts: np.ndarray, comparisons: int) -> np.ndarray:
    """The rows of comparison levels the pattern counts stand for ((pairs, comparisons) uint8)."""
    repeated = np.repeat(patterns, counts)
    return np.stack([(repeated >> (LEVEL_BITS * c)) & 7 for c in range(comparisons)], axis=1).astype(np.uint8)


def _random_pairs(count_a: int, count_b: int, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The random pairs link_probabilistic draws for u: every pair when there are few, else ``budget``."""
    total = count_a * count_b
    if total <= budget:
        return np.divmod(np.arange(total, dtype=np.int64), count_b)
    return rng.integers(0, count_a, budget), rng.integers(0, count_b, budget)


def _row_hashes(rows: np.ndarray) -> np.ndarray:
    """link_probabilistic's 64-bit hash of a row of filter words (equal filters, equal hashes)."""
    mixed = np.zeros(len(rows), dtype=np.uint64)
    for w in range(rows.shape[1]):
        mixed ^= rows[:, w] * np.uint64(0x9E3779B97F4A7C15 + 2 * w)
        mixed = (mixed << np.uint64(31)) | (mixed >> np.uint64(33))
    return mixed


def _value_keys(run: _Run, p: int, name: str, digest: bool) -> Any:
    """(row, key) of party p: a comparison's keyed digest, or a hash of its filter (0 where missing)."""
    layout = run.layouts[p]
    if digest:
        column = layout.fields[f"{name}/digest"].column
        return run.tables[p].select("row", run.tables[p][column].alias("key"))
    spec_filter, spec_pop = layout.fields[f"{name}/filter"], layout.fields[f"{name}/pop"]

    def hashed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch])
            keys = _row_hashes(_from_arrow(table[spec_filter.column], spec_filter))
            present = _from_arrow(table[spec_pop.column], spec_pop) > 0
            keys[present & (keys == 0)] = 1
            keys[~present] = 0
            yield pa.RecordBatch.from_arrays([table["row"].combine_chunks(), _to_arrow(keys)], names=["row", "key"])

    return run.tables[p].select("row", spec_filter.column, spec_pop.column).mapInArrow(hashed, "row long, key long")


def _household_tables(
    run: _Run, spec: LinkageSpec, random_tally: ChanceTally, rng: np.random.Generator
) -> tuple[tuple[int, ...], tuple[tuple[int, np.ndarray], ...]]:
    """link_probabilistic's household ratios, from the same within-node pairs: households are
    counted by Spark, chosen by the driver with the same generator, their pairs scored in executors."""
    from pyspark.sql import functions as F

    found = spec.household_indices
    if found is None or flip_probability_hides_equality(spec):
        return (), ()
    given, group_index = found
    group = spec.dependence_groups[group_index]
    random_cells = random_tally.cells[group_index]
    random_share = random_cells / max(random_cells.sum(), 1.0)
    date = next((i for i, c in enumerate(spec.comparisons) if c.kind == "date"), None)
    budget = WITHIN_PAIRS // len(run.tables)
    tables = []
    parties = range(len(run.tables))
    for h in given:
        comparison = spec.comparisons[h]
        observed = np.zeros_like(random_cells)
        keyed = [
            _value_keys(run, p, comparison.name, comparison.has_digest)
            .where(F.col("key") != 0)
            .withColumn("party", F.lit(p))
            for p in parties
        ]
        keys = keyed[0]
        for more in keyed[1:]:
            keys = keys.unionByName(more)
        groups = keys.groupBy("party", "key").count().where(F.col("count").between(2, HOUSEHOLD_MAX)).toArrow()
        chosen_party, chosen_key = [], []
        for p in parties:  # the generator draws party by party, as in process
            mine = groups["party"].to_numpy() == p
            values = groups["key"].to_numpy().view(np.uint64)[mine]
            order = np.argsort(values, kind="stable")  # households in order of their key, as in process
            values, sizes = values[order], groups["count"].to_numpy()[mine][order]
            usable = rng.permutation(len(values))
            pairs_of = sizes[usable] * (sizes[usable] - 1) // 2
            usable = usable[: int(np.searchsorted(np.cumsum(pairs_of), budget)) + 1]
            chosen_party.append(np.full(len(usable), p, np.int32))
            chosen_key.append(values[usable])
        chosen = run.session.createDataFrame(
            pa.table({"party": np.concatenate(chosen_party), "key": _to_arrow(np.concatenate(chosen_key))})
        )
        members = keys.join(F.broadcast(chosen), ["party", "key"]).toArrow()
        found = None
        for p in parties:
            mine = members["party"].to_numpy() == p
            member_keys, member_rows = members["key"].to_numpy().view(np.uint64)[mine], members["row"].to_numpy()[mine]
            if len(member_rows) == 0:
                continue
            by_key = np.lexsort((member_rows, member_keys))
            member_keys, member_rows = member_keys[by_key], member_rows[by_key]
            _, starts, counts = np.unique(member_keys, return_index=True, return_counts=True)
            first, second = [], []
            for size in np.unique(counts).tolist():
                blocks = starts[counts == size]
                i, j = np.triu_indices(size, k=1)
                first.append(member_rows[(blocks[:, None] + i[None, :]).reshape(-1)])
                second.append(member_rows[(blocks[:, None] + j[None, :]).reshape(-1)])
            within = run.pair_patterns(p, p, run.index_pairs(np.concatenate(first), np.concatenate(second)))
            found = within if found is None else found.unionByName(within)
        if found is None:
            continue
        patterns, pair_counts = run.pattern_counts(found)
        levels = _levels_of_counts(patterns, pair_counts, len(spec.comparisons))
        kept = levels[:, date] != 1 if date is not None else np.ones(len(levels), dtype=bool)
        cell = np.zeros(int(kept.sum()), dtype=np.int64)
        for place, c in enumerate(group):
            cell |= levels[kept, c].astype(np.int64) << (LEVEL_BITS * place)
        observed += np.bincount(cell, minlength=len(observed))
        if observed.sum() == 0:
            continue
        expected = observed.sum() * random_share
        tables.append((h, np.log2((observed + RATIO_PSEUDO_COUNT) / (expected + RATIO_PSEUDO_COUNT))))
    return group, tuple(tables)


def _term_shares(run: _Run, spec: LinkageSpec) -> dict[int, list[Any]]:
    """Per name comparison with term frequencies, per party, (row, share of all records holding its
    value) as link_probabilistic computes them: values counted by Spark over every party."""
    from pyspark.sql import functions as F

    out: dict[int, list[Any]] = {}
    if spec.flip_probability > 0:
        return out
    for c, comparison in enumerate(spec.comparisons):
        if comparison.kind != "name" or not comparison.term_frequency:
            continue
        hashed = []
        for p in range(len(run.tables)):
            spec_filter = run.layouts[p].fields[f"{comparison.name}/filter"]
            spec_pop = run.layouts[p].fields[f"{comparison.name}/pop"]

            def of(
                batches: Iterator[pa.RecordBatch], f: _Column = spec_filter, n: _Column = spec_pop
            ) -> Iterator[pa.RecordBatch]:
                for batch in batches:
                    table = pa.Table.from_batches([batch])
                    keys = _row_hashes(_from_arrow(table[f.column], f))
                    present = _from_arrow(table[n.column], n) > 0
                    yield pa.RecordBatch.from_arrays(
                        [table["row"].combine_chunks(), _to_arrow(keys), pa.array(present)],
                        names=["row", "value", "present"],
                    )

            hashed.append(
                run.tables[p]
                .select("row", spec_filter.column, spec_pop.column)
                .mapInArrow(of, "row long, value long, present boolean")
                .withColumn("party", F.lit(p))
            )
        every = hashed[0]
        for more in hashed[1:]:
            every = every.unionByName(more)
        every = every.localCheckpoint()
        total = max(every.where("present").count(), 1)
        counts = every.groupBy("value").agg(F.count("*").alias("n"))
        shares = every.join(counts, "value").select(
            "party", "row", F.greatest(F.col("n") / F.lit(total), F.lit(1.0 / total)).alias(f"s{c}")
        )
        shares = shares.localCheckpoint()
        out[c] = [shares.where(F.col("party") == p).drop("party") for p in range(len(run.tables))]
    return out


def _probability(weight: np.ndarray) -> np.ndarray:
    """The probability of log2 odds ``weight`` (as link_probabilistic computes it)."""
    return 1.0 / (1.0 + np.exp2(-np.clip(weight, -1000, 1000)))


def _score(
    run: _Run, p: int, q: int, pairs: Any, own: np.ndarray, model: FellegiSunter, shares: dict[int, list[Any]]
) -> Any:
    """Every pair's posterior, in executors: its pattern's weight from a table the driver computed
    once, adjusted by the frequency of a name the pair agrees on exactly; pairs below the floor dropped."""

    weights = model.match_weight(own)
    base = _probability(weights).astype(np.float32)
    order = np.argsort(own)
    table_patterns, table_weights, table_base = own[order], weights[order], base[order]
    tf = sorted(shares)
    first_u = {c: float(model.chance.marginals[c][0]) for c in tf}
    for c in tf:
        pairs = pairs.join(shares[c][p].withColumnRenamed("row", "ia").withColumnRenamed(f"s{c}", f"a{c}"), "ia")
        pairs = pairs.join(shares[c][q].withColumnRenamed("row", "ib").withColumnRenamed(f"s{c}", f"b{c}"), "ib")

    def scored(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch])
            patterns = table["pattern"].to_numpy()
            at = np.searchsorted(table_patterns, patterns)
            posterior = table_base[at]
            if tf:  # pairs agreeing exactly on a name weigh by its frequency
                exact_names = np.zeros(len(patterns), dtype=bool)
                for c in tf:
                    exact_names |= ((patterns >> (LEVEL_BITS * c)) & 7) == 1
                adjusted = np.flatnonzero(exact_names)
                weight = table_weights[at[adjusted]]
                for c in tf:
                    exact = ((patterns[adjusted] >> (LEVEL_BITS * c)) & 7) == 1
                    value = np.maximum(
                        table[f"a{c}"].to_numpy()[adjusted[exact]], table[f"b{c}"].to_numpy()[adjusted[exact]]
                    )
                    weight[exact] += np.log2(first_u[c] / value)
                posterior[adjusted] = _probability(weight)
            kept = pa.array(posterior >= POSTERIOR_FLOOR)
            # the key that proposed the pair as two numbers (big-endian halves), for the driver's sort
            padded = b"".join(key.ljust(16, b"\0") for key in table["k1"].to_pylist())
            halves = np.frombuffer(padded, ">u8").reshape(-1, 2).astype(np.uint64).view(np.int64)
            out = pa.table(
                {
                    "ia": table["ia"],
                    "ib": table["ib"],
                    "posterior": pa.array(posterior, pa.float32()),
                    "stage": table["stage"],
                    "hi": pa.array(halves[:, 0].copy()),
                    "lo": pa.array(halves[:, 1].copy()),
                }
            )
            yield from out.filter(kept).to_batches()

    columns = ["ia", "ib", "pattern", "stage", "k1", *(f"a{c}" for c in tf), *(f"b{c}" for c in tf)]
    return pairs.select(*columns).mapInArrow(scored, "ia long, ib long, posterior float, stage int, hi long, lo long")


def _first_seen(pairs: Any, count: int, tiers: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per pair of parties (column ``pair`` of ``pairs``), its distinct patterns in the order
    link_probabilistic first meets them (exact tiers, then blocking keys, each in order of its key,
    then record order), their counts (summed by Spark), and its number of candidate pairs (those not
    proposed by an exact tier). One Spark job for all pairs of parties."""
    from pyspark.sql import functions as F

    rows = (
        pairs.groupBy("pair", "pattern")
        .agg(
            F.count("*").alias("n"),
            F.sum((F.col("stage") >= tiers).cast("long")).alias("candidates"),
            F.min(F.struct("stage", "k1", "ia", "ib")).alias("first"),
        )
        .select("pair", "pattern", "n", "candidates", "first.stage", "first.k1", "first.ia", "first.ib")
        .toArrow()
    )
    hi, lo = _halves(rows["k1"])
    order = np.lexsort([rows["ib"].to_numpy(), rows["ia"].to_numpy(), lo, hi, rows["stage"].to_numpy()])
    rows = rows.take(order)
    out = []
    for i in range(count):
        mine = rows.filter(pc.equal(rows["pair"], i))
        out.append((mine["pattern"].to_numpy(), mine["n"].to_numpy(), int(mine["candidates"].to_numpy().sum())))
    return out


def _halves(keys: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Binary keys of up to 16 bytes as two uint64 (big-endian halves, zero-padded): sorting by
    (high, low) sorts the keys as bytes, as NumPy sorts digests."""
    padded = b"".join(key.ljust(16, b"\0") for key in keys.to_pylist())
    halves = np.frombuffer(padded, ">u8").reshape(-1, 2).astype(np.uint64)
    return halves[:, 0].copy(), halves[:, 1].copy()


def _components(edges: Any) -> Any:
    """(v, label): each vertex of ``edges`` (x, y) labelled with the smallest vertex of its connected
    component, by iterative min-label propagation (joins); rounds grow with the graph's diameter."""
    from pyspark.sql import functions as F

    both = (
        edges.select(F.col("x").alias("a"), F.col("y").alias("b"))
        .unionByName(edges.select(F.col("y").alias("a"), F.col("x").alias("b")))
        .localCheckpoint()
    )
    labels = both.groupBy("a").agg(F.least(F.min("b"), F.first("a")).alias("label")).withColumnRenamed("a", "v")
    labels = labels.localCheckpoint()
    for _ in range(_MAX_ROUNDS):
        heard = (
            both.join(labels.withColumnRenamed("v", "b"), "b")
            .groupBy("a")
            .agg(F.min("label").alias("heard"))
            .withColumnRenamed("a", "v")
        )
        updated = (
            labels.join(heard, "v")
            .select("v", F.least("label", "heard").alias("label"), (F.col("heard") < F.col("label")).alias("moved"))
            .localCheckpoint()
        )
        changed = updated.where("moved").count()
        labels = updated.drop("moved")
        if changed == 0:
            return labels
    raise Fault(f"connected components did not settle in {_MAX_ROUNDS} rounds; nothing was linked")


def cluster_links_on_spark(
    counts: Sequence[int], links: Sequence[tuple[int, int, PairLinks]], session: Any, stats: LinkStats | None = None
) -> Spine:
    """What :func:`fedlink.linkage.cluster.cluster_links` returns, computed on Spark: connected
    components of the links; where a component holds two records of one party, its links merged
    strongest first in an executor (by cluster_links itself). ``stats`` gives the counts of the
    pairing stage (candidates, comparisons, seconds) for the spine's stats."""
    from pyspark.sql import functions as F

    stats = stats or LinkStats()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    roots = np.arange(total, dtype=np.int64)
    refused = 0
    if sum(len(pl) for _, _, pl in links):
        edges = session.createDataFrame(
            pa.table(
                {
                    "x": np.concatenate([offsets[p] + pl.ia for p, _, pl in links]).astype(np.int64),
                    "y": np.concatenate([offsets[q] + pl.ib for _, q, pl in links]).astype(np.int64),
                    "score": np.concatenate([pl.score for _, _, pl in links]).astype(np.float32),
                    "exact": np.concatenate([pl.via >= 0 for _, _, pl in links]),
                    "px": np.concatenate([np.full(len(pl), p, np.int32) for p, _, pl in links]),
                    "py": np.concatenate([np.full(len(pl), q, np.int32) for _, q, pl in links]),
                }
            )
        ).localCheckpoint()
        labels = _components(edges)
        parties = (
            edges.select(F.col("x").alias("v"), F.col("px").alias("party"))
            .unionByName(edges.select(F.col("y").alias("v"), F.col("py").alias("party")))
            .distinct()
        )
        member = parties.join(labels, "v")
        crowded = member.groupBy("label", "party").count().where("count > 1").select("label").distinct()
        simple = member.join(crowded, "label", "left_anti").select("v", F.col("label").alias("root"))
        party_count = len(counts)

        def resolve(table: pa.Table) -> pa.Table:
            xs, ys = table["x"].to_numpy(), table["y"].to_numpy()
            px, py = table["px"].to_numpy(), table["py"].to_numpy()
            vertices, where = np.unique(np.concatenate([xs, ys]), return_inverse=True)
            party = np.empty(len(vertices), np.int64)
            party[where] = np.concatenate([px, py])
            local_counts = np.bincount(party, minlength=party_count)
            local_offsets = np.concatenate([[0], np.cumsum(local_counts)])
            local = np.arange(len(vertices)) - local_offsets[party]  # vertices sorted: parties in order
            lx, ly = where[: len(xs)], where[len(xs) :]
            score, exact = table["score"].to_numpy(), table["exact"].to_numpy(zero_copy_only=False)
            groups = []
            for a, b in sorted(set(zip(px.tolist(), py.tolist(), strict=True))):
                chosen = (px == a) & (py == b)
                groups.append(
                    (
                        a,
                        b,
                        PairLinks(
                            ia=local[lx[chosen]],
                            ib=local[ly[chosen]],
                            score=score[chosen].astype(np.float32),
                            via=np.where(exact[chosen], 0, FUZZY).astype(np.int8),
                            candidates=0,
                            comparisons=0,
                            seconds=StageSeconds(),
                        ),
                    )
                )
            spine = cluster_links(local_counts.tolist(), groups)
            entity = np.concatenate(spine.entity)
            root = np.full(spine.entities, np.iinfo(np.int64).max)
            np.minimum.at(root, entity, vertices)  # an entity's root is its smallest record, as in process
            refusals = np.zeros(len(vertices), np.int64)
            refusals[0] = spine.stats.refused_merges
            return pa.table({"v": vertices, "root": root[entity], "refused": refusals})

        tangled = (
            edges.join(labels.withColumnRenamed("v", "x"), "x")
            .join(crowded, "label")
            .groupBy("label")
            .applyInArrow(resolve, "v long, root long, refused long")
        )
        found = simple.withColumn("refused", F.lit(0).cast("long")).unionByName(tangled).toArrow()
        roots[found["v"].to_numpy()] = found["root"].to_numpy()
        refused = int(found["refused"].to_numpy().sum())
    distinct, label = np.unique(roots, return_inverse=True)
    entity = label.astype(np.int64)
    return Spine(
        entity=[entity[offsets[p] : offsets[p + 1]] for p in range(len(counts))],
        entities=len(distinct),
        stats=LinkStats(
            candidates=stats.candidates,
            comparisons=stats.comparisons,
            exact_links=sum(int((pl.via >= 0).sum()) for _, _, pl in links),
            fuzzy_links=sum(int((pl.via < 0).sum()) for _, _, pl in links),
            refused_merges=refused,
            seconds=stats.seconds,
        ),
    )


# ---------------------------------------------------------------------------------------------- entry points


class StagedEncodings:
    """The parties' encodings as Parquet (``party<p>.parquet``: the record's position ``row`` and one
    column per array the node sent) under a fresh folder of ``work_dir``, removed on exit; entering
    gives each party's column layout and its Spark DataFrame."""

    def __init__(self, session: Any, parties: Sequence[EncodedRecords], work_dir: Path | None) -> None:
        self.session, self.parties, self.work_dir = session, parties, work_dir
        self.folder: Path | None = None

    def __enter__(self) -> tuple[list[_Layout], list[Any]]:
        base = self.work_dir
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="fedlink-linkage-", dir=base))
        layouts = _layouts(self.parties)
        tables = []
        for p, (records, layout) in enumerate(zip(self.parties, layouts, strict=True)):
            path = self.folder / f"party{p}.parquet"
            pq.write_table(_party_table(records, layout), path, row_group_size=50_000)
            tables.append(self.session.read.parquet(str(path)))
        return layouts, tables

    def __exit__(self, *_: object) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def link_probabilistic_on_spark(
    parties: Sequence[EncodedRecords],
    spec: LinkageSpec,
    session: Any,
    work_dir: Path | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    max_block: int = DEFAULT_MAX_BLOCK,
    random_pairs: int = RANDOM_PAIRS,
    progress: Progress | None = None,
) -> ProbabilisticLinkage:
    """What :func:`fedlink.linkage.probabilistic.link_probabilistic` returns, computed on Spark."""
    check_linkable(parties, spec)
    from pyspark.sql import functions as F

    say = progress or (lambda _: None)
    seconds: dict[str, float] = {}
    with StagedEncodings(session, parties, work_dir) as (layouts, tables):
        run = _Run(session, layouts, [p.count for p in parties], tables, spec, partitions)
        mark = time.perf_counter()
        say("comparing candidate pairs field by field (Spark)")
        tiers = [tier for tier, _ in spec.match_keys[: spec.exact_tiers]]
        index_pairs = [(p, q) for p in range(len(parties)) for q in range(p + 1, len(parties))]
        every = None
        for i, ((p, q), (exact, free_a, free_b)) in enumerate(
            zip(index_pairs, run.exact_links(index_pairs, tiers), strict=True)
        ):
            found = run.candidates(p, q, free_a, free_b, len(tiers), "patterns", max_block)
            pair = run.pair_patterns(p, q, exact, keep=("stage", "k1")).unionByName(found).withColumn("pair", F.lit(i))
            every = pair if every is None else every.unionByName(pair)
        assert every is not None
        every = every.localCheckpoint()  # one job: every pair of parties' patterns
        patterns = [every.where(F.col("pair") == i).drop("pair") for i in range(len(index_pairs))]
        seconds["compare"] = time.perf_counter() - mark

        mark = time.perf_counter()
        say("estimating the model without labels (EM, from tallies counted by Spark)")
        rng = np.random.default_rng(_SEED)  # link_probabilistic's seed: the same random pairs
        sizes = [len(c.levels) for c in spec.comparisons]
        groups = spec.dependence_groups
        sampled, drawn = 0, None
        for i, (p, q) in enumerate(index_pairs):  # drawn pair by pair, counted in one job
            ra, rb = _random_pairs(parties[p].count, parties[q].count, random_pairs, rng)
            levels = run.pair_patterns(p, q, run.index_pairs(ra, rb)).withColumn("pair", F.lit(i))
            drawn = levels if drawn is None else drawn.unionByName(levels)
            sampled += len(ra)
        assert drawn is not None
        chance_counts = drawn.groupBy("pair", "pattern").count().toArrow()
        tallies = []
        for i in range(len(index_pairs)):
            mine = chance_counts.filter(pc.equal(chance_counts["pair"], i))
            order = np.argsort(mine["pattern"].to_numpy(), kind="stable")
            counted = (mine["pattern"].to_numpy()[order], mine["count"].to_numpy()[order])
            tallies.append(ChanceTally.of(_levels_of_counts(*counted, len(sizes)), sizes, groups))
        cross_pairs = [float(parties[p].count * parties[q].count) for p, q in index_pairs]
        distinct_of, candidates = [], []
        for own, own_counts, count in _first_seen(every, len(index_pairs), len(tiers)):
            distinct_of.append((own, own_counts))
            candidates.append(count)
        pooled, models = fit_models(
            spec,
            index_pairs,
            distinct_of,
            tallies,
            cross_pairs,
            lambda pooled_tally: _household_tables(run, spec, pooled_tally, rng),
        )
        seconds["fit"] = time.perf_counter() - mark

        mark = time.perf_counter()
        say("scoring in executors, assigning and clustering (Spark)")
        shares = _term_shares(run, spec)
        posteriors = None
        for i, ((p, q), found, (own, _)) in enumerate(zip(index_pairs, patterns, distinct_of, strict=True)):
            mine = _score(run, p, q, found, own, models[(p, q)], shares).withColumn("pair", F.lit(i))
            posteriors = mine if posteriors is None else posteriors.unionByName(mine)
        assert posteriors is not None
        every_score = posteriors.toArrow()  # one job for all pairs of parties
        scored: list[ScoredPairs] = []
        for i, ((p, q), count) in enumerate(zip(index_pairs, candidates, strict=True)):
            rows = every_score.filter(pc.equal(every_score["pair"], i))
            # in the order link_probabilistic scores pairs: by proposing tier or key, its value, then records
            order = np.lexsort(
                [
                    rows[c].to_numpy().view(np.uint64) if c in ("hi", "lo") else rows[c].to_numpy()
                    for c in ("ib", "ia", "lo", "hi", "stage")
                ]
            )
            rows = rows.take(order)
            stage = rows["stage"].to_numpy()
            ia = rows["ia"].to_numpy().astype(np.int32 if parties[p].count < 2**31 else np.int64)
            ib = rows["ib"].to_numpy().astype(np.int32 if parties[q].count < 2**31 else np.int64)
            posterior = rows["posterior"].to_numpy()
            via = np.where(stage < len(tiers), stage, FUZZY).astype(np.int8)
            scored.append(scored_pairs(spec, p, q, run.counts, models[(p, q)], ia, ib, posterior, via, count))
        threshold, links = links_at_threshold(scored, spec)
        spine = cluster_links_on_spark(
            run.counts, links, session, LinkStats(candidates=sum(candidates), comparisons=sum(candidates))
        )
        seconds["link"] = time.perf_counter() - mark
    return ProbabilisticLinkage(
        spine=spine,
        model=pooled,
        models=models,
        threshold=float(threshold),
        scored=scored,
        random_pairs=sampled,
        seconds=seconds,
    )


def cluster_on_spark(
    parties: Sequence[EncodedRecords],
    session: Any,
    work_dir: Path | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    threshold: float = DEFAULT_THRESHOLD,
    max_block: int = DEFAULT_MAX_BLOCK,
    progress: Progress | None = None,
) -> Spine:
    """What :func:`fedlink.linkage.cluster.cluster` returns (exact match-key tiers, then Dice of
    record-level filters, then clustering), computed on Spark."""
    if not parties:
        raise BadInput("clustering needs at least one party's encodings")
    if not 0.0 < threshold <= 1.0:
        raise BadInput(f"a Dice threshold must be in (0, 1], not {threshold}")
    say = progress or (lambda _: None)
    with StagedEncodings(session, parties, work_dir) as (layouts, tables):
        run = _Run(session, layouts, [p.count for p in parties], tables, None, partitions, threshold)
        links: list[tuple[int, int, PairLinks]] = []
        candidates = comparisons = 0
        say("exact tiers and Dice similarity (Spark)")
        for p in range(len(parties)):
            for q in range(p + 1, len(parties)):
                a, b = parties[p], parties[q]
                if a.blooms.shape[1:] != b.blooms.shape[1:]:
                    raise BadInput("the two parties' Bloom filters differ in length; encode with one schema")
                tiers = [tier for tier in a.match_keys if tier in b.match_keys]
                ((exact, free_a, free_b),) = run.exact_links([(p, q)], tiers)
                found = run.candidates(p, q, free_a, free_b, len(tiers), "scores", max_block)
                rows = found.toArrow()
                exact_rows = exact.toArrow()
                fa, fb, fs = rows["ia"].to_numpy(), rows["ib"].to_numpy(), rows["score"].to_numpy()
                tally = fa < 0
                candidates += int(fb[tally].sum())
                comparisons += int((-1 - fa[tally]).sum())
                fa, fb, fs = fa[~tally], fb[~tally], fs[~tally]
                keep = one_to_one(fa, fb, fs)
                ea, eb = exact_rows["ia"].to_numpy(), exact_rows["ib"].to_numpy()
                links.append(
                    (
                        p,
                        q,
                        PairLinks(
                            ia=np.concatenate([ea, fa[keep]]).astype(np.int64),
                            ib=np.concatenate([eb, fb[keep]]).astype(np.int64),
                            score=np.concatenate([np.ones(len(ea), np.float32), fs[keep]]),
                            via=np.concatenate(
                                [exact_rows["stage"].to_numpy().astype(np.int8), np.full(len(keep), FUZZY, np.int8)]
                            ),
                            candidates=0,
                            comparisons=0,
                            seconds=StageSeconds(),
                        ),
                    )
                )
        say("clustering (Spark)")
        return cluster_links_on_spark(
            run.counts, links, session, LinkStats(candidates=candidates, comparisons=comparisons)
        )
