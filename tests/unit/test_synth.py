"""Synthetic federation: layout, determinism, ground truth, corruption rates and correlations."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlink.errors import BadInput, ConfigError
from fedlink.linkage.nicknames import FORMAL_OF, NICKNAMES, formal_names_of
from fedlink_tools.synth import CorruptionRates, default_corruption, layout, load_corruption_config, synthesize
from fedlink_tools.synth import departments as dept
from fedlink_tools.synth.corrupt import dob_typo, typo
from fedlink_tools.synth.geography import NORTHERN_REGIONS, REGIONS
from fedlink_tools.synth.layout import NODES, TABLES, TableRef
from fedlink_tools.synth.names import ORIGINS, strip_accents
from fedlink_tools.synth.recording import RECORDING_STYLES, RecordingStyle, format_dates

PEOPLE = 3_000
SEED = 11

IDENTIFIERS = [
    ("record_id", pa.string()),
    ("first_name", pa.string()),
    ("last_name", pa.string()),
    ("dob", pa.string()),
    ("sex", pa.string()),
    ("postcode", pa.string()),
    ("region", pa.string()),
]
EXPECTED_ATTRIBUTES: dict[str, list[tuple[str, pa.DataType]]] = {
    "dfe/pupils": [("fsm", pa.int8()), ("sen", pa.int8()), ("ks4_year", pa.int16()), ("attainment8", pa.float64())],
    "dwp/claims": [
        ("benefit", pa.string()),
        ("start_year", pa.int16()),
        ("employment", pa.string()),
        ("parent_disability", pa.int8()),
    ],
    "nhs/diagnoses": [
        ("diagnosis", pa.string()),
        ("severe", pa.int8()),
        ("year", pa.int16()),
        ("age_at_diagnosis", pa.int16()),
    ],
    "nhs/prescriptions": [("bnf_chapter", pa.string()), ("items", pa.int16()), ("year", pa.int16())],
    "hmps/sentences": [
        ("offence_group", pa.string()),
        ("sentence_months", pa.int16()),
        ("start_year", pa.int16()),
        ("is_parent", pa.int8()),
    ],
    "hmps/prisoner_children": [("parent_sentence_year", pa.int16())],
    "pnc/convictions": [("offence_group", pa.string()), ("disposal", pa.string()), ("year", pa.int16())],
    "pnc/offender_children": [("parent_conviction_year", pa.int16())],
    "charity_north/support_episodes": [
        ("episode_type", pa.string()),
        ("start_year", pa.int16()),
        ("duration_days", pa.int16()),
        ("outcome", pa.string()),
    ],
}
EXPECTED_ATTRIBUTES["charity_south/support_episodes"] = EXPECTED_ATTRIBUTES["charity_north/support_episodes"]

CATEGORIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("dwp/claims", "benefit"): (
        "universal_credit",
        "jobseekers_allowance",
        "employment_support_allowance",
        "personal_independence_payment",
        "housing_benefit",
        "carers_allowance",
    ),
    ("dwp/claims", "employment"): ("employed", "unemployed", "inactive"),
    ("nhs/diagnoses", "diagnosis"): (
        "severe_mental_illness",
        "depression_anxiety",
        "diabetes",
        "asthma",
        "cardiovascular",
        "other",
    ),
    ("nhs/prescriptions", "bnf_chapter"): (
        "cardiovascular",
        "respiratory",
        "central_nervous_system",
        "infections",
        "endocrine",
        "other",
    ),
    ("hmps/sentences", "offence_group"): ("violence", "theft", "drugs", "fraud", "public_order", "other"),
    ("pnc/convictions", "offence_group"): ("violence", "theft", "drugs", "fraud", "public_order", "other"),
    ("pnc/convictions", "disposal"): ("custody", "community", "fine", "discharge"),
    ("charity_north/support_episodes", "episode_type"): (
        "rough_sleeping",
        "temporary_accommodation",
        "hostel",
        "prevention",
    ),
    ("charity_south/support_episodes", "episode_type"): (
        "rough_sleeping",
        "temporary_accommodation",
        "hostel",
        "prevention",
    ),
    ("charity_north/support_episodes", "outcome"): ("housed", "not_housed", "lost_contact"),
    ("charity_south/support_episodes", "outcome"): ("housed", "not_housed", "lost_contact"),
}

BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("dfe/pupils", "fsm"): (0, 1),
    ("dfe/pupils", "sen"): (0, 1),
    ("dfe/pupils", "ks4_year"): (2010, 2024),
    ("dfe/pupils", "attainment8"): (0, 90),
    ("dwp/claims", "start_year"): (2005, 2025),
    ("dwp/claims", "parent_disability"): (0, 1),
    ("nhs/diagnoses", "severe"): (0, 1),
    ("nhs/diagnoses", "year"): (2005, 2025),
    ("nhs/diagnoses", "age_at_diagnosis"): (0, 100),
    ("nhs/prescriptions", "items"): (1, 50),
    ("nhs/prescriptions", "year"): (2005, 2025),
    ("hmps/sentences", "sentence_months"): (1, 240),
    ("hmps/sentences", "start_year"): (2000, 2025),
    ("hmps/sentences", "is_parent"): (0, 1),
    ("hmps/prisoner_children", "parent_sentence_year"): (2000, 2025),
    ("pnc/convictions", "year"): (2000, 2025),
    ("pnc/offender_children", "parent_conviction_year"): (2000, 2025),
    ("charity_north/support_episodes", "start_year"): (2012, 2025),
    ("charity_north/support_episodes", "duration_days"): (1, 1095),
    ("charity_south/support_episodes", "start_year"): (2012, 2025),
    ("charity_south/support_episodes", "duration_days"): (1, 1095),
}

DOB_FORMATS = {
    "dfe": "%Y-%m-%d",
    "dwp": "%d/%m/%Y",
    "nhs": "%Y%m%d",
    "hmps": "%d/%m/%Y",
    "pnc": "%d-%b-%Y",
    "charity_north": "%d/%m/%Y",
    "charity_south": "%d/%m/%Y",
}

POSTCODE = re.compile(r"^[A-Z]{1,2}[0-9]{1,2}[A-Z]? [0-9][ABD-HJLNP-UW-Z]{2}$")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small federation with the default corruption."""
    out = tmp_path_factory.mktemp("synth") / "federation"
    synthesize(PEOPLE, SEED, out, progress=False)
    return out


@pytest.fixture(scope="module")
def exact_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small federation in which no identifier is corrupted."""
    out = tmp_path_factory.mktemp("synth") / "exact"
    synthesize(PEOPLE, SEED, out, rates=CorruptionRates.zero(), progress=False)
    return out


def read(out: Path, path: str) -> pa.Table:
    return pq.read_table(out / path)


def labelled(out: Path, ref: TableRef) -> pa.Table:
    """A department table joined to its ground-truth person and that person's true identifiers."""
    records = read(out, "truth/records.parquet")
    mine = records.filter(pc.and_(pc.equal(records["node"], ref.node), pc.equal(records["table"], ref.table)))
    table = read(out, ref.path).join(mine.select(["record_id", "person_id"]), "record_id")
    people = read(out, "truth/people.parquet").rename_columns(
        [f"true_{name}" if name != "person_id" else name for name in read(out, "truth/people.parquet").column_names]
    )
    return table.join(people, "person_id")


def registrations(table: pa.Table) -> pa.Table:
    """One row per person in a labelled table (a department records a person's identifiers once)."""
    _, first = np.unique(table["person_id"].to_numpy(), return_index=True)
    return table.take(pa.array(first))


def rates_with(**chosen: Any) -> CorruptionRates:
    """No corruption except the rates given."""
    return dataclasses.replace(CorruptionRates.zero(), **chosen)


def binomial_tolerance(p: float, n: int) -> float:
    """Four standard errors of a proportion: a seeded test fails by chance about once in 15,000."""
    return 4 * math.sqrt(p * (1 - p) / n)


# Layout --------------------------------------------------------------------------------------


def test_layout_is_exactly_the_documented_one(federation: Path) -> None:
    files = sorted(str(path.relative_to(federation)) for path in federation.rglob("*") if path.is_file())
    expected = sorted(
        [f"{path}.parquet" for path in EXPECTED_ATTRIBUTES]
        + ["truth/people.parquet", "truth/records.parquet", "manifest.json"]
    )
    assert files == expected


@pytest.mark.parametrize("path", sorted(EXPECTED_ATTRIBUTES))
def test_department_columns_and_types(federation: Path, path: str) -> None:
    schema = read(federation, f"{path}.parquet").schema
    assert [(f.name, f.type) for f in schema] == IDENTIFIERS + EXPECTED_ATTRIBUTES[path]


def test_truth_schemas(federation: Path) -> None:
    people = read(federation, "truth/people.parquet")
    assert [(f.name, f.type) for f in people.schema] == [
        ("person_id", pa.int64()),
        ("first_name", pa.string()),
        ("last_name", pa.string()),
        ("dob", pa.date32()),
        ("sex", pa.string()),
        ("postcode", pa.string()),
        ("region", pa.string()),
        ("name_origin", pa.string()),
        ("birth_year", pa.int16()),
        ("parent_id", pa.int64()),
    ]
    assert people["person_id"].to_pylist() == list(range(PEOPLE))
    records = read(federation, "truth/records.parquet")
    assert [(f.name, f.type) for f in records.schema] == [
        ("node", pa.string()),
        ("table", pa.string()),
        ("record_id", pa.string()),
        ("person_id", pa.int64()),
    ]


@pytest.mark.parametrize(("path", "column"), sorted(CATEGORIES))
def test_categories_are_the_listed_ones(federation: Path, path: str, column: str) -> None:
    values = set(read(federation, f"{path}.parquet")[column].to_pylist())
    assert values <= set(CATEGORIES[(path, column)])
    assert None not in values


@pytest.mark.parametrize(("path", "column"), sorted(BOUNDS))
def test_numbers_are_within_bounds(federation: Path, path: str, column: str) -> None:
    values = read(federation, f"{path}.parquet")[column]
    low, high = BOUNDS[(path, column)]
    assert values.null_count == 0
    assert low <= pc.min(values).as_py() and pc.max(values).as_py() <= high


def test_attainment_has_one_decimal(federation: Path) -> None:
    values = read(federation, "dfe/pupils.parquet")["attainment8"].to_numpy()
    assert np.allclose(values, np.round(values, 1))


@pytest.mark.parametrize("ref", TABLES, ids=lambda ref: ref.path)
def test_identifier_columns(federation: Path, ref: TableRef) -> None:
    table = read(federation, ref.path)
    assert set(table["region"].to_pylist()) <= set(REGIONS)
    assert table["region"].null_count == 0
    assert set(table["sex"].drop_null().to_pylist()) <= {"M", "F"}
    record_ids = table["record_id"].to_pylist()
    assert len(set(record_ids)) == len(record_ids)
    assert all(re.fullmatch(rf"{ref.record_prefix}\d{{7,}}", r) for r in record_ids)
    for text in table["dob"].drop_null().to_pylist():
        dt.datetime.strptime(text, DOB_FORMATS[ref.node])
    if ref.node == "pnc":
        assert all(text == text.upper() for text in table["dob"].drop_null().to_pylist())


def test_pupils_are_everyone_in_the_cohort(federation: Path) -> None:
    people = read(federation, "truth/people.parquet")
    year = people["birth_year"].to_numpy()
    pupils = labelled(federation, layout.PUPILS)
    assert sorted(pupils["person_id"].to_pylist()) == np.flatnonzero((year >= 1994) & (year <= 2008)).tolist()
    assert (pupils["ks4_year"].to_numpy() == pupils["true_birth_year"].to_numpy() + 16).all()


def test_table_sizes_are_roughly_as_documented(federation: Path) -> None:
    share = {ref.path: read(federation, ref.path).num_rows / PEOPLE for ref in TABLES}
    assert 0.15 < share["dfe/pupils.parquet"] < 0.28
    assert 0.25 < share["dwp/claims.parquet"] < 0.45
    assert 0.4 < share["nhs/diagnoses.parquet"] < 0.7
    assert 0.8 < share["nhs/prescriptions.parquet"] < 1.25
    assert 0.004 < share["hmps/sentences.parquet"] < 0.025
    assert 0.004 < share["hmps/prisoner_children.parquet"] < 0.025
    assert 0.02 < share["pnc/convictions.parquet"] < 0.07
    for charity in ("charity_north", "charity_south"):
        assert 0.002 < share[f"{charity}/support_episodes.parquet"] < 0.02


def test_manifest_records_what_was_written(federation: Path) -> None:
    import json

    manifest = json.loads((federation / "manifest.json").read_text())
    assert manifest["people"] == PEOPLE and manifest["seed"] == SEED
    assert manifest["corruption"] == default_corruption().as_dict()
    assert manifest["synth_version"] >= 1 and "fedlink_version" in manifest
    for ref in TABLES:
        assert manifest["row_counts"][ref.node][ref.table] == read(federation, ref.path).num_rows


# Ground truth and families --------------------------------------------------------------------


def test_truth_records_cover_every_row_exactly_once(federation: Path) -> None:
    records = read(federation, "truth/records.parquet")
    columns = (records["node"].to_pylist(), records["table"].to_pylist(), records["record_id"].to_pylist())
    keys = list(zip(*columns, strict=True))
    assert len(set(keys)) == len(keys)
    expected = set()
    for ref in TABLES:
        expected |= {(ref.node, ref.table, r) for r in read(federation, ref.path)["record_id"].to_pylist()}
    assert set(keys) == expected
    person = records["person_id"].to_numpy()
    assert person.min() >= 0 and person.max() < PEOPLE


def test_record_numbers_do_not_reveal_person_order(federation: Path) -> None:
    table = labelled(federation, layout.PRESCRIPTIONS)
    number = np.array([int(r[4:]) for r in table["record_id"].to_pylist()])
    # Independent orders: the correlation of ~3,000 rows is within 0.1 of zero with overwhelming odds.
    assert abs(np.corrcoef(number, table["person_id"].to_numpy())[0, 1]) < 0.1


def test_everyone_born_from_1985_has_an_older_parent(federation: Path) -> None:
    people = read(federation, "truth/people.parquet")
    year = people["birth_year"].to_numpy()
    parent = people["parent_id"]
    has_parent = parent.is_valid().to_numpy(zero_copy_only=False)
    assert (has_parent == (year >= 1985)).all()
    parent_ids = parent.drop_null().to_numpy()
    gap = year[has_parent].astype(int) - year[parent_ids].astype(int)
    assert gap.min() >= 18 and gap.max() <= 45
    same_surname = np.mean(
        np.array(people["last_name"].to_pylist(), dtype=object)[has_parent]
        == np.array(people["last_name"].to_pylist(), dtype=object)[parent_ids]
    )
    assert same_surname > 0.8


def test_people_are_plausible(federation: Path) -> None:
    people = read(federation, "truth/people.parquet")
    assert set(people["region"].to_pylist()) == set(REGIONS)
    assert set(people["name_origin"].to_pylist()) <= set(ORIGINS)
    assert pc.mean(pc.equal(people["name_origin"], "english")).as_py() > 0.5
    assert all(POSTCODE.match(postcode) for postcode in people["postcode"].to_pylist())
    dob = people["dob"].to_pylist()
    assert all(d.year == y for d, y in zip(dob, people["birth_year"].to_pylist(), strict=True))
    assert min(people["birth_year"].to_pylist()) >= 1940 and max(people["birth_year"].to_pylist()) <= 2012


def test_prisoners_children_have_a_sentenced_parent(federation: Path) -> None:
    parent_of = dict(enumerate(read(federation, "truth/people.parquet")["parent_id"].to_pylist()))
    sentences = labelled(federation, layout.SENTENCES)
    sentence_years: dict[int, set[int]] = {}
    for person, year in zip(sentences["person_id"].to_pylist(), sentences["start_year"].to_pylist(), strict=True):
        sentence_years.setdefault(person, set()).add(year)
    children = labelled(federation, layout.PRISONER_CHILDREN)
    assert children.num_rows > 0
    rows = zip(
        children["person_id"].to_pylist(),
        children["parent_sentence_year"].to_pylist(),
        children["true_birth_year"].to_pylist(),
        strict=True,
    )
    for child, year, born in rows:
        assert 1994 <= born <= 2012
        assert year in sentence_years[parent_of[child]]
        assert born <= year <= born + 17


def test_every_sentence_is_a_custody_conviction(federation: Path) -> None:
    sentences = labelled(federation, layout.SENTENCES)
    convictions = labelled(federation, layout.CONVICTIONS)
    custody = convictions.filter(pc.equal(convictions["disposal"], "custody"))
    as_pairs = lambda t, year: sorted(zip(t["person_id"].to_pylist(), t[year].to_pylist(), strict=True))  # noqa: E731
    assert as_pairs(custody, "year") == as_pairs(sentences, "start_year")
    assert custody.num_rows < convictions.num_rows


def test_charities_serve_their_regions(federation: Path) -> None:
    north = set(read(federation, "charity_north/support_episodes.parquet")["region"].to_pylist())
    south = set(read(federation, "charity_south/support_episodes.parquet")["region"].to_pylist())
    assert north <= NORTHERN_REGIONS
    assert not south & NORTHERN_REGIONS


def test_a_department_records_a_person_once(federation: Path) -> None:
    """All of a person's rows at one register carry the same recorded identifiers."""
    identifiers = ["first_name", "last_name", "dob", "sex", "postcode"]
    for ref in (layout.CLAIMS, layout.PRESCRIPTIONS):
        table = labelled(federation, ref).select(["person_id", *identifiers])
        distinct = table.group_by(["person_id", *identifiers]).aggregate([]).num_rows
        assert distinct == len(set(table["person_id"].to_pylist()))


# Determinism and output handling ---------------------------------------------------------------


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path: Path) -> None:
    first = synthesize(500, 3, tmp_path / "a", progress=False)
    synthesize(500, 3, tmp_path / "b", progress=False)
    synthesize(500, 4, tmp_path / "c", progress=False)
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*.*"))
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert read(tmp_path / "a", "truth/people.parquet") != read(tmp_path / "c", "truth/people.parquet")
    assert first.people == 500 and first.seed == 3 and first.out == tmp_path / "a"
    assert first.rows("dfe", "pupils") == read(tmp_path / "a", "dfe/pupils.parquet").num_rows
    assert [(n, t) for n, t, _ in first.row_counts] == [(ref.node, ref.table) for ref in TABLES]


def test_non_empty_output_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(BadInput, match="is not empty; choose a new `out` or delete it"):
        synthesize(200, 1, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_an_existing_empty_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    synthesize(200, 1, tmp_path / "empty", progress=False)
    assert (tmp_path / "empty" / "manifest.json").exists()


def test_a_failed_run_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(dept, "claims", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthesize(200, 1, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("people", [99, 20_000_001, 1.5, True])
def test_people_out_of_range_is_refused(tmp_path: Path, people: int) -> None:
    with pytest.raises(BadInput, match="people"):
        synthesize(people, 1, tmp_path / "out", progress=False)


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="seed"):
        synthesize(200, -1, tmp_path / "out", progress=False)


def test_quiet_without_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthesize(200, 1, tmp_path / "quiet", progress=None)
    synthesize(200, 1, tmp_path / "off", progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthesize(200, 1, tmp_path / "loud", progress=True)
    assert "done" in capsys.readouterr().err


# Corruption ------------------------------------------------------------------------------------


def written(node: str, names: list[str | None]) -> list[str | None]:
    """True names as ``node`` writes them when nothing goes wrong."""
    style = RECORDING_STYLES[node]
    return [None if name is None else style.write_names([name])[0] for name in names]


@pytest.mark.parametrize("ref", TABLES, ids=lambda ref: ref.path)
def test_without_corruption_identifiers_equal_the_truth(exact_federation: Path, ref: TableRef) -> None:
    table = labelled(exact_federation, ref)
    assert table.num_rows > 0
    style = RECORDING_STYLES[ref.node]
    assert table["first_name"].to_pylist() == written(ref.node, table["true_first_name"].to_pylist())
    assert table["last_name"].to_pylist() == written(ref.node, table["true_last_name"].to_pylist())
    assert table["sex"].to_pylist() == table["true_sex"].to_pylist()
    assert table["region"].to_pylist() == table["true_region"].to_pylist()
    parsed = [dt.datetime.strptime(text, style.dob_format).date() for text in table["dob"].to_pylist()]
    assert parsed == table["true_dob"].to_pylist()
    true_postcodes = table["true_postcode"].to_pylist()
    if style.compact_postcodes:
        true_postcodes = [postcode.replace(" ", "") for postcode in true_postcodes]
    assert table["postcode"].to_pylist() == true_postcodes


def test_conventions_are_visible(exact_federation: Path) -> None:
    pnc = read(exact_federation, "pnc/convictions.parquet")
    assert all(name.isupper() and name.isascii() for name in pnc["last_name"].to_pylist())
    dwp = read(exact_federation, "dwp/claims.parquet")
    assert all(" " not in postcode for postcode in dwp["postcode"].to_pylist())


@pytest.fixture(scope="module")
def half_missing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "half"
    synthesize(PEOPLE, SEED, out, rates=rates_with(missing_dob=0.5), progress=False)
    return out


def test_missing_dob_rate_is_observed(half_missing: Path) -> None:
    missing = total = 0
    for ref in TABLES:
        people = registrations(labelled(half_missing, ref))
        missing += people["dob"].null_count
        total += people.num_rows
        assert people["first_name"].null_count == 0 and people["postcode"].null_count == 0
    assert abs(missing / total - 0.5) < binomial_tolerance(0.5, total)


@pytest.mark.parametrize(
    ("rate", "value", "changed"),
    [
        ("typo", 0.2, lambda t, style: _names_differ(t)),
        ("missing_sex", 0.1, lambda t, style: np.array(t["sex"].is_null().to_pylist())),
        ("missing_first_name", 0.1, lambda t, style: np.array(t["first_name"].is_null().to_pylist())),
        ("postcode_format", 0.3, lambda t, style: _postcode_written_differently(t, style)),
        ("dob_typo", 0.1, lambda t, style: _dob_differs(t, style)),
    ],
)
def test_corruption_rates_are_observed(
    tmp_path: Path, rate: str, value: float, changed: Callable[[pa.Table, RecordingStyle], np.ndarray]
) -> None:
    """Each rate, alone, changes about that share of the people each department registers."""
    out = tmp_path / rate
    synthesize(PEOPLE, SEED, out, rates=rates_with(**{rate: value}), progress=False)
    hits = total = 0
    for ref in TABLES:
        people = registrations(labelled(out, ref))
        hits += int(changed(people, RECORDING_STYLES[ref.node]).sum())
        total += people.num_rows
    assert abs(hits / total - value) < binomial_tolerance(value, total)


def _names_differ(table: pa.Table) -> np.ndarray:
    first = [a != b for a, b in zip(_fold(table["first_name"]), _fold(table["true_first_name"]), strict=True)]
    last = [a != b for a, b in zip(_fold(table["last_name"]), _fold(table["true_last_name"]), strict=True)]
    return np.array(first) | np.array(last)


def _fold(names: pa.ChunkedArray) -> list[str]:
    """Names compared the way department conventions are undone: accents dropped, upper case."""
    return [strip_accents(name).upper() for name in names.to_pylist()]


def _postcode_written_differently(table: pa.Table, style: RecordingStyle) -> np.ndarray:
    truth = table["true_postcode"].to_pylist()
    if style.compact_postcodes:
        truth = [postcode.replace(" ", "") for postcode in truth]
    return np.array([r != t for r, t in zip(table["postcode"].to_pylist(), truth, strict=True)])


def _dob_differs(table: pa.Table, style: RecordingStyle) -> np.ndarray:
    recorded = [dt.datetime.strptime(text, style.dob_format).date() for text in table["dob"].to_pylist()]
    return np.array([r != t for r, t in zip(recorded, table["true_dob"].to_pylist(), strict=True)])


def test_every_possible_nickname_is_used_at_rate_one(tmp_path: Path) -> None:
    synthesize(PEOPLE, SEED, tmp_path / "nick", rates=rates_with(nickname=1.0), progress=False)
    table = registrations(labelled(tmp_path / "nick", layout.PRESCRIPTIONS))
    for recorded, truth in zip(table["first_name"].to_pylist(), table["true_first_name"].to_pylist(), strict=True):
        nicknames = NICKNAMES.get(truth.lower())
        if nicknames:
            assert recorded.lower() in nicknames
        else:
            assert recorded == truth


def test_a_node_override_changes_only_that_node(tmp_path: Path) -> None:
    rates = dataclasses.replace(CorruptionRates.zero(), overrides={"charity_north": {"missing_postcode": 1.0}})
    out = tmp_path / "override"
    synthesize(PEOPLE, SEED, out, rates=rates, progress=False)
    north = read(out, "charity_north/support_episodes.parquet")["postcode"]
    # Every postcode is missing: written "NFA" (no fixed abode) or left empty.
    assert set(north.drop_null().to_pylist()) <= {"NFA"}
    assert "NFA" in north.to_pylist() and north.null_count > 0
    assert read(out, "charity_south/support_episodes.parquet")["postcode"].null_count == 0
    assert read(out, "dfe/pupils.parquet")["postcode"].null_count == 0


def test_charity_defaults_are_messier() -> None:
    defaults = default_corruption()
    assert defaults.for_node("charity_north").missing_dob == 0.10
    assert defaults.for_node("charity_south").missing_postcode == 0.15
    assert defaults.for_node("dfe").missing_dob == defaults.missing_dob


# Correlations ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough people (60,000, about a second) for subgroup rates of a few hundred children."""
    out = tmp_path_factory.mktemp("synth") / "large"
    synthesize(60_000, SEED, out, rates=CorruptionRates.zero(), progress=False)
    return out


def test_latent_factors_show_in_linked_aggregates(large_federation: Path) -> None:
    import duckdb

    base = str(large_federation)
    linked = (
        duckdb.connect()
        .execute(
            f"""
        WITH rec AS (SELECT * FROM read_parquet('{base}/truth/records.parquet')),
        pupil AS (
            SELECT r.person_id, p.fsm, p.attainment8 FROM read_parquet('{base}/dfe/pupils.parquet') p
            JOIN rec r USING (record_id)),
        claim AS (
            SELECT r.person_id, max(c.parent_disability) AS parent_disability
            FROM read_parquet('{base}/dwp/claims.parquet') c JOIN rec r USING (record_id) GROUP BY 1),
        smi AS (
            SELECT DISTINCT r.person_id FROM read_parquet('{base}/nhs/diagnoses.parquet') d
            JOIN rec r USING (record_id) WHERE d.severe = 1),
        prison AS (
            SELECT DISTINCT r.person_id FROM read_parquet('{base}/hmps/prisoner_children.parquet') c
            JOIN rec r USING (record_id))
        SELECT pupil.fsm, coalesce(claim.parent_disability, 0) AS parent_disability,
               smi.person_id IS NOT NULL AS smi, prison.person_id IS NOT NULL AS parent_prison,
               pupil.attainment8
        FROM pupil LEFT JOIN claim USING (person_id) LEFT JOIN smi USING (person_id)
        LEFT JOIN prison USING (person_id)
        """
        )
        .fetchnumpy()
    )
    fsm = linked["fsm"] == 1
    disability = linked["parent_disability"] == 1
    smi = linked["smi"].astype(bool)
    group = fsm & disability
    overall = smi.mean()
    # About 200 children in the group with an expected ~3x rate; under no effect the group rate
    # would be `overall` with a standard error of sqrt(p(1-p)/n) ~ 0.011, so 1.5x is far above noise.
    assert group.sum() > 100
    assert smi[group].mean() > 1.5 * overall
    assert smi[fsm].mean() > 1.5 * smi[~fsm].mean()
    attainment = linked["attainment8"]
    assert attainment[~fsm].mean() - attainment[fsm].mean() > 5
    prison = linked["parent_prison"].astype(bool)
    assert attainment[~prison].mean() - attainment[prison].mean() > 3


# Configuration ---------------------------------------------------------------------------------


def test_shipped_defaults_match_the_dataclass_defaults() -> None:
    shipped = default_corruption().as_dict()
    built_in = CorruptionRates().as_dict()
    shipped.pop("overrides")
    built_in.pop("overrides")
    assert shipped == built_in


def test_config_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "rates.toml"
    path.write_text("[corruption]\ntypo = 0.1\n\n[corruption.nhs]\ntypo = 0.3\nmissing_sex = 0\n")
    rates = load_corruption_config(path)
    assert rates.typo == 0.1
    assert rates.for_node("nhs").typo == 0.3 and rates.for_node("nhs").missing_sex == 0.0
    assert rates.for_node("dfe").typo == 0.1
    assert rates.nickname == CorruptionRates().nickname
    assert rates == load_corruption_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[corruption]\ntypos = 0.1\n", "unknown corruption rate 'typos'"),
        ("[corruption]\ntypo = 1.5\n", "typo .* probability in \\[0, 1\\]"),
        ("[corruption]\ntypo = -0.1\n", "typo .* probability in \\[0, 1\\]"),
        ('[corruption]\ntypo = "often"\n', "typo .* must be a number"),
        ("[corruption]\ntypo = true\n", "typo .* must be a number"),
        ("[corruption.mi5]\ntypo = 0.1\n", "unknown node \\[corruption.mi5\\]"),
        ("[corruption.nhs]\nmissing_dob = 2\n", "missing_dob in \\[corruption.nhs\\]"),
        ("[corruption.nhs]\nmissing = 0.1\n", "unknown corruption rate 'missing'"),
        ("[corrupt]\ntypo = 0.1\n", "unknown table 'corrupt'"),
        ("title = 'x'\n", "unknown table 'title'"),
        ("", "no \\[corruption\\] table"),
        ("[corruption\ntypo = 0.1\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_one_line_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_corruption_config(path)
    assert "\n" not in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; check the path"):
        load_corruption_config(tmp_path / "nope.toml")


def test_rates_are_validated_in_code_too() -> None:
    with pytest.raises(ConfigError, match="nickname"):
        CorruptionRates(nickname=2.0)
    with pytest.raises(ConfigError, match="unknown node"):
        CorruptionRates(overrides={"mi5": {"typo": 0.1}})
    with pytest.raises(ConfigError, match="unknown node"):
        CorruptionRates().for_node("mi5")


# Nicknames -------------------------------------------------------------------------------------


def test_nickname_table() -> None:
    assert len(NICKNAMES) >= 150
    assert NICKNAMES["william"][:2] == ("bill", "will")
    assert all(name == name.lower() for name in NICKNAMES)
    assert all(nick == nick.lower() for nicks in NICKNAMES.values() for nick in nicks)
    assert FORMAL_OF["bill"] == "william" and FORMAL_OF["peggy"] == "margaret"
    assert set(FORMAL_OF) == {nick for nicks in NICKNAMES.values() for nick in nicks}
    assert formal_names_of("sam") == ("samuel", "samantha")
    assert formal_names_of("zebedee") == ()


# Properties ------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


@given(name=st.text(min_size=1, max_size=30), seed=st.integers(0, 2**32))
@settings(max_examples=300, deadline=None)
def test_a_typo_is_one_or_two_edits_away(name: str, seed: int) -> None:
    changed = typo(name, np.random.default_rng(seed))
    assert changed != name
    assert 1 <= levenshtein(name, changed) <= 2


@given(date=st.dates(dt.date(1900, 1, 1), dt.date(2025, 12, 31)), seed=st.integers(0, 2**32))
@settings(max_examples=300, deadline=None)
def test_a_dob_typo_changes_one_digit_by_one(date: dt.date, seed: int) -> None:
    changed = dob_typo(date, np.random.default_rng(seed))
    before, after = date.strftime("%Y%m%d"), changed.strftime("%Y%m%d")
    differing = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(differing) == 1
    assert abs(int(differing[0][0]) - int(differing[0][1])) == 1


@given(dates=st.lists(st.dates(dt.date(1900, 1, 1), dt.date(2030, 12, 31)), min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_every_department_dob_format_round_trips(dates: list[dt.date]) -> None:
    array = np.array(dates, dtype="datetime64[D]")
    for node in NODES:
        fmt = RECORDING_STYLES[node].dob_format
        texts = format_dates(array, fmt).to_pylist()
        assert [dt.datetime.strptime(text, fmt).date() for text in texts] == dates


def test_missing_dates_format_as_null() -> None:
    array = np.array(["1990-03-03", "2001-12-25"], dtype="datetime64[D]")
    assert format_dates(array, "%d-%b-%Y", np.array([False, True])).to_pylist() == ["03-MAR-1990", None]


@pytest.fixture(autouse=True)
def _no_stray_staging(tmp_path: Path) -> Iterator[None]:
    yield
    assert not [p for p in tmp_path.glob(".*partial-*")], "a staging directory was left behind"
