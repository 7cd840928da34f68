"""A coordinator configured without a linkage service (``linkage_service = false``, the "deprioritised"
future of `fedlink futures`): no spine is built and no LINK query runs, each refused before any node
is asked and recorded on the register; horizontal queries are answered as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlink.errors import PolicyRefused
from fedlink_tools.futures import FUTURES, PERSONAS, Outcome, run_cell

from ..conftest import connect_analyst, start_federation

PROJECT = "homelessness-outcomes"
LINKED = (
    "SELECT nhs.diagnoses.diagnosis, COUNT(*) AS clients FROM support_episodes LINK nhs.diagnoses "
    "GROUP BY nhs.diagnoses.diagnosis"
)


def test_no_linkage_service_refuses_linkage_and_answers_horizontal_queries(workdir: Path) -> None:
    fed = start_federation(["charity_north", "charity_south", "nhs"], linkage_service=False, test_mode=False)
    try:
        analyst = connect_analyst(fed.address, workdir)
        with pytest.raises(PolicyRefused, match=r"offers no linkage service \(linkage_service = false"):
            analyst.link(PROJECT)
        with pytest.raises(PolicyRefused, match="ask a horizontal query"):
            analyst.query(LINKED, project=PROJECT, epsilon=1.0)
        assert not (fed.state / "coordinator" / "spines").exists() or not any(
            (fed.state / "coordinator" / "spines").iterdir()
        )
        spent = {(r["node"], r["dataset"]): r["rho_spent"] for r in analyst.budget().rows()}
        assert spent and all(value == 0 for value in spent.values())  # a refusal costs nothing anywhere
        refused = [e["fields"] for e in analyst.register().entries("query") if e["fields"]["status"] == "refused"]
        assert [e["request"] for e in refused] == ["link", "query"]
        assert all("offers no linkage service" in e["reason"] for e in refused)

        horizontal = analyst.query(
            "SELECT outcome, COUNT(*) AS episodes FROM support_episodes GROUP BY outcome", project=PROJECT, epsilon=1.0
        )
        assert [r["outcome"] for r in horizontal.rows()] == ["housed", "not_housed", "lost_contact"]
        assert set(horizontal.privacy_loss) == {"charity_north", "charity_south"}
    finally:
        fed.stop()


def test_the_deprioritised_future_gives_a_persona_per_department_tables(workdir: Path) -> None:
    """`fedlink futures`' cell for the academic with no linkage service, on a federation in threads."""
    fed = start_federation(["dfe", "dwp", "nhs"], linkage_service=False, test_mode=False)
    try:
        academic = next(p for p in PERSONAS if p.key == "academic")
        deprioritised = next(f for f in FUTURES if not f.linkage_service)
        cell, results = run_cell(connect_analyst(fed.address, workdir), academic, deprioritised)
    finally:
        fed.stop()
    assert cell.outcome is Outcome.aggregates and cell.linked == () and not results and not cell.estimates
    assert cell.asked == 8 and cell.answered == 0 and len(cell.refusals) == 8
    assert {r.code for r in cell.refusals} == {"policy_refused"}
    assert all("offers no linkage service" in r.reason for r in cell.refusals)
    assert {e.query for e in cell.aggregates} == {q.title for q in academic.aggregates}
    fsm = {e.group: e for e in cell.aggregates if e.measure == "pupils"}
    assert set(fsm) == {"fsm 0", "fsm 1"}
    assert all(e.lower <= e.value <= e.upper for e in fsm.values() if e.value is not None and e.lower is not None)
    assert "3 per-department tables instead" in cell.summary()
