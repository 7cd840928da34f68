"""The true population: people, their families, names, addresses and family deprivation.

Everything is built column-wise with numpy; a person is an index into the arrays of
:class:`Population`. Families link each person born in or after :data:`FIRST_CHILD_YEAR` to one
parent born 18 to 45 years earlier; children mostly share their parent's name origin, surname,
region, often the address, and inherit part of the family's deprivation. Since a parent is at least
18 years older, at most two generations have parents, and two passes of inheritance suffice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from fedlink_tools.synth.draws import categories
from fedlink_tools.synth.geography import POSTCODES, REGION_WEIGHTS, REGIONS
from fedlink_tools.synth.names import FIRST_NAMES, NAME_VOCABULARY, ORIGINS, SURNAMES, codes_of, zipf_weights

FIRST_BIRTH_YEAR: Final = 1940
LAST_BIRTH_YEAR: Final = 2012
#: Everyone born in or after this year has a recorded parent.
FIRST_CHILD_YEAR: Final = 1985
MALE: Final = 0
FEMALE: Final = 1

# Relative number of people alive today by year of birth: deaths thin the oldest cohorts, the
# post-war and 1960s booms and the 2000s rise show.
_COHORT_SIZE: Final = {
    1940: 0.40, 1946: 0.58, 1950: 0.62, 1955: 0.66, 1960: 0.78, 1964: 0.86, 1970: 0.78, 1977: 0.66,
    1982: 0.72, 1990: 0.80, 1995: 0.76, 2001: 0.72, 2008: 0.84, 2012: 0.86,
}  # fmt: skip

# Name origin shares by region (rows follow REGIONS, columns follow ORIGINS); London and the
# Midlands and Yorkshire are more diverse.
_ORIGIN_BY_REGION: Final = np.array(
    [
        [0.86, 0.06, 0.03, 0.01, 0.02, 0.01, 0.01],
        [0.77, 0.09, 0.07, 0.02, 0.03, 0.01, 0.01],
        [0.74, 0.06, 0.12, 0.02, 0.04, 0.01, 0.01],
        [0.76, 0.06, 0.10, 0.02, 0.04, 0.01, 0.01],
        [0.70, 0.06, 0.14, 0.03, 0.04, 0.015, 0.015],
        [0.80, 0.06, 0.05, 0.03, 0.04, 0.01, 0.01],
        [0.44, 0.08, 0.17, 0.12, 0.08, 0.05, 0.06],
        [0.80, 0.07, 0.05, 0.02, 0.04, 0.01, 0.01],
        [0.86, 0.06, 0.03, 0.01, 0.02, 0.01, 0.01],
    ]
)

# Mean family deprivation of each region (in standard deviations), roughly the pattern of the
# English indices of deprivation.
_REGION_DEPRIVATION: Final = np.array([0.35, 0.25, 0.2, 0.05, 0.2, -0.15, 0.1, -0.3, -0.15])

_DOUBLE_BARREL_SHARE: Final = 0.03
_SAME_ORIGIN_AS_PARENT: Final = 0.95
_SAME_REGION_AS_PARENT: Final = 0.85
_SAME_SURNAME_AS_PARENT: Final = 0.9


@dataclass(frozen=True)
class Population:
    """N people as parallel arrays indexed by person id (0..N-1)."""

    birth_year: np.ndarray  # int16
    dob: np.ndarray  # datetime64[D]
    sex: np.ndarray  # int8, MALE or FEMALE
    origin: np.ndarray  # int8 index into ORIGINS
    region: np.ndarray  # int8 index into REGIONS
    first_name: np.ndarray  # int32 index into vocabulary
    last_name: np.ndarray  # int32 index into vocabulary
    #: NAME_VOCABULARY followed by the double-barrelled surnames this population uses.
    vocabulary: tuple[str, ...]
    #: For each vocabulary entry that is a double-barrelled surname, its two parts; -1 otherwise.
    barrel_parts: np.ndarray  # int32, shape (len(vocabulary), 2)
    outward: np.ndarray  # int32 index into POSTCODES.outward
    inward: np.ndarray  # int32 index into POSTCODES.inward
    parent: np.ndarray  # int64 person id, -1 for none
    #: Family deprivation, standard normal-ish; higher is more deprived.
    deprivation: np.ndarray  # float64

    @property
    def size(self) -> int:
        return int(self.birth_year.size)


def build_population(people: int, rng: np.random.Generator) -> Population:
    """A population of ``people`` people drawn from ``rng``."""
    years = np.arange(FIRST_BIRTH_YEAR, LAST_BIRTH_YEAR + 1)
    cohort = np.interp(years, list(_COHORT_SIZE), list(_COHORT_SIZE.values()))
    birth_year = rng.choice(years, size=people, p=cohort / cohort.sum()).astype(np.int16)
    year_start = (birth_year - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    days_in_year = np.where(_is_leap(birth_year), 366, 365)
    dob = year_start + np.floor(rng.random(people) * days_in_year).astype("timedelta64[D]")
    sex = (rng.random(people) < 0.51).astype(np.int8)

    parent = _choose_parents(birth_year, sex, rng)
    generations = _generations(parent, birth_year)

    region = rng.choice(len(REGIONS), size=people, p=np.asarray(REGION_WEIGHTS) / sum(REGION_WEIGHTS))
    region = _inherit(region.astype(np.int8), parent, generations, _SAME_REGION_AS_PARENT, rng)
    origin = categories(_ORIGIN_BY_REGION[region], rng)
    origin = _inherit(origin, parent, generations, _SAME_ORIGIN_AS_PARENT, rng)

    first_name = _draw_first_names(origin, sex, rng)
    last_name = _draw_surnames(origin, rng)
    last_name, vocabulary, barrel_parts = _add_double_barrels(last_name, origin, rng)
    last_name = _inherit(last_name, parent, generations, _SAME_SURNAME_AS_PARENT, rng)

    outward, inward = POSTCODES.draw(region.astype(np.int64), rng)
    outward, inward = _share_homes(outward, inward, region, birth_year, parent, generations, rng)

    deprivation = _REGION_DEPRIVATION[region] + rng.standard_normal(people)
    for children in generations:
        inherited = 0.6 * deprivation[parent[children]] + 0.4 * _REGION_DEPRIVATION[region[children]]
        deprivation[children] = inherited + 0.8 * rng.standard_normal(children.size)

    return Population(
        birth_year=birth_year,
        dob=dob,
        sex=sex,
        origin=origin,
        region=region,
        first_name=first_name,
        last_name=last_name,
        vocabulary=vocabulary,
        barrel_parts=barrel_parts,
        outward=outward,
        inward=inward,
        parent=parent,
        deprivation=deprivation,
    )


def _is_leap(year: np.ndarray) -> np.ndarray:
    return (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))


def _choose_parents(birth_year: np.ndarray, sex: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A parent for everyone born from FIRST_CHILD_YEAR: a mother (60%) or father 18-45 years older.

    People are sorted by (sex, birth year), so the candidates of one sex and year form a contiguous
    run found by binary search, and a uniform draw picks one. If no one of that sex and year exists
    (tiny populations), anyone born 18 to 45 years earlier will do.
    """
    parent = np.full(birth_year.size, -1, dtype=np.int64)
    children = np.flatnonzero(birth_year >= FIRST_CHILD_YEAR)
    child_year = birth_year[children].astype(np.int64)
    mother = rng.random(children.size) < 0.6
    gap = np.where(mother, rng.normal(29.0, 5.5, children.size), rng.normal(32.0, 6.0, children.size))
    gap = np.clip(np.rint(gap), 18, 45).astype(np.int64)
    wanted_key = np.where(mother, FEMALE, MALE) * 10_000 + (child_year - gap)

    key = sex.astype(np.int64) * 10_000 + birth_year
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    low = np.searchsorted(sorted_key, wanted_key, side="left")
    count = np.searchsorted(sorted_key, wanted_key, side="right") - low
    pick = low + np.floor(rng.random(children.size) * count).astype(np.int64)
    found = count > 0
    parent[children[found]] = order[pick[found]]

    missing = ~found
    if missing.any():
        by_year = np.argsort(birth_year, kind="stable")
        sorted_year = birth_year[by_year]
        low = np.searchsorted(sorted_year, child_year[missing] - 45, side="left")
        count = np.searchsorted(sorted_year, child_year[missing] - 18, side="right") - low
        pick = low + np.floor(rng.random(low.size) * count).astype(np.int64)
        ok = count > 0
        parent[children[missing][ok]] = by_year[pick[ok]]
    return parent


def _generations(parent: np.ndarray, birth_year: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Children whose parent has no parent, then children whose parent has one (inheritance order)."""
    children = np.flatnonzero(parent >= 0)
    parent_has_parent = parent[parent[children]] >= 0
    return children[~parent_has_parent], children[parent_has_parent]


def _inherit(
    values: np.ndarray,
    parent: np.ndarray,
    generations: tuple[np.ndarray, np.ndarray],
    share: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``values`` where each child takes its parent's value with probability ``share``."""
    values = values.copy()
    for children in generations:
        takes = children[rng.random(children.size) < share]
        values[takes] = values[parent[takes]]
    return values


def _draw_first_names(origin: np.ndarray, sex: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    first_name = np.empty(origin.size, dtype=np.int32)
    for origin_index, origin_name in enumerate(ORIGINS):
        for sex_code, names in ((MALE, FIRST_NAMES[origin_name][0]), (FEMALE, FIRST_NAMES[origin_name][1])):
            who = np.flatnonzero((origin == origin_index) & (sex == sex_code))
            first_name[who] = rng.choice(codes_of(names), size=who.size, p=zipf_weights(len(names)))
    return first_name


def _draw_surnames(origin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    last_name = np.empty(origin.size, dtype=np.int32)
    for origin_index, origin_name in enumerate(ORIGINS):
        names = SURNAMES[origin_name]
        who = np.flatnonzero(origin == origin_index)
        last_name[who] = rng.choice(codes_of(names), size=who.size, p=zipf_weights(len(names)))
    return last_name


def _add_double_barrels(
    last_name: np.ndarray, origin: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Give some English, Irish and Scottish families a double-barrelled surname ("Smith-Jones")."""
    english = SURNAMES["english"]
    eligible = np.isin(origin, [ORIGINS.index("english"), ORIGINS.index("irish_scottish")])
    who = np.flatnonzero(eligible & (rng.random(last_name.size) < _DOUBLE_BARREL_SHARE))
    second = rng.choice(codes_of(english), size=who.size, p=zipf_weights(len(english)))
    distinct = second != last_name[who]
    who, second = who[distinct], second[distinct]

    vocabulary_size = len(NAME_VOCABULARY)
    pair = last_name[who].astype(np.int64) * vocabulary_size + second
    unique_pairs, which = np.unique(pair, return_inverse=True)
    first_part = (unique_pairs // vocabulary_size).astype(np.int32)
    second_part = (unique_pairs % vocabulary_size).astype(np.int32)
    barrelled = tuple(
        f"{NAME_VOCABULARY[a]}-{NAME_VOCABULARY[b]}" for a, b in zip(first_part, second_part, strict=True)
    )
    vocabulary = NAME_VOCABULARY + barrelled
    barrel_parts = np.full((len(vocabulary), 2), -1, dtype=np.int32)
    barrel_parts[vocabulary_size:, 0] = first_part
    barrel_parts[vocabulary_size:, 1] = second_part

    last_name = last_name.copy()
    last_name[who] = vocabulary_size + which.astype(np.int32)
    return last_name, vocabulary, barrel_parts


def _share_homes(
    outward: np.ndarray,
    inward: np.ndarray,
    region: np.ndarray,
    birth_year: np.ndarray,
    parent: np.ndarray,
    generations: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Children in their parent's region often live at the parent's postcode (young ones more often)."""
    outward, inward = outward.copy(), inward.copy()
    for children in generations:
        same_region = region[children] == region[parent[children]]
        at_home = np.where(birth_year[children] >= 2000, 0.7, 0.3)
        lives_there = children[same_region & (rng.random(children.size) < at_home)]
        outward[lives_there] = outward[parent[lives_there]]
        inward[lives_there] = inward[parent[lives_there]]
    return outward, inward
