"""ECDH PSI (:mod:`fedlink.pets.psi`): blinding commutes, so equal values of any parties meet after the
ring and different ones never do; domains separate tiers and projects; malformed input is refused; the
pool gives the answers of one process; and on three synthetic departments the PSI spine is the spine
that keyed match keys give on the same data (exact tiers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlink.errors import BadInput, Fault
from fedlink.linkage.cluster import cluster
from fedlink.linkage.encode import EncodedRecords, derive_keys, encode, match_key_messages
from fedlink.linkage.normalise import normalise
from fedlink.linkage.schema import load_schema
from fedlink.pets import psi
from fedlink_tools.synth import synthesize

from .test_linkage_match import departments


def ring(sets: list[list[bytes]], dst: bytes) -> list[list[bytes]]:
    """What the coordinator's ring computes, in one process: every party's values blinded by every
    party's scalar, starting with its own, the last one hashing to digests."""
    scalars = [psi.new_scalar() for _ in sets]
    out = []
    for p, values in enumerate(sets):
        blob = psi.hash_and_blind(values, dst, scalars[p])
        others = [scalars[(p + step) % len(sets)] for step in range(1, len(sets))]
        for step, scalar in enumerate(others):
            blob = psi.reblind(blob, scalar, final=step == len(others) - 1)
        out.append(psi.digests(blob))
    return out


values = st.lists(st.binary(min_size=0, max_size=12), min_size=0, max_size=12, unique=True)


@settings(max_examples=15, deadline=None)
@given(st.lists(values, min_size=2, max_size=4))
def test_equal_values_meet_and_different_ones_never_do(sets: list[list[bytes]]) -> None:
    digests = ring(sets, psi.domain("project", "tier"))
    seen: dict[bytes, bytes] = {}
    for values_of, digests_of in zip(sets, digests, strict=True):
        assert len(digests_of) == len(values_of) and all(len(d) == psi.DIGEST_BYTES for d in digests_of)
        for value, digest in zip(values_of, digests_of, strict=True):
            assert seen.setdefault(digest, value) == value, "a digest stands for one value only"
    by_value = {}
    for values_of, digests_of in zip(sets, digests, strict=True):
        for value, digest in zip(values_of, digests_of, strict=True):
            assert by_value.setdefault(value, digest) == digest, "a value gets one digest at every party"


def test_domains_separate_tiers_and_projects_and_scalars_separate_runs() -> None:
    values = [b"smith|1970", b"jones|1982"]
    base = ring([values, values], psi.domain("p", "t1"))[0]
    assert ring([values, values], psi.domain("p", "t2"))[0] != base
    assert ring([values, values], psi.domain("q", "t1"))[0] != base
    assert ring([values, values], psi.domain("p", "t1"))[0] != base, "fresh scalars: fresh digests"


def test_blinded_points_hide_the_hashed_point_and_differ_per_scalar() -> None:
    dst = psi.domain("p", "t")
    one, two = psi.new_scalar(), psi.new_scalar()
    a, b = psi.hash_and_blind([b"value"], dst, one), psi.hash_and_blind([b"value"], dst, two)
    assert len(a) == psi.POINT_BYTES and a != b
    # commutativity at the point level, before hashing to digests
    assert psi.reblind(a, two) == psi.reblind(b, one)


def test_bad_scalars_and_malformed_points_are_refused() -> None:
    with pytest.raises(BadInput, match="PSI scalar"):
        psi.hash_and_blind([b"x"], b"d", b"\x00" * 32)
    with pytest.raises(BadInput, match="PSI scalar"):
        psi.reblind(b"", b"\xff" * 32)
    with pytest.raises(Fault, match="not a point of secp256k1"):
        psi.reblind(b"\x01" * psi.POINT_BYTES, psi.new_scalar())
    with pytest.raises(Fault, match="whole number"):
        psi.reblind(b"\x01" * 10, psi.new_scalar())


def test_the_pool_gives_the_answers_of_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    scalar, dst = psi.new_scalar(), psi.domain("p", "t")
    values = [str(i).encode() for i in range(300)]
    monkeypatch.setenv("FEDLINK_HE_WORKERS", "1")
    one = psi.reblind(psi.hash_and_blind(values, dst, scalar), scalar, final=True)
    monkeypatch.setenv("FEDLINK_HE_WORKERS", "2")
    two = psi.reblind(psi.hash_and_blind(values, dst, scalar), scalar, final=True)
    assert one == two


@pytest.fixture(scope="module")
def normalised_departments(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root: Path = tmp_path_factory.mktemp("psi") / "federation"
    synthesize(4_000, 5, root, progress=False)
    columns, _, _ = departments(root, ["dfe/pupils", "dwp/claims", "nhs/*"])
    return [normalise(c) for c in columns]


def test_the_psi_spine_is_the_keyed_exact_tier_spine(normalised_departments: list[dict]) -> None:
    """Same people, same tiers: keyed match keys (the shared-secret mode without its fuzzy tier) and
    PSI digests (distinct values shuffled, as a node sends them) link exactly the same records into the
    same entities."""
    schema = load_schema()
    keys = derive_keys(b"a link secret of 32 bytes.......", "test", schema)
    keyed = []
    for records in normalised_departments:
        full = encode(records, schema, keys)
        keyed.append(exact_only(full.count, full.match_keys))
    messages = [match_key_messages(records, schema) for records in normalised_departments]
    by_psi = [dict[str, np.ndarray]() for _ in messages]
    for tier, _ in schema.match_keys:
        shuffled = [m[tier].shuffled(np.random.default_rng(p)) for p, m in enumerate(messages)]
        digests = ring([s.messages() for s in shuffled], psi.domain("test", tier))
        for p, tier_messages in enumerate(shuffled):
            table = np.array(digests[p] or [b""], dtype=f"S{psi.DIGEST_BYTES}")
            index = tier_messages.index
            by_psi[p][tier] = np.where(index >= 0, table[np.maximum(index, 0)], b"")
    spine_psi = cluster(
        [exact_only(len(m[schema.match_keys[0][0]].index), k) for m, k in zip(messages, by_psi, strict=True)]
    )
    spine_keyed = cluster(keyed)
    assert spine_psi.stats.exact_links == spine_keyed.stats.exact_links > 1000
    assert spine_psi.entities == spine_keyed.entities
    for mine, theirs in zip(spine_psi.entity, spine_keyed.entity, strict=True):
        assert np.array_equal(mine, theirs)


def test_tier_messages_are_built_in_batches_and_follow_a_shuffle(normalised_departments: list[dict]) -> None:
    tiers = match_key_messages(normalised_departments[0], load_schema())
    tier = next(iter(tiers.values()))
    whole = tier.messages()
    assert len(whole) == len(tier) == len(set(whole)) > 100, "distinct values, each once"
    assert tier.messages(10, 20) == whole[10:20]
    shuffled = tier.shuffled(np.random.default_rng(1))
    moved = shuffled.messages()
    assert sorted(moved) == sorted(whole) and moved != whole
    for record in range(0, len(tier.index), 97):  # every record keeps its value through the shuffle
        if tier.index[record] >= 0:
            assert moved[shuffled.index[record]] == whole[tier.index[record]]
        else:
            assert shuffled.index[record] == -1


def exact_only(count: int, match_keys: dict[str, np.ndarray]) -> EncodedRecords:
    return EncodedRecords(
        count=count,
        match_keys=match_keys,
        blooms=np.zeros((count, 0), dtype=np.uint64),
        popcounts=np.zeros(count, dtype=np.int32),
        block_keys={},
    )
