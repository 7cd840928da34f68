"""Identifiers in one canonical form, whatever department wrote them, before keyed encoding.

Departments write the same person differently: "O'BRIEN" and "O'Brien", "Zoë" and "Zoe", dates as
``1990-03-04``, ``04/03/1990``, ``19900304`` or ``04-MAR-1990``, postcodes as ``ne1 4ab`` or
``NE14AB``. :func:`normalise` maps every such spelling to one value, so that keyed match keys agree
exactly and Bloom encodings differ only where the identifiers really differ.

Rules (each output is a string, ``""`` where the value is missing or unusable):

``first``
    Lower case, accents stripped (NFKD, plus a table for letters that do not decompose: "ł", "ø",
    "æ", "ß"...), only the letters a-z kept. A hyphenated given name is one name ("Min-jun" ->
    ``minjun``); of several whitespace-separated words only the first is kept, since the others are
    middle names written into the first-name field.
``first_formal``
    ``first`` with nicknames replaced by a formal name (``bill`` -> ``william``), following
    :data:`~fedlink.linkage.nicknames.FORMAL_OF` until it stops changing ("nate" -> "nathan" ->
    "nathaniel"), so that a nickname and its formal name, and two nicknames of one name, agree.
``last``
    As ``first``, except that a hyphen separates the parts of a double-barrelled surname and only the
    first part is kept ("Smith-Jones" -> ``smith``): a department that shortens the name usually
    keeps the first part, and a department that adds a second part keeps the original first.
    Spaces and apostrophes inside a surname join its parts ("St John" -> ``stjohn``, "O'Brien" ->
    ``obrien``), because a particle belongs to the name.
``dob``, ``dob_year``, ``dob_month``, ``dob_day``
    Dates in ISO (``1990-03-04``, with or without a time), compact (``19900304``), day-first UK
    (``04/03/1990``, ``4.3.1990``, ``04-03-1990``) or day-month-name (``04-MAR-1990``, ``4 March
    1990``) form. ``dob`` is ``YYYY-MM-DD`` only for a complete, valid date. A partial date keeps the
    parts it has: ``1990`` gives just ``dob_year``, ``03/1990`` or ``1990-03`` also ``dob_month``; an
    impossible day (``31/02/1990``) keeps the year and month. Years outside 1850-2100 are unusable.
    Two-digit years are ambiguous and unusable.
``sex``
    ``m`` or ``f`` from M/F, Male/Female (any case) or the NHS codes 1/2; anything else is unknown.
``postcode``, ``postcode_outward``, ``postcode_sector``
    With ``postcode="uk"`` (the default): upper case without spaces, kept only if it has the shape
    of a UK postcode ("NFA", no fixed abode, and other text are missing). The outward code is all
    but the last three characters (``NE1``) and the sector is the outward code followed by the
    first inward digit (``NE14``); the two never collide because they differ in length for the
    same outward code. With ``postcode="any"`` (postcodes of other countries: Australian ``2612``,
    US ``20500-0003``): accents stripped, upper case, only letters and digits kept, in the order
    given; the outward code and sector are always missing, since their shape is unknown.
Text fields (``text_fields``)
    Any other input column a schema names (an address line, a town, a national identifier, a
    street number): accents stripped, lower case, only letters a-z and digits kept, so "12-b,
    Stanley St." and "12b stanley st" agree (``12bstanleyst``). The normalised field has the
    column's name.

Every rule is idempotent: normalising a normalised value leaves it unchanged (dates read back from
their ISO form, postcodes from their compact form).

Work is done once per distinct input value (identifiers repeat heavily), so a column of a million
values costs about as much as its distinct values.

>>> out = normalise({"first_name": ["BILL"], "last_name": ["O'Brien-Smith"], "dob": ["04-MAR-1990"],
...                  "sex": ["Male"], "postcode": ["ne1 4ab"]})
>>> [str(out[name][0]) for name in ("first", "first_formal", "last", "dob", "sex", "postcode_sector")]
['bill', 'william', 'obrien', '1990-03-04', 'm', 'NE14']
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlink.errors import BadInput
from fedlink.linkage.nicknames import FORMAL_OF

NORMALISED_FIELDS: Final[tuple[str, ...]] = (
    "first",
    "last",
    "first_formal",
    "dob",
    "dob_year",
    "dob_month",
    "dob_day",
    "sex",
    "postcode",
    "postcode_outward",
    "postcode_sector",
)
IDENTIFIER_COLUMNS: Final[tuple[str, ...]] = ("first_name", "last_name", "dob", "sex", "postcode")
#: How the postcode column is read: as a UK postcode, or as any letters and digits (see the module docstring).
POSTCODE_FORMATS: Final[tuple[str, ...]] = ("uk", "any")

# Letters that NFKD leaves whole, mapped to the ASCII a clerk would type for them.
_UNDECOMPOSABLE: Final = str.maketrans(
    {
        "ł": "l",
        "Ł": "L",
        "ø": "o",
        "Ø": "O",
        "đ": "d",
        "Đ": "D",
        "ð": "d",
        "Ð": "D",
        "þ": "th",
        "Þ": "Th",
        "æ": "ae",
        "Æ": "Ae",
        "œ": "oe",
        "Œ": "Oe",
        "ß": "ss",
        "ı": "i",
    }
)
_DASHES: Final = str.maketrans(dict.fromkeys("‐‑‒–—―", "-"))
NOT_LETTER: Final = re.compile(r"[^a-z]+")
NOT_ALPHANUMERIC: Final = re.compile(r"[^a-z0-9]+")


def fold_text(text: str) -> str:
    """``text`` in lower case with accents stripped and every kind of dash written as a hyphen."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_UNDECOMPOSABLE).translate(_DASHES))
    return "".join(char for char in decomposed if not unicodedata.combining(char)).lower()


def normalise_first_name(text: str) -> str:
    """``first``: one given name in lower-case ASCII letters (see the module docstring)."""
    words = fold_text(text).split()
    return NOT_LETTER.sub("", words[0]) if words else ""


def normalise_last_name(text: str) -> str:
    """``last``: the first part of a surname in lower-case ASCII letters (see the module docstring)."""
    for part in fold_text(text).split("-"):
        letters = NOT_LETTER.sub("", part)
        if letters:
            return letters
    return ""


def _formal_closure() -> dict[str, str]:
    closure: dict[str, str] = {}
    for nickname in FORMAL_OF:
        seen = {nickname}
        name = FORMAL_OF[nickname]
        while name in FORMAL_OF and FORMAL_OF[name] not in seen:
            seen.add(name)
            name = FORMAL_OF[name]
        closure[nickname] = name
    return closure


_FORMAL: Final[dict[str, str]] = _formal_closure()


def formal_first_name(first: str) -> str:
    """The formal name that the normalised first name ``first`` is a nickname of, else ``first``."""
    return _FORMAL.get(first, first)


_MONTHS: Final[dict[str, int]] = {calendar.month_name[m].lower(): m for m in range(1, 13)}
_ISO: Final = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[t ].*)?")
_COMPACT: Final = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DAY_FIRST: Final = re.compile(r"(\d{1,2})[-/. ](\d{1,2}|[a-z]{3,9})[-/. ,]+(\d{4})")
_YEAR_MONTH: Final = re.compile(r"(\d{4})[-/.](\d{1,2})")
_MONTH_YEAR: Final = re.compile(r"(\d{1,2}|[a-z]{3,9})[-/. ,]+(\d{4})")
_YEAR: Final = re.compile(r"(\d{4})")
FIRST_YEAR, LAST_YEAR = 1850, 2100
DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

DateParts = tuple[str, str, str, str]
_NO_DATE: Final[DateParts] = ("", "", "", "")


def month_number(text: str) -> int:
    """1-12 for a month number or an English month name or abbreviation ("mar", "sept"); else 0."""
    if text.isdigit():
        return int(text)
    for name, number in _MONTHS.items():
        if name.startswith(text) and len(text) >= 3:
            return number
    return 0


def _date_parts(year: str, month: str = "", day: str = "") -> DateParts:
    """(dob, year, month, day) as normalised strings, keeping the leading parts that are valid."""
    y = int(year)
    if not FIRST_YEAR <= y <= LAST_YEAR:
        return _NO_DATE
    m = month_number(month) if month else 0
    if not 1 <= m <= 12:
        return ("", f"{y:04d}", "", "")
    d = int(day) if day else 0
    if not 1 <= d <= (29 if m == 2 and calendar.isleap(y) else DAYS_IN_MONTH[m]):
        return ("", f"{y:04d}", f"{m:02d}", "")
    return (f"{y:04d}-{m:02d}-{d:02d}", f"{y:04d}", f"{m:02d}", f"{d:02d}")


def normalise_dob(text: str) -> DateParts:
    """(``dob``, ``dob_year``, ``dob_month``, ``dob_day``) of a date of birth in any known format."""
    text = text.strip().lower()
    if match := _ISO.fullmatch(text):
        return _date_parts(match[1], match[2], match[3])
    if match := _COMPACT.fullmatch(text):
        return _date_parts(match[1], match[2], match[3])
    if match := _DAY_FIRST.fullmatch(text):
        return _date_parts(match[3], match[2], match[1])
    if match := _YEAR_MONTH.fullmatch(text):
        return _date_parts(match[1], match[2])
    if match := _MONTH_YEAR.fullmatch(text):
        return _date_parts(match[2], match[1])
    if match := _YEAR.fullmatch(text):
        return _date_parts(match[1])
    return _NO_DATE


_SEX: Final[dict[str, str]] = {"m": "m", "male": "m", "1": "m", "f": "f", "female": "f", "2": "f"}


def normalise_sex(text: str) -> str:
    """``m``, ``f`` or ``""``."""
    return _SEX.get(text.strip().lower(), "")


# Outward code: area letters, district digit, optional digit or letter; inward: digit and two letters
# from the 20 that Royal Mail uses (never C, I, K, M, O or V). GIR 0AA is the one historic exception.
_POSTCODE: Final = re.compile(r"[A-Z]{1,2}[0-9][0-9A-Z]?[0-9][ABD-HJLNP-UW-Z]{2}|GIR0AA")

PostcodeParts = tuple[str, str, str]


def normalise_postcode(text: str) -> PostcodeParts:
    """(``postcode``, ``postcode_outward``, ``postcode_sector``) of a UK postcode, else empty strings."""
    compact = text.replace(" ", "").upper()
    if not compact.isalnum():
        compact = "".join(compact.split())
    if not _POSTCODE.fullmatch(compact):
        return ("", "", "")
    return (compact, compact[:-3], compact[:-2])


def normalise_any_postcode(text: str) -> PostcodeParts:
    """(``postcode``, ``""``, ``""``): a postcode of any country as upper-case letters and digits."""
    return (NOT_ALPHANUMERIC.sub("", fold_text(text)).upper(), "", "")


def normalise_text(text: str) -> str:
    """A text field: lower-case ASCII letters and digits only (see the module docstring)."""
    return NOT_ALPHANUMERIC.sub("", fold_text(text))


def _as_text(value: object) -> str:
    """A raw cell as text: ``""`` for None and NaN, ISO form for dates, ``str`` for anything else."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def distinct_codes(
    values: Sequence[object] | np.ndarray | pa.Array | pa.ChunkedArray,
) -> tuple[list[object], np.ndarray]:
    """(distinct values, int64 index of each value into them), in order of first appearance.

    Text (with None or NaN for missing) is hashed by Arrow, several times faster than a dict for a
    million values; anything else goes through a dict. None comes back as a distinct value.
    """
    try:
        array = (
            values
            if isinstance(values, pa.Array | pa.ChunkedArray)
            else pa.array(values, pa.string(), from_pandas=True)
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        index = {value: code for code, value in enumerate(dict.fromkeys(values))}
        return list(index), np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values))
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    encoded = pc.dictionary_encode(array, null_encoding="encode")
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def by_distinct_value(values: Sequence[object], rule: Callable[[str], tuple[str, ...]], width: int) -> list[np.ndarray]:
    """``rule`` applied once per distinct value of ``values``; ``width`` output columns, one row each."""
    distinct, codes = distinct_codes(values)
    results = [rule(_as_text(v)) for v in distinct]
    columns = []
    for position in range(width):
        outputs = np.empty(len(results), dtype=object)
        outputs[:] = [result[position] for result in results]
        columns.append(outputs[codes])
    return columns


def normalise(
    columns: Mapping[str, Sequence[str | None]], *, postcode: str = "uk", text_fields: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Each of :data:`NORMALISED_FIELDS`, and each of ``text_fields``, as a numpy object array of
    ``str`` (``""`` where missing).

    ``columns`` holds first_name, last_name, dob, sex and postcode, as written by any department
    (``None`` or NaN for missing), and every column named in ``text_fields``, all of one length.
    ``postcode`` is one of :data:`POSTCODE_FORMATS`. A schema passes its own options
    (:meth:`fedlink.linkage.schema.LinkageSchema.normalise`).
    """
    if postcode not in POSTCODE_FORMATS:
        raise BadInput(f"postcode format '{postcode}' is not one of {', '.join(POSTCODE_FORMATS)}")
    clashes = [name for name in text_fields if name in NORMALISED_FIELDS]
    if clashes:
        raise BadInput(f"text field(s) {', '.join(clashes)} would replace a normalised identifier; rename them")
    needed = (*IDENTIFIER_COLUMNS, *(name for name in text_fields if name not in IDENTIFIER_COLUMNS))
    absent = [name for name in needed if name not in columns]
    if absent:
        raise BadInput(f"normalise needs columns {', '.join(needed)}; missing {', '.join(absent)}")
    lengths = {len(columns[name]) for name in needed}
    if len(lengths) > 1:
        raise BadInput(f"identifier columns have different lengths {sorted(lengths)}; pass one row per record")

    def first_rule(text: str) -> tuple[str, str]:
        first = normalise_first_name(text)
        return first, formal_first_name(first)

    first, first_formal = by_distinct_value(columns["first_name"], first_rule, 2)
    (last,) = by_distinct_value(columns["last_name"], lambda text: (normalise_last_name(text),), 1)
    dob, year, month, day = by_distinct_value(columns["dob"], normalise_dob, 4)
    (sex,) = by_distinct_value(columns["sex"], lambda text: (normalise_sex(text),), 1)
    postcode_rule = normalise_postcode if postcode == "uk" else normalise_any_postcode
    code, outward, sector = by_distinct_value(columns["postcode"], postcode_rule, 3)
    text = {
        name: by_distinct_value(columns[name], lambda value: (normalise_text(value),), 1)[0] for name in text_fields
    }
    return {
        "first": first,
        "last": last,
        "first_formal": first_formal,
        "dob": dob,
        "dob_year": year,
        "dob_month": month,
        "dob_day": day,
        "sex": sex,
        "postcode": code,
        "postcode_outward": outward,
        "postcode_sector": sector,
        **text,
    }
