"""One stage of the scale suite (``test_bench_scale.py``) in a process of its own, so that its peak
memory is its own: ``python benchmarks/scale_worker.py STAGE ARGS...`` prints one JSON line with
``seconds``, ``peak_rss_mib`` (the kernel's high-water mark of resident memory, file pages that the
process mapped included) and ``peak_anon_mib`` (the highest anonymous resident memory sampled every
0.1 s: what the process itself holds, not pages of files it maps, which the kernel may drop).

Stages (FOLDER is one size's working folder; the synthetic federation is FOLDER/federation):

``synth PEOPLE FOLDER``
    ``fedlink synth``'s generator.
``encode FOLDER NODE``
    What a node does for ``fedlink link``: its people (one per distinct identifier tuple, in a keyed
    order), normalised and encoded with the default spec in batches of the node's size, written to
    FOLDER/node-NODE/*.npy as they are made (never all in memory). The true person of each record goes
    to FOLDER/truth-NODE.npy for measuring quality only (the linkage unit never reads it).
``transfer FOLDER NODE``
    The wire format (:mod:`fedlink.linkage.payload`, a NumPy ``.npz``) written from the node's files,
    then unpacked into the linkage unit's spill folder FOLDER/unit/NODE (no network: gRPC is measured
    in ``test_bench_flower.py``).
``link FOLDER [MAX_BLOCK] [POSTERIOR]``
    The linkage unit: the encodings memory-mapped, :func:`fedlink.linkage.streaming.link_probabilistic_spilled`,
    the label-free quality estimate, slots and overlap counts; F1 against the truth, and what became of
    the true pairs missed (never scored, below the threshold, lost to the one-to-one assignment).
    ``MAX_BLOCK`` replaces the cap on a block's pairs (250,000): a million people with a cap of 2,500
    skip the blocks that ten million skip at 250,000 (block pairs grow with the square of the people).
    ``POSTERIOR`` (``pairwise`` or ``one-to-one``) replaces the spec's default posterior.
``bound FOLDER``
    A diagnostic: the best pairwise F1 of a rule deciding pairs from their comparison pattern, the
    commonness of their names and their records' numbers of other plausible pairs, chosen with the
    generator's truth on half the pairs and scored on the other half (:func:`bound`).
``namesakes FOLDER``
    Plaintext (DuckDB, on the generator's truth): per pair of departments, pairs of records agreeing on
    first name, last name and date of birth that are the same person, and that are different people.
``join FOLDER``
    DuckDB's plaintext three-way join of the same departments' records on the true person (what a
    trusted third party holding every department's rows and a common identifier would run).
``linked PEOPLE FOLDER``
    A he+dp linked ``COUNT(*) ... GROUP BY`` over three nodes of PEOPLE people each, spine already built
    (``test_bench_linked.py``'s federation, in this process: coordinator and nodes together), and
    DuckDB's join of the same files.
``federation FOLDER``
    The whole of it over gRPC: a coordinator and the three nodes as processes (``fedlink_tools.demo``'s
    ``LocalFederation``, mutual TLS, the demo's configs) on the synthetic departments' files; ``fedlink
    link`` for the deprivation project, then a he+dp linked ``COUNT(*) ... GROUP BY`` over its spine (the
    chain in windows) and a he+dp horizontal query. Each party's peak resident memory is read from
    ``/proc/<pid>/status`` (``VmHWM``) after each step.
``horizontal PEOPLE FOLDER``
    A he+dp ``COUNT(*) ... GROUP BY`` over three nodes of PEOPLE rows each (``federation.py``), and
    DuckDB's plaintext query of the same files.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SECRET = b"benchmark link secret of 32 byte"
IDENTIFIERS = ("first_name", "last_name", "dob", "sex", "postcode")
NODES = {"dfe": "dfe/pupils", "dwp": "dwp/claims", "nhs": "nhs/*"}
#: DuckDB's own memory cap in these workers (it spills to disk beyond it).
DUCKDB_MEMORY = "2GB"


class Peak:
    """The highest anonymous resident memory of this process, sampled in a thread."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.anon_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.anon_kib = max(self.anon_kib, int(line.split()[1]))

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.sample()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_rss_mib": round(rss / 1024, 1), "peak_anon_mib": round(self.anon_kib / 1024, 1)}


def _duckdb(folder: Path) -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
    con.execute(f"SET temp_directory = '{folder / 'duckdb.tmp'}'")
    return con


def synth(people: str, folder: str) -> dict[str, Any]:
    from fedlink_tools.synth import synthesize

    summary = synthesize(int(float(people)), 3, Path(folder) / "federation", progress=False)
    return {"rows": sum(count for _, _, count in summary.row_counts)}


def _people_query(root: Path, node: str) -> str:
    records = f"read_parquet('{root / 'truth' / 'records.parquet'}')"
    # one person per distinct identifier tuple, in an order keyed by the person (as a node's keyed hash)
    return f"""SELECT {", ".join(f"d.{c}" for c in IDENTIFIERS)}, min(t.person_id) AS person
               FROM read_parquet('{root / NODES[node]}.parquet') d JOIN {records} t USING (record_id)
               GROUP BY ALL ORDER BY hash(min(t.person_id))"""


def encode(folder: str, node: str) -> dict[str, Any]:
    from numpy.lib.format import open_memmap

    from fedlink.linkage.concepts import normalise_concepts
    from fedlink.linkage.fields import derive_spec_keys, encode_spec
    from fedlink.linkage.spec import load_spec
    from fedlink.linkage.streaming import _arrays, _file_name
    from fedlink.node.linkage import PEOPLE_PER_BATCH

    work = Path(folder)
    con = _duckdb(work)
    query = _people_query(work / "federation", node)
    count = con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
    spec = load_spec().resolve(set(IDENTIFIERS))
    keys = derive_spec_keys(SECRET, "bench", spec)
    out = work / f"node-{node}"
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    truth = open_memmap(work / f"truth-{node}.npy", mode="w+", dtype=np.int64, shape=(count,))
    reader = con.sql(query).to_arrow_reader(PEOPLE_PER_BATCH)
    at = 0
    for batch in reader:
        columns = {c: batch.column(c).to_pylist() for c in IDENTIFIERS}
        encoded = encode_spec(normalise_concepts(columns), spec, keys)
        for name, values in _arrays(encoded).items():
            shapes.setdefault(name, (values.dtype, values.shape[1:]))
            if values.ndim == 2 and values.shape[1] == 0:
                continue  # a field no record of this batch has: empty filters, zeros in the file
            if name not in files:  # a new file is zeros: earlier batches' empty filters
                files[name] = open_memmap(
                    out / _file_name(name), mode="w+", dtype=values.dtype, shape=(count, *values.shape[1:])
                )
            files[name][at : at + len(values)] = values
        truth[at : at + batch.num_rows] = batch.column("person").to_numpy()
        at += batch.num_rows
    for name, (dtype, rest) in shapes.items():
        if name not in files:
            files[name] = open_memmap(out / _file_name(name), mode="w+", dtype=dtype, shape=(count, *rest))
    for values in files.values():
        values.flush()
    truth.flush()
    return {"node": node, "people": int(count), "bytes": sum(p.stat().st_size for p in out.glob("*.npy"))}


def transfer(folder: str, node: str) -> dict[str, Any]:
    from fedlink.linkage.payload import from_bytes  # noqa: F401 - the wire format this mirrors
    from fedlink.linkage.streaming import _arrays, open_encodings, spill_npz
    from fedlink.protocol.blobs import pack_file, unpack_file

    work = Path(folder)
    encoded = open_encodings(work / f"node-{node}")
    blob = work / f"blob-{node}.npz"
    # payload.to_bytes's names; np.savez streams memory-mapped arrays into the archive
    names = {name.replace("=", ":", 1): values for name, values in _arrays(encoded).items()}
    np.savez(blob, **names)  # type: ignore[arg-type]
    # the reply as the coordinator's session writes it to disk frame by frame, then read as the unit does
    wire = work / f"wire-{node}.wire"
    pack_file(wire, b'{"count": %d}' % encoded.count, [blob])
    blob.unlink()
    _, places = unpack_file(wire)
    spill_npz(wire, work / "unit" / node, *places[0])
    size = wire.stat().st_size
    wire.unlink()
    return {"node": node, "wire_bytes": size}


def _missed(linked: Any, truths: list[np.ndarray]) -> dict[str, dict[str, int]]:
    """Per pair of departments, the true pairs of people held once on each side, by what became of
    them: linked (same entity), never scored (no blocking rule brought them together, or a posterior
    under the floor), scored below the threshold, above it but lost to the one-to-one assignment; and
    the pair's false links, with those joining two records whose true partners were not scored."""
    out = {}
    names = list(NODES)
    for pair in linked.scored:
        ta, tb = truths[pair.p], truths[pair.q]
        people_a, count_a = np.unique(ta, return_counts=True)
        people_b, count_b = np.unique(tb, return_counts=True)
        both = np.intersect1d(people_a[count_a == 1], people_b[count_b == 1])
        ia = np.flatnonzero(np.isin(ta, both))
        ia = ia[np.argsort(ta[ia])]
        ib = np.flatnonzero(np.isin(tb, both))
        ib = ib[np.argsort(tb[ib])]
        width = np.int64(len(tb) + 1)
        wanted = ia.astype(np.int64) * width + ib
        order = np.argsort(pair.ia.astype(np.int64) * width + pair.ib)
        scored = (pair.ia.astype(np.int64) * width + pair.ib)[order]
        at = np.minimum(np.searchsorted(scored, wanted), max(len(scored) - 1, 0))
        found = scored[at] == wanted if len(scored) else np.zeros(len(wanted), bool)
        posterior = np.where(found, np.asarray(pair.posterior)[order][at], -1.0)
        assigned = np.where(found, np.asarray(pair.assigned)[order][at], False)
        same = linked.spine.entity[pair.p][ia] == linked.spine.entity[pair.q][ib]
        # the pair's false links (assigned, at or above the threshold), and those of them between two
        # records neither of which has its true partner among the scored pairs: look-alikes that no
        # other candidate gives away
        true = ta[pair.ia] == tb[pair.ib]
        false_links = pair.assigned & (pair.posterior >= linked.threshold) & ~true
        partnered_a = np.zeros(len(ta), bool)
        partnered_a[pair.ia[true]] = True
        partnered_b = np.zeros(len(tb), bool)
        partnered_b[pair.ib[true]] = True
        lone = false_links & ~partnered_a[pair.ia] & ~partnered_b[pair.ib]
        out[f"{names[pair.p]}-{names[pair.q]}"] = {
            "true pairs": len(ia),
            "linked": int(same.sum()),
            "never scored": int((~found).sum()),
            "below threshold": int((found & (posterior < linked.threshold)).sum()),
            "lost one-to-one": int((found & (posterior >= linked.threshold) & ~assigned).sum()),
            "false links": int(false_links.sum()),
            "false links, no true partner of either record scored": int(lone.sum()),
        }
    return out


def _spec(posterior: str = "") -> Any:
    """The default spec for the benchmark's identifiers; ``posterior`` ("pairwise" or "one-to-one")
    replaces the spec's default."""
    import dataclasses

    from fedlink.linkage.spec import load_spec

    if posterior not in ("", "pairwise", "one-to-one"):
        raise SystemExit(f"posterior must be pairwise or one-to-one, not {posterior!r}")
    spec = load_spec().resolve(set(IDENTIFIERS))
    return dataclasses.replace(spec, posterior=posterior) if posterior else spec


def link(folder: str, max_block: str = "", posterior: str = "") -> dict[str, Any]:
    from fedlink.coordinator.linkage import overlap_counts
    from fedlink.linkage.cluster import assign_slots
    from fedlink.linkage.estimate import estimate_quality
    from fedlink.linkage.quality import pairwise_quality
    from fedlink.linkage.streaming import link_probabilistic_spilled, open_encodings

    work = Path(folder)
    spec = _spec(posterior)
    parties = [open_encodings(work / "unit" / node) for node in NODES]
    stages: dict[str, float] = {}
    mark = time.perf_counter()
    cap = {"max_block": int(float(max_block))} if max_block else {}  # e.g. the cap a larger population meets
    linked = link_probabilistic_spilled(parties, spec, spill=work / "unit" / "spill", **cap)
    stages.update(linked.seconds)
    mark = time.perf_counter()
    estimate = estimate_quality(linked.spine.entity, linked.scored)
    stages["estimate"] = time.perf_counter() - mark
    mark = time.perf_counter()
    assign_slots(linked.spine, b"benchmark slot seed")
    overlap_counts(linked.spine.entity, list(NODES))
    stages["slots"] = time.perf_counter() - mark
    entity = linked.spine.entity
    candidates = sum(s.candidates for s in linked.scored)
    scored = sum(len(s.ia) for s in linked.scored)
    truths = [np.load(work / f"truth-{node}.npy") for node in NODES]
    missed = _missed(linked, truths)
    del linked
    quality = pairwise_quality(entity, truths)
    return {
        "posterior": spec.posterior,
        "records": [len(e) for e in entity],
        "stages": {k: round(v, 2) for k, v in stages.items()},
        "candidates": candidates,
        "scored_pairs": scored,
        "f1": quality.f1,
        "precision": quality.precision,
        "recall": quality.recall,
        "estimated_f1": estimate.overall.f1,
        "true_pairs": missed,
    }


def bound(folder: str) -> dict[str, Any]:
    """A diagnostic of how well pairs can be told apart on a few features: the best pairwise F1 of a
    rule that decides a scored pair from its comparison pattern, how common its names are (the decile
    of the product of its first and last names' shares) and how many other plausible pairs (pairwise
    posterior above 0.01) each of its records has (0, 1, 2 or more). Pairs alike in all of these are a
    class. With the generator's truth, the classes are ranked by their true rate on one half of the
    pairs (split by a hash of the pair), and the best number of classes to link is chosen and scored on
    the other half, against half the true cross pairs of people, so that small classes do not flatter
    the figure. A linker using more than these features (exact name frequencies, how strong its
    competitors are, links through a third node) can do better."""
    from fedlink.linkage.probabilistic import _term_frequencies, comparison_levels, pattern_ids
    from fedlink.linkage.streaming import link_probabilistic_spilled, open_encodings

    work = Path(folder)
    spec = _spec("pairwise")
    parties = [open_encodings(work / "unit" / node) for node in NODES]
    truths = [np.load(work / f"truth-{node}.npy") for node in NODES]
    linked = link_probabilistic_spilled(parties, spec, spill=work / "unit" / "spill")
    names = [c for c, comparison in enumerate(spec.comparisons) if comparison.kind == "name"][:2]
    shares = _term_frequencies(parties, spec)
    classes: list[np.ndarray] = []
    truth_of: list[np.ndarray] = []
    halves: list[np.ndarray] = []
    true_pairs = 0
    for pair in linked.scored:
        p, q = pair.p, pair.q
        people_a, count_a = np.unique(truths[p], return_counts=True)
        people_b, count_b = np.unique(truths[q], return_counts=True)
        _, at_a, at_b = np.intersect1d(people_a, people_b, return_indices=True)
        true_pairs += int((count_a[at_a] * count_b[at_b]).sum())
        ia, ib = pair.ia.astype(np.int64), pair.ib.astype(np.int64)
        patterns = (
            np.concatenate(
                [
                    pattern_ids(
                        comparison_levels(
                            spec, parties[p], parties[q], pair.ia[s : s + 2**21], pair.ib[s : s + 2**21], None
                        )
                    )
                    for s in range(0, len(ia), 2**21)
                ]
            )
            if len(ia)
            else np.zeros(0, np.int64)
        )
        common = np.ones(len(ia))
        for c in names:
            if c in shares:
                common *= np.maximum(shares[c][p][ia], shares[c][q][ib])
        decile = np.searchsorted(np.quantile(common, np.linspace(0.1, 0.9, 9)), common) if len(ia) else common
        plausible = pair.posterior > 0.01
        others_a = np.bincount(ia[plausible], minlength=parties[p].count)[ia] - plausible
        others_b = np.bincount(ib[plausible], minlength=parties[q].count)[ib] - plausible
        key = ((patterns.astype(np.int64) * 10 + decile) * 3 + np.minimum(others_a, 2)) * 3 + np.minimum(others_b, 2)
        classes.append(key * 16 + p * 4 + q)
        truth_of.append(truths[p][ia] == truths[q][ib])
        halves.append(((ia * 0x9E3779B1) ^ (ib * 0x85EBCA77) ^ (p << 40)) >> 7 & 1)
    if not true_pairs or not any(len(c) for c in classes):
        raise SystemExit("bound needs scored pairs and true pairs")
    _, inverse = np.unique(np.concatenate(classes), return_inverse=True)
    truth, half = np.concatenate(truth_of).astype(float), np.concatenate(halves).astype(bool)
    counts = [np.bincount(inverse[half == h], minlength=inverse.max() + 1) for h in (False, True)]
    rights = [np.bincount(inverse[half == h], truth[half == h], minlength=inverse.max() + 1) for h in (False, True)]
    order = np.argsort(-(rights[0] / np.maximum(counts[0], 1)), kind="stable")  # ranked on one half
    links, correct = np.cumsum(counts[1][order]), np.cumsum(rights[1][order])  # scored on the other
    f1 = 2 * correct / (links + true_pairs / 2)
    best = int(np.argmax(f1))
    return {
        "classes": int(inverse.max() + 1),
        "true_pairs": true_pairs,
        "f1": float(f1[best]),
        "precision": float(correct[best] / links[best]),
        "recall": float(correct[best] / (true_pairs / 2)),
    }


def namesakes(folder: str) -> dict[str, Any]:
    """How often a department's person shares first name, last name and date of birth with a different
    person of another (by the generator's truth): pairs no identifier-based linkage can tell apart on
    those three. Per pair of departments, such pairs against true pairs agreeing on them."""
    root = Path(folder) / "federation"
    con = _duckdb(Path(folder))
    records = f"read_parquet('{root / 'truth' / 'records.parquet'}')"
    for node, path in NODES.items():
        con.execute(
            f"""CREATE TABLE "{node}" AS SELECT DISTINCT lower(d.first_name) f, lower(d.last_name) l,
                CASE WHEN d.dob LIKE '__/__/____' THEN substr(d.dob, 7, 4) || substr(d.dob, 4, 2) || substr(d.dob, 1, 2)
                     ELSE replace(CAST(d.dob AS VARCHAR), '-', '') END dob, t.person_id p
                FROM read_parquet('{root / path}.parquet') d JOIN {records} t USING (record_id)
                WHERE t.node = '{node}'"""
        )
    out = {}
    names = list(NODES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same, other = con.execute(
                f"""SELECT count(*) FILTER (WHERE x.p = y.p), count(*) FILTER (WHERE x.p <> y.p)
                    FROM "{a}" x JOIN "{b}" y USING (f, l, dob)"""
            ).fetchall()[0]
            out[f"{a}-{b}"] = {"same person": int(same), "different people": int(other)}
    return {"agree on first name, last name and date of birth": out}


def join(folder: str) -> dict[str, Any]:
    work = Path(folder)
    root = work / "federation"
    con = _duckdb(work)
    records = f"read_parquet('{root / 'truth' / 'records.parquet'}')"
    # a trusted third party holding every department's rows and a common person identifier
    people = {
        n: f"(SELECT DISTINCT t.person_id FROM read_parquet('{root / t}.parquet') d JOIN {records} t USING (record_id))"
        for n, t in NODES.items()
    }
    sql = (
        f"SELECT count(*) FROM {people['dfe']} a JOIN {people['dwp']} b USING (person_id) "
        f"JOIN {people['nhs']} c USING (person_id)"
    )
    return {"linked_in_all_three": int(con.execute(sql).fetchall()[0][0])}


def linked(people: str, folder: str) -> dict[str, Any]:
    import duckdb
    from federation import make_pki
    from test_bench_linked import LinkedBench

    work = Path(folder) / "linked"
    work.mkdir(parents=True, exist_ok=True)
    bench = LinkedBench(int(float(people)), work)
    mark = time.perf_counter()
    bench.write()
    written = time.perf_counter() - mark
    pki_dir = make_pki(work, nodes=3)
    bench.start(pki_dir)
    try:
        mark = time.perf_counter()
        answer = bench.query()
        query_s = time.perf_counter() - mark
    finally:
        bench.stop()
    con = duckdb.connect()
    mark = time.perf_counter()
    bench.floor(con)
    floor_s = time.perf_counter() - mark
    return {"write_s": round(written, 2), "query_s": query_s, "duckdb_s": floor_s, "groups": len(answer.rows())}


def _party_peaks(processes: dict[str, Any]) -> dict[str, float]:
    """Each party's peak resident memory so far, in GiB (``VmHWM``)."""
    peaks = {}
    for party, process in processes.items():
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks[party] = round(int(line.split()[1]) / 1024**2, 2)
    return peaks


def federation(folder: str) -> dict[str, Any]:
    import fedlink
    from fedlink_tools.demo import ANALYST, LocalFederation, federation_dir, prepare_pki

    work = Path(folder) / "grpc"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data").exists():
        (work / "data").symlink_to((Path(folder) / "federation").resolve())
    nodes = list(NODES)
    if not (work / "pki").exists():
        prepare_pki(work, nodes)
    fed = LocalFederation(workdir=work, root=federation_dir(), nodes=nodes)
    fed.start()
    out: dict[str, Any] = {}
    try:
        pki = work / "pki"
        client = fedlink.connect(
            fed.address,
            cert=pki / f"analyst-{ANALYST}.crt",
            key=pki / f"analyst-{ANALYST}.key",
            ca=pki / "ca.crt",
            timeout_s=7200,
        )
        project = "deprivation-mental-health"
        mark = time.perf_counter()
        report = client.link(project)
        out["link_s"] = round(time.perf_counter() - mark, 1)
        out["link_stages"] = {k: round(v, 1) for k, v in report.stages.items()}
        out["peak_gib_after_link"] = _party_peaks(fed.processes)
        linked_sql = (
            "SELECT dfe.pupils.region, COUNT(*) AS n FROM dfe.pupils LINK dwp.claims, nhs.diagnoses "
            "GROUP BY dfe.pupils.region"
        )
        mark = time.perf_counter()
        answer = client.query(linked_sql, project=project, epsilon=1.0)
        out["linked_s"] = round(time.perf_counter() - mark, 1)
        out["linked_groups"] = len(answer.rows())
        out["peak_gib_after_linked"] = _party_peaks(fed.processes)
        mark = time.perf_counter()
        answer = client.query("SELECT region, COUNT(*) AS n FROM pupils GROUP BY region", project=project, epsilon=0.5)
        out["horizontal_s"] = round(time.perf_counter() - mark, 2)
        out["horizontal_groups"] = len(answer.rows())
    finally:
        fed.stop()
    return out


def horizontal(people: str, folder: str) -> dict[str, Any]:
    from federation import PlaintextFloor, make_pki, start_federation, write_events

    work = Path(folder) / "horizontal"
    rows = int(float(people))
    files = []
    for index in range(1, 4):
        path = work / f"n{index:02d}.parquet"
        write_events(path, rows, 10, seed=index)
        files.append(path)
    federation = start_federation(work, make_pki(work, nodes=3), files, 10, 1)
    try:
        mark = time.perf_counter()
        answer = federation.query("SELECT grp, COUNT(*) AS n FROM events GROUP BY grp", "he+dp")
        query_s = time.perf_counter() - mark
    finally:
        federation.stop()
    with PlaintextFloor(files) as floor:
        mark = time.perf_counter()
        floor.query("COUNT(*)")
        floor_s = time.perf_counter() - mark
    return {"query_s": query_s, "duckdb_s": floor_s, "groups": len(answer.rows())}


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "synth": synth,
    "encode": encode,
    "transfer": transfer,
    "link": link,
    "join": join,
    "linked": linked,
    "horizontal": horizontal,
    "federation": federation,
    "namesakes": namesakes,
    "bound": bound,
}


def main(stage: str, *args: str) -> dict[str, Any]:
    peak = Peak()
    started = time.perf_counter()
    out = STAGES[stage](*args)
    seconds = time.perf_counter() - started
    return {"stage": stage, "seconds": round(seconds, 3), **peak.stop(), **out}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *sys.argv[2:])))
