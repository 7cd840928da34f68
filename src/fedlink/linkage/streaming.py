"""Probabilistic linkage in bounded memory: encodings on disk, candidate pairs spilled, clusters by a
compiled union-find over integer arrays. The spine is the in-process one's, bit for bit.

:func:`fedlink.linkage.probabilistic.link_probabilistic` holds every party's encodings and, per pair
of parties, every candidate pair with its comparison pattern (13 bytes a pair, tens of pairs a
record) until the model is fitted; its clustering walks Python lists of every record. Here:

Encodings on disk
    :func:`spill_encodings` writes each of a party's arrays as a ``.npy`` file as it arrives and
    :func:`open_encodings` maps them read-only, so the linkage unit's own memory holds none of them:
    the operating system pages filters in as comparisons read them and drops them under pressure.
Candidate pairs spilled
    Pass 1, per pair of parties: exact tiers and blocking yield candidate pairs a chunk
    (:data:`~fedlink.linkage.match.CHUNK` pairs) at a time; each chunk's comparison patterns are
    computed, appended to files in the spill folder and tallied (distinct pattern -> count, in order
    of first appearance: the tallies are additive, and EM needs nothing else). Pass 2, after EM:
    the chunks are read back in the same order and scored; only pairs at or above
    :data:`~fedlink.linkage.probabilistic.POSTERIOR_FLOOR` stay in memory (about two a record).
Clusters by array
    :func:`cluster_links_compact` merges links strongest first in a compiled union-find over int64
    arrays (numba), refusing merges that would put two records of a party together, exactly as
    :func:`fedlink.linkage.cluster.cluster_links` does with Python lists.

Anonymous memory is then about 200 bytes a record (block keys, exact-tier keys, term frequencies,
scored pairs, the spine) plus a chunk's pairs, whatever the number of candidate pairs (measured:
0.77 GiB for 3.8 million records and 144 million candidate pairs); the in-memory path holds the
encodings (about 380 bytes a record) and 13 bytes a candidate pair besides.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from fedlink.errors import Fault
from fedlink.linkage.cluster import LinkStats, Spine, cluster_links
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.estimate import ScoredPairs
from fedlink.linkage.match import (
    CHUNK,
    DEFAULT_MAX_BLOCK,
    FUZZY,
    PairLinks,
    StageSeconds,
    candidate_chunks,
    exact_tier,
)
from fedlink.linkage.probabilistic import (
    LEVEL_BITS,
    POSTERIOR_FLOOR,
    RANDOM_PAIRS,
    ChanceTally,
    ProbabilisticLinkage,
    Progress,
    _factorised,
    _household_ratios,
    _index_type,
    _probability,
    _random_pairs,
    _term_frequencies,
    check_linkable,
    comparison_levels,
    fit_models,
    links_at_threshold,
    pattern_ids,
    scored_pairs,
)
from fedlink.linkage.spec import LinkageSpec

#: Names of the spilled arrays of each pair of parties, and their dtypes (patterns: set per spec).
_SPILLED: Final = ("ia", "ib", "via", "patterns")


# ---------------------------------------------------------------------------------------------- encodings


def _arrays(encoded: EncodedRecords) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"blooms": encoded.blooms, "popcounts": encoded.popcounts}
    arrays.update({f"key={k}": v for k, v in encoded.match_keys.items()})
    arrays.update({f"block={k}": v for k, v in encoded.block_keys.items()})
    arrays.update({f"field={k}": v for k, v in encoded.fields.items()})
    arrays.update({f"subgroup={k}": v for k, v in encoded.subgroups.items()})
    return arrays


def _file_name(name: str) -> str:
    # field names hold "/" ("first_name/filter"); "~" is in no name the specs allow
    return name.replace("/", "~") + ".npy"


def spill_encodings(encoded: EncodedRecords, folder: Path) -> None:
    """Write a party's encodings to ``folder`` (one ``.npy`` a array), for :func:`open_encodings`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in _arrays(encoded).items():
        np.save(folder / _file_name(name), np.ascontiguousarray(values), allow_pickle=False)


class _Window(io.RawIOBase):
    """Bytes ``offset`` to ``offset + length`` of a file, read as a file of their own (a blob of a body
    written to disk, :func:`fedlink.protocol.blobs.unpack_file`)."""

    def __init__(self, file: io.BufferedReader, offset: int, length: int) -> None:
        self._file, self._offset, self._length, self._at = file, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._length}[whence]
        self._at = min(max(base + offset, 0), self._length)
        return self._at

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = min(len(view), self._length - self._at)
        if size <= 0:
            return 0
        self._file.seek(self._offset + self._at)
        got = self._file.readinto(view[:size])
        self._at += got
        return got


#: Bytes copied at a time from a node's encodings on disk into the linkage unit's files.
_COPY = 1 << 22


def spill_npz(blob_path: Path, folder: Path, offset: int = 0, length: int | None = None) -> None:
    """Unpack a node's encodings as they crossed the wire (``.npz``, :mod:`fedlink.linkage.payload`;
    bytes ``offset`` to ``offset + length`` of ``blob_path``, the whole file by default) into
    ``folder``: each array's ``.npy`` copied a few MiB at a time, never whole in memory, then checked
    to open as a plain array."""
    folder.mkdir(parents=True, exist_ok=True)
    size = blob_path.stat().st_size - offset if length is None else length
    try:
        with blob_path.open("rb") as file, zipfile.ZipFile(_Window(file, offset, size)) as archive:
            for member in archive.infolist():
                kind, _, rest = member.filename.removesuffix(".npy").partition(":")
                if member.compress_type != zipfile.ZIP_STORED or not member.filename.endswith(".npy"):
                    raise ValueError(f"unexpected member {member.filename!r}")
                target = folder / _file_name(f"{kind}={rest}" if rest else kind)
                with archive.open(member) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, _COPY)
                np.load(target, mmap_mode="r", allow_pickle=False)  # a plain array, or refused here
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise Fault("a node sent encodings the linkage unit cannot read; check it runs this fedlink version") from exc


def open_encodings(folder: Path) -> EncodedRecords:
    """A party's encodings from ``folder`` (:func:`spill_encodings`), memory-mapped read-only."""
    arrays = {
        path.name.removesuffix(".npy").replace("~", "/"): np.load(path, mmap_mode="r", allow_pickle=False)
        for path in sorted(folder.glob("*.npy"))
    }
    if "blooms" not in arrays:
        raise Fault(f"no encodings in {folder}; the linkage unit's spill folder was emptied while linking")

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

    blooms = arrays["blooms"]
    return EncodedRecords(
        count=int(blooms.shape[0]),
        match_keys=part("key="),
        blooms=blooms,
        popcounts=arrays["popcounts"],
        block_keys=part("block="),
        fields=part("field="),
        subgroups=part("subgroup="),
    )


# ---------------------------------------------------------------------------------------------- spill


class _PatternTally:
    """Distinct comparison patterns in order of first appearance, with their counts: what
    :func:`~fedlink.linkage.probabilistic._factorised` gives of all a pair's patterns at once."""

    def __init__(self, dtype: type[np.signedinteger]) -> None:
        self.dtype = dtype
        self.index: dict[int, int] = {}
        self.counts: list[int] = []

    def add(self, patterns: np.ndarray) -> None:
        if len(patterns) == 0:
            return
        distinct, _, counts = _factorised(patterns)
        for value, count in zip(distinct.tolist(), counts.tolist(), strict=True):
            at = self.index.setdefault(value, len(self.counts))
            if at == len(self.counts):
                self.counts.append(count)
            else:
                self.counts[at] += count

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        return np.fromiter(self.index, dtype=self.dtype, count=len(self.index)), np.array(self.counts, np.int64)


class _SpilledPairs:
    """A pair of parties' candidate pairs (record indices, exact tier, pattern) appended to files."""

    def __init__(self, folder: Path, dtypes: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = {name: folder / f"{name}.bin" for name in _SPILLED}
        self.dtypes = {name: np.dtype(dtype) for name, dtype in dtypes.items()}
        self.rows = 0
        for path in self.paths.values():
            path.write_bytes(b"")

    def append(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            with self.paths[name].open("ab") as handle:
                handle.write(np.ascontiguousarray(values, dtype=self.dtypes[name]).tobytes())
        self.rows += len(columns["ia"])

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        rows = CHUNK
        for start in range(0, self.rows, rows):
            count = min(rows, self.rows - start)
            yield {
                name: np.fromfile(path, dtype=self.dtypes[name], count=count, offset=start * self.dtypes[name].itemsize)
                for name, path in self.paths.items()
            }

    def remove(self) -> None:
        for path in self.paths.values():
            path.unlink(missing_ok=True)


def _spill_pair(
    spec: LinkageSpec,
    a: EncodedRecords,
    b: EncodedRecords,
    max_block: int,
    workers: int | None,
    folder: Path,
) -> tuple[_SpilledPairs, _PatternTally, int]:
    """Pass 1 for two parties: exact-path links and blocked candidates with their comparison patterns,
    spilled in the order the in-process path concatenates them; the tally of their patterns."""
    pattern_type = np.int32 if LEVEL_BITS * len(spec.comparisons) < 31 else np.int64
    spilled = _SpilledPairs(
        folder,
        {"ia": _index_type(a.count), "ib": _index_type(b.count), "via": np.int8, "patterns": pattern_type},
    )
    tally = _PatternTally(pattern_type)
    tiers = [tier for tier, _ in spec.match_keys[: spec.exact_tiers]]
    ea, eb, via = (
        exact_tier({t: a.match_keys[t] for t in tiers}, {t: b.match_keys[t] for t in tiers}, tiers)
        if tiers
        else (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8))
    )

    def emit(xa: np.ndarray, xb: np.ndarray, tier: np.ndarray) -> None:
        patterns = pattern_ids(comparison_levels(spec, a, b, xa, xb, workers)).astype(pattern_type)
        spilled.append(ia=xa, ib=xb, via=tier, patterns=patterns)
        tally.add(patterns)

    emit(ea, eb, via)
    free_a, free_b = np.ones(a.count, dtype=bool), np.ones(b.count, dtype=bool)
    free_a[ea] = False
    free_b[eb] = False
    del ea, eb, via
    a_blocks = {name: np.where(free_a, key, np.uint64(0)) for name, key in a.block_keys.items()}
    b_blocks = {name: np.where(free_b, key, np.uint64(0)) for name, key in b.block_keys.items()}
    candidates = 0
    for ia, ib in candidate_chunks(a_blocks, b_blocks, max_block):
        for start in range(0, len(ia), CHUNK):
            xa, xb = ia[start : start + CHUNK], ib[start : start + CHUNK]
            emit(xa, xb, np.full(len(xa), FUZZY, dtype=np.int8))
            candidates += len(xa)
    return spilled, tally, candidates


def _score_spilled(
    spilled: _SpilledPairs,
    own: np.ndarray,
    weights: np.ndarray,
    frequencies: dict[int, list[np.ndarray]],
    p: int,
    q: int,
    marginals: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pass 2 for two parties: every spilled pair's posterior (term-frequency adjusted as in the
    in-process path), keeping (ia, ib, posterior, via) of pairs at or above the floor."""
    order = np.argsort(own, kind="stable")
    sorted_own = own[order]
    probability = _probability(weights).astype(np.float32)
    exact_names = np.zeros(len(own), dtype=bool)
    for c in frequencies:
        exact_names |= ((own >> (LEVEL_BITS * c)) & 7) == 1
    kept_parts: list[tuple[np.ndarray, ...]] = []
    for chunk in spilled.chunks():
        patterns = chunk["patterns"]
        inverse = order[np.searchsorted(sorted_own, patterns)]
        posterior = probability[inverse]
        if frequencies:
            adjusted = np.flatnonzero(exact_names[inverse])
            weight = weights[inverse[adjusted]]
            for c, per_party in frequencies.items():
                exact = ((patterns[adjusted] >> (LEVEL_BITS * c)) & 7) == 1
                value = np.maximum(
                    per_party[p][chunk["ia"][adjusted[exact]]], per_party[q][chunk["ib"][adjusted[exact]]]
                )
                weight[exact] += np.log2(marginals[c][0] / value)
            posterior[adjusted] = _probability(weight)
        kept = posterior >= POSTERIOR_FLOOR
        kept_parts.append((chunk["ia"][kept], chunk["ib"][kept], posterior[kept], chunk["via"][kept]))
    if not kept_parts:
        dtypes = spilled.dtypes
        return (
            np.empty(0, dtypes["ia"]),
            np.empty(0, dtypes["ib"]),
            np.empty(0, np.float32),
            np.empty(0, np.int8),
        )
    ia, ib, score, via = (np.concatenate(column) for column in zip(*kept_parts, strict=True))
    return ia, ib, score, via


def link_probabilistic_spilled(
    parties: Sequence[EncodedRecords],
    spec: LinkageSpec,
    spill: Path | None = None,
    max_block: int = DEFAULT_MAX_BLOCK,
    workers: int | None = None,
    random_pairs: int = RANDOM_PAIRS,
    progress: Progress | None = None,
) -> ProbabilisticLinkage:
    """:func:`~fedlink.linkage.probabilistic.link_probabilistic`'s result (the same spine, models,
    threshold and scored pairs) with candidate pairs spilled to files under ``spill`` (a temporary
    folder where None; removed afterwards) and clusters by :func:`cluster_links_compact`.
    ``parties`` may be memory-mapped (:func:`open_encodings`)."""
    check_linkable(parties, spec)
    say = progress or (lambda _: None)
    own_folder = spill is None
    folder = Path(tempfile.mkdtemp(prefix="fedlink-spill-")) if spill is None else spill
    try:
        return _link(parties, spec, folder, max_block, workers, random_pairs, say)
    finally:
        if own_folder:
            shutil.rmtree(folder, ignore_errors=True)


def _link(
    parties: Sequence[EncodedRecords],
    spec: LinkageSpec,
    folder: Path,
    max_block: int,
    workers: int | None,
    random_pairs: int,
    say: Progress,
) -> ProbabilisticLinkage:
    seconds: dict[str, float] = {}
    mark = time.perf_counter()
    say("comparing candidate pairs field by field (spilling them to disk)")
    index = [(p, q) for p in range(len(parties)) for q in range(p + 1, len(parties))]
    spilled, distinct_of, candidates = [], [], []
    for p, q in index:
        pairs, patterns, count = _spill_pair(spec, parties[p], parties[q], max_block, workers, folder / f"{p}-{q}")
        spilled.append(pairs)
        distinct_of.append(patterns.distinct())
        candidates.append(count)
    seconds["compare"] = time.perf_counter() - mark

    mark = time.perf_counter()
    say("estimating the model without labels (EM)")
    rng = np.random.default_rng(20170095)  # the in-process path's seed and order of draws: the same spine
    sizes = [len(c.levels) for c in spec.comparisons]
    groups = spec.dependence_groups
    tallies = []
    sampled = 0
    for p, q in index:
        ra, rb = _random_pairs(parties[p].count, parties[q].count, random_pairs, rng)
        tallies.append(ChanceTally.of(comparison_levels(spec, parties[p], parties[q], ra, rb, workers), sizes, groups))
        sampled += len(ra)
    cross_pairs = [float(parties[p].count * parties[q].count) for p, q in index]
    pooled, models = fit_models(
        spec,
        index,
        distinct_of,
        tallies,
        cross_pairs,
        lambda pooled_tally: _household_ratios(spec, parties, pooled_tally, rng, workers),
    )
    seconds["fit"] = time.perf_counter() - mark

    mark = time.perf_counter()
    say("scoring the spilled pairs, assigning and clustering")
    frequencies = _term_frequencies(parties, spec)
    counts = [party.count for party in parties]
    scored: list[ScoredPairs] = []
    for (p, q), pairs, (own, _), count in zip(index, spilled, distinct_of, candidates, strict=True):
        model = models[(p, q)]
        ia, ib, score, via = _score_spilled(
            pairs, own, model.match_weight(own), frequencies, p, q, model.chance.marginals
        )
        pairs.remove()
        scored.append(scored_pairs(spec, p, q, counts, model, ia, ib, score, via, count))
    del frequencies
    seconds["score"] = time.perf_counter() - mark
    mark = time.perf_counter()
    threshold, links = links_at_threshold(scored, spec)
    spine = cluster_links_compact([p.count for p in parties], links)
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


# ---------------------------------------------------------------------------------------------- clusters

_merge_links: Any = None
try:
    from numba import njit

    @njit(nogil=True, cache=True)
    def _root(parent: np.ndarray, x: int) -> int:  # pragma: no cover - compiled
        top = x
        while parent[top] != top:
            top = parent[top]
        while parent[x] != top:
            parent[x], x = top, parent[x]
        return top

    @njit(nogil=True, cache=True)
    def _merge_compiled(  # pragma: no cover - compiled
        parent: np.ndarray, parties: np.ndarray, xs: np.ndarray, ys: np.ndarray
    ) -> int:
        """cluster._Entities.merge over every link in order; returns the merges refused."""
        refused = 0
        for k in range(len(xs)):
            rx = _root(parent, xs[k])
            ry = _root(parent, ys[k])
            if rx == ry:
                continue
            if parties[rx] & parties[ry]:
                refused += 1
                continue
            if rx > ry:
                rx, ry = ry, rx
            parent[ry] = rx
            parties[rx] |= parties[ry]
        return refused

    @njit(nogil=True, cache=True)
    def _roots_of(parent: np.ndarray, records: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
        out = np.empty(len(records), dtype=np.int64)
        for k in range(len(records)):
            out[k] = _root(parent, records[k])
        return out

    _merge_links = _merge_compiled
except ImportError:  # pragma: no cover - numba is a dependency
    pass


def cluster_links_compact(counts: Sequence[int], links: Sequence[tuple[int, int, PairLinks]]) -> Spine:
    """:func:`fedlink.linkage.cluster.cluster_links`'s spine, from int64 arrays in compiled code
    (8 bytes a record for the forest and 8 for the parties in each entity, instead of Python lists)."""
    if _merge_links is None or len(counts) > 63:  # pragma: no cover - a 64-party mask needs Python ints
        return cluster_links(counts, links)
    from fedlink.linkage.cluster import _merge_order

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    seconds = sum((pl.seconds for _, _, pl in links), StageSeconds())
    mark = time.perf_counter()
    total = int(offsets[-1])
    refused = 0
    roots = np.arange(total, dtype=np.int64)
    if links and sum(len(pl) for _, _, pl in links):
        xs, ys = _merge_order(list(links), offsets)
        parent = np.arange(total, dtype=np.int64)
        parties = np.left_shift(np.int64(1), np.repeat(np.arange(len(counts), dtype=np.int64), counts))
        refused = int(_merge_links(parent, parties, xs.astype(np.int64), ys.astype(np.int64)))
        del parties
        linked = np.unique(np.concatenate([xs, ys])).astype(np.int64)
        del xs, ys
        roots[linked] = _roots_of(parent, linked)
    distinct, label = np.unique(roots, return_inverse=True)
    entity = label.astype(np.int64)
    stats = LinkStats(
        candidates=sum(pl.candidates for _, _, pl in links),
        comparisons=sum(pl.comparisons for _, _, pl in links),
        exact_links=sum(int((pl.via >= 0).sum()) for _, _, pl in links),
        fuzzy_links=sum(int((pl.via < 0).sum()) for _, _, pl in links),
        refused_merges=refused,
        seconds=seconds + StageSeconds(assign=time.perf_counter() - mark),
    )
    return Spine(
        entity=[entity[offsets[p] : offsets[p + 1]] for p in range(len(counts))],
        entities=len(distinct),
        stats=stats,
    )
