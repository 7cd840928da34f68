"""`fedlink scenario all`, as a user runs it: it starts the demo federation, links, runs each scenario's
linked DP queries, writes a chart and a table per scenario, and stops. (One scenario by name runs in
tests/e2e/test_cli.py's demo test.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedlink.coordinator.config import load_coordinator_config
from fedlink_tools.demo import federation_dir

from .test_cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """``fedlink scenario all``: the three scenarios on one demo federation of 60,000 people (the
    charity's outcome counts need that many to clear disclosure control), started and stopped once."""
    tmp_path = tmp_path_factory.mktemp("scenarios")
    proc = cli(
        "scenario", "all", "--people", "60000", "--workdir", str(tmp_path / "wd"),
        "--out", str(tmp_path / "out"), "--format", "json", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {}
    for report in json.loads(proc.stdout):
        chart = Path(report["chart"])
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
        with open(report["published"], newline="") as handle:
            published = list(csv.reader(handle))
        assert published[0] == report["columns"] and len(published) == len(report["rows"]) + 1
        found[report["scenario"]] = report
    assert sorted(found) == ["deprivation", "homelessness", "justice"]
    return found


def test_deprivation(reports: dict[str, dict]) -> None:
    report = reports["deprivation"]
    rows = {r[0]: dict(zip(report["columns"], r, strict=True)) for r in report["rows"]}
    assert len(rows) == 10 and "England" in rows
    england = rows["England"]
    # the synthetic population is built so that exposure raises severe mental illness (outcomes.py)
    assert england["unexposed_n"] > england["exposed_n"] > 0
    assert report["spent"] == {"dfe": 2.0, "dwp": 2.0, "nhs": 1.0}
    # DEMO ONLY comparisons: linkage error per pair, true counts beside every linked query
    assert {(r["a"], r["b"]) for r in report["demo_only_linkage_error"]} == {
        ("dfe", "dwp"), ("dfe", "nhs"), ("dwp", "nhs")
    }  # fmt: skip
    assert all(r["precision"] > 0.95 and r["recall"] > 0.95 for r in report["demo_only_linkage_error"])
    truth = report["demo_only_true_counts"]["unexposed:england:all"][0]
    released = report["results"]["unexposed:england:all"]["rows"][0]["n"]
    # DP noise (scale 12 at epsilon 0.25) plus linkage error (recall ~0.98): well within 10% here
    assert abs(released["value"] - truth) <= 0.1 * truth
    linkage = report["results"]["unexposed:england:all"]["linkage"]
    configured = load_coordinator_config(federation_dir() / "coordinator" / "coordinator.toml")
    assert linkage["epsilon"] == configured.coordinator.link_quality_epsilon and len(linkage["pairs"]) == 3


def test_justice(reports: dict[str, dict]) -> None:
    report = reports["justice"]
    groups = {r[1] for r in report["rows"]}
    assert groups == {"parent imprisoned", "parent convicted, no custody", "all pupils"}
    assert {r[0] for r in report["rows"]} == {"2014-2018", "2019-2023"}
    for row in report["rows"]:
        cells = dict(zip(report["columns"], row, strict=True))
        if cells["attainment8"] is not None:
            assert 0 <= cells["attainment8_lower"] <= cells["attainment8"] <= cells["attainment8_upper"] <= 90
    assert set(report["spent"]) == {"dfe", "hmps", "pnc"}


def test_homelessness_publishes_a_table_the_charity_can_share(reports: dict[str, dict]) -> None:
    report = reports["homelessness"]
    outcomes = {r[0] for r in report["rows"]}
    assert outcomes == {"health", "housing", "employment"}
    for row in report["rows"]:
        cells = dict(zip(report["columns"], row, strict=True))
        value = cells["clients"]
        assert (value is None and cells["suppressed"]) or (value % 5 == 0 and value >= 10)
    assert report["spent"]["charity_north"] == report["spent"]["charity_south"] == 3.0
