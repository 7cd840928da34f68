"""The persona x future matrix rendered from given cells: what each cell says, escaping, the PNG."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image

from fedlink_tools.futures import (
    FUTURES,
    PERSONAS,
    Cell,
    Estimate,
    FuturesMatrix,
    Outcome,
    Refusal,
    chart_label,
    write_matrix,
)
from fedlink_tools.scenarios import ScenarioTable

HOSTILE = "<script>alert('x')</script> & \"quoted\""


def _cell(persona: str, future: str, outcome: Outcome, **kw: object) -> Cell:
    fields: dict[str, object] = {
        "asked": 2,
        "answered": 0,
        "linked": (),
        "missing": (),
        "refusals": (),
        "estimates": (),
        "aggregates": (),
        "table": None,
        "published": None,
    }
    fields.update(kw)
    return Cell(persona=persona, future=future, outcome=outcome, **fields)  # type: ignore[arg-type]


def _matrix() -> FuturesMatrix:
    total = Estimate("people linked", "", "n", 120.0, 105.0, 135.0)
    hidden = Estimate("by region", "region London", "n", None, None, None, "cohort below minimum")
    cells = []
    for persona in PERSONAS:
        cells += [
            _cell(
                persona.key, "public-good", Outcome.answered, answered=2, linked=("dfe", "dwp"),
                estimates=(total, hidden), table=ScenarioTable(["area", "n"], [["England", 120.0]]),
                published=f"public-good/{persona.key}.csv",
            ),
            _cell(
                persona.key, "silos", Outcome.partial, answered=1, linked=("dfe", "dwp"), missing=("nhs",),
                estimates=(total,), refusals=(Refusal("with NHS", "unknown table 'diagnoses' at node 'nhs'", "query"),),
            ),
            _cell(
                persona.key, "government", Outcome.refused,
                refusals=(Refusal(HOSTILE, f"the certificate of analyst '{persona.analyst}' has been revoked {HOSTILE}",
                                  "access_denied"),),
            ),
            _cell(
                persona.key, "deprioritised", Outcome.aggregates,
                refusals=(Refusal("linked", "coordinator 'c' offers no linkage service", "policy_refused"),),
                aggregates=(Estimate("DfE: pupils", "fsm 1", "pupils", 545.0, 530.0, 560.0),),
            ),
        ]  # fmt: skip
    return FuturesMatrix(3000, 7, FUTURES, PERSONAS, tuple(cells))


def test_each_outcome_says_what_the_persona_got() -> None:
    matrix = _matrix()
    answered = matrix.cell("academic", "public-good").summary()
    assert "all 2 queries answered, linking dfe and dwp" in answered
    assert "1 of 2 estimates released with 95% intervals (1 suppressed: cohort below minimum)" in answered
    assert "published in public-good/academic.csv" in answered
    partial = matrix.cell("academic", "silos").summary()
    assert "1 of 2 queries answered" in partial and "nhs not federated" in partial and "'diagnoses'" in partial
    assert matrix.cell("charity", "government").summary().startswith("Refused: the certificate of analyst 'charity'")
    assert "offers no linkage service" in matrix.cell("charity", "deprioritised").summary()
    assert "1 per-department tables" in matrix.cell("charity", "deprioritised").summary()
    label = chart_label(matrix.cell("academic", "public-good"))
    assert "n 120 [105, 135]" in label and "1 of 2 estimates released" in label and "published" in label
    assert "missing: nhs (not federated)" in chart_label(matrix.cell("academic", "silos"))


def test_the_page_escapes_everything_and_carries_its_chart(tmp_path: Path) -> None:
    page, _ = write_matrix(_matrix(), tmp_path)
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;quoted&#34;" in html
    # self-contained: no resource from anywhere else, the chart inside as a data URI
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html) and "<link" not in html
    assert 'src="data:image/png;base64,iVBORw0KGgo' in html
    assert len(re.findall(r'data-outcome="refused"', html)) == 3
    assert html.count('href="public-good/') == 3
    assert "120 [105, 135]" in html and "suppressed (cohort below minimum)" in html
    # in the matrix itself, each cell with a released number shows it with its interval (refused cells: none)
    assert html.count('<table class="headlines">') == 9
    document = json.loads((tmp_path / "matrix.json").read_text(encoding="utf-8"))
    assert len(document["cells"]) == 12 and document["cells"][0]["summary"].startswith("Full answer")


def test_the_chart_is_a_png_image(tmp_path: Path) -> None:
    _, chart = write_matrix(_matrix(), tmp_path)
    pixels = matplotlib.image.imread(chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pixels.shape[0] > 400 and pixels.shape[1] > 1000
