"""Identifier errors: what a department writes down instead of the truth.

A department registers each person once; :func:`record_identities` decides, per registered person,
which errors happen (each with its rate from :class:`CorruptionRates`) and writes the identifiers in
the department's style. Errors that change one name into another known name (a nickname, a lost
accent, a married surname) are changes of vocabulary code done for all records at once; only the
few records with a new spelling (a typo, an added surname, a change of case) pass through Python one
by one.
"""

from __future__ import annotations

import datetime as dt
import string
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlink_tools.synth.config import CorruptionRates
from fedlink_tools.synth.geography import POSTCODES
from fedlink_tools.synth.namebook import NameBook
from fedlink_tools.synth.outcomes import LAST_ADULT_YEAR
from fedlink_tools.synth.population import Population
from fedlink_tools.synth.recording import NO_FIXED_ABODE, RecordingStyle, format_dates

_KEYBOARD_ROWS: Final = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Keys next to each letter on a UK/US QWERTY keyboard (rows are staggered to the right)."""
    neighbours: dict[str, str] = {}
    for row_index, row in enumerate(_KEYBOARD_ROWS):
        for column, key in enumerate(row):
            near = [row[c] for c in (column - 1, column + 1) if 0 <= c < len(row)]
            if row_index > 0:
                above = _KEYBOARD_ROWS[row_index - 1]
                near += [above[c] for c in (column, column + 1) if c < len(above)]
            if row_index < len(_KEYBOARD_ROWS) - 1:
                below = _KEYBOARD_ROWS[row_index + 1]
                near += [below[c] for c in (column - 1, column) if 0 <= c < len(below)]
            neighbours[key] = "".join(near)
    return neighbours


KEYBOARD_NEIGHBOURS: Final[dict[str, str]] = _keyboard_neighbours()

_SUBSTITUTE, _INSERT, _DELETE, _TRANSPOSE = range(4)


def typo(name: str, rng: np.random.Generator) -> str:
    """``name`` with one typing error: a neighbouring key, an extra key, a lost key or two swapped.

    The result always differs from ``name``: a substitution, insertion or deletion is one edit, a
    transposition of two different adjacent characters is two (Levenshtein) or one (Damerau). Where
    the chosen kind is impossible (deleting from one letter, no letter with neighbours), a key is
    inserted instead.
    """
    kind = int(rng.integers(4))
    if kind == _DELETE and len(name) >= 2:
        at = int(rng.integers(len(name)))
        return name[:at] + name[at + 1 :]
    if kind == _TRANSPOSE:
        pairs = [i for i in range(len(name) - 1) if name[i] != name[i + 1]]
        if pairs:
            at = pairs[int(rng.integers(len(pairs)))]
            return name[:at] + name[at + 1] + name[at] + name[at + 2 :]
    if kind == _SUBSTITUTE:
        letters = [i for i, char in enumerate(name) if char.lower() in KEYBOARD_NEIGHBOURS]
        if letters:
            at = letters[int(rng.integers(len(letters)))]
            options = KEYBOARD_NEIGHBOURS[name[at].lower()]
            new = options[int(rng.integers(len(options)))]
            return name[:at] + (new.upper() if name[at].isupper() else new) + name[at + 1 :]
    at = int(rng.integers(1, len(name) + 1)) if name else 0
    anchor = name[at - 1] if name else "e"
    options = KEYBOARD_NEIGHBOURS.get(anchor.lower(), string.ascii_lowercase)
    new = options[int(rng.integers(len(options)))]
    return name[:at] + (new.upper() if name.isupper() and len(name) > 1 else new) + name[at:]


# Digits of YYYYMMDD that a slip of the finger changes: year tens and units, month units, day.
_DOB_DIGITS: Final = (2, 3, 5, 6, 7)


def dob_typo(date: dt.date, rng: np.random.Generator) -> dt.date:
    """``date`` with one digit of its YYYYMMDD form one higher or lower, still a valid date.

    Some digit can always change (the day's units digit can go up or down within any month).
    """
    digits = date.strftime("%Y%m%d")
    for position in rng.permutation(_DOB_DIGITS):
        for step in rng.permutation((-1, 1)):
            new_digit = int(digits[position]) + int(step)
            if not 0 <= new_digit <= 9:
                continue
            candidate = digits[:position] + str(new_digit) + digits[position + 1 :]
            try:
                return dt.datetime.strptime(candidate, "%Y%m%d").date()
            except ValueError:
                continue
    raise AssertionError(f"no one-digit change of {digits} is a valid date")


def record_identities(
    population: Population,
    book: NameBook,
    persons: np.ndarray,
    rates: CorruptionRates,
    style: RecordingStyle,
    rng: np.random.Generator,
) -> pa.Table:
    """The identifiers a department recorded for ``persons`` (distinct ids), one row each, in order.

    Columns: first_name, last_name, dob (string in the department's format), sex, postcode; null
    where missing.
    """
    first_name, last_name, vocabulary = _recorded_names(population, book, persons, rates, rng)
    written = pa.array(style.write_names(vocabulary), pa.string())
    missing_first = rng.random(persons.size) < rates.missing_first_name
    missing_sex = rng.random(persons.size) < rates.missing_sex
    return pa.table(
        {
            "first_name": written.take(pa.array(first_name, mask=missing_first)),
            "last_name": written.take(pa.array(last_name)),
            "dob": _recorded_dobs(population.dob[persons], rates, style, rng),
            "sex": pa.array(["M", "F"]).take(pa.array(population.sex[persons], mask=missing_sex)),
            "postcode": _recorded_postcodes(population, persons, rates, style, rng),
        }
    )


def _recorded_names(
    population: Population,
    book: NameBook,
    persons: np.ndarray,
    rates: CorruptionRates,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """First- and last-name codes after errors, and the vocabulary they index (book plus new spellings)."""
    count = persons.size
    first = population.first_name[persons].copy()
    last = population.last_name[persons].copy()

    def happens(rate: float) -> np.ndarray:
        return rng.random(count) < rate

    married = happens(rates.surname_change) & (population.birth_year[persons] <= LAST_ADULT_YEAR)
    last[married] = book.surname_codes[rng.integers(0, book.surname_codes.size, int(married.sum()))]

    barrel = happens(rates.double_barrel)
    parts = book.barrel_parts[last]
    cut = barrel & (parts[:, 0] >= 0)
    which_part = rng.integers(0, 2, count)
    last[cut] = parts[cut, which_part[cut]]
    add_barrel = barrel & ~cut

    nickname = np.flatnonzero(happens(rates.nickname) & (book.nickname_count[first] > 0))
    pick = np.floor(rng.random(nickname.size) * book.nickname_count[first[nickname]]).astype(np.int32)
    first[nickname] = book.nickname_codes[book.nickname_start[first[nickname]] + pick]

    lose_accents = happens(rates.accent_loss)
    first = np.where(lose_accents, book.ascii_code[first], first)
    last = np.where(lose_accents, book.ascii_code[last], last)

    typo_made = happens(rates.typo)
    swapped = happens(rates.name_swap)
    recased = happens(rates.case_variation)
    vocabulary = list(book.vocabulary)
    for i in np.flatnonzero(add_barrel | typo_made | swapped | recased):
        given, family = vocabulary[first[i]], vocabulary[last[i]]
        if add_barrel[i]:
            family = f"{family}-{vocabulary[book.surname_codes[rng.integers(book.surname_codes.size)]]}"
        if typo_made[i]:
            if rng.random() < 0.5:
                given = typo(given, rng)
            else:
                family = typo(family, rng)
        if swapped[i]:
            given, family = family, given
        if recased[i]:
            given, family = (given.upper(), family.upper()) if rng.random() < 0.5 else (given.lower(), family.lower())
        first[i], last[i] = len(vocabulary), len(vocabulary) + 1
        vocabulary += (given, family)
    return first, last, vocabulary


def _recorded_dobs(
    dob: np.ndarray, rates: CorruptionRates, style: RecordingStyle, rng: np.random.Generator
) -> pa.StringArray:
    dob = dob.astype("datetime64[D]").copy()
    count = dob.size
    year_start = dob.astype("datetime64[Y]")
    month_start = dob.astype("datetime64[M]")
    day = (dob - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    month = (month_start - year_start.astype("datetime64[M]")).astype(np.int64) + 1
    swap = (rng.random(count) < rates.dob_day_month_swap) & (day <= 12) & (day != month)
    swapped_month = year_start[swap].astype("datetime64[M]") + (day[swap] - 1)
    dob[swap] = swapped_month.astype("datetime64[D]") + (month[swap] - 1)
    for i in np.flatnonzero(rng.random(count) < rates.dob_typo):
        dob[i] = np.datetime64(dob_typo(dob[i].item(), rng), "D")
    missing = rng.random(count) < rates.missing_dob
    return format_dates(dob, style.dob_format, missing)


def _recorded_postcodes(
    population: Population,
    persons: np.ndarray,
    rates: CorruptionRates,
    style: RecordingStyle,
    rng: np.random.Generator,
) -> pa.StringArray:
    count = persons.size
    outward = population.outward[persons].copy()
    inward = population.inward[persons].copy()
    moved = np.flatnonzero(rng.random(count) < rates.postcode_moved)
    outward[moved], inward[moved] = POSTCODES.draw(population.region[persons[moved]].astype(np.int64), rng)
    postcodes = POSTCODES.render(outward, inward)
    if style.compact_postcodes:
        postcodes = pc.replace_substring(postcodes, " ", "")

    # Written the other way round from the department's habit: space toggled, lower case, or both.
    reformatted = rng.random(count) < rates.postcode_format
    original = postcodes.filter(pa.array(reformatted))
    if style.compact_postcodes:
        toggled = pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(original, 0, -3), pc.utf8_slice_codeunits(original, -3), " "
        )
    else:
        toggled = pc.replace_substring(original, " ", "")
    variant = pa.array(rng.integers(0, 3, len(original), dtype=np.int8))
    rewritten = pc.choose(variant, toggled, pc.utf8_lower(original), pc.utf8_lower(toggled))
    postcodes = pc.replace_with_mask(postcodes, pa.array(reformatted), rewritten)

    missing = rng.random(count) < rates.missing_postcode
    no_fixed_abode = missing & (rng.random(count) < style.no_fixed_abode_share)
    postcodes = pc.if_else(pa.array(no_fixed_abode), pa.scalar(NO_FIXED_ABODE), postcodes)
    return pc.if_else(pa.array(missing & ~no_fixed_abode), pa.scalar(None, pa.string()), postcodes)
