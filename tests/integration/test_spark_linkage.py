"""The linkage unit on Spark (local mode): `fedlink link` with ``[linkage] engine = "spark"`` builds the
spine the in-process unit builds from the same encodings, and distributed clustering decides every
component as the in-process union-find does, including components where a node appears twice."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedlink
from fedlink.coordinator.config import LinkageEngineSection
from fedlink.linkage.cluster import cluster_links
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.match import FUZZY, PairLinks, StageSeconds
from fedlink.linkage.payload import from_bytes
from fedlink.linkage.probabilistic import link_probabilistic
from fedlink.linkage.spec import parse_spec
from fedlink.protocol import audit, rpc
from fedlink.protocol.blobs import unpack
from fedlink.protocol.fedlink_pb2 import Frame
from fedlink.protocol.transport import Reassembler

from ..conftest import ANALYST, start_federation
from ..servers import spark_unavailable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(spark_unavailable() is not None, reason=str(spark_unavailable())),
]
PROJECT = "deprivation-mental-health"
NODES = ["dfe", "dwp", "nhs"]
MASTER = "local[2]"


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    """One Spark session for the module: the coordinator's engine finds it (same master) and uses it."""
    from fedlink.linkage.spark_unit import spark_session

    spark = spark_session(MASTER, {"spark.sql.shuffle.partitions": "2"})
    yield spark
    spark.stop()


@pytest.mark.skipif(
    os.environ.get("FEDLINK_TEST_SPARK_LINK") != "1",
    reason="fedlink link on Spark takes minutes on a busy 2-core runner; set FEDLINK_TEST_SPARK_LINK=1",
)
def test_link_on_spark_builds_the_in_process_spine(session: Any, workdir: Path) -> None:
    engine = LinkageEngineSection(engine="spark", spark_master=MASTER, spark_partitions=2)
    with audit.recording() as captured:
        fed = start_federation(NODES, linkage=engine)
        try:
            pki = workdir / "pki"  # Spark's jobs take minutes on a busy CI runner: wait for them
            analyst = fedlink.connect(
                fed.address,
                cert=pki / f"analyst-{ANALYST}.crt",
                key=pki / f"analyst-{ANALYST}.key",
                ca=pki / "ca.crt",
                timeout_s=900,
            )
            report = analyst.link(PROJECT)
        finally:
            fed.stop()
    assert report.matching == "probabilistic" and report.nodes == tuple(NODES)
    messages = _messages(captured)
    # the encodings the nodes sent (the linkage unit's only input) and the spec it sent them
    calls = [json.loads(body) for kind, body in messages if kind == rpc.LINK_ENCODE]
    spec = parse_spec(json.loads(calls[0]["spec"]), "the spec of the link")
    encoded = [from_bytes(unpack(body)[1][0]) for kind, body in messages if kind == "result" and _is_encoding(body)]
    assert len(encoded) == len(NODES)
    with np.load(fed.state / "coordinator" / "spines" / f"{PROJECT}.npz") as spine:
        on_spark = {node: spine[f"entity:{node}"] for node in NODES}
    # the answers' order on the wire is not the nodes' order: match each by its number of people
    by_count = {parties.count: parties for parties in encoded}
    assert len(by_count) == len(NODES), "the demo's departments differ in size"
    parties = [by_count[len(on_spark[node])] for node in NODES]
    here = link_probabilistic(parties, spec)
    for node, entity in zip(NODES, here.spine.entity, strict=True):
        np.testing.assert_array_equal(on_spark[node], entity)
    assert len(np.unique(np.concatenate(list(on_spark.values())))) == here.spine.entities


def _messages(captured: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The messages the coordinator and nodes sent, reassembled from the recorded frames."""
    out, reassembler = [], Reassembler()
    for direction, data in captured:
        if direction == "sent":
            message = reassembler.feed(Frame.FromString(data))
            if message is not None:
                out.append((message.kind, message.body))
    return out


def _is_encoding(body: bytes) -> bool:
    if body[:4] != b"FLB1":
        return False
    blobs = unpack(body)[1]
    return bool(blobs) and blobs[0][:2] == b"PK"


def test_distributed_clustering_decides_crowded_components_as_the_union_find(session: Any) -> None:
    """Random links among three small parties: many components hold two records of one party, so
    merges are refused there in strength order; every entity must be the in-process one."""
    from fedlink.linkage.spark_unit import cluster_links_on_spark

    rng = np.random.default_rng(22)
    counts = [40, 35, 30]
    links = []
    for p, q in ((0, 1), (0, 2), (1, 2)):
        size = 45
        ia, ib = rng.integers(0, counts[p], size), rng.integers(0, counts[q], size)
        score = rng.choice(np.array([0.7, 0.8, 0.9, 1.0], np.float32), size)  # ties, broken by record order
        via = np.where(rng.random(size) < 0.2, 0, FUZZY).astype(np.int8)
        links.append((p, q, PairLinks(ia, ib, score, via, 0, 0, StageSeconds())))
    expected = cluster_links(counts, links)
    found = cluster_links_on_spark(counts, links, session)
    assert expected.stats.refused_merges > 0, "the links must make crowded components"
    assert found.entities == expected.entities
    assert found.stats.refused_merges == expected.stats.refused_merges
    for mine, theirs in zip(found.entity, expected.entity, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_the_staged_encodings_are_the_encodings_and_nothing_else(session: Any, tmp_path: Path) -> None:
    """What executors read: per record its position and the arrays the node sent, bit for bit; the
    staging folder is gone when the run ends."""
    import pyarrow.parquet as pq

    from fedlink.linkage.spark_unit import StagedEncodings

    rng = np.random.default_rng(5)
    count = 50
    records = EncodedRecords(
        count=count,
        match_keys={"full": np.frombuffer(rng.bytes(16 * count), "S16")},
        blooms=rng.integers(0, 2**63, (count, 16), dtype=np.uint64),
        popcounts=rng.integers(0, 500, count, dtype=np.int32),
        block_keys={"dob": rng.integers(0, 2**63, count, dtype=np.uint64)},
        fields={
            "first_name/filter": rng.integers(0, 2**63, (count, 4), dtype=np.uint64),
            "first_name/pop": rng.integers(0, 100, count, dtype=np.int32),
            "dob/digest": rng.integers(0, 2**63, count, dtype=np.uint64),
        },
        subgroups={"sex": rng.integers(0, 3, count, dtype=np.uint64)},
    )
    staged = StagedEncodings(session, [records], tmp_path)
    with staged:
        assert staged.folder is not None
        table = pq.read_table(staged.folder / "party0.parquet")
    assert staged.folder is not None and not staged.folder.exists()
    assert table.column_names == ["row", "m0", "k0", "f0", "f1", "f2", "bloom", "pop"]  # no subgroup codes

    def rows(column: str, dtype: str) -> np.ndarray:
        return np.frombuffer(b"".join(table[column].to_pylist()), dtype)

    assert rows("m0", "S16").tolist() == records.match_keys["full"].tolist()
    np.testing.assert_array_equal(rows("bloom", "<u8").reshape(count, 16), records.blooms)
    np.testing.assert_array_equal(rows("f0", "<u8").reshape(count, 4), records.fields["first_name/filter"])
    np.testing.assert_array_equal(table["k0"].to_numpy().view(np.uint64), records.block_keys["dob"])
    np.testing.assert_array_equal(table["f2"].to_numpy().view(np.uint64), records.fields["dob/digest"])
    np.testing.assert_array_equal(table["row"].to_numpy(), np.arange(count))


def test_the_clk_path_on_spark_equals_cluster(session: Any, tmp_path: Path) -> None:
    """Three parties sharing noisy copies of people: exact tiers (some keys ambiguous), blocking with
    a block too big to compare, Dice at the threshold, one-to-one and clustering, as cluster() does."""
    from fedlink.linkage.cluster import cluster
    from fedlink.linkage.spark_unit import cluster_on_spark

    rng = np.random.default_rng(7)
    people = 120
    base = rng.integers(0, 2**63, (people, 8), dtype=np.uint64)
    parties = []
    for _ in range(3):
        chosen = rng.choice(people, 90, replace=False)
        noise = rng.integers(0, 2**63, (90, 8), dtype=np.uint64) & rng.integers(0, 2**63, (90, 8), dtype=np.uint64)
        blooms = base[chosen] ^ (noise & rng.integers(0, 2**63, (90, 8), dtype=np.uint64))
        full = np.array([b"%016d" % p if rng.random() < 0.5 else b"" for p in chosen], "S16")
        full[:4] = b"ambiguous digest"  # shared by four records of each party: links nothing at this tier
        parties.append(
            EncodedRecords(
                count=90,
                match_keys={"full": full, "loose": np.array([b"%016d" % (p // 2) for p in chosen], "S16")},
                blooms=blooms,
                popcounts=np.bitwise_count(blooms).sum(axis=1).astype(np.int32),
                block_keys={
                    "decade": (chosen % 10 + 1).astype(np.uint64),  # blocks of ~81 pairs: some skipped below
                    "person": (chosen + 1).astype(np.uint64),
                },
            )
        )
    expected = cluster(parties, threshold=0.6, max_block=60)
    found = cluster_on_spark(parties, session, tmp_path, partitions=2, threshold=0.6, max_block=60)
    assert expected.stats.exact_links > 0 and expected.stats.fuzzy_links > 0
    assert found.entities == expected.entities
    for mine, theirs in zip(found.entity, expected.entity, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert (found.stats.candidates, found.stats.comparisons) == (expected.stats.candidates, expected.stats.comparisons)
