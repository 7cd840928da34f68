"""Safe projects as a workflow over a real in-process federation: an analyst applies, each node's
operator reviews and decides, the coordinator activates a project only when every node it needs has
approved, refuses a rejected or retired one, and every step is on the registers; a node's minimum
cohort is enforced on its answers to every kind of query (aggregate, linked, model); a link spine
serves another project only with its nodes' consent."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fedlink.errors import BadInput, PolicyRefused
from fedlink.governance.checklist import render_checklist
from fedlink.node import approvals
from fedlink.node.config import Approval

from ..conftest import ROOT, InProcessFederation, connect_analyst, node_config, start_federation

pytestmark = pytest.mark.usefixtures("workdir")
NODES = ["charity_north", "charity_south"]
GATEWAY = "UK GDPR Article 6(1)(a): consent of the people supported"
#: The charities' clients are not each other's: a linked query links them with DWP's claims.
CLAIMS = {"dwp.claims": "Digital Economy Act 2017, Part 5, Chapter 5 (research)"}
SQL = "SELECT COUNT(*) AS n FROM support_episodes"
#: A project written by hand in projects.toml that reuses the spine of the applied-for project 'spine-a'.
BY_HAND = """
[[projects]]
id = "reuse-by-hand"
title = "Reuse by hand"
purpose = "Checks that a node refuses spine reuse it did not approve"
analysts = ["demo-analyst"]
datasets = ["charity_north.support_episodes", "charity_south.support_episodes"]
rho = 5.0
spine_of = "spine-a"
"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("projects")
    projects = folder / "projects.toml"
    shutil.copy(ROOT / "coordinator" / "projects.toml", projects)
    with projects.open("a", encoding="utf-8") as handle:
        handle.write(BY_HAND)
    federation = start_federation([*NODES, "dwp"], projects=projects)
    yield federation
    federation.stop()


def apply(fed: InProcessFederation, workdir: Path, project: str, **changes: object):
    fields: dict[str, object] = {
        "title": f"Outcomes {project}",
        "purposes": ["What happens after support?", "Which support works best?"],
        "public_benefit": "Better support for people who are homeless",
        "datasets": {f"{n}.support_episodes": GATEWAY for n in NODES},
        "identifiers": ["first_name", "last_name", "dob"],
        "outputs": ["Counts of support episodes by region"],
        "end_date": date.today() + timedelta(days=30),
        "rho": 5.0,
    }
    return connect_analyst(fed.address, workdir).apply(project, **{**fields, **changes})


def decide(fed: InProcessFederation, node: str, project: str, approve: bool = True, **conditions: object):
    return approvals.decide(node_config(node, fed.address, fed.state), project, approve, **conditions)


def rows(fed: InProcessFederation, node: str) -> int:
    """The node's support episodes, counted in its own file (the exact answer a test-mode query gives)."""
    config = node_config(node, fed.address, fed.state)
    table = next(t for t in config.tables if t.name == "support_episodes")
    return int(
        duckdb.connect().execute(f"SELECT COUNT(*) FROM read_parquet('{config.table_path(table)}')").fetchall()[0][0]
    )


def kinds(fed: InProcessFederation, party: str, project: str) -> list[str]:
    if party == "coordinator":
        entries = fed.coordinator.register.entries()
    else:
        from fedlink.transparency.register import Register

        entries = Register(fed.state / party / "register.jsonl", party).entries()
    return [e.kind for e in entries if e.fields.get("project") == project and e.kind.startswith(("project_", "spine"))]


def test_apply_review_approve_activates_and_queries_work(fed: InProcessFederation, workdir: Path) -> None:
    analyst = connect_analyst(fed.address, workdir)
    with pytest.raises(BadInput, match=r"declares no legal gateway 'Made up Act'.*consent of the people supported"):
        apply(fed, workdir, "bad-gateway", datasets={"charity_north.support_episodes": "Made up Act"})
    assert all(r.id != "bad-gateway" for r in analyst.projects())

    record = apply(fed, workdir, "outcomes-a")
    assert record.state == "pending" and record.approvers == tuple(NODES)
    assert record.application.analysts == ("demo-analyst",)
    pending = approvals.pending(node_config("charity_north", fed.address, fed.state))
    assert [(r.id, d.decision) for r, d in pending] == [("outcomes-a", "pending")]
    with pytest.raises(PolicyRefused, match=r"not active yet.*charity_north, charity_south"):
        analyst.query(SQL, project="outcomes-a", epsilon=1.0, pet="dp")

    decide(fed, "charity_north", "outcomes-a")
    assert analyst.project_status("outcomes-a").state == "pending"
    assert analyst.project_status("outcomes-a").outstanding() == ["charity_south"]
    with pytest.raises(BadInput, match="already approved"):
        decide(fed, "charity_north", "outcomes-a")
    decide(fed, "charity_south", "outcomes-a")
    assert analyst.project_status("outcomes-a").state == "active"

    res = analyst.query(SQL, project="outcomes-a", noiseless=True, pet="dp")
    assert res.raw.rows[0].cells[0].value == sum(rows(fed, n) for n in NODES)
    assert kinds(fed, "coordinator", "outcomes-a") == [
        "project_applied",
        "project_decision",
        "project_decision",
        "project_activated",
    ]
    assert kinds(fed, "charity_north", "outcomes-a") == ["project_approved"]


def test_a_rejection_is_recorded_and_never_activates(fed: InProcessFederation, workdir: Path) -> None:
    analyst = connect_analyst(fed.address, workdir)
    apply(fed, workdir, "outcomes-b")
    decide(fed, "charity_north", "outcomes-b")
    decide(fed, "charity_south", "outcomes-b", False, reason="no ethics approval yet")
    record = analyst.project_status("outcomes-b")
    assert record.state == "rejected" and "charity_south" in record.reason and "no ethics approval" in record.reason
    with pytest.raises(PolicyRefused, match="outcomes-b' is rejected"):
        analyst.query(SQL, project="outcomes-b", epsilon=1.0, pet="dp")
    assert kinds(fed, "charity_south", "outcomes-b") == ["project_rejected"]
    assert kinds(fed, "coordinator", "outcomes-b")[-1] == "project_rejected"


def test_a_nodes_minimum_cohort_is_enforced(fed: InProcessFederation, workdir: Path) -> None:
    analyst = connect_analyst(fed.address, workdir)
    apply(fed, workdir, "outcomes-c")
    decide(fed, "charity_north", "outcomes-c", min_cohort=1_000_000)
    decide(fed, "charity_south", "outcomes-c")
    record = analyst.project_status("outcomes-c")
    assert record.state == "active" and record.decision("charity_north").min_cohort == 1_000_000
    for pet in ("dp", "he+dp"):
        guarded = analyst.query(SQL, project="outcomes-c", epsilon=1.0, pet=pet).raw
        assert guarded.disclosure.min_cohort == 1_000_000
        assert all(c.value is None for row in guarded.rows for c in row.cells)
        assert any("below the minimum of 1000000" in note for note in guarded.notes)
    # the same query under a project without the condition shows its (noisy, non-zero) count
    plain = analyst.query(SQL, project="outcomes-a", epsilon=1.0, pet="dp").raw
    assert plain.disclosure.min_cohort == 10 and plain.rows[0].cells[0].value is not None
    assert plain.rows[0].cells[0].value > 20


def test_a_nodes_minimum_cohort_binds_linked_queries_and_models(fed: InProcessFederation, workdir: Path) -> None:
    analyst = connect_analyst(fed.address, workdir)
    datasets = {**{f"{n}.support_episodes": GATEWAY for n in NODES}, **CLAIMS}
    apply(fed, workdir, "cohort-base", datasets=datasets)
    for node in (*NODES, "dwp"):
        decide(fed, node, "cohort-base")
    analyst.link("cohort-base")
    # the same data over the same spine, under a project whose approval at one node (not the chain's
    # last, whose answer carries the cells) sets a high minimum cohort
    apply(fed, workdir, "cohort-guarded", datasets=datasets, spine_of="cohort-base", identifiers=[])
    for node in (*NODES, "dwp"):
        decide(fed, node, "cohort-guarded", **({"min_cohort": 1_000_000} if node == "charity_north" else {}))
    linked = "SELECT COUNT(*) AS n FROM support_episodes LINK dwp.claims"
    by_group = "SELECT dwp.claims.employment, COUNT(*) AS n FROM support_episodes LINK dwp.claims GROUP BY employment"

    for sql in (linked, by_group):
        guarded = analyst.query(sql, project="cohort-guarded", epsilon=1.0).raw
        assert guarded.disclosure.min_cohort == 1_000_000
        assert all(c.value is None and c.lower is None and c.upper is None for r in guarded.rows for c in r.cells)
        assert any("below the minimum of 1000000" in note for note in guarded.notes)
    plain = analyst.query(linked, project="cohort-base", epsilon=1.0).raw
    shown = plain.rows[0].cells[0].value
    assert plain.disclosure.min_cohort == 10 and shown is not None and shown >= 10 and shown % 5 == 0

    formula = "outcome = 'housed' ~ episode_type = 'rough_sleeping' + duration_days"
    with pytest.raises(BadInput, match=r"too few rows .* \(the nodes require 1000000 rows beyond them\)"):
        analyst.fit(formula, table="support_episodes", project="cohort-guarded", rho=0.5, iterations=2)
    refused = [e.fields for e in fed.coordinator.register.entries() if e.fields.get("project") == "cohort-guarded"]
    assert refused[-1]["status"] == "suppressed" and not refused[-1].get("released")
    fit = analyst.fit(formula, table="support_episodes", project="cohort-base", rho=0.5, iterations=2)
    assert len(fit.coefficients) == 3 and all(np.isfinite(fit.coefficients)) and fit.rows > 20


def test_a_project_is_retired_at_its_end_date(
    fed: InProcessFederation, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyst = connect_analyst(fed.address, workdir)
    with pytest.raises(BadInput, match="end_date"):
        apply(fed, workdir, "too-late", end_date=date.today() - timedelta(days=1))
    apply(fed, workdir, "outcomes-d", end_date=date.today() + timedelta(days=1))
    decide(fed, "charity_north", "outcomes-d")
    decide(fed, "charity_south", "outcomes-d")
    assert analyst.query(SQL, project="outcomes-d", noiseless=True, pet="dp").raw.rows[0].cells[0].value
    later = date.today() + timedelta(days=2)
    for module in ("fedlink.coordinator.projects", "fedlink.coordinator.applications", "fedlink.coordinator.server"):
        monkeypatch.setattr(f"{module}.today", lambda: later)
    with pytest.raises(PolicyRefused, match=r"outcomes-d' is retired: its end date .* has passed"):
        analyst.query(SQL, project="outcomes-d", noiseless=True, pet="dp")
    assert analyst.project_status("outcomes-d").state == "retired"
    assert kinds(fed, "coordinator", "outcomes-d")[-1] == "project_retired"


def test_the_checklist_names_contacts_gateways_and_approvals(fed: InProcessFederation, workdir: Path) -> None:
    analyst = connect_analyst(fed.address, workdir)
    markdown = render_checklist(analyst.project_status("outcomes-a"))
    assert "data\\-requests@charity\\-north\\.example" in markdown  # the inbox, escaped for Markdown
    assert "| \\[ \\] |" not in markdown and "| [ ] | data protection |" in markdown
    assert f"{GATEWAY[:6]}" in markdown and "first\\_name" in markdown and "approved" in markdown
    page = render_checklist(analyst.project_status("outcomes-a"), "html")
    assert page.count('<article id="node-') == 2 and "dpo@charity-north.example" in page
    record = analyst.project_status("outcomes-b")
    assert "no ethics approval yet" in render_checklist(record, "html")


def test_a_spine_serves_another_project_only_with_every_nodes_consent(fed: InProcessFederation, workdir: Path) -> None:
    analyst = connect_analyst(fed.address, workdir)
    linked = "SELECT COUNT(*) AS n FROM charity_north.support_episodes LINK charity_south.support_episodes"
    apply(fed, workdir, "spine-a")
    decide(fed, "charity_north", "spine-a")
    decide(fed, "charity_south", "spine-a")
    analyst.link("spine-a")
    apply(fed, workdir, "spine-b", spine_of="spine-a", identifiers=[])
    decide(fed, "charity_north", "spine-b")
    with pytest.raises(PolicyRefused, match="awaits the approval of node\\(s\\) charity_south"):
        analyst.query(linked, project="spine-b", noiseless=True)
    decide(fed, "charity_south", "spine-b")
    assert analyst.project_status("spine-b").state == "active"
    reused = analyst.query(linked, project="spine-b", noiseless=True).raw.rows[0].cells[0].value
    assert reused == analyst.query(linked, project="spine-a", noiseless=True).raw.rows[0].cells[0].value
    assert "spine_reuse" in kinds(fed, "coordinator", "spine-b")

    # a project written by hand in projects.toml asks for the same reuse: a node that approved the
    # project but not the reuse refuses; once it consents, the query runs over the spine
    for node, spine_of in (("charity_south", None), ("charity_south", "spine-a")):
        config = node_config(node, fed.address, fed.state)
        extra = Approval(project="reuse-by-hand", rho=5.0, spine_of=spine_of)
        fed.stop_node(node)
        fed.start_node(node, config=config.model_copy(update={"approvals": (*config.approvals, extra)}))
        if node == "charity_south" and spine_of is None:
            north = node_config("charity_north", fed.address, fed.state)
            fed.stop_node("charity_north")
            consent = Approval(project="reuse-by-hand", rho=5.0, spine_of="spine-a")
            fed.start_node("charity_north", config=north.model_copy(update={"approvals": (*north.approvals, consent)}))
            with pytest.raises(PolicyRefused, match=r"charity_south' refuses.*may not use the link spine of project"):
                analyst.query(linked, project="reuse-by-hand", noiseless=True)
    assert analyst.query(linked, project="reuse-by-hand", noiseless=True).raw.rows[0].cells[0].value == reused


def test_the_analyst_commands(fed: InProcessFederation, workdir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedlink.cli.main import app

    pki = workdir / "pki"
    connection = [
        "--coordinator", fed.address, "--cert", str(pki / "analyst-demo-analyst.crt"),
        "--key", str(pki / "analyst-demo-analyst.key"), "--ca", str(pki / "ca.crt"),
    ]  # fmt: skip
    runner = CliRunner()
    applied = runner.invoke(
        app,
        [
            "project", "apply", "--id", "by-cli", "--title", "By the CLI", "--purpose", "One", "--purpose", "Two",
            "--public-benefit", "Shown", "--dataset", f"charity_north.support_episodes={GATEWAY}",
            "--output", "Counts", "--end-date", (date.today() + timedelta(days=5)).isoformat(), "--json",
            *connection,
        ],
    )  # fmt: skip
    assert applied.exit_code == 0, applied.output
    assert '"state": "pending"' in applied.output and '"approvers": [\n    "charity_north"\n  ]' in applied.output
    bad = runner.invoke(app, ["project", "apply", "--id", "x", "--title", "t", "--purpose", "p", "--public-benefit",
                              "b", "--dataset", "charity_north.support_episodes", "--output", "o", "--end-date",
                              "2099-01-01", *connection])  # fmt: skip
    assert bad.exit_code == 2 and "must be NODE.TABLE=GATEWAY" in bad.output
    decide(fed, "charity_north", "by-cli")
    status = runner.invoke(app, ["project", "status", "by-cli", *connection])
    assert status.exit_code == 0 and "active" in status.output and "charity_north: approved" in status.output
    out = tmp_path / "checklist.md"
    done = runner.invoke(app, ["project", "checklist", "by-cli", "--out", str(out), *connection])
    assert done.exit_code == 0 and "Checklist for project by\\-cli" in out.read_text(encoding="utf-8")
