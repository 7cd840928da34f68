"""Regions of England and synthetic postcodes that fit them.

A postcode is an outward code ("NE1", "M14", "SW1A") and an inward code ("4AB"). Outward codes are
built from the real postcode areas of each region, so a postcode's letters say where it is, as
linkage and blocking on postcode districts expect. Codes are synthetic: most do not exist.
A person's postcode is held as two integer codes, one into :attr:`PostcodeBook.outward` and one into
:attr:`PostcodeBook.inward`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REGIONS: Final[tuple[str, ...]] = (
    "North East",
    "North West",
    "Yorkshire and The Humber",
    "East Midlands",
    "West Midlands",
    "East of England",
    "London",
    "South East",
    "South West",
)

#: Share of the population living in each region (mid-2020s, rounded).
REGION_WEIGHTS: Final[tuple[float, ...]] = (0.047, 0.131, 0.097, 0.086, 0.105, 0.112, 0.156, 0.163, 0.103)

#: Regions served by the northern charity; the southern charity serves the rest.
NORTHERN_REGIONS: Final[frozenset[str]] = frozenset(REGIONS[:5])

_AREAS: Final[dict[str, tuple[str, ...]]] = {
    "North East": ("NE", "SR", "DH", "TS", "DL"),
    "North West": ("M", "L", "PR", "BL", "OL", "SK", "WA", "WN", "CH", "CA", "LA", "BB", "FY", "CW"),
    "Yorkshire and The Humber": ("LS", "BD", "S", "HU", "YO", "DN", "HD", "HG", "HX", "WF"),
    "East Midlands": ("NG", "LE", "DE", "NN", "LN"),
    "West Midlands": ("B", "CV", "WV", "WS", "DY", "ST", "TF", "WR", "HR"),
    "East of England": ("CB", "CM", "CO", "IP", "NR", "PE", "SG", "AL", "LU", "SS"),
    "London": ("E", "N", "NW", "SE", "SW", "W"),
    "South East": ("RG", "OX", "MK", "GU", "SO", "PO", "CT", "ME", "TN", "RH", "SL", "HP", "BN"),
    "South West": ("BS", "BA", "EX", "PL", "TQ", "TR", "GL", "SN", "SP", "BH", "DT", "TA"),
}

# Central London districts are split with a trailing letter, as in "SW1A 1AA".
_LONDON_SUBDISTRICTS: Final[tuple[str, ...]] = (
    "EC1A", "EC1M", "EC2A", "EC3N", "EC4M", "WC1A", "WC1E", "WC2H", "SW1A", "SW1E", "SW1P", "W1A",
    "W1D", "W1T", "N1C", "E1W",
)  # fmt: skip

_DISTRICTS_PER_AREA: Final = 20
# Inward codes never use C, I, K, M, O or V in the unit letters.
_UNIT_LETTERS: Final = "".join(c for c in string.ascii_uppercase if c not in "CIKMOV")


@dataclass(frozen=True)
class PostcodeBook:
    """All outward codes, grouped by region, and all inward codes."""

    outward: pa.StringArray
    #: ``outward[region_start[r]:region_start[r + 1]]`` are the outward codes of region ``r``.
    region_start: np.ndarray
    inward: pa.StringArray

    def draw(self, region: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random (outward, inward) code pair in each given region (indices into :data:`REGIONS`)."""
        start = self.region_start[region]
        count = self.region_start[region + 1] - start
        outward = start + np.floor(rng.random(region.size) * count).astype(np.int32)
        inward = rng.integers(0, len(self.inward), region.size, dtype=np.int32)
        return outward.astype(np.int32), inward

    def render(self, outward: np.ndarray, inward: np.ndarray) -> pa.StringArray:
        """Postcodes in the standard form: upper case, one space between outward and inward code."""
        return pc.binary_join_element_wise(self.outward.take(outward), self.inward.take(inward), " ")


def _build_postcode_book() -> PostcodeBook:
    outward: list[str] = []
    region_start = [0]
    for region in REGIONS:
        for area in _AREAS[region]:
            outward.extend(f"{area}{district}" for district in range(1, _DISTRICTS_PER_AREA + 1))
        if region == "London":
            outward.extend(_LONDON_SUBDISTRICTS)
        region_start.append(len(outward))
    inward = [f"{sector}{a}{b}" for sector in range(10) for a in _UNIT_LETTERS for b in _UNIT_LETTERS]
    return PostcodeBook(
        outward=pa.array(outward, pa.string()),
        region_start=np.array(region_start, dtype=np.int32),
        inward=pa.array(inward, pa.string()),
    )


POSTCODES: Final[PostcodeBook] = _build_postcode_book()
