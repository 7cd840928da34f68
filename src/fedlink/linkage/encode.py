"""Keyed encodings of normalised identifiers: match keys, Bloom filters and blocking keys.

A node turns each record's normalised identifiers (:func:`fedlink.linkage.normalise.normalise`) into
three things that the linkage unit can compare without learning the identifiers. All three are
computed for every record at once with vectorised AES (OpenSSL, AES-NI) instead of one hash call per
record and purpose, which is what makes encoding fast enough for millions of records in Python.

Value blocks
    Each distinct field value becomes one 16-byte block, injectively (:func:`value_blocks`: the value
    itself when it is at most 15 bytes, else its BLAKE2b-128 digest, tagged so the forms never
    meet). Blocks stay inside the node; they are the input of the keyed functions below.
Match keys
    For each tier of the schema (strict to loose, in the style of ONS census match keys), AES-256-CMAC
    (NIST SP 800-38B) under the tier's key over the blocks of the tier's fields in tier order: 16
    bytes, ``S16``. A tier has a fixed number of fields, so every message has the same number of
    blocks, and CMAC is a PRF on them: equal keys mean equal field values, and nothing else can be
    learnt from a key without the tier's key. ``b""`` where any field of the tier is missing, so two
    records never agree on a missing value.
Blocking keys
    The first 8 bytes of AES-256-CMAC under the blocking key's own key, as uint64 (0 where a field
    is missing). The linkage unit compares only records that share a blocking value, and learns
    only which records share one.
Bloom filters (CLK-style, field-weighted)
    Each feature's value is cut into tokens: names into bigrams of the value padded with ``_``
    ("jo" gives ``_j``, ``jo``, ``o_``), postcode and date parts are one token each (n-gram size 0
    in the schema). Each token sets ``weight`` bits of the record's filter. For a token ``t`` of a
    record whose salt value is ``s``, the tag ``T = AES-CMAC_k1(block(s) || block(t))`` under the
    feature's CMAC key is a PRF output; the positions are the 32-bit words of the AES keystream
    ``AES_k2(T xor 0), AES_k2(T xor 1), ...`` under the feature's second key, each modulo the
    filter length. Positions are independent pseudo-random values, without the arithmetic structure
    of double hashing that published attacks on CLKs exploit. ``first_formal`` and ``last`` share
    one key (``shared_key`` in the schema), so a record with the two names swapped still has
    nearly the same filter.

Keys
    :func:`derive_keys` derives one key per purpose (each match tier, each blocking key, each Bloom
    key) from the project's link secret with HKDF-SHA256; the HKDF salt is a hash of the project
    name, so every key changes with the project, and keys for different purposes are independent:
    agreement in one encoding says nothing about another.

Speed
    Identifiers repeat heavily, so per-value work is done once per distinct value, and Bloom work
    once per distinct (salt, token): each such pair gets a row of filter bits; a distinct (value,
    salt) pair ORs the rows of its tokens; a record ORs the rows of its pairs. A table of keyed
    pseudo-random rows indexed by (salt, token) is exactly as secret as hashing each occurrence: a
    row is a deterministic function of the PRF output for that (key, salt, token), which is all a
    per-occurrence hash would compute.

Hardening against frequency attacks, and its cost
    An unsalted CLK sets the same bits for every "smith" in the data, so whoever holds many filters
    (the linkage unit) can count how often bit patterns occur and align them with public name
    frequencies, recovering names without any key. Two defences are on by default:

    *Record-level salting* mixes the value of the schema's ``salt_field`` (default: year of birth)
    into every token's hash input: a "smith" born in 1970 and one born in 1985 set unrelated bits,
    so a pattern recurs only within a birth-year cohort (about 1/80 of the data), which flattens
    the frequencies an attacker can align. The price is that two filters are comparable only if
    their salt values agree exactly. A year of birth is stable and rarely wrong (a typo in its last
    two digits hits about 0.4% of synthetic records); where the date of birth is missing the salt is
    ``""``, so such a record's filter is comparable only with other records missing the year. Those
    pairs can still link through a match key without the year: the ``name_postcode`` tier
    (first_formal, last, postcode) exists for them, and the ``name`` and ``postcode`` blocking keys
    still bring them together. Salting also shows the linkage unit which records share a salt value
    (filters with different salts share only chance bits), about what the ``sector_year`` blocking
    key reveals anyway. Where dates of birth are often wrong, year-of-birth salting costs recall:
    ``schemas/febrl.json`` salts with the state instead (more stable in FEBRL data, but only about
    eight cohorts, so a much weaker defence; its description gives the measured trade-off).

    Any field a schema names can be the salt, the schema's text fields included (an address line,
    a town): the fewer and larger its cohorts, the weaker the defence; the more often it differs
    between two records of one person, the more pairs only a match key can still link.

    *XOR folding* (``xor_fold``) builds each filter at twice ``bits`` and XORs the two halves, so
    that no single bit says whether a token is present, which defeats pattern-mining attacks that
    read bit positions. It narrows the gap between matches and non-matches a little; on the
    synthetic data linkage F1 is about the same with and without it (see the report in
    ``benchmarks/test_bench_encode.py``).

Residual risk
    Within one salt cohort, common names still set recurring (folded) patterns, so an attacker with
    the filters and good population statistics can still attempt a frequency attack per cohort,
    with far less data per cohort; with ``salt_field`` None the whole file is exposed. Match and
    blocking keys reveal equality of their tuples (which records share a date of birth, a postcode,
    a name) and so the frequencies of those values to the linkage unit. A party that holds the link
    secret (every node of the project, never the coordinator) can encode any identifiers it guesses
    and so test whether a person is in another node's data if it ever obtains that node's
    encodings: encodings go to the linkage unit only, and the link secret must never reach it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedlink.errors import BadInput, Fault
from fedlink.linkage.normalise import distinct_codes
from fedlink.linkage.schema import FieldSpec, LinkageSchema

SEPARATOR: Final = "\x1f"  # between a position and its n-gram; no normalised value contains it
BLOCK: Final = 16  # AES block and value-digest size in bytes
MAC_KEY_BYTES: Final = 32  # AES-256
MIN_SECRET_BYTES: Final = 16
_POSITIONS_PER_BLOCK: Final = BLOCK // 4  # a 16-byte keystream block read as four 32-bit positions
RECORDS_PER_SLICE: Final = 1 << 18
_TAGS_PER_CHUNK: Final = 1 << 16  # bounds the scratch of bit positions to about 30 MB per 64 bits of weight
_PROJECT_SALT_LABEL: Final = b"fedlink linkage project\x00"


@dataclass(frozen=True)
class LinkKeys:
    """Per-purpose keys for one project: never logged, never sent to the linkage unit.

    ``match`` and ``block`` hold one AES-256 key per tier and blocking key; ``bloom`` one 64-byte key
    per feature, or per shared key of features (an AES-256 CMAC key, then an AES-256 keystream key).
    """

    match: Mapping[str, bytes] = field(repr=False)
    bloom: Mapping[str, bytes] = field(repr=False)
    block: Mapping[str, bytes] = field(repr=False)
    #: Per field-level filter key (name comparisons share "name"): a CMAC key, then a keystream key.
    compare: Mapping[str, bytes] = field(repr=False, default_factory=lambda: MappingProxyType({}))
    #: Per comparison with a keyed digest (dates, codes, exact fields).
    digest: Mapping[str, bytes] = field(repr=False, default_factory=lambda: MappingProxyType({}))
    #: Per subgroup: the key of its keyed codes.
    subgroup: Mapping[str, bytes] = field(repr=False, default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class EncodedRecords:
    """What a node sends the linkage unit about its records, all in the node's record order."""

    count: int
    #: tier -> ``S16`` keyed digests, ``b""`` where a field of the tier is missing.
    match_keys: dict[str, np.ndarray]
    #: uint64, shape (count, bits // 64); bit ``i`` is bit ``i % 64`` of word ``i // 64``.
    blooms: np.ndarray
    #: int32 number of set bits of each filter.
    popcounts: np.ndarray
    #: block name -> uint64 keyed hashes, 0 where a field of the block is missing.
    block_keys: dict[str, np.ndarray]
    #: Field-level encodings of a probabilistic spec, by "<comparison>/<part>": ``filter`` and
    #: ``middle`` (uint64 rows), ``pop`` and ``middle_pop`` (int32 popcounts), ``digest`` and
    #: ``swapped`` (uint64 keyed digests, 0 where missing).
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    #: subgroup -> uint64 keyed code of each record's subgroup value (0: unknown).
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)


def project_key(link_secret: bytes, project: str, purpose: str, length: int = MAC_KEY_BYTES) -> bytes:
    """HKDF-SHA256 of the link secret for one purpose of one project (the salt hashes the project name)."""
    salt = hashlib.sha256(_PROJECT_SALT_LABEL + project.encode()).digest()
    info = f"fedlink/linkage/{purpose}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(link_secret)


def derive_keys(link_secret: bytes, project: str, schema: LinkageSchema) -> LinkKeys:
    """One HKDF-SHA256 key per match tier, Bloom feature and blocking key of ``schema``, for ``project``."""
    if not isinstance(link_secret, bytes) or len(link_secret) < MIN_SECRET_BYTES:
        raise BadInput(f"a link secret must be at least {MIN_SECRET_BYTES} bytes; run `fedlink link` to agree one")
    if not project:
        raise BadInput("linkage keys need a project name")

    def key(purpose: str, name: str, length: int = MAC_KEY_BYTES) -> bytes:
        return project_key(link_secret, project, f"v{schema.version}/{purpose}/{name}", length)

    return LinkKeys(
        match=MappingProxyType({tier: key("match", tier) for tier, _ in schema.match_keys}),
        bloom=MappingProxyType(
            {spec.key_name: key("bloom", spec.key_name, 2 * MAC_KEY_BYTES) for spec in schema.fields}
        ),
        block=MappingProxyType({name: key("block", name) for name, _ in schema.blocking}),
    )


def encode(normalised: Mapping[str, np.ndarray], schema: LinkageSchema, keys: LinkKeys) -> EncodedRecords:
    """Match keys, Bloom filters (with popcounts) and blocking keys of normalised records.

    Records are encoded in slices of :data:`RECORDS_PER_SLICE`, which bounds the working memory (a
    few hundred MB with the default schema) and changes no encoding: each record's depends only on
    its own values and the keys.
    """
    fields = _fields_needed(schema)
    absent = sorted(fields - set(normalised))
    if absent:
        raise BadInput(f"normalised records lack field(s) {', '.join(absent)}; pass the output of normalise()")
    lengths = {len(normalised[name]) for name in fields}
    if len(lengths) > 1:
        raise BadInput("normalised fields have different lengths; pass the output of normalise()")
    count = lengths.pop() if lengths else 0
    if count <= RECORDS_PER_SLICE:
        return _encode_slice(_Columns({name: normalised[name] for name in fields}, schema, count), schema, keys)
    parts = [
        _encode_slice(
            _Columns({name: normalised[name][start:stop] for name in fields}, schema, stop - start), schema, keys
        )
        for start, stop in ((s, min(s + RECORDS_PER_SLICE, count)) for s in range(0, count, RECORDS_PER_SLICE))
    ]
    return concatenate(parts)


def concatenate(parts: Sequence[EncodedRecords]) -> EncodedRecords:
    """The encodings of consecutive runs of records (at least one) as one."""
    if not parts:
        raise BadInput("there are no encodings to join; encode at least one run of records")
    if len(parts) == 1:
        return parts[0]
    return EncodedRecords(
        count=sum(p.count for p in parts),
        match_keys={tier: np.concatenate([p.match_keys[tier] for p in parts]) for tier in parts[0].match_keys},
        blooms=np.concatenate([p.blooms for p in parts]),
        popcounts=np.concatenate([p.popcounts for p in parts]),
        block_keys={name: np.concatenate([p.block_keys[name] for p in parts]) for name in parts[0].block_keys},
        fields={name: _joined_field(name, [p.fields[name] for p in parts]) for name in parts[0].fields},
        subgroups={name: np.concatenate([p.subgroups[name] for p in parts]) for name in parts[0].subgroups},
    )


def _joined_field(name: str, arrays: list[np.ndarray]) -> np.ndarray:
    """One field's encodings of consecutive runs as one. A run in which no record has the field holds
    filters of no bits (:mod:`fedlink.linkage.fields`); they are widened to empty filters (all zero
    bits: missing, as a missing value's filter is) of the other runs' width."""
    widths = {a.shape[1] for a in arrays if a.ndim == 2}
    if len(widths) > 1:
        width = max(widths)
        if widths - {0, width}:
            raise Fault(f"field encodings '{name}' of different widths {sorted(widths)} cannot be joined")
        arrays = [a if a.shape[1] == width else np.zeros((len(a), width), dtype=a.dtype) for a in arrays]
    return np.concatenate(arrays)


def match_key_rows(
    normalised: Mapping[str, np.ndarray], schema: LinkageSchema
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per match-key tier, each record's message, (count, 16 x fields) uint8: the same injective value
    blocks a keyed match key is computed over; and whether a field of the tier is missing. For the PSI
    mode, which hashes messages to a group instead of MACing them."""
    names_needed = {name for _, names in schema.match_keys for name in names}
    absent = sorted(names_needed - set(normalised))
    if absent:
        raise BadInput(f"normalised records lack field(s) {', '.join(absent)}; pass the output of normalise()")
    count = len(normalised[next(iter(names_needed))]) if names_needed else 0
    columns = _Columns({name: normalised[name] for name in names_needed}, schema, count)
    out = {}
    for tier, names in schema.match_keys:
        parts = [columns.blocks(name)[columns.codes[name]] for name in names]
        rows = np.concatenate(parts, axis=1) if parts else np.zeros((count, 0), np.uint8)
        out[tier] = (np.ascontiguousarray(rows), columns.any_missing(names))
    return out


@dataclass(frozen=True)
class TierMessages:
    """One match-key tier's distinct messages (rows of ``messages``) and each record's row among them
    (-1: a field of the tier is missing)."""

    rows: np.ndarray  #: (distinct, width) uint8
    index: np.ndarray  #: int64 per record

    @classmethod
    def of(cls, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> TierMessages:
        """The distinct messages of records given in batches of :func:`match_key_rows` (in record order)."""
        if not batches:
            return cls(rows=np.zeros((0, 0), np.uint8), index=np.zeros(0, np.int64))
        rows = np.concatenate([b[0] for b in batches])
        missing = np.concatenate([b[1] for b in batches])
        width = rows.shape[1]
        present = np.ascontiguousarray(rows[~missing]).view(f"V{width}").reshape(-1) if width else np.zeros(0, "V1")
        distinct, inverse = np.unique(present, return_inverse=True)
        index = np.full(len(rows), -1, dtype=np.int64)
        index[~missing] = inverse.reshape(-1)
        return cls(rows=distinct.view(np.uint8).reshape(len(distinct), width), index=index)

    def __len__(self) -> int:
        return len(self.rows)

    def messages(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        return [row.tobytes() for row in self.rows[start:stop]]

    def shuffled(self, rng: np.random.Generator) -> TierMessages:
        """The same tier with its distinct messages in a random order (records' rows follow them)."""
        order = rng.permutation(len(self.rows))  # new position of each distinct message
        rows = np.empty_like(self.rows)
        rows[order] = self.rows
        index = np.where(self.index >= 0, order[np.maximum(self.index, 0)], -1) if len(order) else self.index
        return TierMessages(rows=rows, index=index.astype(np.int64))


def match_key_messages(normalised: Mapping[str, np.ndarray], schema: LinkageSchema) -> dict[str, TierMessages]:
    """Per match-key tier, the distinct messages of the records and each record's row among them."""
    return {tier: TierMessages.of([parts]) for tier, parts in match_key_rows(normalised, schema).items()}


def _fields_needed(schema: LinkageSchema) -> set[str]:
    needed = {spec.name for spec in schema.fields}
    needed |= {name for _, names in (*schema.match_keys, *schema.blocking) for name in names}
    if schema.salt_field:
        needed.add(schema.salt_field)
    return needed


def _encode_slice(columns: _Columns, schema: LinkageSchema, keys: LinkKeys) -> EncodedRecords:
    blooms = _bloom_filters(columns, schema, keys)
    match_keys = {}
    for tier, names in schema.match_keys:
        missing = columns.any_missing(names)
        if missing.all():  # a field no record has (a concept this node lacks): nothing to key
            match_keys[tier] = np.zeros(columns.count, dtype=f"S{BLOCK}")
            continue
        mac = columns.hmac_keyed if schema.match_key_mac == "hmac-sha256" else columns.keyed
        digests = mac(keys.match[tier], names).copy()
        digests[missing] = 0
        match_keys[tier] = digests.view(f"S{BLOCK}").reshape(columns.count)
    block_keys = {}
    for name, names in schema.blocking:
        missing = columns.any_missing(names)
        if missing.all():
            block_keys[name] = np.zeros(columns.count, dtype=np.uint64)
            continue
        hashed = columns.keyed(keys.block[name], names)[:, :8].copy().view("<u8").reshape(columns.count)
        hashed = hashed.astype(np.uint64, copy=False)
        hashed[hashed == 0] = 1  # 0 means missing
        hashed[missing] = 0
        block_keys[name] = hashed
    return EncodedRecords(
        count=columns.count,
        match_keys=match_keys,
        blooms=blooms,
        popcounts=_popcounts(blooms),
        block_keys=block_keys,
    )


def _popcounts(blooms: np.ndarray) -> np.ndarray:
    """Set bits of each row of ``blooms`` (uint64, one filter per row) as int32."""
    return np.bitwise_count(blooms).sum(axis=-1, dtype=np.int32)


def value_blocks(values: Sequence[str]) -> np.ndarray:
    """Each string as one 16-byte block, injectively: (len(values), 16) uint8.

    A value of at most 15 UTF-8 bytes is itself, zero-padded, with its length in the last byte
    (0-15); a longer value is its BLAKE2b-128 digest with the top bit of the last byte set, so the
    two forms never meet. These blocks are inputs to a keyed MAC, never sent anywhere.
    """
    encoded = [value.encode() for value in values]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    blocks = np.zeros((len(encoded), BLOCK), dtype=np.uint8)
    if len(encoded):
        padded = np.array(encoded, dtype=f"S{BLOCK - 1}")  # longer values are cut here, replaced below
        blocks[:, : BLOCK - 1] = padded.view(np.uint8).reshape(len(encoded), BLOCK - 1)
        blocks[:, -1] = np.minimum(lengths, BLOCK - 1)
    for i in np.flatnonzero(lengths >= BLOCK).tolist():
        digest = bytearray(hashlib.blake2b(encoded[i], digest_size=BLOCK).digest())
        digest[-1] |= 0x80
        blocks[i] = np.frombuffer(bytes(digest), dtype=np.uint8)
    return blocks


def aes_cmac(key: bytes, blocks: Sequence[np.ndarray]) -> np.ndarray:
    """AES-CMAC (NIST SP 800-38B) under ``key`` of many messages at once.

    Message ``i`` is ``blocks[0][i] || blocks[1][i] || ...``, each a (count, 16) uint8 array, so
    every message is a whole number of blocks and CMAC reduces to CBC-MAC with the last block
    masked by subkey K1. Returns (count, 16) uint8 tags.
    """
    cipher = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    state = blocks[0]
    for block in blocks[1:]:
        state = _aes(cipher, state) ^ block
    return _aes(cipher, state ^ _cmac_subkey(cipher))


def _aes(cipher: CipherContext, blocks: np.ndarray) -> np.ndarray:
    """AES (ECB: each 16-byte row on its own) of a (count, 16) uint8 array."""
    out = cipher.update(np.ascontiguousarray(blocks).data)
    return np.frombuffer(out, dtype=np.uint8).reshape(blocks.shape)


def _cmac_subkey(cipher: CipherContext) -> np.ndarray:
    """K1 of SP 800-38B: AES_k(0) doubled in GF(2^128)."""
    value = int.from_bytes(cipher.update(bytes(BLOCK)), "big") << 1
    if value >> 128:
        value ^= (1 << 128) | 0x87
    return np.frombuffer(value.to_bytes(BLOCK, "big"), dtype=np.uint8)


class _Columns:
    """The normalised fields of one slice of records, each factorised once into distinct values."""

    def __init__(self, normalised: Mapping[str, np.ndarray], schema: LinkageSchema | None, count: int) -> None:
        self.count = count
        self.distinct: dict[str, list[str]] = {}
        self.codes: dict[str, np.ndarray] = {}
        for name in sorted(normalised):
            distinct, codes = distinct_codes(normalised[name])
            if not all(isinstance(value, str) for value in distinct):
                raise BadInput(
                    f"normalised field {name} holds a value that is not text; pass the output of normalise()"
                )
            self.distinct[name] = distinct  # type: ignore[assignment]  # checked just above
            self.codes[name] = codes
        self._blocks: dict[str, np.ndarray] = {}
        self.salt_field = schema.salt_field if schema is not None else None
        if self.salt_field:
            self.salts, self.salt_codes = self.distinct[self.salt_field], self.codes[self.salt_field]
        else:
            self.salts, self.salt_codes = [""], np.zeros(self.count, dtype=np.int64)

    def blocks(self, name: str) -> np.ndarray:
        """:func:`value_blocks` of the distinct values of field ``name``, computed once."""
        if name not in self._blocks:
            self._blocks[name] = value_blocks(self.distinct[name])
        return self._blocks[name]

    def salt_blocks(self) -> np.ndarray:
        """:func:`value_blocks` of the distinct salt values (just ``""`` without salting)."""
        return self.blocks(self.salt_field) if self.salt_field else value_blocks(self.salts)

    def keyed(self, key: bytes, names: Sequence[str]) -> np.ndarray:
        """AES-CMAC under ``key`` of each record's blocks of fields ``names``: (count, 16) uint8."""
        return aes_cmac(key, [self.blocks(name)[self.codes[name]] for name in names])

    def hmac_keyed(self, key: bytes, names: Sequence[str]) -> np.ndarray:
        """HMAC-SHA256 under ``key``, truncated to 16 bytes, of each record's blocks of fields
        ``names`` (the same injective message as :meth:`keyed`), once per distinct value tuple."""
        codes = np.stack([self.codes[name] for name in names], axis=1)
        combos, inverse = np.unique(codes, axis=0, return_inverse=True)
        parts = [[row.tobytes() for row in self.blocks(name)] for name in names]
        tags = b"".join(
            hmac.digest(key, b"".join([part[c] for part, c in zip(parts, combo, strict=True)]), "sha256")[:BLOCK]
            for combo in combos.tolist()
        )
        return np.frombuffer(tags, dtype=np.uint8).reshape(len(combos), BLOCK)[inverse.reshape(-1)]

    def any_missing(self, names: Sequence[str]) -> np.ndarray:
        missing = np.zeros(self.count, dtype=bool)
        for name in names:
            distinct = self.distinct[name]
            if "" in distinct:
                missing |= self.codes[name] == distinct.index("")
        return missing


def _tokens(value: str, spec: FieldSpec) -> list[str]:
    """The n-grams of one normalised value (see the module docstring); none for a missing value."""
    if not value:
        return []
    n = spec.ngram
    if n == 0:
        return [value]
    text = value if spec.positional or n == 1 else f"_{value}_"
    grams = [text[i : i + n] for i in range(max(len(text) - n + 1, 1))]
    if spec.positional:
        return [f"{i}{SEPARATOR}{gram}" for i, gram in enumerate(grams)]
    return grams


def _bloom_filters(columns: _Columns, schema: LinkageSchema, keys: LinkKeys) -> np.ndarray:
    """The Bloom filter of each record: uint64, shape (count, schema.bits // 64)."""
    build_bits = schema.bits * 2 if schema.xor_fold else schema.bits
    filters = np.zeros((columns.count, build_bits // 64), dtype=np.uint64)
    gathered = np.empty_like(filters)
    for spec in schema.fields:
        rows, record_rows = _field_rows(columns, spec, keys.bloom[spec.key_name], build_bits)
        np.take(rows, record_rows, axis=0, out=gathered)
        filters |= gathered
    if schema.xor_fold:
        half = schema.bits // 64
        filters = filters[:, :half] ^ filters[:, half:]
    return np.ascontiguousarray(filters)


def _field_rows(columns: _Columns, spec: FieldSpec, key: bytes, build_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(filter bits of each distinct (value, salt) pair of one feature, index of each record's pair)."""
    words = build_bits // 64
    distinct = columns.distinct[spec.name]
    whole_values = spec.ngram == 0 and not spec.positional
    # n-grams of each distinct value, as codes into the feature's vocabulary (CSR layout)
    grams: list[str] = []
    if whole_values:
        token_counts = np.array([1 if value else 0 for value in distinct], dtype=np.int64)
        token_flat = np.arange(len(distinct), dtype=np.int64)[token_counts > 0]
        token_blocks = columns.blocks(spec.name)[token_flat]
        token_flat = np.arange(len(token_flat), dtype=np.int64)
    else:
        vocabulary: dict[str, int] = {}
        token_codes: list[int] = []
        token_counts = np.empty(len(distinct), dtype=np.int64)
        for i, value in enumerate(distinct):
            value_grams = _tokens(value, spec)
            token_counts[i] = len(value_grams)
            token_codes.extend(vocabulary.setdefault(gram, len(vocabulary)) for gram in value_grams)
        token_flat = np.asarray(token_codes, dtype=np.int64)
        grams = list(vocabulary)
        token_blocks = value_blocks(grams)
    token_start = np.cumsum(token_counts) - token_counts

    salt_count = len(columns.salts)
    pairs, record_pairs = np.unique(columns.codes[spec.name] * salt_count + columns.salt_codes, return_inverse=True)
    pair_value, pair_salt = np.divmod(pairs, salt_count)
    pair_counts = token_counts[pair_value]
    occurrences = int(pair_counts.sum())
    rows = np.zeros((len(pairs), words), dtype=np.uint64)
    if occurrences == 0:
        return rows, record_pairs
    # one occurrence per (pair, n-gram of the pair's value), grouped by pair
    occurrence_pair = np.repeat(np.arange(len(pairs)), pair_counts)
    pair_offset = np.cumsum(pair_counts) - pair_counts
    within = np.arange(occurrences) - pair_offset[occurrence_pair]
    occurrence_token = token_flat[token_start[pair_value[occurrence_pair]] + within]
    vocabulary_size = len(token_blocks)
    salted, occurrence_salted = np.unique(
        pair_salt[occurrence_pair] * vocabulary_size + occurrence_token, return_inverse=True
    )
    salted_salt, salted_token = np.divmod(salted, vocabulary_size)
    tags = aes_cmac(key[:MAC_KEY_BYTES], [columns.salt_blocks()[salted_salt], token_blocks[salted_token]])
    rows_of_tokens = token_rows(tags, spec.weight, key[MAC_KEY_BYTES:], build_bits)
    nonempty = pair_counts > 0
    if int(pair_counts.max()) == 1:
        rows[nonempty] = rows_of_tokens[occurrence_salted]
    else:
        rows[nonempty] = np.bitwise_or.reduceat(rows_of_tokens[occurrence_salted], pair_offset[nonempty], axis=0)
    return rows, record_pairs


def token_rows(tags: np.ndarray, weight: int, key: bytes, build_bits: int) -> np.ndarray:
    """Filter bits of each salted n-gram from its CMAC tag: ``weight`` positions drawn from an AES
    keystream that starts at the tag (AES_k(tag XOR i), i = 0, 1, ...), as uint64 rows."""
    blocks = -(-weight // _POSITIONS_PER_BLOCK)
    counters = np.zeros((blocks, BLOCK), dtype=np.uint8)
    counters[:, -1] = np.arange(blocks)
    cipher = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    rows = np.zeros((len(tags), build_bits // 64), dtype=np.uint64)
    for start in range(0, len(tags), _TAGS_PER_CHUNK):
        chunk = tags[start : start + _TAGS_PER_CHUNK]
        keystream = _aes(cipher, (chunk[:, None, :] ^ counters).reshape(-1, BLOCK))
        words = keystream.reshape(len(chunk), blocks * BLOCK).view("<u4")[:, :weight]
        positions = (words % np.uint32(build_bits)).astype(np.int64)
        bits = np.left_shift(np.uint64(1), (positions & 63).astype(np.uint64))
        where = (np.repeat(np.arange(start, start + len(chunk)), weight), (positions >> 6).ravel())
        np.bitwise_or.at(rows, where, bits.ravel())
    return rows
