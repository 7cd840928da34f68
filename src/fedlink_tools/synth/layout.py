"""Where synthesis writes what: the nodes, their tables and the ground-truth files.

Other parts of fedlink (node configs, the demo, linkage quality checks) read these paths, so they are
fixed here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class TableRef:
    """One department table: the node that holds it and its name there."""

    node: str
    table: str
    #: Prefix of the table's record ids, unique across the federation.
    record_prefix: str

    @property
    def path(self) -> str:
        """Path of the table's Parquet file relative to the output directory."""
        return f"{self.node}/{self.table}.parquet"


PUPILS: Final = TableRef("dfe", "pupils", "DFE")
CLAIMS: Final = TableRef("dwp", "claims", "DWP")
DIAGNOSES: Final = TableRef("nhs", "diagnoses", "NHSD")
PRESCRIPTIONS: Final = TableRef("nhs", "prescriptions", "NHSP")
SENTENCES: Final = TableRef("hmps", "sentences", "HMPS")
PRISONER_CHILDREN: Final = TableRef("hmps", "prisoner_children", "HMPC")
CONVICTIONS: Final = TableRef("pnc", "convictions", "PNC")
OFFENDER_CHILDREN: Final = TableRef("pnc", "offender_children", "PNCC")
CHARITY_NORTH: Final = TableRef("charity_north", "support_episodes", "CHN")
CHARITY_SOUTH: Final = TableRef("charity_south", "support_episodes", "CHS")

TABLES: Final[tuple[TableRef, ...]] = (
    PUPILS,
    CLAIMS,
    DIAGNOSES,
    PRESCRIPTIONS,
    SENTENCES,
    PRISONER_CHILDREN,
    CONVICTIONS,
    OFFENDER_CHILDREN,
    CHARITY_NORTH,
    CHARITY_SOUTH,
)

#: Every node, in the order synthesis builds them.
NODES: Final[tuple[str, ...]] = tuple(dict.fromkeys(table.node for table in TABLES))

TRUTH_PEOPLE: Final = "truth/people.parquet"
TRUTH_RECORDS: Final = "truth/records.parquet"
MANIFEST: Final = "manifest.json"
