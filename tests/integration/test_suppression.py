"""A suppressed cell or cohort shows no value anywhere: not in the result (rows, dict, data frame,
notebook HTML, CLI table/JSON/CSV), not in its notes, not in any register, not in a refused model's
message, and not in a scenario's published table or its DEMO ONLY comparison with the truth.

Every node here declares a minimum cohort of a million, so every release is suppressed whole: the
noisy counts exist (nodes computed and noised them; in he+dp the analyst's client decrypted them) and
the test checks that none of them reaches anything the analyst or the public sees.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fedlink
from fedlink.cli import render
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink_tools.scenarios import DemoTruth, run_scenario

from ..conftest import InProcessFederation, connect_analyst, node_config, start_federation

pytestmark = [pytest.mark.usefixtures("workdir"), pytest.mark.slow]
NODES = ["charity_north", "charity_south", "dwp", "nhs"]
PROJECT = "homelessness-outcomes"
MIN_COHORT = 1_000_000
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


@pytest.fixture(scope="module")
def strict() -> Iterator[InProcessFederation]:
    fed = start_federation([])
    try:
        for name in NODES:
            config = node_config(name, fed.address, fed.state)
            privacy = config.privacy.model_copy(update={"disclosure": DisclosurePolicy(min_cohort=MIN_COHORT)})
            fed.start_node(name, config=config.model_copy(update={"privacy": privacy}))
        connect_analyst(fed.address, Path(os.environ["FEDLINK_WORKDIR"])).link(PROJECT)
        yield fed
    finally:
        fed.stop()


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def _printed(draw: Any) -> str:
    console = render.console()
    console.file = io.StringIO()
    console.width = 300
    draw(console)
    return console.file.getvalue()


def _register_entries(fed: InProcessFederation, query_id: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(fed.state.glob("*/register.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["fields"].get("query_id") == query_id:
                found.append(entry["fields"])
    return found


def _assert_suppressed_everywhere(fed: InProcessFederation, res: fedlink.Result) -> None:
    cells = [cell for row in res.to_dict()["rows"] for name, cell in row.items() if name in res.raw.value_columns]
    assert cells and all(c["suppressed"] == "cohort below minimum" for c in cells)
    assert all(c["value"] is None and c["lower"] is None and c["upper"] is None for c in cells)
    for flat in res.rows():
        assert all(flat[c] is None and flat[f"{c}_lower"] is None for c in res.raw.value_columns)
    frame = res.to_pandas()
    assert frame[list(res.raw.value_columns)].isna().all().all()
    # notes say what was suppressed and why, with the threshold and the interval level only
    allowed = {str(MIN_COHORT), "95"}
    assert _numbers(" ".join(res.notes)) <= allowed, res.notes
    assert any("cohort" in n and "below the minimum" in n for n in res.notes)
    # the notebook table and the CLI's three formats show the reason in place of every value
    shown = len(res.raw.rows) * len(res.raw.value_columns)
    assert res._repr_html_().count("suppressed (cohort below minimum)") == shown
    assert _printed(lambda c: render.result(c, res, "table")).count("suppressed (cohort below minimum)") == shown
    as_json = json.loads(_printed(lambda c: render.result(c, res, "json")))
    assert all(row[c]["value"] is None for row in as_json["rows"] for c in res.raw.value_columns)
    as_csv = _printed(lambda c: render.result(c, res, "csv")).splitlines()
    header = as_csv[0].split(",")
    for line in as_csv[1:]:
        values = dict(zip(header, line.split(","), strict=False))
        assert all(values[c] == "" and values[f"{c}_upper"] == "" for c in res.raw.value_columns)
    # every party's register: no released value, and no number in a reason
    entries = _register_entries(fed, res.query_id)
    assert entries
    for fields in entries:
        released = fields.get("released")
        if released is not None:
            width = len(released["columns"]) - len(res.raw.value_columns)
            assert all(v is None for row in released["rows"] for v in row[width:]), released
        assert fields.get("reason") is None or not _numbers(fields["reason"]), fields["reason"]


@pytest.mark.parametrize("pet", ["dp", "he+dp"])
def test_a_suppressed_horizontal_result_shows_no_value(strict: InProcessFederation, workdir: Path, pet: str) -> None:
    client = connect_analyst(strict.address, workdir)
    res = client.query(
        "SELECT outcome, COUNT(*) AS n, AVG(duration_days) AS days FROM support_episodes GROUP BY outcome",
        project=PROJECT,
        epsilon=1.0,
        pet=pet,  # type: ignore[arg-type]
    )
    _assert_suppressed_everywhere(strict, res)


def test_a_suppressed_linked_result_shows_no_value(strict: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(strict.address, workdir)
    res = client.query(
        "SELECT dwp.claims.employment, COUNT(*) AS n FROM support_episodes LINK dwp.claims "
        "GROUP BY dwp.claims.employment",
        project=PROJECT,
        epsilon=1.0,
    )
    _assert_suppressed_everywhere(strict, res)


def test_a_scenario_shows_no_value_of_a_suppressed_cell(
    strict: InProcessFederation, workdir: Path, tmp_path: Path
) -> None:
    """The published table (CSV), the chart's data and the DEMO ONLY comparison with the ground truth."""
    client = connect_analyst(strict.address, workdir)
    report = run_scenario(client, "homelessness", tmp_path, truth=DemoTruth(workdir))
    assert report.truth and all(v is None for values in report.truth.values() for v in values)
    assert all(row[2] is None and row[3] is None and row[4] is None for row in report.table.rows)
    published = report.published.read_text().splitlines()[1:]
    assert published and all(line.split(",")[2:5] == ["", "", ""] for line in published)
    as_json = json.loads(_printed(lambda c: render.scenario(c, report, "json")))
    assert all(v is None for values in as_json["demo_only_true_counts"].values() for v in values)
    table = _printed(lambda c: render.scenario(c, report, "table"))
    truth_section = table.split("DEMO ONLY: released counts against the truth")[1]
    rows = [line for line in truth_section.splitlines() if "suppressed (" in line]
    assert rows and all(line.rstrip(" │").endswith("—") for line in rows), truth_section


def test_a_model_refused_for_its_cohort_shows_no_row_count(strict: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(strict.address, workdir)
    with pytest.raises(fedlink.BadInput, match="too few rows") as refused:
        client.fit("outcome = 'housed' ~ duration_days", table="support_episodes", project=PROJECT, rho=0.5)
    # only the model's width (2 coefficients) and the nodes' threshold: never the noisy row count
    assert _numbers(refused.value.message) <= {"2", str(MIN_COHORT)}, refused.value.message
    public = client.register().entries("query")
    reason = next(e["fields"]["reason"] for e in reversed(public) if e["fields"]["query"].startswith("MODEL"))
    assert "too few rows" in reason and _numbers(reason) <= {"2", str(MIN_COHORT)}, reason
