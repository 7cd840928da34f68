"""The linkage schema: which normalised identifiers go into keyed encodings, and how.

Every node of a project must encode with the same schema, or nothing matches. The schema is a JSON
file in the spirit of a clkhash v3 linkage schema: the Bloom filter (``clk_config``: length, XOR
folding, record-level salt), one entry per encoded feature (n-gram size, bits per n-gram), and, in
addition, the exact match-key tiers (strict to loose) and the blocking keys. The shipped default is
``default_schema.json`` beside this module; see its ``description`` for why each choice was made.

A feature's ``comparison`` is ``{"type": "ngram", "n": N, "positional": P}``: with ``N`` >= 1 the
value is cut into n-grams (padded with ``_`` on both sides when ``N`` >= 2 and not positional); with
``N`` = 0 the whole value is one token, for identifiers where a near miss means nothing (a postcode
sector, a month of birth). ``strategy.bits_per_token`` is the feature's weight. Features that name the
same ``shared_key`` hash with one key, so a token sets the same bits in either of them. Keys outside
this format are refused, so that a misspelt option cannot silently change nothing.

Two optional top-level keys adapt the identifiers to data that is not British:

``postcode``
    ``"uk"`` (the default) reads the postcode column as a UK postcode (anything else is missing);
    ``"any"`` keeps the letters and digits of any postcode as given (Australian ``2612``), and then
    ``postcode_outward`` and ``postcode_sector`` are always missing, so the schema may not use them.
``text_fields``
    Names of further input columns (``["address_1", "suburb"]``), each normalised as free text
    (lower case, accents stripped, only letters and digits kept) into a field of the same name that
    features, match-key tiers, blocking keys and the salt can use like any normalised identifier.
    Every party must then supply those columns.

Schemas shipped beside the default are in the ``schemas`` folder of this module
(:data:`SHIPPED_SCHEMAS`), e.g. ``schemas/febrl.json`` for FEBRL-style Australian records.

>>> schema = load_schema()
>>> schema.bits, schema.salt_field, schema.match_keys[0][0], schema.postcode, schema.text_fields
(1024, 'dob_year', 'full', 'uk', ())
>>> febrl = load_schema(SHIPPED_SCHEMAS / "febrl.json")
>>> febrl.postcode, febrl.input_columns[5:]
('any', ('street_number', 'address_1', 'suburb', 'state', 'soc_sec_id'))
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from fedlink.errors import ConfigError
from fedlink.linkage.normalise import IDENTIFIER_COLUMNS, NORMALISED_FIELDS, POSTCODE_FORMATS, normalise

DEFAULT_SCHEMA_PATH: Final = Path(__file__).with_name("default_schema.json")
#: Folder of the other schemas shipped with fedlink (``febrl.json``: FEBRL-style Australian records).
SHIPPED_SCHEMAS: Final = Path(__file__).with_name("schemas")
_TEXT_FIELD_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
_UK_ONLY_FIELDS: Final = ("postcode_outward", "postcode_sector")
SCHEMA_VERSION: Final = 1
MATCH_KEY_MACS: Final = ("aes-cmac", "hmac-sha256")
MAX_BITS_PER_TOKEN: Final = 64


@dataclass(frozen=True)
class FieldSpec:
    """One normalised identifier in the Bloom filter."""

    name: str
    #: n-gram size; 0 makes the whole value one token.
    ngram: int
    #: Bits each n-gram sets (k hash positions): the field's weight in the similarity.
    weight: int
    #: Tag each n-gram with its position, so "ab" at the start and at the end set different bits.
    positional: bool = False
    #: A missing value sets no bits.
    missing: Literal["skip"] = "skip"
    #: Features with the same key share a hashing key, so an n-gram sets the same bits in either
    #: (first and last names: a record with the two swapped still has a similar filter); None for a
    #: key of the feature's own.
    shared_key: str | None = None

    @property
    def key_name(self) -> str:
        """Name of the hashing key this feature uses."""
        return self.shared_key or self.name


@dataclass(frozen=True)
class LinkageSchema:
    """What every node of a project encodes, and how (see the module docstring)."""

    version: int
    #: Length of each Bloom filter in bits, a multiple of 64.
    bits: int
    fields: tuple[FieldSpec, ...]
    #: (tier name, normalised field names), strict to loose.
    match_keys: tuple[tuple[str, tuple[str, ...]], ...]
    #: (block name, normalised field names).
    blocking: tuple[tuple[str, tuple[str, ...]], ...]
    #: Normalised field whose value salts every Bloom n-gram of a record; None for no salting.
    salt_field: str | None
    #: Build each filter at twice ``bits`` and XOR its halves together into ``bits``.
    xor_fold: bool = False
    #: How the postcode column is read: "uk" or "any" (see the module docstring).
    postcode: str = "uk"
    #: Further input columns normalised as free text into fields of the same name.
    text_fields: tuple[str, ...] = ()
    #: The keyed function of match keys: "aes-cmac" (default: vectorised, ~115k records/s encoding)
    #: or "hmac-sha256" (one HMAC per distinct value tuple and tier: several times slower in Python).
    match_key_mac: str = "aes-cmac"

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The columns every party must supply: the identifier columns, then the text fields."""
        return (*IDENTIFIER_COLUMNS, *(name for name in self.text_fields if name not in IDENTIFIER_COLUMNS))

    def normalise(self, columns: Mapping[str, Sequence[str | None]]) -> dict[str, np.ndarray]:
        """:func:`fedlink.linkage.normalise.normalise` of ``columns`` with this schema's options."""
        return normalise(columns, postcode=self.postcode, text_fields=self.text_fields)


def parse_schema(document: object, where: str, extra_fields: Sequence[str] = ()) -> LinkageSchema:
    """A schema from its JSON document; ``extra_fields`` are further normalised fields its features
    and keys may name (a project spec's concept fields: ``address``, ``id:nhs_number``...)."""
    try:
        return _parse(document, extra_fields)
    except _Invalid as exc:
        raise ConfigError(f"{where}: {exc}; fix the file or use the default schema") from exc


def load_schema(path: Path | None = None) -> LinkageSchema:
    """The linkage schema in ``path``, or the shipped default; :class:`ConfigError` if it is invalid."""
    source = path or DEFAULT_SCHEMA_PATH
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read linkage schema {source}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"linkage schema {source} is not valid JSON ({exc}); fix the file") from exc
    return parse_schema(document, f"linkage schema {source}")


class _Invalid(ValueError):
    pass


def _get(mapping: object, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if not isinstance(mapping, dict):
        raise _Invalid(f"{where} must be an object")
    if key not in mapping:
        if default is ...:
            raise _Invalid(f"{where} has no '{key}'")
        return default
    value = mapping[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _Invalid(f"'{key}' in {where} has the wrong type")
    return value


def _only(mapping: object, allowed: set[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise _Invalid(f"{where} must be an object")
    unknown = sorted(set(mapping) - allowed - {"description"})
    if unknown:
        raise _Invalid(f"{where} has unknown key(s) {', '.join(unknown)}")


def _check_field(name: str, known: Sequence[str], where: str) -> None:
    if name in _UK_ONLY_FIELDS and name not in known:
        raise _Invalid(f"{where} uses {name}, which is always missing with postcode 'any'")
    if name not in known:
        raise _Invalid(
            f"{where} names unknown field {name}: it is not a normalised field or one of the schema's text_fields; "
            f"known: {', '.join(known)}"
        )


def _field_names(names: object, where: str, known: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _Invalid(f"{where} must list one or more normalised field names")
    for name in names:
        _check_field(name, known, where)
    return tuple(names)


def _text_fields(document: object) -> tuple[str, ...]:
    names = _get(document, "text_fields", list, "the schema", [])
    for name in names:
        if not isinstance(name, str) or not _TEXT_FIELD_NAME.fullmatch(name):
            raise _Invalid(f"text field {name!r} must be a column name of lower-case letters, digits and _")
        if name in NORMALISED_FIELDS:
            raise _Invalid(f"text field {name} is already a normalised identifier")
    if len(set(names)) != len(names):
        raise _Invalid("'text_fields' names a column twice")
    return tuple(names)


def _named_groups(
    entries: object, label: str, section: str, known: Sequence[str]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(entries, list) or not entries:
        raise _Invalid(f"'{section}' must be a non-empty list")
    groups = []
    for number, entry in enumerate(entries, 1):
        where = f"{section} entry {number}"
        name = _get(entry, label, str, where)
        _only(entry, {label, "fields"}, f"{section} '{name}'")
        groups.append((name, _field_names(_get(entry, "fields", list, where), f"{section} '{name}'", known)))
    names = [name for name, _ in groups]
    if len(set(names)) != len(names):
        raise _Invalid(f"'{section}' repeats a {label}")
    return tuple(groups)


def _feature(entry: object, number: int, known: Sequence[str]) -> FieldSpec:
    where = f"feature {number}"
    name = _get(entry, "name", str, where)
    _check_field(name, known, f"feature '{name}'")
    _only(entry, {"name", "comparison", "strategy", "missing_value", "shared_key"}, f"feature '{name}'")
    comparison = _get(entry, "comparison", dict, f"feature '{name}'")
    _only(comparison, {"type", "n", "positional"}, f"comparison of '{name}'")
    if _get(comparison, "type", str, f"comparison of '{name}'") != "ngram":
        raise _Invalid(f"comparison of '{name}' must be of type 'ngram'")
    ngram = _get(comparison, "n", int, f"comparison of '{name}'")
    positional = _get(comparison, "positional", bool, f"comparison of '{name}'", False)
    strategy = _get(entry, "strategy", dict, f"feature '{name}'")
    _only(strategy, {"bits_per_token"}, f"strategy of '{name}'")
    weight = _get(strategy, "bits_per_token", int, f"strategy of '{name}'")
    missing = _get(entry, "missing_value", str, f"feature '{name}'", "skip")
    shared_key = _get(entry, "shared_key", (str, type(None)), f"feature '{name}'", None)
    if not 0 <= ngram <= 8:
        raise _Invalid(f"n-gram size of '{name}' must be 0 (whole value) to 8")
    if not 1 <= weight <= MAX_BITS_PER_TOKEN:
        raise _Invalid(f"bits_per_token of '{name}' must be 1 to {MAX_BITS_PER_TOKEN}")
    if missing != "skip":
        raise _Invalid(f"missing_value of '{name}' must be 'skip'")
    return FieldSpec(name, ngram, weight, positional, "skip", shared_key)


def _parse(document: object, extra_fields: Sequence[str] = ()) -> LinkageSchema:
    version = _get(document, "version", int, "the schema")
    if version != SCHEMA_VERSION:
        raise _Invalid(f"version {version} is not supported (this fedlink reads version {SCHEMA_VERSION})")
    _only(
        document,
        {"version", "clk_config", "features", "match_keys", "blocking", "postcode", "text_fields", "match_key_mac"},
        "the schema",
    )
    match_key_mac = _get(document, "match_key_mac", str, "the schema", "aes-cmac")
    if match_key_mac not in MATCH_KEY_MACS:
        raise _Invalid(f"match_key_mac must be one of {', '.join(MATCH_KEY_MACS)}, not '{match_key_mac}'")
    postcode = _get(document, "postcode", str, "the schema", "uk")
    if postcode not in POSTCODE_FORMATS:
        raise _Invalid(f"postcode must be one of {', '.join(POSTCODE_FORMATS)}, not '{postcode}'")
    text_fields = _text_fields(document)
    known = (
        *(name for name in NORMALISED_FIELDS if postcode == "uk" or name not in _UK_ONLY_FIELDS),
        *text_fields,
        *(name for name in extra_fields if name not in NORMALISED_FIELDS and name not in text_fields),
    )
    config = _get(document, "clk_config", dict, "the schema")
    _only(config, {"bits", "xor_fold", "salt_field"}, "clk_config")
    bits = _get(config, "bits", int, "clk_config", 1024)
    if bits <= 0 or bits % 64:
        raise _Invalid("clk_config bits must be a positive multiple of 64")
    xor_fold = _get(config, "xor_fold", bool, "clk_config", False)
    salt_field = _get(config, "salt_field", (str, type(None)), "clk_config", None)
    if salt_field is not None:
        _check_field(salt_field, known, "salt_field")
    features = _get(document, "features", list, "the schema")
    if not features:
        raise _Invalid("'features' must list at least one feature")
    fields = tuple(_feature(entry, number, known) for number, entry in enumerate(features, 1))
    if len({f.name for f in fields}) != len(fields):
        raise _Invalid("'features' names a field twice")
    clashes = {f.shared_key for f in fields} & {f.name for f in fields if not f.shared_key}
    if clashes:
        raise _Invalid(
            f"shared_key {', '.join(sorted(map(str, clashes)))} is also the name of a feature with its own key"
        )
    return LinkageSchema(
        version=version,
        bits=bits,
        fields=fields,
        match_keys=_named_groups(_get(document, "match_keys", list, "the schema"), "tier", "match_keys", known),
        blocking=_named_groups(_get(document, "blocking", list, "the schema"), "name", "blocking", known),
        salt_field=salt_field,
        xor_fold=xor_fold,
        postcode=postcode,
        text_fields=text_fields,
        match_key_mac=match_key_mac,
    )
