"""The rows each department holds: who they are about and their non-identifying attributes.

Each builder returns :class:`DepartmentRows` in no particular order; identifiers are added (and
corrupted) separately, and rows are shuffled when the table is written. Category values are public
metadata (group-by keys of queries), so they are listed here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

from fedlink_tools.synth.draws import categories, uniform_years
from fedlink_tools.synth.geography import NORTHERN_REGIONS, REGIONS
from fedlink_tools.synth.layout import (
    CHARITY_NORTH,
    CHARITY_SOUTH,
    CLAIMS,
    CONVICTIONS,
    DIAGNOSES,
    OFFENDER_CHILDREN,
    PRESCRIPTIONS,
    PRISONER_CHILDREN,
    PUPILS,
    SENTENCES,
    TableRef,
)
from fedlink_tools.synth.outcomes import LAST_ADULT_YEAR, PUPIL_COHORT, Outcomes
from fedlink_tools.synth.population import Population

BENEFITS: Final = (
    "universal_credit",
    "jobseekers_allowance",
    "employment_support_allowance",
    "personal_independence_payment",
    "housing_benefit",
    "carers_allowance",
)
EMPLOYMENT: Final = ("employed", "unemployed", "inactive")
DIAGNOSIS_GROUPS: Final = (
    "severe_mental_illness",
    "depression_anxiety",
    "diabetes",
    "asthma",
    "cardiovascular",
    "other",
)
BNF_CHAPTERS: Final = (
    "cardiovascular",
    "respiratory",
    "central_nervous_system",
    "infections",
    "endocrine",
    "other",
)
OFFENCE_GROUPS: Final = ("violence", "theft", "drugs", "fraud", "public_order", "other")
DISPOSALS: Final = ("custody", "community", "fine", "discharge")
EPISODE_TYPES: Final = ("rough_sleeping", "temporary_accommodation", "hostel", "prevention")
EPISODE_OUTCOMES: Final = ("housed", "not_housed", "lost_contact")

#: Columns every department table starts with, in order.
IDENTIFIER_SCHEMA: Final = pa.schema(
    [
        ("record_id", pa.string()),
        ("first_name", pa.string()),
        ("last_name", pa.string()),
        ("dob", pa.string()),
        ("sex", pa.string()),
        ("postcode", pa.string()),
        ("region", pa.string()),
    ]
)

_SUPPORT_EPISODES: Final = pa.schema(
    [
        ("episode_type", pa.string()),
        ("start_year", pa.int16()),
        ("duration_days", pa.int16()),
        ("outcome", pa.string()),
    ]
)

#: Attribute columns of each table, after the identifiers.
ATTRIBUTE_SCHEMAS: Final[dict[TableRef, pa.Schema]] = {
    PUPILS: pa.schema(
        [("fsm", pa.int8()), ("sen", pa.int8()), ("ks4_year", pa.int16()), ("attainment8", pa.float64())]
    ),
    CLAIMS: pa.schema(
        [
            ("benefit", pa.string()),
            ("start_year", pa.int16()),
            ("employment", pa.string()),
            ("parent_disability", pa.int8()),
        ]
    ),
    DIAGNOSES: pa.schema(
        [
            ("diagnosis", pa.string()),
            ("severe", pa.int8()),
            ("year", pa.int16()),
            ("age_at_diagnosis", pa.int16()),
        ]
    ),
    PRESCRIPTIONS: pa.schema([("bnf_chapter", pa.string()), ("items", pa.int16()), ("year", pa.int16())]),
    SENTENCES: pa.schema(
        [
            ("offence_group", pa.string()),
            ("sentence_months", pa.int16()),
            ("start_year", pa.int16()),
            ("is_parent", pa.int8()),
        ]
    ),
    PRISONER_CHILDREN: pa.schema([("parent_sentence_year", pa.int16())]),
    CONVICTIONS: pa.schema([("offence_group", pa.string()), ("disposal", pa.string()), ("year", pa.int16())]),
    OFFENDER_CHILDREN: pa.schema([("parent_conviction_year", pa.int16())]),
    CHARITY_NORTH: _SUPPORT_EPISODES,
    CHARITY_SOUTH: _SUPPORT_EPISODES,
}


@dataclass(frozen=True)
class DepartmentRows:
    """The rows of one department table before identifiers are attached."""

    ref: TableRef
    #: Whose identifiers each row carries (a person id per row).
    person: np.ndarray
    attributes: pa.Table

    def __post_init__(self) -> None:
        if self.attributes.schema != ATTRIBUTE_SCHEMAS[self.ref]:
            raise AssertionError(f"{self.ref.path}: attributes {self.attributes.schema} do not match the layout")


def _rows(ref: TableRef, person: np.ndarray, columns: dict[str, np.ndarray | pa.Array]) -> DepartmentRows:
    schema = ATTRIBUTE_SCHEMAS[ref]
    arrays = [_as_arrow(columns[field.name], field.type) for field in schema]
    return DepartmentRows(ref, person.astype(np.int64), pa.Table.from_arrays(arrays, schema=schema))


def _as_arrow(column: np.ndarray | pa.Array, arrow_type: pa.DataType) -> pa.Array:
    if isinstance(column, pa.Array):
        return column.cast(arrow_type)
    return pa.array(column.astype(arrow_type.to_pandas_dtype()), type=arrow_type)


def _labels(values: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(codes))


def _age(population: Population) -> np.ndarray:
    return 2025 - population.birth_year.astype(np.int64)


def pupils(population: Population, outcomes: Outcomes, rng: np.random.Generator) -> DepartmentRows:
    """Every person born in the pupil cohort, with free school meals, SEN and Attainment 8."""
    del rng  # pupils are fully determined by the outcomes
    year = population.birth_year
    person = np.flatnonzero((year >= PUPIL_COHORT[0]) & (year <= PUPIL_COHORT[1]))
    return _rows(
        PUPILS,
        person,
        {
            "fsm": outcomes.fsm[person],
            "sen": outcomes.sen[person],
            "ks4_year": year[person] + 16,
            "attainment8": outcomes.attainment8[person],
        },
    )


# Employment status by benefit (rows follow BENEFITS, columns EMPLOYMENT).
_EMPLOYMENT_BY_BENEFIT: Final = np.array(
    [[0.4, 0.4, 0.2], [0.0, 1.0, 0.0], [0.1, 0.1, 0.8], [0.2, 0.0, 0.8], [0.5, 0.25, 0.25], [0.3, 0.0, 0.7]]
)
_UNIVERSAL_CREDIT_FROM: Final = 2013


def claims(population: Population, outcomes: Outcomes, rng: np.random.Generator) -> DepartmentRows:
    """0-3 benefit claims per adult, more with deprivation; disabled adults claim PIP or ESA."""
    adults = np.flatnonzero(population.birth_year <= LAST_ADULT_YEAR)
    disabled = outcomes.disabled[adults]
    young = population.birth_year[adults] >= 1995
    parent_disability = outcomes.parent_disability[adults]
    rate = np.exp(-1.4 + 0.45 * population.deprivation[adults] + 1.2 * disabled + 0.7 * parent_disability + 0.3 * young)
    count = np.minimum(rng.poisson(rate), 3)
    count = np.where(disabled, np.maximum(count, 1), count)
    person = np.repeat(adults, count)

    benefit = categories(np.array([0.45, 0.15, 0.08, 0.08, 0.16, 0.08]), rng, person.size)
    first_rows = (np.cumsum(count) - count)[count > 0]
    disability_claim = first_rows[disabled[count > 0]]
    benefit[disability_claim] = np.where(rng.random(disability_claim.size) < 0.6, 3, 2)

    earliest = np.maximum(2005, population.birth_year[person].astype(np.int64) + 16)
    earliest = np.where(benefit == 0, np.maximum(earliest, _UNIVERSAL_CREDIT_FROM), earliest)
    employment = categories(_EMPLOYMENT_BY_BENEFIT[benefit], rng)
    return _rows(
        CLAIMS,
        person,
        {
            "benefit": _labels(BENEFITS, benefit),
            "start_year": uniform_years(earliest, 2025, rng),
            "employment": _labels(EMPLOYMENT, employment),
            "parent_disability": outcomes.parent_disability[person],
        },
    )


def diagnoses(population: Population, outcomes: Outcomes, rng: np.random.Generator) -> DepartmentRows:
    """0-3 diagnoses per person: one of severe mental illness for those who have it, others by age."""
    age = _age(population)
    birth_year = population.birth_year.astype(np.int64)
    smi = np.flatnonzero(outcomes.smi)
    others = np.minimum(rng.poisson(0.15 + 0.008 * age), 3 - outcomes.smi)
    other_person = np.repeat(np.arange(population.size), others)
    other_age = age[other_person]
    weights = np.column_stack(
        [
            0.25 * np.exp(0.3 * population.deprivation[other_person]),
            0.02 + 0.003 * other_age,
            np.maximum(0.25 - 0.003 * other_age, 0.04),
            0.004 * other_age,
            np.full(other_person.size, 0.3),
        ]
    )
    group = np.concatenate([np.zeros(smi.size, dtype=np.int8), categories(weights, rng) + 1])
    person = np.concatenate([smi, other_person])
    earliest = np.concatenate([birth_year[smi] + 14, birth_year[other_person]])
    year = uniform_years(np.maximum(2005, earliest), 2025, rng)
    return _rows(
        DIAGNOSES,
        person,
        {
            "diagnosis": _labels(DIAGNOSIS_GROUPS, group),
            "severe": group == 0,
            "year": year,
            "age_at_diagnosis": year - birth_year[person],
        },
    )


def prescriptions(population: Population, outcomes: Outcomes, rng: np.random.Generator) -> DepartmentRows:
    """0-4 prescriptions per person, more with age; severe mental illness brings CNS drugs."""
    age = _age(population)
    count = np.minimum(rng.poisson(0.35 + 0.013 * age + 0.5 * outcomes.smi), 4)
    person = np.repeat(np.arange(population.size), count)
    row_age = age[person]
    smi = outcomes.smi[person]
    weights = np.column_stack(
        [
            0.005 * row_age,
            np.full(person.size, 0.15),
            0.2 + 0.8 * smi + 0.05 * np.maximum(population.deprivation[person], 0.0),
            np.full(person.size, 0.25),
            0.002 * row_age,
            np.full(person.size, 0.2),
        ]
    )
    chapter = categories(weights, rng)
    items = np.minimum(rng.geometric(0.15, person.size), 50)
    first_year = np.maximum(2005, population.birth_year[person].astype(np.int64))
    return _rows(
        PRESCRIPTIONS,
        person,
        {
            "bnf_chapter": _labels(BNF_CHAPTERS, chapter),
            "items": items,
            "year": uniform_years(first_year, 2025, rng),
        },
    )


def sentences(population: Population, outcomes: Outcomes, rng: np.random.Generator) -> DepartmentRows:
    """One or more custodial sentences per imprisoned person, one of them in the recorded year."""
    prisoners = np.flatnonzero(outcomes.imprisoned)
    more = np.minimum(rng.poisson(0.25, prisoners.size), 3)
    again = np.repeat(prisoners, more)
    person = np.concatenate([prisoners, again])
    earliest = np.maximum(2000, population.birth_year[again].astype(np.int64) + 18)
    start_year = np.concatenate([outcomes.sentence_year[prisoners], uniform_years(earliest, 2025, rng)])
    offence = categories(np.array([0.3, 0.22, 0.2, 0.06, 0.07, 0.15]), rng, person.size)
    months = np.clip(np.rint(np.exp(rng.normal(np.log(8.0), 1.0, person.size))), 1, 240)
    has_children = np.bincount(population.parent[population.parent >= 0], minlength=population.size) > 0
    return _rows(
        SENTENCES,
        person,
        {
            "offence_group": _labels(OFFENCE_GROUPS, offence),
            "sentence_months": months,
            "start_year": start_year,
            "is_parent": has_children[person],
        },
    )


def prisoner_children(population: Population, outcomes: Outcomes, rng: np.random.Generator) -> DepartmentRows:
    """Children whose parent was sentenced while they were under 18, as the prison recorded them."""
    del rng
    children = np.flatnonzero(outcomes.parent_imprisoned)
    year = outcomes.sentence_year[population.parent[children]]
    return _rows(PRISONER_CHILDREN, children, {"parent_sentence_year": year})


def offender_children(population: Population, outcomes: Outcomes, rng: np.random.Generator) -> DepartmentRows:
    """Children recorded (in pre-sentence reports) as dependants of a parent convicted without custody
    while they were under 18."""
    del rng
    children = np.flatnonzero(outcomes.parent_convicted)
    year = outcomes.conviction_year[population.parent[children]]
    return _rows(OFFENDER_CHILDREN, children, {"parent_conviction_year": year})


def convictions(
    population: Population, outcomes: Outcomes, custody: DepartmentRows, rng: np.random.Generator
) -> DepartmentRows:
    """A custody conviction for every sentence, and convictions without custody for others.

    ``custody`` are the rows of :func:`sentences`; people convicted without custody have one
    conviction in their recorded year and maybe more; some prisoners also have non-custodial ones.
    """
    convicted = np.flatnonzero(outcomes.convicted)
    prisoners = np.flatnonzero(outcomes.imprisoned)
    extra = np.concatenate(
        [
            np.repeat(convicted, np.minimum(rng.poisson(0.2, convicted.size), 3)),
            np.repeat(prisoners, np.minimum(rng.poisson(0.3, prisoners.size), 3)),
        ]
    )
    earliest = np.maximum(2000, population.birth_year[extra].astype(np.int64) + 16)
    community_person = np.concatenate([convicted, extra])
    community_year = np.concatenate([outcomes.conviction_year[convicted], uniform_years(earliest, 2025, rng)])
    community_offence = categories(np.array([0.15, 0.3, 0.15, 0.05, 0.2, 0.15]), rng, community_person.size)
    disposal = categories(np.array([0.45, 0.35, 0.2]), rng, community_person.size) + 1
    return _rows(
        CONVICTIONS,
        np.concatenate([custody.person, community_person]),
        {
            "offence_group": pa.concat_arrays(
                [custody.attributes["offence_group"].combine_chunks(), _labels(OFFENCE_GROUPS, community_offence)]
            ),
            "disposal": _labels(DISPOSALS, np.concatenate([np.zeros(custody.person.size, np.int8), disposal])),
            "year": np.concatenate([custody.attributes["start_year"].to_numpy(), community_year]),
        },
    )


def support_episodes(
    ref: TableRef, population: Population, outcomes: Outcomes, rng: np.random.Generator
) -> DepartmentRows:
    """1-3 support episodes for each homeless adult in the charity's regions."""
    northern = np.isin(population.region, [REGIONS.index(region) for region in NORTHERN_REGIONS])
    served = northern if ref == CHARITY_NORTH else ~northern
    clients = np.flatnonzero(outcomes.homeless & served)
    u = rng.random(clients.size)
    person = np.repeat(clients, 1 + (u < 0.35) + (u < 0.1))
    episode = categories(np.array([0.2, 0.3, 0.25, 0.25]), rng, person.size)
    outcome_weights = np.where((episode == 0)[:, None], [0.35, 0.25, 0.4], [0.55, 0.2, 0.25])
    duration = np.clip(np.rint(np.exp(rng.normal(np.log(90.0), 1.0, person.size))), 1, 1095)
    earliest = np.maximum(2012, population.birth_year[person].astype(np.int64) + 16)
    return _rows(
        ref,
        person,
        {
            "episode_type": _labels(EPISODE_TYPES, episode),
            "start_year": uniform_years(earliest, 2025, rng),
            "duration_days": duration,
            "outcome": _labels(EPISODE_OUTCOMES, categories(outcome_weights, rng)),
        },
    )
