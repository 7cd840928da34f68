"""How each department writes identifiers down, apart from errors.

Departments differ in date formats, letter case, character sets and postcode layout. These are
systematic, not errors: linkage has to normalise them away (section 4 of the design).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlink_tools.synth.names import strip_accents


@dataclass(frozen=True)
class RecordingStyle:
    """One department's conventions for writing identifiers."""

    #: ``strftime`` format of dates of birth; month names (``%b``) are written in upper case.
    dob_format: str
    #: Names written in upper case ("O'BRIEN").
    upper_case_names: bool = False
    #: Names written without accents ("Zoe" for "Zoë"), as in older ASCII-only systems.
    ascii_names: bool = False
    #: Postcodes written without the space ("NE14AB").
    compact_postcodes: bool = False
    #: Share of missing postcodes written "NFA" (no fixed abode) rather than left empty.
    no_fixed_abode_share: float = 0.0

    def write_names(self, names: list[str]) -> list[str]:
        """``names`` as this department writes them."""
        if self.ascii_names:
            names = [strip_accents(name) for name in names]
        if self.upper_case_names:
            names = [name.upper() for name in names]
        return names


RECORDING_STYLES: Final[dict[str, RecordingStyle]] = {
    "dfe": RecordingStyle(dob_format="%Y-%m-%d"),
    "dwp": RecordingStyle(dob_format="%d/%m/%Y", compact_postcodes=True),
    "nhs": RecordingStyle(dob_format="%Y%m%d"),
    "hmps": RecordingStyle(dob_format="%d/%m/%Y", upper_case_names=True),
    "pnc": RecordingStyle(dob_format="%d-%b-%Y", upper_case_names=True, ascii_names=True),
    "charity_north": RecordingStyle(dob_format="%d/%m/%Y", no_fixed_abode_share=0.6),
    "charity_south": RecordingStyle(dob_format="%d/%m/%Y", no_fixed_abode_share=0.6),
}

NO_FIXED_ABODE: Final = "NFA"


def format_dates(dates: np.ndarray, date_format: str, missing: np.ndarray | None = None) -> pa.StringArray:
    """``dates`` (datetime64[D]) as strings in ``date_format``; null where ``missing`` is true.

    Month names are English abbreviations in upper case ("03-MAR-1990"), whatever the locale.
    """
    days = pa.array(dates.astype("datetime64[D]"), type=pa.date32(), mask=missing)
    text = pc.strftime(days, format=date_format, locale="C")
    if "%b" in date_format:
        text = pc.utf8_upper(text)
    return text
