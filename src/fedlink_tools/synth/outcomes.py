"""Life events of the population, driven by correlated latent factors.

Family deprivation raises the chance of a parent's disability benefit, imprisonment and conviction,
of free school meals, of a severe mental illness and of homelessness; a parent's disability and
imprisonment raise a child's risk of severe mental illness and lower attainment. The effects are
strong enough to see in aggregates of a few thousand linked people: for example severe mental illness
is about twice as common among children on free school meals whose parent had disability benefit.

A parent's imprisonment or conviction is drawn from the child's side (a child born 1994-2012 draws
whether a parent was imprisoned while the child was under 18) and then recorded on the parent, so
every child flagged has a parent with a matching sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from fedlink_tools.synth.draws import sigmoid, uniform_years
from fedlink_tools.synth.population import FEMALE, MALE, Population

FIRST_RECORD_YEAR: Final = 2000
LAST_RECORD_YEAR: Final = 2025
#: Children born in these years can appear as a prisoner's child.
CHILD_COHORT: Final = (1994, 2012)
#: Pupils with a key stage 4 result: born in these years.
PUPIL_COHORT: Final = (1994, 2008)
#: Adults for benefits, prison and homelessness: born in or before this year.
LAST_ADULT_YEAR: Final = 2007


@dataclass(frozen=True)
class Outcomes:
    """Per-person events, parallel to the arrays of :class:`Population`."""

    disabled: np.ndarray  # bool: receives a disability benefit as an adult
    parent_disability: np.ndarray  # bool: the person's parent receives one
    imprisoned: np.ndarray  # bool
    #: Year of the sentence tied to a child's childhood, or of a first sentence; 0 when not imprisoned.
    sentence_year: np.ndarray  # int16
    parent_imprisoned: np.ndarray  # bool: a parent was sentenced while the person was under 18
    convicted: np.ndarray  # bool: convicted without custody
    conviction_year: np.ndarray  # int16, 0 when not convicted
    parent_convicted: np.ndarray  # bool: a parent was convicted without custody during childhood
    fsm: np.ndarray  # bool: free school meals (pupils only)
    sen: np.ndarray  # bool: special educational needs (pupils only)
    attainment8: np.ndarray  # float64 in [0, 90], one decimal (pupils only)
    smi: np.ndarray  # bool: severe mental illness
    homeless: np.ndarray  # bool


def build_outcomes(population: Population, rng: np.random.Generator) -> Outcomes:
    """Draw everyone's events from their family deprivation and their parent's events."""
    n = population.size
    year = population.birth_year.astype(np.int64)
    deprivation = population.deprivation
    parent = population.parent
    male = population.sex == MALE
    adult = year <= LAST_ADULT_YEAR
    age = 2025 - year

    disabled = adult & (rng.random(n) < sigmoid(-2.9 + 0.6 * deprivation + 0.03 * (age - 45)))
    has_parent = parent >= 0
    parent_disability = has_parent & disabled[np.maximum(parent, 0)]

    in_cohort = has_parent & (year >= CHILD_COHORT[0]) & (year <= CHILD_COHORT[1])
    parent_female = population.sex[np.maximum(parent, 0)] == FEMALE

    imprisoned, sentence_year = _parents_sentenced(
        in_cohort & (rng.random(n) < sigmoid(-3.5 + 0.8 * deprivation - 1.4 * parent_female)),
        parent,
        year,
        rng,
    )
    baseline = adult & ~imprisoned & (rng.random(n) < sigmoid(-6.9 + 0.7 * deprivation + 1.3 * male))
    imprisoned |= baseline
    sentence_year[baseline] = uniform_years(np.maximum(FIRST_RECORD_YEAR, year[baseline] + 18), LAST_RECORD_YEAR, rng)
    parent_imprisoned = in_cohort & _during_childhood(imprisoned, sentence_year, parent, year)

    convicted, conviction_year = _parents_sentenced(
        in_cohort & (rng.random(n) < sigmoid(-3.2 + 0.6 * deprivation - 1.0 * parent_female)),
        parent,
        year,
        rng,
    )
    baseline = adult & ~convicted & (rng.random(n) < sigmoid(-5.0 + 0.6 * deprivation + 1.1 * male))
    convicted |= baseline
    conviction_year[baseline] = uniform_years(np.maximum(FIRST_RECORD_YEAR, year[baseline] + 16), LAST_RECORD_YEAR, rng)
    parent_convicted = in_cohort & _during_childhood(convicted, conviction_year, parent, year)

    school_age = (year >= CHILD_COHORT[0]) & (year <= CHILD_COHORT[1])
    fsm = school_age & (
        rng.random(n) < sigmoid(-1.9 + 1.3 * deprivation + 0.5 * parent_disability + 0.4 * parent_imprisoned)
    )
    sen = school_age & (rng.random(n) < sigmoid(-2.0 + 0.35 * deprivation + 0.4 * parent_imprisoned + 0.3 * fsm))
    attainment = (
        50.0
        - 9.0 * fsm
        - 2.0 * deprivation
        - 6.0 * parent_imprisoned
        - 3.0 * parent_convicted
        - 15.0 * sen
        + 12.0 * rng.standard_normal(n)
    )
    attainment8 = np.where(school_age, np.round(np.clip(attainment, 0.0, 90.0), 1), 0.0)

    smi_logit = (
        -3.8
        + 0.45 * fsm
        + 0.45 * parent_disability
        + 0.15 * deprivation
        + 0.4 * parent_imprisoned
        + 0.2 * parent_convicted
    )
    smi = (year <= 2009) & (rng.random(n) < sigmoid(smi_logit))
    homeless_logit = -4.8 + 0.8 * deprivation + 1.0 * smi + 0.7 * parent_imprisoned + 0.8 * imprisoned
    homeless = adult & (rng.random(n) < sigmoid(homeless_logit))

    return Outcomes(
        disabled=disabled,
        parent_disability=parent_disability,
        imprisoned=imprisoned,
        sentence_year=sentence_year,
        parent_imprisoned=parent_imprisoned,
        convicted=convicted,
        conviction_year=conviction_year,
        parent_convicted=parent_convicted,
        fsm=fsm,
        sen=sen,
        attainment8=attainment8,
        smi=smi,
        homeless=homeless,
    )


def _parents_sentenced(
    flagged_children: np.ndarray, parent: np.ndarray, year: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mark the parents of flagged children, each with an event year inside one child's childhood.

    Where several children flag the same parent, the lowest child id sets the year.
    """
    n = parent.size
    children = np.flatnonzero(flagged_children)
    first = np.maximum(FIRST_RECORD_YEAR, year[children])
    last = np.minimum(LAST_RECORD_YEAR, year[children] + 17)
    event_year = uniform_years(first, last, rng)
    parents, first_child = np.unique(parent[children], return_index=True)
    marked = np.zeros(n, dtype=bool)
    marked[parents] = True
    when = np.zeros(n, dtype=np.int16)
    when[parents] = event_year[first_child]
    return marked, when


def _during_childhood(marked: np.ndarray, when: np.ndarray, parent: np.ndarray, year: np.ndarray) -> np.ndarray:
    """Whether each person's parent is marked with an event year while the person was 0-17."""
    safe_parent = np.maximum(parent, 0)
    parent_year = when[safe_parent].astype(np.int64)
    return (parent >= 0) & marked[safe_parent] & (parent_year >= year) & (parent_year <= year + 17)
