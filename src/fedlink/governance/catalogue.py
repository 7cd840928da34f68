"""The public data catalogue: what each department holds, how to apply for it, and how ready it is for
linkage, as a static site and as metadata in two standards.

:func:`export_catalogue` writes, from a :class:`~fedlink.plan.catalogue.FederationCatalogue` (what the
nodes declare in their hello, asked of the coordinator) or from :func:`local_catalogue` (a node
operator's preview, read from ``node.toml`` files and the node's own data):

- ``index.html``: one section per dataset (description, fields, categories, bounds, how to apply, the
  contact inbox and the teams to consult, legal gateways, update frequency, linkage readiness),
  self-contained (inline CSS, no script, no external address, a Content-Security-Policy that forbids
  both), rendered from Jinja2 templates with autoescaping;
- ``catalogue.jsonld``: a DCAT catalogue (JSON-LD, DCAT-AP fields: publisher, vCard contact point,
  the EU frequency vocabulary, keywords, identifier, access rights and an access-service
  distribution) with the linkage readiness as DQV quality measurements;
- ``datapackage.json``: a Frictionless Data Package, one resource per dataset with its Table Schema
  (types, descriptions, categories as ``enum``, bounds as ``minimum``/``maximum``) and a header with
  no rows, as no row leaves a node.

Everything published was declared by a data owner, except the linkage readiness: counts each node
computes from its own data and publishes rounded to its ``round_to`` (a count below its
``suppress_below`` is not published at all), and the share derived from those rounded counts. No
value of any row is read here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedlink.analyst.result import Catalogue
from fedlink.errors import BadInput
from fedlink.governance.export import _swap_in
from fedlink.plan.catalogue import (
    ColumnInfo,
    FederationCatalogue,
    LinkageConcept,
    NodeCatalogue,
    NodeStatus,
    TableInfo,
)
from fedlink.protocol.publication import CatalogueRecord
from fedlink.templating import environment

FORMAT = "fedlink-catalogue-export/1"
MARKER = ".fedlink-catalogue-export"
PAGE, DCAT, DATAPACKAGE = "index.html", "catalogue.jsonld", "datapackage.json"
_OUTPUTS = frozenset({PAGE, DCAT, DATAPACKAGE, MARKER})

#: The EU Publications Office's frequency vocabulary, which DCAT-AP's ``dct:accrualPeriodicity`` uses.
FREQUENCY = "http://publications.europa.eu/resource/authority/frequency/"
FREQUENCY_CODES = {
    "daily": "DAILY",
    "weekly": "WEEKLY",
    "monthly": "MONTHLY",
    "quarterly": "QUARTERLY",
    "biannual": "ANNUAL_2",  # twice a year ("semiannual" in the vocabulary)
    "annual": "ANNUAL",
    "irregular": "IRREG",
    "never": "NEVER",
    "unknown": "UNKNOWN",
}
#: Access rights: not open data; a project applies, and its queries are answered in aggregate only.
NON_PUBLIC = "http://publications.europa.eu/resource/authority/access-right/NON_PUBLIC"
#: fedlink's own terms, for what DCAT and DQV have no term for (a URN: no web address is claimed).
VOCAB = "urn:fedlink:vocab:"
CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "dcatap": "http://data.europa.eu/r5r/",
    "dqv": "http://www.w3.org/ns/dqv#",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "fedlink": VOCAB,
}
ACCESS_NOTE = (
    "Queryable only through fedlink, by an approved project: aggregate, differentially private queries "
    "answered at the department's node. No record and no identifier value leaves the node."
)
_EMAIL = re.compile(r"^[^@\s<>\"']+@[^@\s<>\"']+\.[^@\s<>\"']+$")


@dataclass(frozen=True)
class CatalogueExport:
    """The files one export wrote."""

    page: Path
    dcat: Path
    datapackage: Path


@dataclass(frozen=True)
class _Dataset:
    node: NodeCatalogue
    table: TableInfo

    @property
    def identifier(self) -> str:
        return f"{self.node.node}.{self.table.name}"

    @property
    def slug(self) -> str:
        """A name made of ``[-a-z0-9._]`` only: a Data Package resource name and the page's anchor."""
        return re.sub(r"[^-a-z0-9._]", "-", self.identifier.lower())

    def concept_of(self, column: str) -> str | None:
        return next((c.concept for c in self.table.linkage if column in c.columns), None)


def local_catalogue(configs: Sequence[Path]) -> FederationCatalogue:
    """The catalogue the nodes of these ``node.toml`` files would publish, read from their own data here
    (a node operator's preview; nothing is sent anywhere)."""
    from fedlink.node.config import load_node_config
    from fedlink.node.data import NodeData

    if not configs:
        raise BadInput("name at least one node config (`configs`) to read the catalogue from")
    statuses: list[NodeStatus] = []
    for path in configs:
        data = NodeData(load_node_config(Path(path)))
        try:
            if any(s.node == data.catalogue.node for s in statuses):
                raise BadInput(f"node '{data.catalogue.node}' is given twice (`configs`); give each node once")
            statuses.append(NodeStatus(node=data.catalogue.node, live=False, catalogue=data.catalogue))
        finally:
            data.close()
    return FederationCatalogue(nodes=tuple(statuses))


def export_catalogue(
    catalogue: FederationCatalogue | Catalogue,
    out: Path,
    *,
    title: str = "fedlink data catalogue",
    publisher: str = "fedlink federation",
    base_url: str | None = None,
) -> CatalogueExport:
    """Write ``out/index.html``, ``out/catalogue.jsonld`` (DCAT) and ``out/datapackage.json`` (Frictionless).

    ``base_url`` is where the site will be published (``https://example.org/catalogue/``): the datasets'
    DCAT identifiers and landing pages point into it; without it they are ``urn:fedlink:`` names.
    ``out`` must be missing, empty or a previous catalogue export; the files appear together or not at all.
    """
    raw = catalogue.raw if isinstance(catalogue, Catalogue) else catalogue
    out = Path(out)
    check_target(out, base_url)
    # In node order, whatever order the nodes connected in: the same federation gives the same files.
    nodes = sorted((s.catalogue for s in raw.nodes if s.catalogue is not None), key=lambda n: n.node)
    silent = sorted(s.node for s in raw.nodes if s.catalogue is None)
    datasets = [_Dataset(node, table) for node in nodes for table in node.tables]
    generated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    base = None if base_url is None else base_url if base_url.endswith("/") else base_url + "/"
    files = {
        PAGE: _page(datasets, nodes, silent, title, generated),
        DCAT: _dump(_dcat_catalogue(datasets, title, publisher, generated, base)),
        DATAPACKAGE: _dump(_data_package(datasets, nodes, title, generated)),
        MARKER: FORMAT + "\n",
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
    except OSError as exc:
        raise BadInput(
            f"cannot write the catalogue into {out.parent} ({exc.strerror}); choose a folder you can write"
        ) from exc
    try:
        os.chmod(staging, 0o755)  # a public site: readable by the web server, unlike mkdtemp's default
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        _swap_in(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return CatalogueExport(out / PAGE, out / DCAT, out / DATAPACKAGE)


def catalogue_record(
    written: CatalogueExport, catalogue: FederationCatalogue | Catalogue, title: str
) -> CatalogueRecord:
    """What the coordinator's register records of an export: each file's SHA-256 and the datasets listed."""
    raw = catalogue.raw if isinstance(catalogue, Catalogue) else catalogue
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (written.page, written.dcat, written.datapackage)
    }
    datasets = sorted(
        f"{s.catalogue.node}.{t.name}" for s in raw.nodes if s.catalogue is not None for t in s.catalogue.tables
    )
    return CatalogueRecord.model_validate({"files": files, "datasets": datasets, "title": title})


def check_target(out: Path, base_url: str | None = None) -> None:
    """Refuse, before anything is read, a destination that is not missing, empty or a previous catalogue
    export, and a ``base_url`` that is not an http(s) address."""
    if base_url is not None and not re.match(r"^https?://[^\s<>\"']+$", base_url):
        raise BadInput(f"`base_url` {base_url!r} is not an http(s) address; give the address the site is published at")
    if not out.exists():
        return
    if not out.is_dir():
        raise BadInput(f"{out} exists and is not a folder; choose an empty or new folder for the catalogue (`out`)")
    present = {p.name for p in out.iterdir()}
    if present and (MARKER not in present or not present <= _OUTPUTS):
        raise BadInput(
            f"{out} is not empty and is not a previous catalogue export; choose an empty or new folder (`out`)"
        )


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# --- DCAT ------------------------------------------------------------------------------------------
def _dcat_catalogue(
    datasets: Sequence[_Dataset], title: str, publisher: str, generated: str, base: str | None
) -> dict[str, Any]:
    """The catalogue as DCAT in JSON-LD (DCAT-AP's mandatory and recommended properties of a dataset)."""
    return {
        "@context": CONTEXT,
        "@id": base or "urn:fedlink:catalogue",
        "@type": "dcat:Catalog",
        "dct:title": title,
        "dct:description": "Datasets held by the departments of a fedlink federation, each at its own node, and how "
        "to apply for them. " + ACCESS_NOTE,
        "dct:publisher": {"@type": "foaf:Agent", "foaf:name": publisher},
        "dct:modified": {"@value": generated, "@type": "xsd:dateTime"},
        **({"foaf:homepage": {"@id": base}} if base else {}),
        "dcat:dataset": [_dcat_dataset(d, generated, base) for d in datasets],
    }


def _dcat_dataset(d: _Dataset, generated: str, base: str | None) -> dict[str, Any]:
    node, table, contacts = d.node, d.table, d.node.contacts
    contact: dict[str, Any] = {"@type": "vcard:Organization", "vcard:fn": node.description or node.node}
    if _EMAIL.match(contacts.inbox):
        contact["vcard:hasEmail"] = {"@id": f"mailto:{contacts.inbox}"}
    if contacts.how_to_apply:
        contact["vcard:note"] = contacts.how_to_apply
    distribution: dict[str, Any] = {
        "@type": "dcat:Distribution",
        "dct:title": f"{table.name} through fedlink",
        "dct:description": ACCESS_NOTE,
        "dct:accessRights": {"@id": NON_PUBLIC},
        "dcat:accessService": {
            "@type": "dcat:DataService",
            "dct:title": "fedlink federation",
            "dct:description": "Aggregate queries of approved projects, answered with differential privacy and "
            "disclosure control at each department's node.",
        },
    }
    dataset: dict[str, Any] = {
        "@id": f"{base}#dataset-{d.slug}" if base else f"urn:fedlink:dataset:{d.identifier}",
        "@type": "dcat:Dataset",
        "dct:identifier": d.identifier,
        "dct:title": f"{table.name} ({node.description or node.node})",
        "dct:description": table.description or f"Table {table.name} held by {node.node}",
        "dct:publisher": {
            "@type": "foaf:Agent",
            "foaf:name": node.description or node.node,
            "dct:identifier": node.node,
        },
        "dcat:contactPoint": contact,
        "dct:accrualPeriodicity": {"@id": FREQUENCY + FREQUENCY_CODES.get(table.update_frequency, "UNKNOWN")},
        "dcat:keyword": _keywords(d),
        "dct:accessRights": {"@id": NON_PUBLIC},
        "dct:modified": {"@value": generated, "@type": "xsd:dateTime"},
        "dcat:distribution": [distribution],
        "fedlink:legalGateway": list(table.legal_gateways),
        "fedlink:linkageConcept": [c.concept for c in table.linkage],
        "dqv:hasQualityMeasurement": [_measurement(c) for c in table.linkage if not c.concept.startswith("subgroup:")],
    }
    # DCAT-AP's applicableLegislation takes the legislation's address (ELI); a gateway given as one is linked too.
    laws = [g for g in table.legal_gateways if re.match(r"^https?://\S+$", g)]
    if laws:
        dataset["dcatap:applicableLegislation"] = [{"@id": law} for law in laws]
    if base:
        dataset["dcat:landingPage"] = {"@id": f"{base}#dataset-{d.slug}"}
        distribution["dcat:accessURL"] = {"@id": f"{base}#dataset-{d.slug}"}
        distribution["dct:conformsTo"] = {"@id": f"{base}{DATAPACKAGE}"}
    return dataset


def _measurement(concept: LinkageConcept) -> dict[str, Any]:
    """Linkage readiness of one identifier concept: published counts only, and the share derived from them."""
    share = concept.published_share()
    measurement: dict[str, Any] = {
        "@type": "dqv:QualityMeasurement",
        "dqv:isMeasurementOf": {"@id": "fedlink:validAfterNormalisation"},
        "fedlink:concept": concept.concept,
    }
    # A suppressed count is left out, not written as a placeholder.
    if concept.records_rounded is not None:
        measurement["fedlink:records"] = concept.records_rounded
    if concept.valid_rounded is not None:
        measurement["fedlink:validRecords"] = concept.valid_rounded
    if share is not None:
        measurement["dqv:value"] = {"@value": f"{share:.4f}", "@type": "xsd:decimal"}
    return measurement


def _keywords(d: _Dataset) -> list[str]:
    words = [d.node.node, d.table.name, *(c.name for c in d.table.columns if c.kind != "identifier")]
    words += [f"linkable on {c.concept}" for c in d.table.linkage]
    return list(dict.fromkeys(words))


# --- Frictionless Data Package -------------------------------------------------------------------------
def _data_package(
    datasets: Sequence[_Dataset], nodes: Sequence[NodeCatalogue], title: str, generated: str
) -> dict[str, Any]:
    """The catalogue as a Frictionless Data Package: one resource per dataset, with its Table Schema and
    its header as inline data with no rows (no row leaves a node)."""
    contributors = []
    for node in nodes:
        contributor: dict[str, Any] = {"title": node.description or node.node, "role": "publisher"}
        if _EMAIL.match(node.contacts.inbox):
            contributor["email"] = node.contacts.inbox
        contributors.append(contributor)
    return {
        "name": "fedlink-catalogue",
        "title": title,
        "description": "The datasets of a fedlink federation: their Table Schemas, how to apply, legal gateways and "
        "linkage readiness. " + ACCESS_NOTE,
        "created": generated,
        "contributors": contributors,
        "resources": [_resource(d) for d in datasets],
    }


def _resource(d: _Dataset) -> dict[str, Any]:
    node, table = d.node, d.table
    return {
        "name": d.slug,
        "title": f"{table.name} ({node.description or node.node})",
        "description": table.description,
        "profile": "tabular-data-resource",
        "data": [[c.name for c in table.columns]],
        "schema": {"fields": [_field(d, c) for c in table.columns]},
        "fedlink:node": node.node,
        "fedlink:identifier": d.identifier,
        "fedlink:access": ACCESS_NOTE,
        "fedlink:legalGateways": list(table.legal_gateways),
        "fedlink:updateFrequency": {
            "word": table.update_frequency,
            "uri": FREQUENCY + FREQUENCY_CODES.get(table.update_frequency, "UNKNOWN"),
        },
        "fedlink:howToApply": node.contacts.how_to_apply,
        "fedlink:inbox": node.contacts.inbox,
        "fedlink:recordsRounded100": table.rows_rounded,
        "fedlink:disclosure": {"roundTo": node.disclosure.round_to, "suppressBelow": node.disclosure.suppress_below},
        "fedlink:linkageReadiness": [
            {
                "concept": c.concept,
                "columns": list(c.columns),
                "records": c.records_rounded,
                "validRecords": c.valid_rounded,
                "validShare": c.published_share(),
            }
            for c in table.linkage
            if not c.concept.startswith("subgroup:")
        ],
    }


def _field(d: _Dataset, column: ColumnInfo) -> dict[str, Any]:
    field: dict[str, Any] = {"name": column.name, "description": column.description}
    if column.kind == "category":
        values = list(column.categories or ())
        numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        field["type"] = "integer" if numbers else "string"
        field["constraints"] = {"enum": values if numbers else [str(v) for v in values]}
    elif column.kind == "numeric":
        field["type"] = "number"
        if column.bounds is not None:
            # Declared clamping bounds: every query clamps values into them, so no answer depends on an outlier.
            field["constraints"] = {"minimum": column.bounds[0], "maximum": column.bounds[1]}
    else:
        field["type"] = "string"
        field["fedlink:identifier"] = True
        field["fedlink:queryable"] = False
        concept = d.concept_of(column.name)
        if concept is not None:
            field["fedlink:concept"] = concept
    return field


# --- the page ----------------------------------------------------------------------------------------
_TEMPLATES = environment("fedlink.governance")
_TEMPLATES.filters["share"] = lambda value: "—" if value is None else f"{value:.0%}"
_TEMPLATES.filters["count"] = lambda value: "suppressed" if value is None else f"{value:,}"
_TEMPLATES.filters["number"] = lambda value: f"{value:g}"


def _page(
    datasets: Sequence[_Dataset], nodes: Sequence[NodeCatalogue], silent: Sequence[str], title: str, generated: str
) -> str:
    return _TEMPLATES.get_template("catalogue/index.html.j2").render(
        title=title,
        generated=generated,
        datasets=[_view(d) for d in datasets],
        nodes=nodes,
        silent=silent,
        frequency=lambda word: FREQUENCY + FREQUENCY_CODES.get(word, "UNKNOWN"),
        files=(DCAT, DATAPACKAGE),
        access_note=ACCESS_NOTE,
    )


def _view(d: _Dataset) -> dict[str, Any]:
    contacts = d.node.contacts
    return {
        "slug": d.slug,
        "identifier": d.identifier,
        "node": d.node,
        "table": d.table,
        "mailto": _EMAIL.match(contacts.inbox) is not None,
        "columns": [(c, d.concept_of(c.name)) for c in d.table.columns],
        "readiness": [c for c in d.table.linkage if not c.concept.startswith("subgroup:")],
    }
