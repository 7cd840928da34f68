"""Hostile text in a register (a project's name and purpose, a node's name, a query id, an output cell)
reaches the public page and its SVG chart as text, and a Result's notebook table likewise: escaped by
the templates, never markup."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

from fedlink.analyst.result import Result
from fedlink.governance import Register, export_register
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.protocol.results import Cell, QueryResult, ResultRow
from fedlink.protocol.tasks import PrivacyLoss

from .test_register import stepping_clock

HOSTILE = "<script>alert('x & \"y\"')</script> & co"
NODE = "n<b>\"&'</b>"  # a party name is free text to the page


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def hostile_registers(root: Path) -> list[tuple[str, Path]]:
    clock = stepping_clock(datetime(2025, 3, 1, 9, 0, tzinfo=UTC), timedelta(hours=1))
    coordinator = Register(root / "coordinator.jsonl", "coordinator", clock=clock)
    project = {"id": HOSTILE, "title": HOSTILE, "purpose": HOSTILE, "analysts": [HOSTILE], "datasets": [HOSTILE]}
    coordinator.append("project", project)
    coordinator.append("startup", {HOSTILE: HOSTILE})
    for n in range(2):
        coordinator.append(
            "query",
            {
                "query_id": f"{HOSTILE}{n}",
                "analyst": HOSTILE,
                "project": HOSTILE,
                "purpose": HOSTILE,
                "query": HOSTILE,
                "pet": HOSTILE,
                "privacy_loss": {NODE: {"epsilon": 1.0, "rho": 0.0}},
                "status": "released",
                "reason": HOSTILE,
                "released": {"columns": [HOSTILE], "rows": [[HOSTILE]]},
            },
        )
    return [("coordinator", coordinator.path)]


def test_hostile_text_is_escaped_in_the_page_and_the_chart(tmp_path: Path) -> None:
    page, _ = export_register(hostile_registers(tmp_path), tmp_path / "public", title=HOSTILE)
    html = page.read_text("utf-8")

    assert "<script" not in html and "<b>" not in html
    escaped = "&lt;script&gt;alert(&#39;x &amp; &#34;y&#34;&#39;)&lt;/script&gt; &amp; co"
    assert f"<title>{escaped}</title>" in html and f"<h1>{escaped}</h1>" in html
    assert html.count(escaped) >= 15  # title, project row, purpose, query text, outputs, events...
    parsed = Page()
    parsed.feed(html)
    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert "".join(parsed.text).count(HOSTILE) >= 15  # and the browser's text is exactly what was recorded

    # The inline SVG is well-formed XML with the node's name as text, in its description, legend and marks.
    svg = re.search(r"<svg .*?</svg>", html, re.DOTALL)
    assert svg is not None
    chart = ET.fromstring(svg.group(0))
    ns = "{http://www.w3.org/2000/svg}"
    assert chart.findtext(f"{ns}desc") == f"{NODE}: 1 in 2 queries"
    assert [t.text for t in chart.iter(f"{ns}text") if (t.text or "").startswith(NODE)] == [f"{NODE} (1)"]
    marks = [c.findtext(f"{ns}title") for c in chart.iter(f"{ns}circle")]
    assert marks == [f"{NODE}: {HOSTILE}0 spent ρ 0.5, total 0.5", f"{NODE}: {HOSTILE}1 spent ρ 0.5, total 1"]
    assert "n&lt;b&gt;&#34;&amp;&#39;&lt;/b&gt; (1)" in svg.group(0)


def test_a_result_in_a_notebook_shows_hostile_text_as_text() -> None:
    raw = QueryResult(
        query_id="q-1",
        sql=f"SELECT region, COUNT(*) FROM t WHERE note = '{HOSTILE}' GROUP BY region",
        table="t",
        nodes=("dfe",),
        project="p",
        pet="dp",
        noiseless=False,
        privacy_loss={"dfe": PrivacyLoss(epsilon=1.0)},
        disclosure=DisclosurePolicy(),
        key_columns=("region",),
        value_columns=("count",),
        rows=(ResultRow(keys=(HOSTILE,), cells=(Cell(value=40.0, lower=30.0, upper=50.0),)),),
        notes=(HOSTILE,),
    )
    html = Result(raw)._repr_html_()
    parsed = Page()
    parsed.feed(html)
    assert "script" not in parsed.tags and parsed.tags.count("tr") == 2
    text = "".join(parsed.text)
    assert text.count(HOSTILE) == 3  # the caption's SQL, the group key and the note, exactly as written
    assert "&lt;script&gt;alert(&#39;x &amp; &#34;y&#34;&#39;)&lt;/script&gt; &amp; co</td>" in html
