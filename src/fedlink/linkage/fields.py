"""Field-level keyed encodings: what a node sends so that the linkage unit can compare records field by
field (probabilistic matching, :mod:`fedlink.linkage.probabilistic`) without learning any value.

For each comparison of the project's spec (:mod:`fedlink.linkage.spec`) a node sends, per record:

Filters (name, date, code and text comparisons)
    A Bloom filter of the field's tokens: bigrams of a name (with its formal name's bigrams where the
    comparison takes ``nicknames``) or of an address, digits of a date or characters of a code tagged
    with their position. Each token sets ``bits_per_token`` bits chosen by AES-CMAC and an AES
    keystream under keys of the comparison (:func:`fedlink.linkage.encode.token_rows`), so the Dice
    similarity of two filters estimates the similarity of the two values. Name comparisons share
    one key (a first name written into the last-name column sets the bits it sets in its own) and a
    name comparison with ``middle`` adds a filter of the first middle name under that key.
Digests (date, code and exact comparisons)
    AES-CMAC of the value under the comparison's digest key, as 64 bits (0: missing); a date
    also sends the digest of its day-month transposition under the same key, so the unit can tell
    a transposed date from a different one.
Subgroup codes
    For each subgroup of the spec, a keyed code of the record's subgroup label (``male``, ``1970s``,
    or a node column's category), so quality can be estimated by subgroup; only nodes hold labels.

Keys
    :func:`derive_spec_keys`: HKDF-SHA256 of the link secret per project and purpose (each filter key,
    each digest key, each subgroup), besides the match-key and blocking keys of
    :func:`fedlink.linkage.encode.derive_keys`. Encodings of one project say nothing about another's.

Defences against frequency attacks, and the residual risk
    A field-level filter is easier to attack than a record-level CLK: every record with the same
    first name has the same filter, so whoever holds the filters (the linkage unit) sees how often each
    occurs and can align the most frequent ones with public name frequencies. Three defences:

    *Keyed per field and project*: without the link secret nobody can compute the filter of a guessed
    value (no dictionary attack), and filters of two projects or two fields cannot be related.
    *XOR folding* (``xor_fold``, on by default): filters are built at twice their length and the
    halves XORed, so that no bit says whether a token is present; this defeats the published attacks
    that read which bits a bigram sets and so rebuild values that no frequency table holds.
    *Bit-level randomised response* (``flip_probability`` f, off by default): every bit of every
    record's filter is flipped independently with probability f, fresh for each record, so equal
    values no longer give equal filters. Each filter is then ε-differentially private with respect to
    its value with ε = bits x ln((1 - f) / f) (:func:`flip_epsilon`; the worst case, two values whose
    filters differ in every bit), which is large for any f that leaves the filters useful: it blurs
    counting, it is no formal guarantee for a whole record.

    Residual risk, stated plainly: without flipping, the unit learns which records share each field's
    value, hence each field's frequency distribution; for fields of few values (sex, region) or
    skewed values (common names) it can guess the value of many records by frequency. Digests reveal
    the same equality for dates of birth, codes and exact fields even with flipping (a date of birth's
    classes are nearly equal in size, so they say little by themselves). Subgroup codes reveal which
    records share a subgroup label. Approving fewer concepts for a project (``node.toml``) is the
    data owner's control over this; the record-level CLK (``matching: "clk"``) exposes less per field
    at the cost of the per-field model.

>>> from fedlink.linkage.spec import load_spec
>>> from fedlink.linkage.concepts import normalise_concepts
>>> spec = load_spec().resolve(set())
>>> keys = derive_spec_keys(b"k" * 32, "demo", spec)
>>> fields = normalise_concepts({"first_name": ["Bill", "William"], "dob": ["1990-03-04", "04/03/1990"]})
>>> encoded = encode_spec(fields, spec, keys)
>>> bool(encoded.fields["dob/digest"][0] == encoded.fields["dob/digest"][1]), encoded.fields["first_name/filter"].shape
(True, (2, 4))
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

import numpy as np

from fedlink.errors import BadInput
from fedlink.linkage.encode import (
    MAC_KEY_BYTES,
    SEPARATOR,
    EncodedRecords,
    LinkKeys,
    aes_cmac,
    derive_keys,
    encode,
    project_key,
    token_rows,
    value_blocks,
)
from fedlink.linkage.normalise import distinct_codes, formal_first_name
from fedlink.linkage.spec import Comparison, LinkageSpec

#: Version of the field-level key derivation (part of every HKDF info string).
FIELD_KEYS_VERSION: Final = 2
_SUBGROUP_DECADES: Final = range(1850, 2101, 10)


def derive_spec_keys(link_secret: bytes, project: str, spec: LinkageSpec) -> LinkKeys:
    """Every key a node needs to encode ``spec`` for ``project``: match keys, blocking keys, the CLK
    keys (matching "clk"), and one key per field filter, digest and subgroup."""
    keys = derive_keys(link_secret, project, spec.schema)

    def key(purpose: str, name: str, length: int = MAC_KEY_BYTES) -> bytes:
        return project_key(link_secret, project, f"v{FIELD_KEYS_VERSION}/{purpose}/{name}", length)

    return dataclasses.replace(
        keys,
        compare=MappingProxyType(
            {c.key_name: key("filter", c.key_name, 2 * MAC_KEY_BYTES) for c in spec.comparisons if c.has_filter}
        ),
        digest=MappingProxyType({c.name: key("digest", c.name) for c in spec.comparisons if c.has_digest}),
        subgroup=MappingProxyType({name: key("subgroup", name) for name in spec.subgroups}),
    )


def flip_epsilon(bits: int, flip_probability: float) -> float:
    """ε of bit-level randomised response on a filter of ``bits`` bits (infinite without flipping)."""
    if flip_probability <= 0:
        return math.inf
    return bits * math.log((1 - flip_probability) / flip_probability)


def complete(normalised: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """``normalised`` with every field of ``names`` it lacks as all missing (a concept not mapped)."""
    present = [normalised[name] for name in names if name in normalised] or list(normalised.values())
    count = len(present[0]) if present else 0
    out = dict(normalised)
    for name in names:
        if name not in out:
            out[name] = np.full(count, "", dtype=object)
    return out


def encode_spec(
    normalised: Mapping[str, np.ndarray],
    spec: LinkageSpec,
    keys: LinkKeys,
    rng: np.random.Generator | None = None,
) -> EncodedRecords:
    """What a node sends for ``spec``: match keys and blocking keys, then the record-level filter
    (matching "clk") or the field-level encodings (probabilistic), and subgroup codes.

    Fields the spec reads that ``normalised`` lacks are encoded as missing. ``rng`` draws the bit
    flips of randomised response (default: seeded from the operating system's randomness).
    """
    if any(c.name.endswith("*") for c in spec.comparisons):
        raise BadInput("a linkage spec with wildcards must be resolved against the mapped concepts first")
    fields = complete(normalised, spec.fields)
    base = encode(fields, spec.schema, keys)
    encoded: dict[str, np.ndarray] = {}
    if spec.matching == "probabilistic":
        flips = rng or np.random.default_rng(int.from_bytes(secrets.token_bytes(16), "big"))
        for comparison in spec.comparisons:
            encoded.update(_comparison_encodings(fields, comparison, spec, keys, flips))
    subgroups = {name: _digests(subgroup_labels(name, fields), keys.subgroup[name]) for name in spec.subgroups}
    return dataclasses.replace(base, fields=encoded, subgroups=subgroups)


def subgroup_labels(name: str, normalised: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each record's label in subgroup ``name`` (``""``: unknown)."""
    if name == "sex":
        return np.array([{"m": "male", "f": "female"}.get(v, "") for v in normalised["sex"]], dtype=object)
    if name == "birth_decade":
        years, codes = distinct_codes(normalised["dob_year"])
        labels = np.array([f"{int(str(y)) // 10 * 10}s" if y else "" for y in years], dtype=object)
        return labels[codes] if len(codes) else np.empty(0, dtype=object)
    column = normalised.get(f"subgroup:{name}")
    if column is None:
        count = len(next(iter(normalised.values()))) if normalised else 0
        return np.full(count, "", dtype=object)
    return column


def known_labels(name: str, normalised: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """Every label of subgroup ``name`` a node can name: the fixed ones of sex and birth decade, or the
    labels of its own records."""
    if name == "sex":
        return ["female", "male"]
    if name == "birth_decade":
        return [f"{decade}s" for decade in _SUBGROUP_DECADES]
    if normalised is None:
        return []
    return sorted({str(v) for v in subgroup_labels(name, normalised) if v})


def subgroup_codes(labels: Sequence[str], key: bytes) -> dict[int, str]:
    """The keyed code of each label (what the linkage unit sees in place of the label)."""
    codes = _digests(np.asarray(list(labels), dtype=object), key) if labels else np.zeros(0, np.uint64)
    return {int(code): label for code, label in zip(codes.tolist(), labels, strict=True)}


def _digests(values: np.ndarray | Sequence[str], key: bytes) -> np.ndarray:
    """AES-CMAC of each value under ``key``, the first 8 bytes as uint64; 0 for ``""``."""
    distinct, codes = distinct_codes(values)
    texts = ["" if v is None else str(v) for v in distinct]
    if not texts:
        return np.zeros(len(codes), dtype=np.uint64)
    tags = aes_cmac(key, [value_blocks(texts)])[:, :8].copy().view("<u8").reshape(-1).astype(np.uint64)
    tags[tags == 0] = 1
    tags[np.array([t == "" for t in texts])] = 0
    return tags[codes]


_CODE_POINTS: Final = 0x110000  # token ids: a pair of code points, or a position and a code point


def _code_points(texts: Sequence[str]) -> np.ndarray:
    """The code points of each text, as rows of uint32 padded with 0."""
    width = max((len(t) for t in texts), default=0)
    if not texts or width == 0:
        return np.zeros((len(texts), 0), dtype=np.uint32)
    return np.array(texts, dtype=f"<U{width}").view(np.uint32).reshape(len(texts), width)


def _bigram_ids(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Bigrams of each text padded with ``_`` on both sides (none for an empty text), as token ids:
    (bigrams per text, ids in text order)."""
    padded = [f"_{t}_" if t else "" for t in texts]
    points = _code_points(padded).astype(np.int64)
    if points.shape[1] < 2:
        return np.zeros(len(texts), dtype=np.int64), np.zeros(0, dtype=np.int64)
    ids = points[:, :-1] * _CODE_POINTS + points[:, 1:]
    valid = points[:, 1:] > 0
    return valid.sum(axis=1), ids[valid]


def _positional_ids(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each character but ``_`` tagged with its position, as token ids: (tokens per text, ids)."""
    points = _code_points(texts).astype(np.int64)
    ids = np.arange(points.shape[1], dtype=np.int64) * _CODE_POINTS + points
    valid = (points > 0) & (points != ord("_"))
    return valid.sum(axis=1), ids[valid]


def _token_text(token: int, positional: bool) -> str:
    """The text a token id stands for (what is keyed): two characters, or a position and a character."""
    first, second = divmod(token, _CODE_POINTS)
    return f"{first}{SEPARATOR}{chr(second)}" if positional else chr(first) + chr(second)


def _tokens(values: list[str], comparison: Comparison) -> tuple[np.ndarray, np.ndarray, bool]:
    """(tokens per value, token ids in value order, whether tokens are positional) of one field: bigrams
    of a name (with the formal name's where the comparison takes nicknames) or of a text (spaces as
    ``_``), characters by position of a date's digits or of a code."""
    if comparison.kind in ("date", "code"):
        return (*_positional_ids(values), True)
    if comparison.kind == "name":
        counts, ids = _bigram_ids(values)
        if comparison.nicknames:
            formal = [formal_first_name(v) if v else "" for v in values]
            extra = [f if f != v else "" for f, v in zip(formal, values, strict=True)]
            extra_counts, extra_ids = _bigram_ids(extra)
            owner = np.concatenate(
                [np.repeat(np.arange(len(values)), counts), np.repeat(np.arange(len(values)), extra_counts)]
            )
            order = np.argsort(owner, kind="stable")
            return counts + extra_counts, np.concatenate([ids, extra_ids])[order], False
        return counts, ids, False
    return (*_bigram_ids([v.replace(" ", "_") for v in values]), False)


def _filters(
    values: np.ndarray,
    comparison: Comparison,
    key: bytes,
    spec: LinkageSpec,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(filter of each record, its popcount) for one field: built once per distinct value, folded,
    then flipped per record (a missing value stays an empty filter). A field no record has gets filters
    of no bits, which cost nothing to send and compare as missing."""
    distinct, codes = distinct_codes(values)
    if all(not v for v in distinct):
        return np.zeros((len(codes), 0), dtype=np.uint64), np.zeros(len(codes), dtype=np.int32)
    build_bits = comparison.bits * (2 if spec.xor_fold else 1)
    counts, ids, positional = _tokens([str(v or "") for v in distinct], comparison)
    rows = np.zeros((len(distinct), build_bits // 64), dtype=np.uint64)
    if len(ids):
        vocabulary, flat = np.unique(ids, return_inverse=True)
        blocks = value_blocks([_token_text(int(t), positional) for t in vocabulary.tolist()])
        tags = aes_cmac(key[:MAC_KEY_BYTES], [np.zeros_like(blocks), blocks])
        per_token = token_rows(tags, comparison.bits_per_token, key[MAC_KEY_BYTES:], build_bits)
        nonempty = counts > 0
        starts = (np.cumsum(counts) - counts)[nonempty]
        rows[nonempty] = np.bitwise_or.reduceat(per_token[flat.reshape(-1)], starts, axis=0)
    if spec.xor_fold:
        half = comparison.bits // 64
        rows = rows[:, :half] ^ rows[:, half:]
    filters = rows[codes]
    if spec.flip_probability > 0:
        present = np.flatnonzero(counts[codes] > 0)
        filters[present] ^= _flips(len(present), comparison.bits, spec.flip_probability, rng)
    return np.ascontiguousarray(filters), np.bitwise_count(filters).sum(axis=1, dtype=np.int32)


def _flips(count: int, bits: int, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Random bit masks, each bit set with ``probability``: (count, bits // 64) uint64."""
    out = np.empty((count, bits // 64), dtype=np.uint64)
    step = 1 << 14
    for start in range(0, count, step):
        stop = min(start + step, count)
        drawn = rng.random((stop - start, bits), dtype=np.float32) < probability
        out[start:stop] = np.packbits(drawn, axis=1, bitorder="little").view(np.uint64)
    return out


def _comparison_encodings(
    fields: Mapping[str, np.ndarray],
    comparison: Comparison,
    spec: LinkageSpec,
    keys: LinkKeys,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    name = comparison.name
    out: dict[str, np.ndarray] = {}
    if comparison.has_filter:
        key = keys.compare[comparison.key_name]
        source = fields["dob_digits"] if comparison.kind == "date" else fields[comparison.field]
        out[f"{name}/filter"], out[f"{name}/pop"] = _filters(source, comparison, key, spec, rng)
        if comparison.middle:
            first_middle = np.array([v.split(" ", 1)[0] for v in fields["middle"]], dtype=object)
            out[f"{name}/middle"], out[f"{name}/middle_pop"] = _filters(first_middle, comparison, key, spec, rng)
    if comparison.has_digest:
        key = keys.digest[name]
        out[f"{name}/digest"] = _digests(fields["dob" if comparison.kind == "date" else comparison.field], key)
        if comparison.kind == "date":
            out[f"{name}/swapped"] = _digests(fields["dob_swapped"], key)
    return out
