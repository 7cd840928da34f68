"""The project linkage spec: which identifier concepts a project links on, and how they are compared.

A spec is a JSON document (version 2) that travels with the project (``linkage_spec`` in
``coordinator/projects.toml``; the shipped default is ``default_spec.json`` beside this module). The
coordinator resolves it against the concepts its nodes map, sends it with the link request, and every
node encodes exactly what it names (and only the concepts its operator approved for the project);
its SHA-256 (:attr:`LinkageSpec.hash`) goes on every register entry of the link.

Keys of the document:

``matching``
    ``"probabilistic"`` (default): per-field comparisons of keyed field encodings combined by a
    Fellegi-Sunter model fitted without labels (:mod:`fedlink.linkage.probabilistic`); ``"clk"``:
    the record-level Bloom filter and Dice similarity of linkage schemas version 1
    (:mod:`fedlink.linkage.schema`; its ``clk`` object holds ``clk_config`` and ``features``).
``comparisons``
    One object per compared field: ``name``, ``kind`` and options. Kinds and their levels (a level 0,
    "missing", is added where either side lacks the value and counts as no evidence):

    ``name`` (bigram Bloom filter; levels exact, similar, near, swapped, middle, different)
        ``swap``: another name comparison; a value like the other record's value of that field counts
        as "swapped" (names in the wrong columns). ``middle``: a value like the other's first middle
        name counts as "middle" (a person known by a middle name). ``nicknames``: the filter also holds
        the formal name's bigrams ("Bill" is near "William"). ``term_frequency``: exact agreement
        weighs by how rare the name is (not with bit flipping).
    ``date`` (date of birth: keyed digests of the date and of its day-month transposition, a Bloom
        filter of its digits by position; levels exact, transposed, one digit, near, different)
    ``code`` (postcode, national identifier: keyed digest and positional-character filter; levels
        exact, one character, near, different)
    ``text`` (address, town: bigram filter; levels exact, similar, near, different)
    ``exact`` (sex, region: keyed digest; levels agree, different)

    ``thresholds`` are the Dice similarities that bound the levels (defaults per kind), ``bits`` and
    ``bits_per_token`` the filter size and weight. A name ending in ``*`` (``"id:*"``) stands for
    every concept of that kind the nodes map.
``blocking``
    ``[{"name": ..., "fields": [normalised fields]}]``: records meet as candidate pairs when they
    share the keyed value of some rule.
``match_keys``, ``exact_tiers``
    Keyed match-key tiers, strict to loose (the PSI mode links on them); with ``probabilistic``
    matching the first ``exact_tiers`` of them link records with a unique key on both sides before
    the model scores the rest (the model still scores those pairs).
``encoding``
    ``xor_fold`` (default true) and ``flip_probability`` (bit-level randomised response, default 0):
    the defences of field-level filters against frequency attacks (see :mod:`fedlink.linkage.encode`).
``threshold``
    ``"expected-f1"`` (default): link pairs above the posterior match probability that maximises the
    fitted model's expected F1; or a number in (0, 1): that posterior probability.
``posterior``
    ``"one-to-one"`` (default): a pair's match probability also weighs its two records' other
    candidate pairs, since a record has at most one match in another node: a pair whose records have
    no other candidate is likelier than its comparisons alone say, and no pair falls below its own
    probability (a look-alike of a record with a better candidate loses in the one-to-one
    assignment); ``"pairwise"``: its own comparisons alone (Fellegi-Sunter).
``dependence``
    Groups of comparisons (at most four each) that agree together by chance more often than their
    product says, whose chance agreement is estimated jointly: names (families, names of one origin)
    and sex; postcode, address, locality and region (one place).
``household``
    ``{"given": [...], "group": [...]}``: records of one household agree on its address or postcode
    (``given``) and, far more often than strangers, on their surname (``group``, a dependence group):
    for a pair agreeing exactly on a ``given`` comparison, the chance agreement of ``group`` is taken
    from pairs of different people of one node that agree on it (siblings, parents and children), so a
    sibling does not pass for a match.
``subgroups``
    Subgroups to estimate linkage quality by: ``sex``, ``birth_decade``, or the name of a node-held
    column mapped as ``subgroup:NAME``.

>>> spec = load_spec()
>>> spec.matching, spec.comparisons[0].name, spec.comparisons[0].levels[:3], len(spec.hash)
('probabilistic', 'first_name', ('exact', 'similar', 'near'), 64)
>>> resolved = spec.resolve({"first_name", "dob", "id:nhs_number"})
>>> [c.name for c in resolved.comparisons if c.name.startswith("id:")], resolved.hash == spec.hash
(['id:nhs_number'], False)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError

from fedlink.errors import ConfigError
from fedlink.frozen import Frozen
from fedlink.linkage.concepts import DERIVED_FIELDS, FIELDS_OF, VALID_FIELD, concepts_of
from fedlink.linkage.schema import DEFAULT_SCHEMA_PATH, MATCH_KEY_MACS, SCHEMA_VERSION, LinkageSchema, parse_schema

DEFAULT_SPEC_PATH: Final = Path(__file__).with_name("default_spec.json")
SPEC_VERSION: Final = 2
ComparisonKind = Literal["name", "date", "code", "text", "exact"]
SUBGROUPS_BUILT_IN: Final = ("sex", "birth_decade")
MAX_DEPENDENCE: Final = 4

#: Per kind: level names (after "missing"), default thresholds, filter bits and bits per token.
KIND_DEFAULTS: Final[dict[str, tuple[tuple[str, ...], tuple[float, ...], int, int]]] = {
    "name": (("exact", "similar", "near", "swapped", "middle", "different"), (0.98, 0.8, 0.65), 256, 8),
    "date": (("exact", "transposed", "one digit", "near", "different"), (0.85, 0.7), 128, 8),
    "code": (("exact", "one character", "near", "different"), (0.8, 0.6), 128, 8),
    "text": (("exact", "similar", "near", "different"), (0.95, 0.8, 0.6), 256, 4),
    "exact": (("agree", "different"), (), 0, 0),
}
_FIELD_NAME: Final = re.compile(r"(id|text):[a-z][a-z0-9_]{0,62}|[a-z_]+")


class _ComparisonDoc(Frozen):
    name: str
    kind: ComparisonKind
    field: str | None = None
    thresholds: tuple[float, ...] | None = None
    bits: int | None = Field(default=None, ge=64, le=4096, multiple_of=64)
    bits_per_token: int | None = Field(default=None, ge=1, le=64)
    swap: str | None = None
    middle: bool = False
    nicknames: bool = False
    term_frequency: bool = False
    description: str = ""


class _GroupDoc(Frozen):
    name: str
    fields: tuple[str, ...] = Field(min_length=1)


class _TierDoc(Frozen):
    tier: str
    fields: tuple[str, ...] = Field(min_length=1)


class _EncodingDoc(Frozen):
    xor_fold: bool = True
    flip_probability: float = Field(default=0.0, ge=0.0, lt=0.5)


class _HouseholdDoc(Frozen):
    given: tuple[str, ...] = Field(min_length=1)
    group: tuple[str, ...] = Field(min_length=1)


class _SpecDoc(Frozen):
    version: int
    description: str = ""
    matching: Literal["probabilistic", "clk"] = "probabilistic"
    comparisons: tuple[_ComparisonDoc, ...] = ()
    blocking: tuple[_GroupDoc, ...] = Field(min_length=1)
    match_keys: tuple[_TierDoc, ...] = Field(min_length=1)
    match_key_mac: str = "aes-cmac"
    exact_tiers: int = Field(default=0, ge=0)
    encoding: _EncodingDoc = _EncodingDoc()
    threshold: Literal["expected-f1"] | float = "expected-f1"
    posterior: Literal["one-to-one", "pairwise"] = "one-to-one"
    subgroups: tuple[str, ...] = ()
    dependence: tuple[tuple[str, ...], ...] = ()
    household: _HouseholdDoc | None = None
    clk: dict[str, Any] | None = None


@dataclass(frozen=True)
class Comparison:
    """One compared field and how its agreement is graded into levels."""

    name: str
    kind: str
    #: The normalised field compared (a date comparison reads the dob fields).
    field: str
    thresholds: tuple[float, ...]
    bits: int
    bits_per_token: int
    swap: str | None = None
    middle: bool = False
    nicknames: bool = False
    #: Weigh exact agreement by how common the value is (name comparisons, without bit flipping).
    term_frequency: bool = False

    @property
    def levels(self) -> tuple[str, ...]:
        """Names of the levels 1, 2, ... (level 0 is "missing")."""
        names = KIND_DEFAULTS[self.kind][0]
        if self.kind == "name":
            names = tuple(n for n in names if (n != "swapped" or self.swap) and (n != "middle" or self.middle))
        return names

    @property
    def has_filter(self) -> bool:
        return self.kind != "exact"

    @property
    def has_digest(self) -> bool:
        return self.kind in ("date", "code", "exact")

    @property
    def key_name(self) -> str:
        """The keyed-hashing key of the comparison's filter: name comparisons share one, so a name in
        the wrong column (or a middle name) sets the same bits as in its own."""
        return "name" if self.kind == "name" else self.name

    @property
    def fields(self) -> tuple[str, ...]:
        """The normalised fields the node encodes for this comparison."""
        if self.kind == "date":
            return ("dob", "dob_digits", "dob_swapped")
        extra = ("middle",) if self.middle else ()
        return (self.field, *extra)


@dataclass(frozen=True)
class LinkageSpec:
    """A parsed project linkage spec (see the module docstring)."""

    matching: str
    comparisons: tuple[Comparison, ...]
    blocking: tuple[tuple[str, tuple[str, ...]], ...]
    match_keys: tuple[tuple[str, tuple[str, ...]], ...]
    match_key_mac: str
    exact_tiers: int
    xor_fold: bool
    flip_probability: float
    #: Posterior match probability above which pairs link; None: the expected-F1 rule.
    threshold: float | None
    #: "one-to-one": a pair's posterior weighs its records' other pairs (each record has at most one
    #: match in another party); "pairwise": its own comparisons alone.
    posterior: str
    subgroups: tuple[str, ...]
    #: Groups of comparison names whose chance agreement is modelled jointly.
    dependence: tuple[tuple[str, ...], ...]
    #: (comparisons that identify a household, the dependence group whose chance agreement is taken
    #: from pairs of one household where one of them agrees exactly), or None.
    household: tuple[tuple[str, ...], tuple[str, ...]] | None
    #: The record-level Bloom filter configuration (matching "clk"), as a linkage schema.
    clk: LinkageSchema | None
    #: The document this spec was parsed from (what is sent to nodes and hashed).
    document: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the document."""
        return hashlib.sha256(canonical_json(self.document).encode()).hexdigest()

    @property
    def text(self) -> str:
        """The canonical JSON of the document: what the coordinator sends to the nodes."""
        return canonical_json(self.document)

    @property
    def fields(self) -> tuple[str, ...]:
        """Every normalised field the spec reads."""
        names: dict[str, None] = {}
        for comparison in self.comparisons:
            names.update(dict.fromkeys(comparison.fields))
        for _, group in (*self.match_keys, *self.blocking):
            names.update(dict.fromkeys(group))
        if self.clk is not None:
            names.update(dict.fromkeys(spec.name for spec in self.clk.fields))
            if self.clk.salt_field:
                names[self.clk.salt_field] = None
        if "birth_decade" in self.subgroups:
            names["dob_year"] = None
        if "sex" in self.subgroups:
            names["sex"] = None
        return tuple(names)

    @property
    def concepts(self) -> tuple[str, ...]:
        """The identifier concepts the spec uses (what a node operator approves)."""
        return tuple(dict.fromkeys(concept for name in self.fields for concept in concepts_of(name)))

    @property
    def schema(self) -> LinkageSchema:
        """The match keys and blocking keys as a linkage schema (with the CLK filter when matching is clk)."""
        if self.clk is not None:
            return self.clk
        return LinkageSchema(
            version=SCHEMA_VERSION,
            bits=0,
            fields=(),
            match_keys=self.match_keys,
            blocking=self.blocking,
            salt_field=None,
            match_key_mac=self.match_key_mac,
        )

    @property
    def dependence_groups(self) -> tuple[tuple[int, ...], ...]:
        """The dependence groups as indices of comparisons (names the spec does not compare left out;
        groups of fewer than two dropped)."""
        index = {c.name: i for i, c in enumerate(self.comparisons)}
        groups = (tuple(index[n] for n in group if n in index) for group in self.dependence)
        return tuple(g for g in groups if len(g) >= 2)

    @property
    def household_indices(self) -> tuple[tuple[int, ...], int] | None:
        """(indices of the household comparisons present, index of its group among the dependence
        groups), or None where the spec names none or they are not compared."""
        if self.household is None:
            return None
        index = {c.name: i for i, c in enumerate(self.comparisons)}
        given = tuple(index[n] for n in self.household[0] if n in index)
        group = tuple(index[n] for n in self.household[1] if n in index)
        if not given or group not in self.dependence_groups:
            return None
        return given, self.dependence_groups.index(group)

    def comparison(self, name: str) -> Comparison:
        return next(c for c in self.comparisons if c.name == name)

    def resolve(self, concepts: Collection[str]) -> LinkageSpec:
        """This spec with every wildcard (``id:*``) replaced by the matching concepts in ``concepts``."""
        document = dict(self.document)

        def expand(entries: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
            out = []
            for entry in entries:
                names = [entry[key], *entry.get("fields", ())]
                wild = next((n for n in names if n.endswith(":*")), None)
                if wild is None:
                    out.append(entry)
                    continue
                prefix = wild[:-1]
                for concept in sorted(c for c in concepts if c.startswith(prefix)):
                    copy = {k: v for k, v in entry.items()}
                    copy[key] = concept if entry[key] == wild else entry[key]
                    if "fields" in copy:
                        copy["fields"] = [concept if f == wild else f for f in copy["fields"]]
                    if copy.get("field") == wild:
                        copy["field"] = concept
                    out.append(copy)
            return out

        document["comparisons"] = expand(list(document.get("comparisons", ())), "name")
        document["blocking"] = expand(list(document.get("blocking", ())), "name")
        document["match_keys"] = expand(list(document.get("match_keys", ())), "tier")
        return parse_spec(document, "the resolved spec")


def canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _one_line(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(parts)


def _known_field(name: str) -> bool:
    if name.endswith(":*"):
        return name[:-2] in ("id", "text")
    if name.startswith(("id:", "text:")):
        return bool(_FIELD_NAME.fullmatch(name))
    return name in DERIVED_FIELDS or any(name in fields for fields in FIELDS_OF.values())


def _comparison(doc: _ComparisonDoc, where: str) -> Comparison:
    _, thresholds, bits, per_token = KIND_DEFAULTS[doc.kind]
    name = doc.name
    default_field = VALID_FIELD.get(name, name)
    field_name = doc.field or ("dob" if doc.kind == "date" else default_field)
    if not _known_field(field_name):
        raise ConfigError(
            f"{where}: comparison '{name}' reads unknown field '{field_name}'; name a normalised field "
            "(first, last, middle, dob, sex, postcode, address, locality, region, id:NAME, text:NAME...)"
        )
    chosen = tuple(doc.thresholds) if doc.thresholds is not None else thresholds
    if len(chosen) != len(thresholds) or any(not 0 < t <= 1 for t in chosen) or list(chosen) != sorted(chosen)[::-1]:
        raise ConfigError(
            f"{where}: comparison '{name}' needs {len(thresholds)} decreasing thresholds in (0, 1] for kind {doc.kind}"
        )
    if (doc.swap or doc.middle or doc.nicknames or doc.term_frequency) and doc.kind != "name":
        raise ConfigError(
            f"{where}: only name comparisons take swap, middle, nicknames or term_frequency ('{name}' is {doc.kind})"
        )
    return Comparison(
        name=name,
        kind=doc.kind,
        field=field_name,
        thresholds=chosen,
        bits=doc.bits or bits,
        bits_per_token=doc.bits_per_token or per_token,
        swap=doc.swap,
        middle=doc.middle,
        nicknames=doc.nicknames,
        term_frequency=doc.term_frequency,
    )


def parse_spec(document: object, where: str) -> LinkageSpec:
    """A spec from its JSON document; a version 1 linkage schema is read as a ``clk`` spec."""
    if isinstance(document, dict) and document.get("version") == SCHEMA_VERSION:
        schema = parse_schema(document, where)
        document = {
            "version": SPEC_VERSION,
            "matching": "clk",
            "clk": {k: v for k, v in document.items() if k not in ("match_keys", "blocking", "match_key_mac")},
            "match_keys": document["match_keys"],
            "blocking": document["blocking"],
            "match_key_mac": schema.match_key_mac,
        }
    try:
        doc = _SpecDoc.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}; fix the spec or use the default") from exc
    if doc.version != SPEC_VERSION:
        raise ConfigError(f"{where}: version {doc.version} is not supported (this fedlink reads 1 and {SPEC_VERSION})")
    if doc.match_key_mac not in MATCH_KEY_MACS:
        raise ConfigError(f"{where}: match_key_mac must be one of {', '.join(MATCH_KEY_MACS)}")
    comparisons = tuple(_comparison(c, where) for c in doc.comparisons)
    names = [c.name for c in comparisons]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two comparisons are named alike; name each once")
    by_name = dict(zip(names, comparisons, strict=True))
    for comparison in comparisons:
        if comparison.swap and (comparison.swap not in by_name or by_name[comparison.swap].kind != "name"):
            raise ConfigError(
                f"{where}: comparison '{comparison.name}' swaps with '{comparison.swap}', not a name comparison"
            )
    if doc.matching == "probabilistic" and not comparisons:
        raise ConfigError(f"{where}: probabilistic matching needs at least one comparison")
    # a version 1 schema's own text fields (columns of `fedlink linkage evaluate` inputs) are fields too
    legacy = set((doc.clk or {}).get("text_fields", ()))
    groups = []
    for label, entries in (("blocking", doc.blocking), ("match_keys", doc.match_keys)):
        seen = set()
        parsed = []
        for entry in entries:
            name = entry.name if isinstance(entry, _GroupDoc) else entry.tier
            unknown = [f for f in entry.fields if f not in legacy and not _known_field(f)]
            if unknown:
                raise ConfigError(f"{where}: {label} '{name}' names unknown field(s) {', '.join(unknown)}")
            if name in seen:
                raise ConfigError(f"{where}: {label} repeats '{name}'")
            seen.add(name)
            parsed.append((name, tuple(entry.fields)))
        groups.append(tuple(parsed))
    blocking, match_keys = groups
    if doc.exact_tiers > len(match_keys):
        raise ConfigError(f"{where}: exact_tiers {doc.exact_tiers} exceeds the {len(match_keys)} match-key tiers")
    threshold = None if doc.threshold == "expected-f1" else float(doc.threshold)
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f'{where}: threshold must be "expected-f1" or a probability in (0, 1)')
    unknown_groups = [s for s in doc.subgroups if s not in SUBGROUPS_BUILT_IN and not _FIELD_NAME.fullmatch(s)]
    if unknown_groups:
        raise ConfigError(
            f"{where}: subgroup(s) {', '.join(unknown_groups)} must be sex, birth_decade or a column name"
        )
    if any(len(group) > MAX_DEPENDENCE for group in doc.dependence):
        raise ConfigError(f"{where}: a dependence group may hold at most {MAX_DEPENDENCE} comparisons")
    clk = None
    if doc.matching == "clk":
        clk_doc = {
            "version": SCHEMA_VERSION,
            **(doc.clk or _default_clk()),
            "match_keys": [{"tier": t, "fields": list(f)} for t, f in match_keys],
            "blocking": [{"name": n, "fields": list(f)} for n, f in blocking],
            "match_key_mac": doc.match_key_mac,
        }
        clk = parse_schema(clk_doc, f"{where} (clk)", extra_fields=_concept_fields(clk_doc))
    elif doc.clk is not None:
        raise ConfigError(f"{where}: 'clk' is read only with matching \"clk\"")
    return LinkageSpec(
        matching=doc.matching,
        comparisons=comparisons,
        blocking=blocking,
        match_keys=match_keys,
        match_key_mac=doc.match_key_mac,
        exact_tiers=doc.exact_tiers if doc.matching == "probabilistic" else len(match_keys),
        xor_fold=doc.encoding.xor_fold,
        flip_probability=doc.encoding.flip_probability,
        threshold=threshold,
        posterior=doc.posterior,
        subgroups=doc.subgroups,
        dependence=doc.dependence,
        household=(doc.household.given, doc.household.group) if doc.household else None,
        clk=clk,
        document=doc.model_dump(mode="json", exclude_defaults=False),
    )


def _concept_fields(document: Mapping[str, Any]) -> tuple[str, ...]:
    """The concept fields (beyond a version 1 schema's own) that a clk spec's features and keys use."""
    names = {f.get("name", "") for f in document.get("features", ()) if isinstance(f, dict)}
    for group in ("match_keys", "blocking"):
        for entry in document.get(group, ()):
            names |= set(entry.get("fields", ()))
    clk_config = document.get("clk_config")
    if isinstance(clk_config, dict):
        names.add(clk_config.get("salt_field") or "")
    return tuple(sorted(n for n in names if n and _known_field(n)))


def _default_clk() -> dict[str, Any]:
    """The clk_config and features of the default linkage schema (version 1)."""
    document = json.loads(DEFAULT_SCHEMA_PATH.read_text(encoding="utf-8"))
    return {"clk_config": document["clk_config"], "features": document["features"]}


def load_spec(path: Path | None = None) -> LinkageSpec:
    """The linkage spec in ``path`` (version 2, or a version 1 schema), or the shipped default."""
    source = path or DEFAULT_SPEC_PATH
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read linkage spec {source}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"linkage spec {source} is not valid JSON ({exc}); fix the file") from exc
    return parse_spec(document, f"linkage spec {source}")


def spec_from_text(text: str) -> LinkageSpec:
    """A spec as the coordinator sent it (canonical JSON)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the linkage spec sent is not valid JSON ({exc})") from exc
    return parse_spec(document, "the linkage spec sent")
