"""Identifier concepts and their normalisation, node.toml column mapping, and the project linkage spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlink.errors import BadInput, ConfigError
from fedlink.linkage.concepts import (
    ConceptOptions,
    concept_name,
    normalise_concepts,
    normalise_free_text,
    parse_date,
    valid_counts,
)
from fedlink.linkage.schema import DEFAULT_SCHEMA_PATH, SHIPPED_SCHEMAS, load_schema
from fedlink.linkage.spec import load_spec, parse_spec, spec_from_text
from fedlink.node.config import LinkageMapping, TableDecl

# ---------------------------------------------------------------------------------------------- concepts


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("first_name", "first_name"),
        ("NHS_Number", "id:nhs_number"),
        ("id:passport", "id:passport"),
        ("text:place_of_birth", "text:place_of_birth"),
        ("subgroup:ethnicity", "subgroup:ethnicity"),
    ],
)
def test_concept_names(written: str, canonical: str) -> None:
    assert concept_name(written) == canonical


@pytest.mark.parametrize("written", ["firstname", "id:", "id:Bad Name", "postcode2"])
def test_an_unknown_concept_is_one_line_of_bad_input(written: str) -> None:
    with pytest.raises(BadInput, match="is not an identifier concept") as caught:
        concept_name(written)
    assert "\n" not in str(caught.value)


def test_names_lose_titles_and_suffixes_and_keep_middle_names() -> None:
    out = normalise_concepts(
        {
            "first_name": ["Mr. John Paul", "DR", "Mary-Jane", None],
            "last_name": ["Smith Jr", "O'Brien", "Smith-Jones", ""],
        }
    )
    assert list(out["first"]) == ["john", "", "maryjane", ""]
    assert list(out["middle"]) == ["paul", "", "", ""]
    assert list(out["last"]) == ["smith", "obrien", "smith", ""]
    # first and last names as an unordered pair, for blocking names written in each other's columns
    swapped = normalise_concepts({"first_name": ["Smith"], "last_name": ["John"]})
    assert swapped["name_pair"][0] == out["name_pair"][0] == "john smith"


def test_stated_middle_names_win_over_words_in_the_first_name() -> None:
    out = normalise_concepts({"first_name": ["Ann Marie", "Ann Marie"], "middle_names": ["Louise", None]})
    assert list(out["middle"]) == ["louise", "marie"]


@pytest.mark.parametrize(
    ("text", "dob_format", "fields"),
    [
        ("1990-03-04", "auto", ("1990-03-04", "19900304", "1990-04-03")),
        ("04/03/1990", "auto", ("1990-03-04", "19900304", "1990-04-03")),
        ("03/04/1990", "%m/%d/%Y", ("1990-03-04", "19900304", "1990-04-03")),
        ("19900304", "%Y%m%d", ("1990-03-04", "19900304", "1990-04-03")),
        ("04-Mar-90", "%d-%b-%y", ("1990-03-04", "19900304", "1990-04-03")),
        ("1990-03-04", "%d/%m/%Y", ("1990-03-04", "19900304", "1990-04-03")),  # not in the format: read as auto
        ("31/02/1990", "auto", ("", "19900231", "")),  # impossible: the digits still compare
        ("04/03/1090", "auto", ("", "10900304", "")),  # implausible year: month and day kept
        ("13/13/1990", "auto", ("", "1990__13", "")),
        ("15/03/1990", "auto", ("1990-03-15", "19900315", "")),  # day above 12: no transposition
        ("unknown", "auto", ("", "________", "")),
    ],
)
def test_dates_of_birth_keep_what_can_be_compared(text: str, dob_format: str, fields: tuple[str, str, str]) -> None:
    out = normalise_concepts({"dob": [text]}, ConceptOptions(dob_format=dob_format))
    assert (out["dob"][0], out["dob_digits"][0], out["dob_swapped"][0]) == fields


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_any_date_text_gives_eight_digit_places(text: str) -> None:
    dob, _, _, _, digits, swapped = parse_date(text)
    assert len(digits) == 8 and (not dob or dob.replace("-", "") == digits)
    assert not swapped or dob


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_free_text_normalisation_is_idempotent(text: str) -> None:
    once = normalise_free_text(text)
    assert normalise_free_text(once) == once


@pytest.mark.parametrize(
    ("coding", "values", "expected"),
    [
        ("auto", ["M", "female", "1", "x"], ["m", "f", "m", ""]),
        ("0/1", ["0", "1"], ["m", "f"]),
        ("H/F", ["h", "F"], ["m", "f"]),
    ],
)
def test_sex_codings(coding: str, values: list[str], expected: list[str]) -> None:
    assert list(normalise_concepts({"sex": values}, ConceptOptions(sex_coding=coding))["sex"]) == expected


@pytest.mark.parametrize(
    ("country", "text", "parts"),
    [
        ("uk", "ne1 4ab", ("NE14AB", "NE1", "NE14")),
        ("uk", "2612", ("", "", "")),
        ("au", " 2612", ("2612", "26", "261")),
        ("au", "NE1 4AB", ("", "", "")),
        ("us", "20500-0003", ("20500", "20", "205")),
        ("any", "K1A 0B1", ("K1A0B1", "", "")),
    ],
)
def test_postcodes_by_country(country: str, text: str, parts: tuple[str, str, str]) -> None:
    out = normalise_concepts({"postcode": [text]}, ConceptOptions(postcode_country=country))
    assert (out["postcode"][0], out["postcode_outward"][0], out["postcode_sector"][0]) == parts


def test_addresses_ids_and_text_fields() -> None:
    out = normalise_concepts(
        {
            "address": ["12 Stanley Street, Flat 3", "12 stanley st flat 3"],
            "nhs_number": ["943 476 5919", None],
            "text:place_of_birth": ["Zürich", "zurich"],
        }
    )
    assert out["address"][0] == out["address"][1] == "12 st" + "anley st flat 3"
    assert list(out["id:nhs_number"]) == ["9434765919", ""]
    assert out["text:place_of_birth"][0] == out["text:place_of_birth"][1] == "zurich"
    assert valid_counts(out, ["address", "id:nhs_number"]) == {"address": 2, "id:nhs_number": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"postcode_country": "fr"}, "postcode country 'fr'"),
        ({"sex_coding": "1-2"}, "MALE/FEMALE codes"),
        ({"dob_format": "dd/mm/yyyy"}, "no strftime codes"),
        ({"dob_format": "%d/%q/%Y"}, "uses %q"),
    ],
)
def test_bad_options_say_what_to_write(options: dict[str, str], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        ConceptOptions(**options)


# ---------------------------------------------------------------------------------------------- node.toml


def test_a_mapping_reads_concepts_from_the_tables_own_columns() -> None:
    mapping = LinkageMapping.model_validate(
        {
            "record_id": "rec_id",
            "first_name": "given_name",
            "nhs_number": "nhs",
            "address": ["no", "street"],
            "dob_format": "%Y%m%d",
            "postcode_country": "au",
        }
    )
    assert mapping.concepts == {"first_name": ("given_name",), "id:nhs_number": ("nhs",), "address": ("no", "street")}
    assert mapping.options() == ConceptOptions(dob_format="%Y%m%d", postcode_country="au")
    assert mapping.key_of("id:nhs_number") == "tables.linkage.nhs_number"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"first_name": "given"}, "needs record_id"),
        ({"record_id": "r", "firstname": "x"}, "tables.linkage.firstname"),
        ({"record_id": "r", "first_name": ["a", "b"]}, "only address and middle_names take several"),
        ({"record_id": "r", "nhs_number": "a", "id:nhs_number": "b"}, "maps id:nhs_number twice"),
        ({"record_id": "r", "postcode_country": "mars"}, "postcode country 'mars'"),
    ],
)
def test_a_bad_mapping_names_the_key_to_fix(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinkageMapping.model_validate(data)


def test_a_table_declaring_the_old_identifier_columns_is_mapped_by_their_names() -> None:
    table = TableDecl.model_validate(
        {
            "name": "t",
            "source": "t.parquet",
            "columns": [
                {"name": "record_id", "kind": "identifier"},
                {"name": "first_name", "kind": "identifier"},
                {"name": "dob", "kind": "identifier"},
                {"name": "region", "kind": "category", "categories": ["a"]},
            ],
        }
    )
    mapping = table.linkage_mapping()
    assert mapping is not None and mapping.record_id == "record_id"
    assert mapping.concepts == {"first_name": ("first_name",), "dob": ("dob",)}  # sex is missing, not faked
    bare = TableDecl.model_validate({"name": "t", "source": "t.parquet", "columns": []})
    assert bare.linkage_mapping() is None


# ---------------------------------------------------------------------------------------------- spec


def test_the_default_spec_and_its_hash() -> None:
    spec = load_spec()
    assert spec.matching == "probabilistic" and spec.threshold is None and spec.exact_tiers == 5
    assert spec.posterior == "one-to-one"
    assert [c.name for c in spec.comparisons][:3] == ["first_name", "last_name", "dob"]
    assert spec_from_text(spec.text).hash == spec.hash
    resolved = spec.resolve({"id:nhs_number", "id:upn", "first_name"})
    assert [c.name for c in resolved.comparisons if c.kind == "code"] == ["postcode", "id:nhs_number", "id:upn"]
    assert ("id:nhs_number", ("id:nhs_number",)) in resolved.blocking
    assert resolved.hash != spec.resolve(set()).hash
    assert {"first_name", "last_name", "dob", "sex", "postcode", "id:upn"} <= set(resolved.concepts)


def _default_document() -> dict:
    return json.loads(load_spec().text)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["comparisons"][0].update(kind="fuzzy"), "kind"),
        (lambda d: d["comparisons"][3].update(swap="first_name"), "only name comparisons take swap"),
        (lambda d: d["comparisons"][0].update(swap="dob"), "not a name comparison"),
        (lambda d: d["comparisons"][2].update(thresholds=[0.5, 0.9]), "decreasing thresholds"),
        (lambda d: d["comparisons"][0].update(field="shoe_size"), "unknown field 'shoe_size'"),
        (lambda d: d["blocking"].append({"name": "x", "fields": ["shoe_size"]}), "unknown field"),
        (lambda d: d.update(exact_tiers=99), "exact_tiers 99"),
        (lambda d: d.update(threshold=1.5), "threshold"),
        (lambda d: d.update(posterior="joint"), "posterior"),
        (lambda d: d.update(version=3), "version 3"),
    ],
)
def test_a_bad_spec_is_one_line_of_config_error(change: object, message: str) -> None:
    document = _default_document()
    change(document)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message) as caught:
        parse_spec(document, "spec")
    assert "\n" not in str(caught.value)


def test_a_version_1_schema_is_a_clk_spec_and_takes_match_key_mac(tmp_path: Path) -> None:
    spec = load_spec(DEFAULT_SCHEMA_PATH)
    assert spec.matching == "clk" and spec.clk is not None and spec.clk.salt_field == "dob_year"
    febrl = load_spec(SHIPPED_SCHEMAS / "febrl.json")
    assert febrl.clk is not None and febrl.clk.postcode == "any"
    # the README documents "match_key_mac" in a schema file: it is read, not refused as unknown
    document = json.loads(DEFAULT_SCHEMA_PATH.read_text())
    document["match_key_mac"] = "hmac-sha256"
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(document))
    assert load_schema(path).match_key_mac == "hmac-sha256"
    assert load_spec(path).match_key_mac == "hmac-sha256"


# ---------------------------------------------------------------------------------------------- node data

NODE_TOML = """
[node]
name = "registry"
coordinator = "127.0.0.1:1"

[tls]
cert = "x.crt"
key = "x.key"
ca = "ca.crt"

[privacy]
ledger = "ledger.sqlite"
transparency_register = "register.jsonl"

[[tables]]
name = "people"
source = "people.csv"
columns = []

[tables.linkage]
record_id = "ref"
first_name = "forename"
postcode = "{postcode}"
postcode_country = "{country}"
"""


def _node_data(tmp_path: Path, postcode: str = "zip", country: str = "uk") -> object:
    from fedlink.node.config import load_node_config
    from fedlink.node.data import NodeData

    (tmp_path / "people.csv").write_text("ref,forename,zip\n1,Amelia,2612\n2,Oliver,2615\n3,Zoe,NE1 4AB\n")
    (tmp_path / "node.toml").write_text(NODE_TOML.format(postcode=postcode, country=country))
    return NodeData(load_node_config(tmp_path / "node.toml"))


def test_a_mapped_column_missing_from_the_data_names_node_table_column_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _node_data(tmp_path, postcode="postal_code")
    message = str(caught.value)
    for part in ("node 'registry'", "table 'people'", "column 'postal_code'", "tables.linkage.postcode"):
        assert part in message, message


@pytest.mark.parametrize(("country", "valid"), [("uk", 0.33), ("au", 0.67), ("any", 1.0)])
def test_the_catalogue_shows_the_share_of_valid_values_per_concept(tmp_path: Path, country: str, valid: float) -> None:
    data = _node_data(tmp_path, country=country)
    try:
        people = data.catalogue.table("people")  # type: ignore[attr-defined]
        shares = {c.concept: c.valid for c in people.linkage}
    finally:
        data.close()  # type: ignore[attr-defined]
    assert shares == {"first_name": 1.0, "postcode": valid}


def test_fedlink_catalog_warns_about_a_concept_mostly_invalid(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    import fedlink
    from fedlink.cli import render
    from fedlink.plan.catalogue import FederationCatalogue, NodeStatus

    data = _node_data(tmp_path, country="uk")
    try:
        catalogue = FederationCatalogue(nodes=(NodeStatus(node="registry", live=True, catalogue=data.catalogue),))  # type: ignore[attr-defined]
    finally:
        data.close()  # type: ignore[attr-defined]
    buffer = io.StringIO()
    render.catalogue(Console(file=buffer, width=200), fedlink.Catalogue(catalogue), "table")
    text = buffer.getvalue()
    assert "identifier concepts mapped for linkage" in text
    assert "warning: node 'registry', table 'people': only 33% of postcode values (zip) are valid" in text


def test_an_approval_names_known_concepts() -> None:
    from fedlink.node.config import Approval

    assert Approval(project="p", linkage_concepts=("first_name", "nhs_number")).linkage_concepts == (
        "first_name",
        "id:nhs_number",
    )
    with pytest.raises(ValueError, match="is not an identifier concept"):
        Approval(project="p", linkage_concepts=("shoe_size",))
