"""`fedlink futures` as a user runs it: four real federations, one per future, each asked by the three
personas; the matrix says what each got, from the federations' own answers and refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import pytest

from .test_cli import cli

pytestmark = pytest.mark.slow
#: The smallest population at which the academic's and the researcher's linked counts clear
#: disclosure control; the charity's 2012-2017 clients stay below the minimum cohort here (its
#: scenario's own test needs 60,000 people), which its cell must say.
PEOPLE = 3000


def test_four_futures_three_personas(tmp_path: Path) -> None:
    out = tmp_path / "futures"
    proc = cli("futures", "--people", str(PEOPLE), "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([line for line in proc.stderr.splitlines() if " / " in line]) == 12  # one progress line per cell
    matrix = json.loads((out / "matrix.json").read_text(encoding="utf-8"))
    cells = {(c["persona"], c["future"]): c for c in matrix["cells"]}
    assert len(cells) == 12

    # for public good: every question answered in full, over all three sources, and published
    for persona, sources in (("academic", {"dfe", "dwp", "nhs"}), ("moj-researcher", {"dfe", "hmps", "pnc"})):
        cell = cells[(persona, "public-good")]
        assert cell["outcome"] == "answered" and cell["answered"] == cell["asked"] and set(cell["linked"]) == sources
        released = [e for e in cell["estimates"] if e["value"] is not None]
        assert released and all(e["lower"] <= e["value"] <= e["upper"] for e in released)
        assert cell["table"]["rows"]
        with (out / cell["published"]).open(newline="") as handle:
            assert len(list(csv.reader(handle))) == len(released) + 1
    charity = cells[("charity", "public-good")]
    assert charity["outcome"] == "answered" and len(charity["linked"]) == 4
    # whatever disclosure control held back is shown nowhere, and the cell says why
    hidden = {e["suppressed"] for e in charity["estimates"] if e["value"] is None}
    assert all(e["lower"] is None and e["upper"] is None for e in charity["estimates"] if e["value"] is None)
    assert all(reason in charity["summary"] for reason in hidden)
    # the published outcomes: each answered persona's sentence on the coordinator's register and its page
    page = (out / "public-good" / "register" / "index.html").read_text(encoding="utf-8")
    exported = json.loads((out / "public-good" / "register" / "register.json").read_text(encoding="utf-8"))
    published = {
        e["fields"]["analyst"]: e["fields"]["summary"]
        for party in exported["registers"]
        for e in party["entries"]
        if e["kind"] == "publication"
    }
    assert set(published) >= {"academic", "moj-researcher"}
    assert published["academic"] == cells[("academic", "public-good")]["summary"]
    assert "Published outcomes" in page and "Full answer: all" in page

    # in silos: NHS and PNC are not federated, so each persona links two of its sources, and says which is missing
    for persona, missing in (("academic", "nhs"), ("moj-researcher", "pnc"), ("charity", "nhs")):
        cell = cells[(persona, "silos")]
        assert cell["outcome"] == "partial" and cell["missing"] == [missing] and missing not in cell["linked"]
        assert 0 < cell["answered"] < cell["asked"]
        assert f"{missing} not federated" in cell["summary"]
        assert all(f"node '{missing}'" in r["reason"] for r in cell["refusals"])

    # for government: the coordinator refuses the external analysts' certificates; nothing is published
    for persona in ("academic", "charity"):
        cell = cells[(persona, "government")]
        assert cell["outcome"] == "refused" and not cell["estimates"] and cell["refusals"][0]["code"] == "access_denied"
        assert f"the certificate of analyst '{persona}' has been revoked" in cell["refusals"][0]["reason"]
    researcher = cells[("moj-researcher", "government")]
    assert researcher["outcome"] == "answered" and researcher["published"] is None
    assert not (out / "government").exists()

    # deprioritised: no linkage service, so no linked answer; each department's own table instead
    for persona in ("academic", "moj-researcher", "charity"):
        cell = cells[(persona, "deprioritised")]
        assert cell["outcome"] == "aggregates only" and cell["linked"] == []
        assert any("offers no linkage service" in r["reason"] for r in cell["refusals"])
        released = [e for e in cell["aggregates"] if e["value"] is not None]
        assert released and all(e["lower"] <= e["value"] <= e["upper"] for e in released)

    chart = out / "matrix.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(chart).shape[1] > 1000
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "the certificate of analyst &#39;academic&#39; has been revoked" in html  # refusals escaped
    assert "analyst 'academic'" not in html and "<script" not in html
    assert html.count('data-outcome="') == 12
