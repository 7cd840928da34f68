"""The exported catalogue page, rendered by a real browser (headless Chromium, no network): each dataset's
fields, contact inbox and linkage readiness are on the page as rendered, nothing runs, nothing is fetched.

Needs the Debian package ``chromium``, like tests/integration/test_register_page.py.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from fedlink.governance.catalogue import export_catalogue, local_catalogue
from fedlink.plan.catalogue import FederationCatalogue

from ..conftest import NODES, ROOT
from .test_register_page import render


class Sections(HTMLParser):
    """Per ``<section id=...>``: its text, its tables (rows of cell texts) and its links; and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, list[str]] = {}
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.links: dict[str, list[str]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._section: str | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "section":
            self._section = found.get("id") or ""
            self.text[self._section], self.tables[self._section], self.links[self._section] = [], [], []
        elif tag == "table" and self._section is not None:
            self.tables[self._section].append([])
        elif tag == "tr":
            self._row = []
        elif tag == "a" and self._section is not None:
            self.links[self._section].append(found.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None
        elif tag == "tr" and self._row is not None and self._section is not None:
            self.tables[self._section][-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._section is not None:
            self.text[self._section].append(data)
            if self._row is not None and data.strip():
                self._row.append(data.strip())


@pytest.fixture(scope="module")
def preview(workdir: Path) -> FederationCatalogue:
    return local_catalogue([ROOT / "nodes" / name / "node.toml" for name in NODES])


def test_the_rendered_page_shows_fields_contact_and_readiness(preview: FederationCatalogue, tmp_path: Path) -> None:
    written = export_catalogue(preview, tmp_path / "site")
    dom = render(written.page, tmp_path / "profile", "--dump-dom").stdout
    page = Sections()
    page.feed(dom)

    dwp = next(s.catalogue for s in preview.nodes if s.node == "dwp")
    assert dwp is not None
    claims = dwp.table("claims")
    assert claims is not None
    section = "dataset-dwp.claims"
    text = "".join(page.text[section])
    fields_table, readiness_table = page.tables[section]
    fields = {row[0]: row for row in fields_table[1:]}
    assert list(fields) == [c.name for c in claims.columns]  # every field, with its description
    assert all(column.description in fields[column.name] for column in claims.columns)
    region = claims.column("region")
    assert region is not None and region.categories
    assert ", ".join(str(c) for c in region.categories) in fields["region"]
    assert dwp.contacts.inbox in text and f"mailto:{dwp.contacts.inbox}" in page.links[section]
    assert dwp.contacts.how_to_apply in text
    assert all(gateway in text for gateway in claims.legal_gateways)
    assert "quarterly" in text
    postcode = next(c for c in claims.linkage if c.concept == "postcode")
    share = postcode.published_share()
    assert share is not None and postcode.records_rounded and postcode.valid_rounded
    readiness = {row[0]: row for row in readiness_table[1:]}
    assert list(readiness) == [c.concept for c in claims.linkage]
    assert readiness["postcode"][-3:] == [
        f"{postcode.records_rounded:,}",
        f"{postcode.valid_rounded:,}",
        f"{share:.0%}",
    ]

    # One section per dataset; nothing runs and nothing is fetched.
    assert len(page.text) == sum(len(s.catalogue.tables) for s in preview.nodes if s.catalogue)
    assert not [t for t, _ in page.tags if t in ("script", "iframe", "object", "img", "link")]
    assert not [a for _, a in page.tags if "src" in a or "srcset" in a]
