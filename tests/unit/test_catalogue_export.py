"""The public catalogue: linkage readiness as a node publishes it (counts rounded, small ones suppressed),
the DCAT JSON-LD and Frictionless Data Package written from it, and hostile text kept as text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import frictionless
import pytest

from fedlink.errors import BadInput
from fedlink.governance.catalogue import (
    FREQUENCY,
    NON_PUBLIC,
    check_target,
    export_catalogue,
    local_catalogue,
)
from fedlink.plan.catalogue import (
    ColumnInfo,
    FederationCatalogue,
    LinkageConcept,
    NodeCatalogue,
    NodeContacts,
    NodeStatus,
    TableInfo,
)
from fedlink.plan.disclosure import DisclosurePolicy

NODE_TOML = """
[node]
name = "registry"
description = "Registry of examples"
coordinator = "127.0.0.1:1"

[tls]
cert = "x.crt"
key = "x.key"
ca = "ca.crt"

[privacy]
ledger = "ledger.sqlite"
transparency_register = "register.jsonl"

[privacy.disclosure]
round_to = 5
suppress_below = 5

[contacts]
inbox = "data@registry.example"
how_to_apply = "Write to the inbox with your project's purpose."

[[contacts.teams]]
role = "data protection"
name = "Registry DPO"
email = "dpo@registry.example"

[[tables]]
name = "people"
source = "people.csv"
description = "One row per person registered"
legal_gateways = ["Digital Economy Act 2017, Part 5, Chapter 5", "https://www.legislation.gov.uk/ukpga/2017/30"]
update_frequency = "quarterly"

[[tables.columns]]
name = "region"
kind = "category"
description = "Region of residence"
categories = ["North", "South"]

[[tables.columns]]
name = "year"
kind = "category"
description = "Year registered"
categories = [2020, 2021]

[[tables.columns]]
name = "age"
kind = "numeric"
description = "Age in years"
bounds = [0.0, 120.0]

[[tables.columns]]
name = "postcode"
kind = "identifier"
description = "Postcode as recorded"

[tables.linkage]
record_id = "ref"
postcode = "postcode"
dob = "birth"
"""

# 23 people: 14 valid UK postcodes, 9 not; 4 complete dates of birth, 19 not.
VALID_POSTCODES = [f"NE{i} 4AB" for i in range(1, 15)]
BAD_POSTCODES = [f"ZZ{i}" for i in range(9)]
DATES = ["1980-02-03", "1975-11-30", "1990-06-15", "2001-01-01"]


def _write_node(root: Path) -> Path:
    rows = ["ref,region,year,age,postcode,birth"]
    for i, postcode in enumerate(VALID_POSTCODES + BAD_POSTCODES):
        birth = DATES[i] if i < len(DATES) else "unknown"
        rows.append(f"{i + 1},{'North' if i % 2 else 'South'},{2020 + i % 2},{20 + i},{postcode},{birth}")
    (root / "people.csv").write_text("\n".join(rows) + "\n")
    (root / "node.toml").write_text(NODE_TOML)
    return root / "node.toml"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> FederationCatalogue:
    return local_catalogue([_write_node(tmp_path_factory.mktemp("registry"))])


@pytest.fixture(scope="module")
def exported(registry: FederationCatalogue, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "catalogue"
    export_catalogue(registry, out, base_url="https://data.example/catalogue")
    return out


@pytest.mark.parametrize(
    ("count", "published"), [(0, None), (4, None), (5, 5), (7, 5), (8, 10), (23, 25), (1234, 1235)]
)
def test_a_count_is_published_rounded_or_not_at_all(count: int, published: int | None) -> None:
    assert DisclosurePolicy(round_to=5, suppress_below=5).publish_count(count) == published


def test_the_node_publishes_readiness_as_rounded_counts_and_suppresses_small_ones(
    registry: FederationCatalogue,
) -> None:
    node = registry.nodes[0].catalogue
    assert node is not None
    concepts = {c.concept: c for c in node.tables[0].linkage}
    postcode, dob = concepts["postcode"], concepts["dob"]
    assert (postcode.records_rounded, postcode.valid_rounded) == (25, 15)  # 23 and 14, rounded to 5
    assert postcode.published_share() == pytest.approx(0.6)  # from the rounded counts, not 14/23
    assert (dob.records_rounded, dob.valid_rounded) == (25, None)  # 4 valid dates: below suppress_below
    assert dob.published_share() is None


def test_the_node_publishes_its_contacts_gateways_and_frequency(registry: FederationCatalogue) -> None:
    node = registry.nodes[0].catalogue
    assert node is not None
    assert node.contacts.inbox == "data@registry.example"
    assert [(t.role, t.name) for t in node.contacts.teams] == [("data protection", "Registry DPO")]
    table = node.tables[0]
    assert table.update_frequency == "quarterly"
    assert table.legal_gateways[0] == "Digital Economy Act 2017, Part 5, Chapter 5"


def test_the_data_package_is_valid_frictionless_with_a_table_schema_per_dataset(exported: Path) -> None:
    report = frictionless.validate(str(exported / "datapackage.json"))
    assert report.valid, report.flatten(["type", "note"])
    package = json.loads((exported / "datapackage.json").read_text())
    [resource] = package["resources"]
    assert resource["name"] == "registry.people"
    assert resource["data"] == [["region", "year", "age", "postcode"]]  # the header only: no row
    fields = {f["name"]: f for f in resource["schema"]["fields"]}
    assert fields["region"]["type"] == "string" and fields["region"]["constraints"] == {"enum": ["North", "South"]}
    assert fields["year"]["type"] == "integer" and fields["year"]["constraints"] == {"enum": [2020, 2021]}
    assert fields["age"]["type"] == "number"
    assert fields["age"]["constraints"] == {"minimum": 0.0, "maximum": 120.0}
    assert fields["postcode"]["fedlink:identifier"] is True and fields["postcode"]["fedlink:queryable"] is False
    assert fields["postcode"]["fedlink:concept"] == "postcode"
    assert fields["age"]["description"] == "Age in years"
    readiness = {r["concept"]: r for r in resource["fedlink:linkageReadiness"]}
    assert readiness["postcode"] == {
        "concept": "postcode",
        "columns": ["postcode"],
        "records": 25,
        "validRecords": 15,
        "validShare": 0.6,
    }
    assert readiness["dob"]["validRecords"] is None and readiness["dob"]["validShare"] is None
    assert package["contributors"] == [
        {"title": "Registry of examples", "role": "publisher", "email": "data@registry.example"}
    ]


def test_frictionless_finds_a_schema_that_does_not_fit_its_header(exported: Path, tmp_path: Path) -> None:
    """The validation above can fail: the same package with a field renamed in the schema is refused."""
    package = json.loads((exported / "datapackage.json").read_text())
    package["resources"][0]["schema"]["fields"][0]["name"] = "district"
    (tmp_path / "datapackage.json").write_text(json.dumps(package))
    assert not frictionless.validate(str(tmp_path / "datapackage.json")).valid


def test_the_dcat_catalogue_is_json_ld_with_the_application_profile_fields(exported: Path) -> None:
    document = json.loads((exported / "catalogue.jsonld").read_text())
    assert document["@context"]["dcat"] == "http://www.w3.org/ns/dcat#"
    assert document["@context"]["dct"] == "http://purl.org/dc/terms/"
    assert document["@type"] == "dcat:Catalog" and document["@id"] == "https://data.example/catalogue/"
    for key in ("dct:title", "dct:description", "dct:publisher"):
        assert document[key]
    [dataset] = document["dcat:dataset"]
    assert dataset["@type"] == "dcat:Dataset"
    assert dataset["@id"] == "https://data.example/catalogue/#dataset-registry.people"
    assert dataset["dct:identifier"] == "registry.people"
    assert dataset["dct:description"] == "One row per person registered"
    assert dataset["dct:publisher"]["foaf:name"] == "Registry of examples"
    assert dataset["dcat:contactPoint"]["@type"] == "vcard:Organization"
    assert dataset["dcat:contactPoint"]["vcard:hasEmail"] == {"@id": "mailto:data@registry.example"}
    assert dataset["dct:accrualPeriodicity"] == {"@id": FREQUENCY + "QUARTERLY"}
    assert dataset["dct:accessRights"] == {"@id": NON_PUBLIC}
    assert {"registry", "people", "region", "linkable on postcode"} <= set(dataset["dcat:keyword"])
    assert "postcode" not in dataset["dcat:keyword"]  # identifier columns are not offered as topics
    assert dataset["fedlink:legalGateway"][0] == "Digital Economy Act 2017, Part 5, Chapter 5"
    assert dataset["dcatap:applicableLegislation"] == [{"@id": "https://www.legislation.gov.uk/ukpga/2017/30"}]
    [distribution] = dataset["dcat:distribution"]
    assert distribution["dcat:accessService"]["@type"] == "dcat:DataService"
    assert "only through fedlink" in distribution["dct:description"]
    measurements = {m["fedlink:concept"]: m for m in dataset["dqv:hasQualityMeasurement"]}
    assert measurements["postcode"]["dqv:value"] == {"@value": "0.6000", "@type": "xsd:decimal"}
    assert measurements["postcode"]["fedlink:records"] == 25 and measurements["postcode"]["fedlink:validRecords"] == 15
    # Suppressed: no count and no share, not even a placeholder.
    assert "fedlink:validRecords" not in measurements["dob"] and "dqv:value" not in measurements["dob"]
    # Every node's @id is an absolute IRI, and every prefix used in a key or compact IRI is in the context.
    ids = re.findall(r'"@id": "([^"]+)"', (exported / "catalogue.jsonld").read_text())
    assert ids and all(re.match(r"^(https?://|mailto:|urn:|[a-z]+:[A-Za-z])", i) for i in ids)
    used = set(re.findall(r'"([a-z]+):[A-Za-z]', (exported / "catalogue.jsonld").read_text()))
    assert used - {"http", "https", "mailto", "urn"} <= set(document["@context"])


class Rows(HTMLParser):
    """The text of each table row of a page, and its links."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.hrefs: list[str] = []
        self.tags: list[str] = []
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self._row = []
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.append([cell.strip() for cell in self._row])
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and data.strip():
            self._row.append(data)


def test_the_page_shows_readiness_from_rounded_counts_and_a_suppressed_count_nowhere(exported: Path) -> None:
    page = Rows()
    page.feed((exported / "index.html").read_text())
    rows = {row[0]: row for row in page.rows if row}
    assert rows["postcode"][-3:] == ["25", "15", "60%"]
    assert rows["dob"][-3:] == ["25", "suppressed", "—"]
    assert "mailto:data@registry.example" in page.hrefs
    # Self-contained: no script, nothing fetched, links only within the site or to the inbox.
    assert "script" not in page.tags and "img" not in page.tags and "link" not in page.tags
    assert all(h.startswith(("#", "mailto:")) or h in ("catalogue.jsonld", "datapackage.json") for h in page.hrefs)
    text = (exported / "index.html").read_text()
    assert "default-src 'none'" in text
    # The exact counts (23 records, 14 and 4 valid) and the exact share (61%) appear in no file.
    for name in ("index.html", "catalogue.jsonld", "datapackage.json"):
        content = re.sub(r"<style>.*?</style>", "", (exported / name).read_text(), flags=re.S)  # the CSS has numbers
        content = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ?", "", content)  # when it was exported (20:14...)
        assert not re.search(r"\b(23|14|4)\b|61%|0\.6087", content.replace("2017", "")), name


HOSTILE = "<script>alert('x & \"y\"')</script></td><b>bold</b>"


def _hostile_catalogue() -> FederationCatalogue:
    table = TableInfo(
        name="t",
        description=HOSTILE,
        rows_rounded=100,
        columns=(
            ColumnInfo(name="c", kind="category", description=HOSTILE, categories=(HOSTILE, "plain")),
            ColumnInfo(name="id", kind="identifier", description=HOSTILE),
        ),
        linkage=(LinkageConcept(concept="postcode", columns=(HOSTILE,), records_rounded=100, valid_rounded=90),),
        legal_gateways=(HOSTILE,),
        update_frequency=HOSTILE,
    )
    node = NodeCatalogue(
        node="n",
        description=HOSTILE,
        tables=(table,),
        contacts=NodeContacts(inbox="javascript:alert(1)", how_to_apply=HOSTILE),
    )
    return FederationCatalogue(nodes=(NodeStatus(node="n", live=True, catalogue=node),))


def test_hostile_descriptions_and_contacts_stay_text(tmp_path: Path) -> None:
    written = export_catalogue(_hostile_catalogue(), tmp_path / "site")
    html = written.page.read_text()
    page = Rows()
    page.feed(html)
    assert "script" not in page.tags and "b" not in page.tags
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert not any(h.startswith("javascript:") for h in page.hrefs)  # an inbox that is not an address is text
    assert '<dd class="inbox">javascript:alert(1)</dd>' in html
    # The JSON files carry the text as it was given, as JSON strings.
    document = json.loads(written.dcat.read_text())
    assert document["dcat:dataset"][0]["dct:description"] == HOSTILE
    assert "vcard:hasEmail" not in document["dcat:dataset"][0]["dcat:contactPoint"]
    assert document["dcat:dataset"][0]["dct:accrualPeriodicity"] == {"@id": FREQUENCY + "UNKNOWN"}
    assert frictionless.validate(str(written.datapackage)).valid


def test_a_folder_that_is_not_a_previous_export_is_refused_and_a_previous_one_replaced(
    registry: FederationCatalogue, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="not a previous catalogue export"):
        export_catalogue(registry, tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    first = export_catalogue(registry, tmp_path / "site", title="First")
    export_catalogue(registry, tmp_path / "site", title="Second")
    assert "Second" in first.page.read_text() and "First" not in first.page.read_text()
    with pytest.raises(BadInput, match="not an http"):
        check_target(tmp_path / "new", "ftp://x")


def test_a_node_given_twice_is_refused(tmp_path: Path) -> None:
    config = _write_node(tmp_path)
    with pytest.raises(BadInput, match="given twice"):
        local_catalogue([config, config])
