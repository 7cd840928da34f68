"""Identifier concepts: what a department's columns mean for linkage, and their normalised fields.

A department never names its columns like another. Each node maps its own columns to standard
*concepts* (in ``node.toml``, or with ``fedlink linkage run --map``), and linkage works on concepts:

``first_name``, ``middle_names``, ``last_name``
    Names as written. Titles (Mr, Dr...) are dropped; further words of a first name are middle names.
``dob``
    Date of birth, in the node's ``dob_format`` (strftime codes, e.g. ``%d/%m/%Y``, ``%m/%d/%Y``,
    ``%Y%m%d``), or ``auto``: ISO, compact ``YYYYMMDD``, day-first or day-month-name forms. A value
    not in the format is read as ``auto`` reads it.
``sex``
    In the node's ``sex_coding``: ``auto`` (M/F, male/female, 1/2) or ``MALE/FEMALE`` codes such as
    ``1/2``, ``0/1`` or ``h/f``.
``postcode``
    In the node's ``postcode_country``: ``uk``, ``au`` (4 digits), ``us`` (5-digit ZIP, ZIP+4 cut to 5)
    or ``any`` (letters and digits as given).
``address``
    One or more free-text columns (house number, street, second line), read as one text.
``locality``, ``region``
    Town or suburb; county, state or province.
``id:NAME``
    A national or departmental identifier (``nhs_number``, ``ni_number`` and ``upn`` may be written
    without ``id:``).
``text:NAME``
    Any other stable attribute as free text (``text:place_of_birth``).

A concept a node lacks is not mapped: it is missing for every record there, never faked. A value
that does not parse is data as held: each normalised field keeps what can be compared (an impossible
day keeps the year and month; an implausible year still takes part in digit-wise comparison), and
no record is dropped for one bad field.

>>> fields = normalise_concepts({"first_name": ["Dr John Paul"], "last_name": ["Smith Jr"], "dob": ["31/02/1990"]})
>>> [str(fields[f][0]) for f in ("first", "middle", "last", "dob", "dob_year", "dob_month", "dob_digits")]
['john', 'paul', 'smith', '', '1990', '02', '19900231']
>>> normalise_concepts({"dob": ["03/04/1990"]}, ConceptOptions(dob_format="%m/%d/%Y"))["dob"][0]
'1990-03-04'
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from fedlink.errors import BadInput
from fedlink.linkage.normalise import (
    DAYS_IN_MONTH,
    FIRST_YEAR,
    LAST_YEAR,
    NOT_ALPHANUMERIC,
    NOT_LETTER,
    by_distinct_value,
    distinct_codes,
    fold_text,
    formal_first_name,
    month_number,
    normalise_any_postcode,
    normalise_postcode,
    normalise_sex,
)

#: The standard concepts (besides ``id:NAME`` and ``text:NAME``).
STANDARD_CONCEPTS: Final[tuple[str, ...]] = (
    "first_name",
    "middle_names",
    "last_name",
    "dob",
    "sex",
    "postcode",
    "address",
    "locality",
    "region",
)
#: National identifiers that may be named without ``id:``.
KNOWN_IDS: Final[tuple[str, ...]] = ("nhs_number", "ni_number", "upn")
#: Concepts that may take several columns (read as one text, in order).
MULTI_COLUMN: Final[tuple[str, ...]] = ("address", "middle_names")
POSTCODE_COUNTRIES: Final[tuple[str, ...]] = ("uk", "au", "us", "any")
_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")

#: Normalised fields of each standard concept (an ``id:``/``text:`` concept gives one field of its own name).
FIELDS_OF: Final[dict[str, tuple[str, ...]]] = {
    "first_name": ("first", "first_formal", "middle"),
    "middle_names": ("middle",),
    "last_name": ("last",),
    "dob": ("dob", "dob_year", "dob_month", "dob_day", "dob_digits", "dob_swapped"),
    "sex": ("sex",),
    "postcode": ("postcode", "postcode_outward", "postcode_sector"),
    "address": ("address",),
    "locality": ("locality",),
    "region": ("region",),
}
#: Fields derived from several concepts: the first and last names as an unordered pair (so that names
#: written into each other's columns still block together).
DERIVED_FIELDS: Final[dict[str, tuple[str, ...]]] = {"name_pair": ("first_name", "last_name")}
#: The field whose presence says a concept's value is valid (the share shown in the catalogue).
VALID_FIELD: Final[dict[str, str]] = {
    "first_name": "first",
    "middle_names": "middle",
    "last_name": "last",
    "dob": "dob",
    "sex": "sex",
    "postcode": "postcode",
    "address": "address",
    "locality": "locality",
    "region": "region",
}
#: Below this share of valid values a mapped concept is reported as a warning.
LOW_VALID_SHARE: Final = 0.5


def concept_name(name: str) -> str:
    """The canonical name of a concept (``nhs_number`` -> ``id:nhs_number``); BadInput if unknown."""
    text = name.strip().lower()
    if text in STANDARD_CONCEPTS:
        return text
    if text in KNOWN_IDS:
        return f"id:{text}"
    kind, _, rest = text.partition(":")
    if kind in ("id", "text", "subgroup") and _NAME.fullmatch(rest):
        return f"{kind}:{rest}"
    raise BadInput(
        f"'{name}' is not an identifier concept; use one of {', '.join(STANDARD_CONCEPTS)}, "
        f"{', '.join(KNOWN_IDS)}, id:NAME, text:NAME or subgroup:NAME (NAME in lower case letters, digits and _)"
    )


def fields_of(concept: str) -> tuple[str, ...]:
    """The normalised fields a concept gives."""
    return FIELDS_OF.get(concept, (concept,))


def concepts_of(field: str) -> tuple[str, ...]:
    """The concepts a normalised field comes from (``middle`` counts as ``middle_names``)."""
    if ":" in field:
        return (field,)
    if field == "middle":
        return ("middle_names",)
    if field in DERIVED_FIELDS:
        return DERIVED_FIELDS[field]
    return (next(concept for concept, fields in FIELDS_OF.items() if field in fields),)


@dataclass(frozen=True)
class ConceptOptions:
    """How a node's columns are written: the date format, the sex coding and the postcode country."""

    dob_format: str = "auto"
    sex_coding: str = "auto"
    postcode_country: str = "uk"

    def __post_init__(self) -> None:
        if self.postcode_country not in POSTCODE_COUNTRIES:
            raise BadInput(f"postcode country '{self.postcode_country}' is not one of {', '.join(POSTCODE_COUNTRIES)}")
        _sex_codes(self.sex_coding)
        _date_pattern(self.dob_format)


# ---------------------------------------------------------------------------------------------- names

_TITLES: Final = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "miss",
        "mx",
        "master",
        "dr",
        "prof",
        "professor",
        "sir",
        "dame",
        "lady",
        "lord",
        "rev",
        "revd",
        "reverend",
        "fr",
        "father",
        "sister",
        "brother",
    ]
)
_SUFFIXES: Final = frozenset(["jr", "jnr", "junior", "sr", "snr", "senior", "ii", "iii", "iv"])


def _words(text: str) -> list[str]:
    """Lower-case ASCII words of a name (hyphens join, other punctuation separates)."""
    return [w for w in (NOT_LETTER.sub("", part) for part in fold_text(text).replace("-", "").split()) if w]


def split_first_name(text: str) -> tuple[str, str]:
    """(first name, middle names) of a first-name field: titles dropped, further words are middle names."""
    words = [w for w in re.split(r"[\s.,]+", fold_text(text)) if w]
    while words and NOT_LETTER.sub("", words[0]) in _TITLES:
        words = words[1:]
    letters = [w for w in (NOT_LETTER.sub("", w) for w in words) if w]
    if not letters:
        return "", ""
    return letters[0], " ".join(letters[1:])


def clean_last_name(text: str) -> str:
    """The first part of a surname (see :func:`fedlink.linkage.normalise.normalise_last_name`), with
    titles before it and generational suffixes (Jr, III) after it dropped."""
    words = [w for w in re.split(r"[\s.,]+", fold_text(text)) if w]
    while len(words) > 1 and NOT_LETTER.sub("", words[0]) in _TITLES:
        words = words[1:]
    while len(words) > 1 and NOT_LETTER.sub("", words[-1]) in _SUFFIXES:
        words = words[:-1]
    for part in " ".join(words).split("-"):
        letters = NOT_LETTER.sub("", part)
        if letters:
            return letters
    return ""


def middle_names(text: str) -> str:
    """Middle names as lower-case words separated by one space."""
    return " ".join(_words(text))


# ---------------------------------------------------------------------------------------------- dates

_STRFTIME: Final = {
    "%Y": r"(?P<y>\d{4})",
    "%y": r"(?P<yy>\d{2})",
    "%m": r"(?P<m>\d{1,2})",
    "%d": r"(?P<d>\d{1,2})",
    "%b": r"(?P<mon>[a-z]{3,9})",
    "%B": r"(?P<mon>[a-z]{3,9})",
}
_AUTO: Final = (
    re.compile(r"(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})(?:[t ].*)?"),
    re.compile(r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})"),
    re.compile(r"(?P<d>\d{1,2})[-/. ](?P<m>\d{1,2}|[a-z]{3,9})[-/. ,]+(?P<y>\d{4})"),
    re.compile(r"(?P<y>\d{4})[-/.](?P<m>\d{1,2})"),
    re.compile(r"(?P<m>\d{1,2}|[a-z]{3,9})[-/. ,]+(?P<y>\d{4})"),
    re.compile(r"(?P<y>\d{4})"),
)


def _date_pattern(spec: str) -> re.Pattern[str] | None:
    """The regular expression of a strftime-style date format; None for ``auto``."""
    if spec == "auto":
        return None
    if "%" not in spec:
        raise BadInput(f"date format '{spec}' has no strftime codes; write e.g. %d/%m/%Y, %Y%m%d, or auto")
    parts, at = [], 0
    while at < len(spec):
        if spec[at] == "%":
            code = spec[at : at + 2]
            if code not in _STRFTIME:
                raise BadInput(f"date format '{spec}' uses {code}; use %Y, %y, %m, %d, %b or %B")
            parts.append(_STRFTIME[code])
            at += 2
        else:
            char = spec[at].lower()
            parts.append(r"\s*" if char.isspace() else re.escape(char))
            at += 1
    pattern = "".join(parts)
    names = re.findall(r"\(\?P<(\w+)>", pattern)
    if len(names) != len(set(names)) or ("y" in names and "yy" in names):
        raise BadInput(f"date format '{spec}' names a part of the date twice")
    return re.compile(pattern)


DateFields = tuple[str, str, str, str, str, str]
_NO_DATE: Final[DateFields] = ("", "", "", "", "________", "")


def _date_fields(match: re.Match[str]) -> DateFields:
    """(dob, dob_year, dob_month, dob_day, dob_digits, dob_swapped) of a matched date."""
    groups = match.groupdict()
    year_text = groups.get("y") or ""
    if groups.get("yy"):
        # a two-digit year is this century's unless that lies in the future
        two = int(groups["yy"])
        year_text = str(2000 + two if 2000 + two <= dt.date.today().year else 1900 + two)
    month_text = groups.get("m") or groups.get("mon") or ""
    month = month_number(month_text) if month_text else 0
    day = int(groups["d"]) if groups.get("d") else 0
    month_ok = 1 <= month <= 12
    day_ok = 1 <= day <= 31
    digits = (year_text if len(year_text) == 4 else "____") + (f"{month:02d}" if month_ok else "__")
    digits += f"{day:02d}" if day_ok else "__"
    year = int(year_text) if year_text else 0
    if not FIRST_YEAR <= year <= LAST_YEAR:
        return ("", "", f"{month:02d}" if month_ok else "", f"{day:02d}" if day_ok else "", digits, "")
    if not month_ok:
        return ("", f"{year:04d}", "", "", digits, "")
    valid_day = day_ok and day <= (29 if month == 2 and calendar.isleap(year) else DAYS_IN_MONTH[month])
    if not valid_day:
        return ("", f"{year:04d}", f"{month:02d}", "", digits, "")
    swapped = f"{year:04d}-{day:02d}-{month:02d}" if day <= 12 and day != month else ""
    return (f"{year:04d}-{month:02d}-{day:02d}", f"{year:04d}", f"{month:02d}", f"{day:02d}", digits, swapped)


def parse_date(text: str, pattern: re.Pattern[str] | None = None) -> DateFields:
    """The date fields of one value: in ``pattern`` if it matches, else in any ``auto`` form."""
    text = text.strip().lower()
    if pattern is not None and (match := pattern.fullmatch(text)):
        return _date_fields(match)
    for auto in _AUTO:
        if match := auto.fullmatch(text):
            return _date_fields(match)
    return _NO_DATE


# ---------------------------------------------------------------------------------------------- sex, postcode, text


def _sex_codes(coding: str) -> dict[str, str]:
    if coding == "auto":
        return {}
    male, slash, female = coding.partition("/")
    if not slash or not male.strip() or not female.strip() or male.strip().lower() == female.strip().lower():
        raise BadInput(f"sex coding '{coding}' must be auto or MALE/FEMALE codes such as 1/2, M/F or 0/1")
    return {male.strip().lower(): "m", female.strip().lower(): "f"}


def postcode_parts(text: str, country: str) -> tuple[str, str, str]:
    """(postcode, outward or district, sector) in the rules of ``country`` (empty where not valid)."""
    if country == "uk":
        return normalise_postcode(text)
    code = normalise_any_postcode(text)[0]
    if country == "au":
        return (code, code[:2], code[:3]) if re.fullmatch(r"\d{4}", code) else ("", "", "")
    if country == "us":
        zip5 = code[:5] if re.fullmatch(r"\d{5}(\d{4})?", code) else ""
        return (zip5, zip5[:2], zip5[:3]) if zip5 else ("", "", "")
    return (code, "", "")


_ABBREVIATIONS: Final = {
    "street": "st",
    "road": "rd",
    "avenue": "ave",
    "av": "ave",
    "drive": "dr",
    "lane": "ln",
    "place": "pl",
    "court": "ct",
    "crescent": "cres",
    "close": "cl",
    "terrace": "tce",
    "circuit": "cct",
    "parade": "pde",
    "highway": "hwy",
    "square": "sq",
    "grove": "gr",
    "gardens": "gdns",
    "north": "n",
    "south": "s",
    "east": "e",
    "west": "w",
    "saint": "st",
    "mount": "mt",
    "apartment": "flat",
    "apt": "flat",
    "unit": "flat",
}


def normalise_free_text(text: str) -> str:
    """Free text (an address, a town): lower-case ASCII words of letters and digits, one space apart,
    common street words abbreviated one way ("Street" and "St." both ``st``)."""
    words = NOT_ALPHANUMERIC.sub(" ", fold_text(text)).split()
    return " ".join(_ABBREVIATIONS.get(w, w) for w in words)


def normalise_code(text: str) -> str:
    """A code or identifier: upper-case letters and digits only."""
    return NOT_ALPHANUMERIC.sub("", fold_text(text)).upper()


# ---------------------------------------------------------------------------------------------- all together


def normalise_concepts(
    values: Mapping[str, Sequence[object]], options: ConceptOptions | None = None
) -> dict[str, np.ndarray]:
    """The normalised fields of every concept in ``values`` (concept -> raw values, one per record,
    ``None`` for missing; a multi-column concept joined into one text beforehand), each a numpy
    object array of ``str`` (``""`` where missing). Concepts absent from ``values`` give no fields."""
    options = options or ConceptOptions()
    concepts = {concept_name(name): column for name, column in values.items()}
    lengths = {len(column) for column in concepts.values()}
    if len(lengths) > 1:
        raise BadInput(f"concept columns have different lengths {sorted(lengths)}; pass one value per record")
    out: dict[str, np.ndarray] = {}
    if "first_name" in concepts:

        def first_rule(text: str) -> tuple[str, str, str]:
            first, middle = split_first_name(text)
            return first, formal_first_name(first), middle

        out["first"], out["first_formal"], out["middle"] = by_distinct_value(concepts["first_name"], first_rule, 3)
    if "middle_names" in concepts:
        (stated,) = by_distinct_value(concepts["middle_names"], lambda text: (middle_names(text),), 1)
        if "middle" in out:  # a middle name written into the first-name field counts when none is stated
            stated = np.where(stated == "", out["middle"], stated)
        out["middle"] = stated
    if "last_name" in concepts:
        (out["last"],) = by_distinct_value(concepts["last_name"], lambda text: (clean_last_name(text),), 1)
    if "first" in out and "last" in out:
        formal, formal_codes = distinct_codes(out["first_formal"])
        last, last_codes = distinct_codes(out["last"])
        pairs, pair_codes = np.unique(formal_codes * len(last) + last_codes, return_inverse=True)
        texts = []
        for code in pairs.tolist():
            a, b = str(formal[code // len(last)] or ""), str(last[code % len(last)] or "")
            texts.append(f"{min(a, b)} {max(a, b)}" if a and b else "")
        out["name_pair"] = np.array(texts, dtype=object)[pair_codes.reshape(-1)]
    if "dob" in concepts:
        pattern = _date_pattern(options.dob_format)
        parts = by_distinct_value(concepts["dob"], lambda text: parse_date(text, pattern), 6)
        for name, column in zip(FIELDS_OF["dob"], parts, strict=True):
            out[name] = column
    if "sex" in concepts:
        codes = _sex_codes(options.sex_coding)
        (out["sex"],) = by_distinct_value(
            concepts["sex"], lambda text: (codes.get(text.strip().lower()) or normalise_sex(text),), 1
        )
    if "postcode" in concepts:
        country = options.postcode_country
        parts = by_distinct_value(concepts["postcode"], lambda text: postcode_parts(text, country), 3)
        out["postcode"], out["postcode_outward"], out["postcode_sector"] = parts
    for concept in ("address", "locality", "region"):
        if concept in concepts:
            (out[concept],) = by_distinct_value(concepts[concept], lambda text: (normalise_free_text(text),), 1)
    for concept, raw in concepts.items():
        if concept.startswith("id:"):
            (out[concept],) = by_distinct_value(raw, lambda text: (normalise_code(text),), 1)
        elif concept.startswith("text:"):
            (out[concept],) = by_distinct_value(raw, lambda text: (normalise_free_text(text),), 1)
        elif concept.startswith("subgroup:"):  # a label shown to analysts as the node declares it
            (out[concept],) = by_distinct_value(raw, lambda text: (" ".join(text.split()),), 1)
    return out


def valid_counts(normalised: Mapping[str, np.ndarray], concepts: Sequence[str]) -> dict[str, int]:
    """Per concept, how many records have a valid value after normalisation (0 where it has no field)."""
    counts = {}
    for concept in concepts:
        column = normalised.get(VALID_FIELD.get(concept, concept))
        counts[concept] = int(np.count_nonzero(column != "")) if column is not None else 0
    return counts
