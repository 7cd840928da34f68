"""Normalising identifiers and encoding them for privacy-preserving record linkage."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlink.errors import BadInput, ConfigError
from fedlink.linkage.encode import EncodedRecords, LinkKeys, aes_cmac, derive_keys, encode, value_blocks
from fedlink.linkage.nicknames import FORMAL_OF
from fedlink.linkage.normalise import (
    NORMALISED_FIELDS,
    formal_first_name,
    normalise,
    normalise_any_postcode,
    normalise_dob,
    normalise_first_name,
    normalise_last_name,
    normalise_postcode,
    normalise_text,
)
from fedlink.linkage.schema import SHIPPED_SCHEMAS, LinkageSchema, load_schema
from fedlink_tools.synth import synthesize
from fedlink_tools.synth.recording import RECORDING_STYLES, format_dates

SECRET = bytes(range(32))
PROJECT = "test-project"
SCHEMA = load_schema()
KEYS = derive_keys(SECRET, PROJECT, SCHEMA)


def columns(*records: tuple[str | None, ...]) -> dict[str, list[str | None]]:
    names = ("first_name", "last_name", "dob", "sex", "postcode")
    return {name: [record[i] for record in records] for i, name in enumerate(names)}


def encoded(*records: tuple[str | None, ...], schema: LinkageSchema = SCHEMA, keys: LinkKeys = KEYS) -> EncodedRecords:
    return encode(normalise(columns(*records)), schema, keys)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two Bloom filters (uint64 words), by numpy popcount."""
    both = int(np.bitwise_count(a & b).sum())
    return 2 * both / int(np.bitwise_count(a).sum() + np.bitwise_count(b).sum())


# --- normalisation ------------------------------------------------------------------------------

ACCENTED = {
    "a": "áàäâ",
    "e": "éèëê",
    "i": "íï",
    "o": "óöø",
    "u": "úü",
    "n": "ñ",
    "c": "ç",
    "l": "ł",
    "s": "ś",
    "z": "źż",
}
ascii_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)


@st.composite
def written_like_a_department(draw: st.DrawFn, name: str, separators: str) -> str:
    """``name`` with accents added, case changed and punctuation from ``separators`` inserted."""
    chars = []
    for char in name:
        if char in ACCENTED and draw(st.booleans()):
            char = draw(st.sampled_from(ACCENTED[char]))
        chars.append(char)
        if separators and draw(st.integers(0, 5)) == 0:
            chars.append(draw(st.sampled_from(separators)))
    text = "".join(chars)
    return draw(st.sampled_from([text, text.upper(), text.title(), text.lower()]))


@given(st.data(), ascii_names)
def test_first_names_ignore_case_accents_and_punctuation(data: st.DataObject, name: str) -> None:
    written = data.draw(written_like_a_department(name, "'.-"))
    assert normalise_first_name(written) == name


@given(st.data(), ascii_names)
def test_last_names_ignore_case_accents_punctuation_and_spaces(data: st.DataObject, name: str) -> None:
    written = data.draw(written_like_a_department(name, "'. "))
    assert normalise_last_name(written) == name


def test_name_rules() -> None:
    assert normalise_last_name("Smith-Jones") == "smith"
    assert normalise_last_name("O'BRIEN") == normalise_last_name("O'Brien") == "obrien"
    assert normalise_last_name("St John") == "stjohn"
    assert normalise_last_name("Wiśniewski") == normalise_last_name("WISNIEWSKI") == "wisniewski"
    assert normalise_first_name("Min-jun") == "minjun"
    assert normalise_first_name("Mary Anne") == "mary"
    assert normalise_first_name("Łukasz") == "lukasz"
    assert normalise_first_name("Zoë") == normalise_first_name("ZOE") == "zoe"
    assert normalise_first_name("  ") == normalise_last_name("-") == ""


def test_nicknames_map_to_a_formal_name() -> None:
    out = normalise(
        columns(("BILL", "x", None, None, None), ("Liz", "x", None, None, None), ("Nate", "x", None, None, None))
    )
    assert out["first"].tolist() == ["bill", "liz", "nate"]
    assert out["first_formal"].tolist() == ["william", "elizabeth", "nathaniel"]
    assert formal_first_name("william") == "william"
    assert formal_first_name("nathan") == "nathaniel"  # "nathan" is itself short for "nathaniel"
    for nickname in FORMAL_OF:
        formal = formal_first_name(nickname)
        assert formal_first_name(formal) == formal, nickname


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2025, 12, 31)))
@settings(max_examples=50)
def test_every_department_date_format_reads_as_the_same_date(date: dt.date) -> None:
    for department, style in RECORDING_STYLES.items():
        written = format_dates(np.array([date], dtype="datetime64[D]"), style.dob_format)[0].as_py()
        dob, year, month, day = normalise_dob(written)
        assert dob == date.isoformat(), (department, written)
        assert (year, month, day) == (f"{date.year:04d}", f"{date.month:02d}", f"{date.day:02d}")


def test_partial_and_invalid_dates_keep_what_is_known() -> None:
    assert normalise_dob("1990") == ("", "1990", "", "")
    assert normalise_dob("03/1990") == normalise_dob("1990-03") == normalise_dob("MAR 1990") == ("", "1990", "03", "")
    assert normalise_dob("31/02/1990") == ("", "1990", "02", "")
    assert normalise_dob("1990-03-04T00:00:00") == ("1990-03-04", "1990", "03", "04")
    assert normalise_dob("4 September 1990") == normalise_dob("04-SEPT-1990") == ("1990-09-04", "1990", "09", "04")
    assert normalise_dob("29/02/2001") == ("", "2001", "02", "")
    assert normalise_dob("29/02/2000")[0] == "2000-02-29"
    for unusable in ("", "unknown", "12/03/90", "1700-01-01", "NULL"):
        assert normalise_dob(unusable) == ("", "", "", ""), unusable


postcodes = st.from_regex(r"[A-Z]{1,2}[0-9][0-9A-Z]?[0-9][ABD-HJLNP-UW-Z]{2}", fullmatch=True)


@given(postcodes, st.sampled_from(["", " ", "  "]), st.sampled_from([str.upper, str.lower]))
def test_postcodes_ignore_spacing_and_case(postcode: str, space: str, case: Callable[[str], str]) -> None:
    written = case(postcode[:-3] + space + postcode[-3:])
    assert normalise_postcode(written) == (postcode, postcode[:-3], postcode[:-2])


def test_postcode_parts_and_no_fixed_abode() -> None:
    assert normalise_postcode("ne1 4ab") == ("NE14AB", "NE1", "NE14")
    assert normalise_postcode("EC4M 1JP") == ("EC4M1JP", "EC4M", "EC4M1")
    for unusable in ("NFA", "nfa", "", "N/A", "NE1 4AC", "12345"):  # C is never an inward letter
        assert normalise_postcode(unusable) == ("", "", ""), unusable


def test_postcodes_of_any_country_keep_their_letters_and_digits() -> None:
    assert normalise_any_postcode(" 2612 ") == ("2612", "", "")
    assert normalise_any_postcode("20500-0003") == ("205000003", "", "")
    assert normalise_any_postcode("ne1 4ac") == ("NE14AC", "", "")  # not a UK postcode, kept anyway
    assert normalise_any_postcode("N/A") == ("NA", "", "") and normalise_any_postcode("") == ("", "", "")
    out = normalise(columns(("a", "b", "c", "d", "2612"), ("a", "b", "c", "d", "NE1 4AB")), postcode="any")
    assert out["postcode"].tolist() == ["2612", "NE14AB"] and out["postcode_sector"].tolist() == ["", ""]
    with pytest.raises(BadInput, match="postcode format 'au'"):
        normalise(columns(("a", "b", "c", "d", "2612")), postcode="au")


def test_text_fields_ignore_case_accents_and_punctuation() -> None:
    assert normalise_text("12-B, Stanley St.") == normalise_text("12b stanley st") == "12bstanleyst"
    assert normalise_text("Zoë's  Café") == "zoescafe" and normalise_text(" ") == ""
    raw = {**columns(("a", "b", "c", "d", "e"), ("a", "b", "c", "d", "e")), "suburb": ["Wagga  Wagga", None]}
    out = normalise(raw, text_fields=["suburb", "first_name"])
    assert out["suburb"].tolist() == ["waggawagga", ""] and out["first_name"].tolist() == ["a", "a"]
    with pytest.raises(BadInput, match="missing suburb"):
        normalise(columns(("a", "b", "c", "d", "e")), text_fields=["suburb"])
    with pytest.raises(BadInput, match="would replace"):
        normalise(raw, text_fields=["dob"])


@given(st.text(max_size=20))
def test_text_and_any_postcode_rules_are_idempotent(text: str) -> None:
    assert normalise_text(normalise_text(text)) == normalise_text(text)
    assert normalise_any_postcode(normalise_any_postcode(text)[0]) == normalise_any_postcode(text)


raw_text = st.one_of(st.none(), st.text(max_size=20))


@given(st.lists(st.tuples(raw_text, raw_text, raw_text, raw_text, raw_text), min_size=1, max_size=8))
def test_normalising_normalised_identifiers_changes_nothing(records: list[tuple[str | None, ...]]) -> None:
    once = normalise(columns(*records))
    assert set(once) == set(NORMALISED_FIELDS)
    assert all(v.dtype == object and all(isinstance(x, str) for x in v) for v in once.values())
    again = normalise(
        {
            "first_name": once["first"],
            "last_name": once["last"],
            "dob": once["dob"],
            "sex": once["sex"],
            "postcode": once["postcode"],
        }
    )
    for field in ("first", "last", "first_formal", "dob", "sex", "postcode", "postcode_outward", "postcode_sector"):
        assert again[field].tolist() == once[field].tolist(), field
    complete = once["dob"] != ""
    for field in ("dob_year", "dob_month", "dob_day"):
        assert again[field][complete].tolist() == once[field][complete].tolist()


def test_normalise_reads_lists_arrays_and_arrow_alike() -> None:
    raw = columns(("ANNA", "Nowak", "19900304", "F", "se1 7pb"), (None, None, None, None, None))
    nan_row = {k: [v[0], float("nan")] for k, v in raw.items()}
    as_arrow = {k: pa.array(v, pa.string()) for k, v in raw.items()}
    as_numpy = {k: np.array(v, dtype=object) for k, v in raw.items()}
    expected = normalise(raw)
    assert expected["sex"].tolist() == ["f", ""] and expected["postcode_sector"].tolist() == ["SE17", ""]
    for variant in (nan_row, as_arrow, as_numpy):
        got = normalise(variant)
        assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in expected.items()}


def test_normalise_rejects_missing_or_ragged_columns() -> None:
    with pytest.raises(BadInput, match="missing postcode"):
        normalise({k: v for k, v in columns(("a", "b", "c", "d", "e")).items() if k != "postcode"})
    ragged = columns(("a", "b", "c", "d", "e"))
    ragged["sex"] = ["m", "f"]
    with pytest.raises(BadInput, match="different lengths"):
        normalise(ragged)


# --- keys and match keys ------------------------------------------------------------------------

ALICE = ("Alice", "Ward", "1980-05-17", "F", "NE1 4AB")
ALICE_AT_PNC = ("ALICE", "WARD", "17-MAY-1980", "F", "ne14ab")
BOB = ("Robert", "Okafor", "1975-11-02", "M", "SW1A 1AA")


def assert_same(a: EncodedRecords, b: EncodedRecords) -> None:
    assert a.count == b.count
    assert np.array_equal(a.blooms, b.blooms) and np.array_equal(a.popcounts, b.popcounts)
    assert a.match_keys.keys() == b.match_keys.keys() and a.block_keys.keys() == b.block_keys.keys()
    assert all(np.array_equal(a.match_keys[t], b.match_keys[t]) for t in a.match_keys)
    assert all(np.array_equal(a.block_keys[t], b.block_keys[t]) for t in a.block_keys)


def test_encoding_is_deterministic_and_shaped_as_promised() -> None:
    first, second = encoded(ALICE, BOB), encoded(ALICE, BOB)
    assert_same(first, second)
    assert first.count == 2
    assert first.blooms.dtype == np.uint64 and first.blooms.shape == (2, SCHEMA.bits // 64)
    assert first.popcounts.dtype == np.int32
    assert first.popcounts.tolist() == np.bitwise_count(first.blooms).sum(axis=1).tolist()
    assert [t for t, _ in SCHEMA.match_keys] == list(first.match_keys)
    assert all(v.dtype == np.dtype("S16") and v.shape == (2,) for v in first.match_keys.values())
    assert all(v.dtype == np.uint64 and v.shape == (2,) for v in first.block_keys.values())


def test_department_spellings_of_one_person_agree_on_every_key() -> None:
    a, b = encoded(ALICE, ALICE_AT_PNC), encoded(ALICE_AT_PNC, ALICE)
    assert all(keys[0] == keys[1] != b"" for keys in a.match_keys.values())
    assert all(keys[0] == keys[1] != 0 for keys in a.block_keys.values())
    assert np.array_equal(a.blooms[0], a.blooms[1])
    assert_same(a, encoded(ALICE, ALICE))
    assert np.array_equal(b.blooms[::-1], a.blooms)


def test_a_different_project_or_secret_changes_every_encoding() -> None:
    base = encoded(ALICE)
    other_project = encoded(ALICE, keys=derive_keys(SECRET, "another-project", SCHEMA))
    other_secret = encoded(ALICE, keys=derive_keys(bytes(32), PROJECT, SCHEMA))
    for other in (other_project, other_secret):
        assert all(base.match_keys[t][0] != other.match_keys[t][0] for t in base.match_keys)
        assert all(base.block_keys[t][0] != other.block_keys[t][0] for t in base.block_keys)
        assert dice(base.blooms[0], other.blooms[0]) < 0.5


def test_keys_are_per_purpose_and_never_printed() -> None:
    every = [*KEYS.match.values(), *KEYS.bloom.values(), *KEYS.block.values()]
    assert len(set(every)) == len(every)
    assert set(KEYS.bloom) == {"name", "dob_day", "dob_month", "sex", "postcode_sector", "postcode"}
    assert SECRET.hex() not in repr(KEYS) and KEYS.match["full"].hex() not in repr(KEYS)
    with pytest.raises(BadInput, match="at least 16 bytes"):
        derive_keys(b"short", PROJECT, SCHEMA)


def test_a_missing_field_empties_exactly_the_keys_that_use_it() -> None:
    no_dob = encoded(("Alice", "Ward", None, "F", "NE1 4AB"), ALICE)
    for tier, names in SCHEMA.match_keys:
        uses_dob = "dob" in names or "dob_year" in names
        assert (no_dob.match_keys[tier][0] == b"") == uses_dob, tier
    assert no_dob.match_keys["name_postcode"][0] == no_dob.match_keys["name_postcode"][1]
    for name, names in SCHEMA.blocking:
        assert (no_dob.block_keys[name][0] == 0) == ("dob" in names or "dob_year" in names), name
    nothing = encoded((None, None, None, None, "NFA"))
    assert all(keys[0] == b"" for keys in nothing.match_keys.values())
    assert all(keys[0] == 0 for keys in nothing.block_keys.values())
    assert nothing.popcounts[0] == 0


def test_aes_cmac_is_nist_cmac() -> None:
    rng = np.random.default_rng(7)
    key = bytes(rng.integers(0, 256, 32, dtype=np.uint8))
    for length in (1, 2, 5):
        blocks = [rng.integers(0, 256, (3, 16), dtype=np.uint8) for _ in range(length)]
        tags = aes_cmac(key, blocks)
        for row in range(3):
            reference = cmac.CMAC(algorithms.AES(key))
            reference.update(b"".join(block[row].tobytes() for block in blocks))
            assert tags[row].tobytes() == reference.finalize()


def test_value_blocks_are_injective() -> None:
    values = ["", "a", "a" * 15, "a" * 16, "a" * 40, "ab", "ba", "é", "\x00"]
    blocks = value_blocks(values)
    assert blocks.shape == (len(values), 16)
    assert len({row.tobytes() for row in blocks}) == len(values)


# --- Bloom filters ------------------------------------------------------------------------------


def test_dice_of_identical_typo_and_unrelated_records() -> None:
    typo = ("Alice", "Wadr", "1980-05-17", "F", "NE1 4AB")
    unrelated = ("Kwame", "Mensah", "1980-11-30", "M", "B1 1XD")
    e = encoded(ALICE, ALICE_AT_PNC, typo, unrelated, BOB)
    assert dice(e.blooms[0], e.blooms[1]) == 1.0
    assert dice(e.blooms[0], e.blooms[2]) > 0.8
    assert dice(e.blooms[0], e.blooms[3]) < 0.45  # same birth year (same salt), nothing else shared
    assert dice(e.blooms[0], e.blooms[4]) < 0.45


def test_swapped_names_keep_a_similar_filter() -> None:
    swapped = ("Ward", "Alice", "1980-05-17", "F", "NE1 4AB")
    e = encoded(ALICE, swapped)
    assert dice(e.blooms[0], e.blooms[1]) > 0.95


def test_salting_changes_the_bits_of_equal_names() -> None:
    names_only = dataclasses.replace(
        SCHEMA, fields=tuple(f for f in SCHEMA.fields if f.name in ("first_formal", "last")), xor_fold=False
    )
    same_names = (("Alice", "Ward", "1980-05-17", None, None), ("Alice", "Ward", "1981-05-17", None, None))
    salted = encoded(*same_names, schema=names_only, keys=derive_keys(SECRET, PROJECT, names_only))
    unsalted_schema = dataclasses.replace(names_only, salt_field=None)
    unsalted = encoded(*same_names, schema=unsalted_schema, keys=derive_keys(SECRET, PROJECT, unsalted_schema))
    assert dice(unsalted.blooms[0], unsalted.blooms[1]) == 1.0
    assert dice(salted.blooms[0], salted.blooms[1]) < 0.2  # only chance collisions are left


def test_xor_folding_keeps_the_filter_length() -> None:
    for fold in (False, True):
        schema = dataclasses.replace(SCHEMA, xor_fold=fold)
        e = encoded(ALICE, ALICE_AT_PNC, BOB, schema=schema, keys=derive_keys(SECRET, PROJECT, schema))
        assert e.blooms.shape == (3, SCHEMA.bits // 64)
        assert dice(e.blooms[0], e.blooms[1]) == 1.0 and dice(e.blooms[0], e.blooms[2]) < 0.45


def test_encoding_in_slices_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [ALICE, ALICE_AT_PNC, BOB, ("Kwame", "Mensah", None, "M", "NFA"), *[BOB] * 3]
    whole = encoded(*records)
    monkeypatch.setattr("fedlink.linkage.encode.RECORDS_PER_SLICE", 2)
    assert_same(encoded(*records), whole)


def test_encode_rejects_foreign_input() -> None:
    with pytest.raises(BadInput, match="lack field"):
        encode({"first": np.array(["a"], dtype=object)}, SCHEMA, KEYS)
    not_text = normalise(columns(ALICE))
    not_text["last"] = np.array([None], dtype=object)
    with pytest.raises(BadInput, match="not text"):
        encode(not_text, SCHEMA, KEYS)
    assert encode(normalise(columns()), SCHEMA, KEYS).blooms.shape == (0, SCHEMA.bits // 64)


# --- schema -------------------------------------------------------------------------------------


def test_default_schema_is_consistent() -> None:
    names = {f.name for f in SCHEMA.fields}
    assert SCHEMA.bits % 64 == 0 and SCHEMA.salt_field == "dob_year" and SCHEMA.xor_fold
    assert names <= set(NORMALISED_FIELDS)
    assert all(set(fields) <= set(NORMALISED_FIELDS) for _, fields in (*SCHEMA.match_keys, *SCHEMA.blocking))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["clk_config"].update(bits=1000), "multiple of 64"),
        (lambda d: d["features"][0].update(name="middle_name"), "not a normalised field"),
        (lambda d: d["match_keys"][0].update(fields=["first", "shoe_size"]), "unknown field"),
        (lambda d: d["clk_config"].update(xorfold=True), "unknown key"),
        (lambda d: d["features"][0]["strategy"].update(bits_per_token=0), "bits_per_token"),
        (lambda d: d.update(version=3), "version 3"),
        (lambda d: d.pop("blocking"), "no 'blocking'"),
    ],
)
def test_invalid_schemas_are_config_errors(tmp_path: Path, change: Callable[[dict], object], message: str) -> None:
    document = json.loads((Path(__file__).parents[2] / "src/fedlink/linkage/default_schema.json").read_text())
    change(document)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message) as error:
        load_schema(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(postcode="au"), "postcode must be one of uk, any"),
        (lambda d: d.update(text_fields=["Address 1"]), "column name"),
        (lambda d: d.update(text_fields=["dob_year"]), "already a normalised identifier"),
        (lambda d: d.update(text_fields=["suburb", "suburb"]), "twice"),
        (lambda d: d["features"].append({**d["features"][0], "name": "state"}), "unknown field state"),
        (lambda d: d.update(postcode="any"), "postcode_sector, which is always missing with postcode 'any'"),
        (lambda d: d["clk_config"].update(salt_field="town"), "salt_field names unknown field town"),
    ],
)
def test_invalid_postcode_and_text_field_options_are_config_errors(
    tmp_path: Path, change: Callable[[dict], object], message: str
) -> None:
    document = json.loads((Path(__file__).parents[2] / "src/fedlink/linkage/default_schema.json").read_text())
    change(document)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message) as error:
        load_schema(path)
    assert "\n" not in str(error.value)


def test_text_fields_go_into_features_match_keys_blocking_and_salt(tmp_path: Path) -> None:
    document = json.loads((Path(__file__).parents[2] / "src/fedlink/linkage/default_schema.json").read_text())
    document.update(postcode="any", text_fields=["suburb"])
    document["clk_config"]["salt_field"] = "suburb"
    document["features"] = [
        *(f for f in document["features"] if f["name"] != "postcode_sector"),
        {"name": "suburb", "comparison": {"type": "ngram", "n": 2}, "strategy": {"bits_per_token": 8}},
    ]
    document["match_keys"].append({"tier": "name_suburb", "fields": ["first", "last", "suburb"]})
    document["blocking"] = [{"name": "suburb", "fields": ["suburb"]}]
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(document))
    schema = load_schema(path)
    assert schema.postcode == "any" and schema.input_columns == (*columns().keys(), "suburb")
    keys = derive_keys(SECRET, PROJECT, schema)
    assert "suburb" in keys.bloom and "name_suburb" in keys.match and set(keys.block) == {"suburb"}
    people = columns(ALICE, ALICE_AT_PNC, BOB, ALICE)
    people["suburb"] = ["Dapto", "DAPTO ", "Dapto", "Bega"]
    out = encode(schema.normalise(people), schema, keys)
    tier = out.match_keys["name_suburb"]
    assert tier[0] == tier[1] != tier[3] and len(tier[0]) == 16
    blocks = out.block_keys["suburb"]
    assert blocks[0] == blocks[1] == blocks[2] != blocks[3]
    assert np.array_equal(out.blooms[0], out.blooms[1])
    assert dice(out.blooms[0], out.blooms[3]) < 0.3  # another suburb: another salt, unrelated bits
    with pytest.raises(BadInput, match="missing suburb"):
        schema.normalise(columns(ALICE))


def test_shipped_febrl_schema_is_consistent() -> None:
    febrl = load_schema(SHIPPED_SCHEMAS / "febrl.json")
    assert febrl.postcode == "any" and febrl.salt_field == "state" and febrl.xor_fold
    known = {*NORMALISED_FIELDS, *febrl.text_fields} - {"postcode_outward", "postcode_sector"}
    assert {f.name for f in febrl.fields} <= known
    assert all(set(fields) <= known for _, fields in (*febrl.match_keys, *febrl.blocking))
    # no tier links on the social security number alone
    assert all(fields != ("soc_sec_id",) for _, fields in febrl.match_keys)


def test_unreadable_schema_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_schema(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_schema(tmp_path / "absent.json")


# --- on synthetic departments -------------------------------------------------------------------


@pytest.fixture(scope="module")
def departments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("linkage-synth") / "data"
    synthesize(5000, 3, root, progress=False)
    return root


def _people(root: Path, node: str) -> tuple[np.ndarray, dict[str, list[str | None]]]:
    """A node's distinct identifier tuples with the true person of each."""
    identifiers = "first_name, last_name, dob, sex, postcode"
    tables = " UNION ALL ".join(
        f"SELECT r.person_id, {', '.join('t.' + c for c in identifiers.split(', '))} FROM '{path}' t "
        f"JOIN '{root / 'truth' / 'records.parquet'}' r USING (record_id)"
        for path in sorted((root / node).glob("*.parquet"))
    )
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT min(person_id), {identifiers} FROM ({tables}) GROUP BY ALL").fetchall()
    return np.array([r[0] for r in rows]), {c: [r[i + 1] for r in rows] for i, c in enumerate(identifiers.split(", "))}


def test_true_pairs_across_departments_are_similar_and_random_pairs_are_not(departments: Path) -> None:
    (nhs_people, nhs), (dwp_people, dwp) = _people(departments, "nhs"), _people(departments, "dwp")
    a, b = encode(normalise(nhs), SCHEMA, KEYS), encode(normalise(dwp), SCHEMA, KEYS)
    row_of = {person: row for row, person in enumerate(dwp_people.tolist())}
    pairs = np.array([(i, row_of[p]) for i, p in enumerate(nhs_people.tolist()) if p in row_of])
    words_a, words_b = a.blooms[pairs[:, 0]], b.blooms[pairs[:, 1]]
    true_dice = (
        2 * np.bitwise_count(words_a & words_b).sum(axis=1) / (a.popcounts[pairs[:, 0]] + b.popcounts[pairs[:, 1]])
    )
    rng = np.random.default_rng(0)
    ra, rb = rng.integers(0, a.count, 20_000), rng.integers(0, b.count, 20_000)
    keep = nhs_people[ra] != dwp_people[rb]
    ra, rb = ra[keep], rb[keep]
    random_dice = 2 * np.bitwise_count(a.blooms[ra] & b.blooms[rb]).sum(axis=1) / (a.popcounts[ra] + b.popcounts[rb])
    print(
        f"\n{len(pairs)} true nhs-dwp pairs: Dice median {np.median(true_dice):.3f}, "
        f"5th percentile {np.percentile(true_dice, 5):.3f}, share >= 0.7 {np.mean(true_dice >= 0.7):.3f}; "
        f"{len(ra)} random pairs: mean {random_dice.mean():.3f}, 99th percentile {np.percentile(random_dice, 99):.3f}, "
        f"max {random_dice.max():.3f}"
    )
    assert len(pairs) > 500
    assert np.median(true_dice) == 1.0
    # a record missing its year of birth, or with a wrong one, has an unrelated (salted) filter: a few percent
    assert np.mean(true_dice >= 0.7) > 0.93
    assert np.percentile(random_dice, 99) < 0.4 and random_dice.mean() < 0.3


def test_match_keys_can_be_hmac_sha256() -> None:
    """The schema's ``match_key_mac = "hmac-sha256"`` gives truncated HMAC-SHA256 match keys (the
    default, AES-CMAC, is the same keyed-PRF role, vectorised)."""
    import dataclasses
    import hmac as std_hmac

    from fedlink.linkage.encode import BLOCK
    from fedlink.linkage.normalise import normalise
    from fedlink.linkage.schema import load_schema

    schema = dataclasses.replace(load_schema(), match_key_mac="hmac-sha256")
    records = normalise(
        {
            "first_name": ["Anna", "anna", None],
            "last_name": ["Smith", "SMITH", "Jones"],
            "dob": ["1990-01-02", "02/01/1990", "1980-05-06"],
            "sex": ["F", "F", "M"],
            "postcode": ["NE1 4AB", "ne14ab", "M1 1AA"],
        }
    )
    keys = derive_keys(b"k" * 32, "p", schema)
    encoded = encode(records, schema, keys)
    tier, names = schema.match_keys[0]
    message = b"".join(value_blocks([str(records[name][0])])[0].tobytes() for name in names)
    expected = std_hmac.digest(keys.match[tier], message, "sha256")[:BLOCK]
    assert encoded.match_keys[tier][0] == expected == encoded.match_keys[tier][1]
    assert encoded.match_keys[tier][2] == b""  # a missing first name: no key at this tier
    cmac = encode(records, load_schema(), keys)
    assert cmac.match_keys[tier][0] != expected  # the default is a different keyed function
    np.testing.assert_array_equal(cmac.blooms, encoded.blooms)  # Bloom filters do not depend on it
