"""The bounded-memory linkage path (:mod:`fedlink.linkage.streaming`) builds the in-process path's
spine, scores and models from encodings memory-mapped from disk, with candidate pairs spilled to
files in small chunks, and clusters like :func:`fedlink.linkage.cluster.cluster_links`."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from fedlink.errors import Fault
from fedlink.linkage import streaming
from fedlink.linkage.cluster import cluster_links
from fedlink.linkage.concepts import normalise_concepts
from fedlink.linkage.fields import derive_spec_keys, encode_spec
from fedlink.linkage.match import FUZZY, PairLinks, StageSeconds
from fedlink.linkage.payload import to_bytes
from fedlink.linkage.probabilistic import link_probabilistic
from fedlink.linkage.spec import load_spec
from fedlink_tools.synth import synthesize

COLUMNS = ("first_name", "last_name", "dob", "sex", "postcode")


@pytest.fixture(scope="module")
def departments(tmp_path_factory: pytest.TempPathFactory) -> list[object]:
    """DfE, DWP and NHS of 8,000 synthetic people, encoded with the default spec."""
    root = tmp_path_factory.mktemp("departments") / "federation"
    synthesize(8_000, 11, root, progress=False)
    spec = load_spec().resolve(set(COLUMNS))
    keys = derive_spec_keys(b"s" * 32, "test", spec)
    parties = []
    for table in ["dfe/pupils", "dwp/claims", "nhs/*"]:
        rows = duckdb.execute(
            f"""SELECT DISTINCT {", ".join(COLUMNS)} FROM read_parquet('{root / table}.parquet')
                ORDER BY hash(concat_ws('|', {", ".join(COLUMNS)}))"""
        ).fetchall()
        values = {c: [row[i] for row in rows] for i, c in enumerate(COLUMNS)}
        parties.append(encode_spec(normalise_concepts(values), spec, keys))
    return parties


def test_spilled_linkage_of_mapped_encodings_equals_the_in_process_linkage(
    departments: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec().resolve(set(COLUMNS))
    expected = link_probabilistic(departments, spec)
    for index, party in enumerate(departments):
        streaming.spill_encodings(party, tmp_path / "encodings" / str(index))
    mapped = [streaming.open_encodings(tmp_path / "encodings" / str(i)) for i in range(len(departments))]
    assert isinstance(mapped[0].fields["first_name/filter"], np.memmap)
    # chunks far smaller than the pairs, so pass 1 and pass 2 cross many chunk boundaries
    monkeypatch.setattr(streaming, "CHUNK", 1_000)
    spill = tmp_path / "spill"
    got = streaming.link_probabilistic_spilled(mapped, spec, spill=spill)
    assert got.spine.entities == expected.spine.entities
    for mine, theirs in zip(got.spine.entity, expected.spine.entity, strict=True):
        assert np.array_equal(mine, theirs)
    assert got.threshold == expected.threshold and got.model.prior == expected.model.prior
    for mine, theirs in zip(got.scored, expected.scored, strict=True):
        assert mine.candidates == theirs.candidates > 0
        for name in ("ia", "ib", "posterior", "via", "assigned"):
            assert np.array_equal(getattr(mine, name), getattr(theirs, name)), name
    assert got.spine.stats.refused_merges == expected.spine.stats.refused_merges
    assert not any(path.is_file() for path in spill.rglob("*")), "spilled pairs are removed once scored"


def test_encodings_unpacked_from_the_wire_map_back_unchanged(departments: list, tmp_path: Path) -> None:
    party = departments[0]
    blob = tmp_path / "node.npz"
    blob.write_bytes(to_bytes(party))
    streaming.spill_npz(blob, tmp_path / "node")
    mapped = streaming.open_encodings(tmp_path / "node")
    assert mapped.count == party.count
    assert set(mapped.fields) == set(party.fields) and set(mapped.block_keys) == set(party.block_keys)
    for name, values in party.fields.items():
        assert np.array_equal(mapped.fields[name], values), name
    for tier, values in party.match_keys.items():
        assert np.array_equal(mapped.match_keys[tier], values), tier


def test_a_spill_folder_without_encodings_is_a_fault(tmp_path: Path) -> None:
    with pytest.raises(Fault, match="no encodings"):
        streaming.open_encodings(tmp_path)


def test_compact_clusters_equal_python_clusters_and_refuse_two_records_of_a_party() -> None:
    rng = np.random.default_rng(5)
    counts = [400, 300, 350]
    links = []
    for p, q in ((0, 1), (0, 2), (1, 2)):
        size = 500  # more links than records: many merges are refused or already joined
        links.append(
            (
                p,
                q,
                PairLinks(
                    ia=rng.integers(0, counts[p], size),
                    ib=rng.integers(0, counts[q], size),
                    score=rng.choice(np.linspace(0.5, 1.0, 7), size).astype(np.float32),
                    via=np.where(rng.random(size) < 0.2, 0, FUZZY).astype(np.int8),
                    candidates=size,
                    comparisons=size,
                    seconds=StageSeconds(),
                ),
            )
        )
    expected = cluster_links(counts, links)
    got = streaming.cluster_links_compact(counts, links)
    assert got.entities == expected.entities and got.stats.refused_merges == expected.stats.refused_merges > 0
    for mine, theirs in zip(got.entity, expected.entity, strict=True):
        assert np.array_equal(mine, theirs)
    assert all(len(np.unique(e)) == len(e) for e in got.entity)  # at most one record of a party per entity
