"""The project workflow's parts on their own: the coordinator's application store and its state
machine, a node's decisions and their conditions, the checklist and the register page's projects
section (user text escaped in both)."""

from __future__ import annotations

import tomllib
from datetime import date, timedelta
from pathlib import Path

import pytest

from fedlink.coordinator.applications import ApplicationStore
from fedlink.coordinator.projects import load_projects
from fedlink.errors import BadInput, PolicyRefused
from fedlink.governance.checklist import markdown_text, render_checklist
from fedlink.governance.export import export_register
from fedlink.node import approvals
from fedlink.node.config import Approval, NodeConfig
from fedlink.protocol.projects import NodeDecision, ProjectApplication, ProjectList, ProjectRecord
from fedlink.transparency.register import Register

from ..conftest import node_config

TODAY = date(2030, 1, 1)
HOSTILE = '<script>alert(1)</script> [x](javascript:alert(1)) "quoted" # not a heading\nnew line ’'
GATEWAY = "UK GDPR Article 6(1)(a): consent of the people supported"


def application(project: str = "p1", **changes: object) -> ProjectApplication:
    fields: dict[str, object] = {
        "id": project,
        "title": HOSTILE,
        "purposes": ["first purpose", HOSTILE],
        "public_benefit": HOSTILE,
        "datasets": [
            {"dataset": "charity_north.support_episodes", "legal_gateway": GATEWAY},
            {"dataset": "charity_south.support_episodes", "legal_gateway": GATEWAY},
        ],
        "identifiers": ["first_name", "dob"],
        "outputs": ["counts by region"],
        "end_date": TODAY + timedelta(days=10),
        "rho": 2.0,
    }
    return ProjectApplication.model_validate({**fields, **changes})


def store(tmp_path: Path, today: date = TODAY) -> ApplicationStore:
    register = Register(tmp_path / "register.jsonl", "coordinator")
    return ApplicationStore(tmp_path / "applications.toml", register, lambda: today)


def approved(node: str, **conditions: object) -> NodeDecision:
    return NodeDecision.model_validate({"node": node, "decision": "approved", "decided_at": "now", **conditions})


def kinds(s: ApplicationStore) -> list[str]:
    assert s.register is not None
    return [e.kind for e in s.register.entries()]


def test_an_application_is_active_only_once_every_node_has_approved(tmp_path: Path) -> None:
    s = store(tmp_path)
    checked: list[str] = []
    record = s.apply(application(), "ana", {}, {"charity_north", "charity_south"}, lambda r: checked.append(r.id))
    assert checked == ["p1"] and record.state == "pending" and record.application.analysts == ("ana",)
    assert s.decided("p1", {"charity_north": approved("charity_north", min_cohort=50)}).state == "pending"
    active, closed = s.projects()
    assert active == () and "awaits the approval of node(s) charity_south" in closed["p1"]
    assert s.decided("p1", {"charity_south": approved("charity_south")}).state == "active"
    active, closed = s.projects()
    assert [p.id for p in active] == ["p1"] and closed == {}
    assert active[0].purpose == f"first purpose; {HOSTILE}" and active[0].end_date == TODAY + timedelta(days=10)
    assert kinds(s) == ["project_applied", "project_decision", "project_decision", "project_activated"]
    # the store reads back exactly, whatever the text holds, and says it is machine-written
    text = (tmp_path / "applications.toml").read_text(encoding="utf-8")
    assert text.startswith("# Written by fedlink")
    assert ProjectList.model_validate(tomllib.loads(text)).projects[0].application.title == HOSTILE


def test_a_rejection_is_final_and_the_registry_refuses_it(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.apply(application(), "ana", {}, {"charity_north", "charity_south"}, lambda r: None)
    rejected = NodeDecision(node="charity_south", decision="rejected", reason="no ethics approval")
    record = s.decided("p1", {"charity_north": approved("charity_north"), "charity_south": rejected})
    assert record.state == "rejected" and record.reason == "rejected by node 'charity_south' (no ethics approval)"
    assert s.decided("p1", {"charity_south": approved("charity_south")}).state == "rejected"
    projects = tmp_path / "projects.toml"
    projects.write_text("", encoding="utf-8")
    registry = load_projects(projects, tmp_path / "applications.toml")
    with pytest.raises(PolicyRefused, match="'p1' is rejected: rejected by node 'charity_south'"):
        registry.get("p1")
    assert kinds(s)[-1] == "project_rejected"


def test_retirement_at_the_end_date_is_recorded_once(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.apply(application(), "ana", {}, {"charity_north", "charity_south"}, lambda r: None)
    assert s.retire_due() == []
    later = store(tmp_path, TODAY + timedelta(days=11))
    assert [r.id for r in later.retire_due()] == ["p1"] and later.retire_due() == []
    assert later.get("p1").state == "retired"  # type: ignore[union-attr]
    assert kinds(later).count("project_retired") == 1


@pytest.mark.parametrize(
    ("changes", "nodes", "message"),
    [
        ({}, {"charity_north"}, "no node charity_south in this federation"),
        ({"identifiers": ["shoe_size"]}, {"charity_north", "charity_south"}, "`identifiers`"),
        ({"end_date": TODAY - timedelta(days=1)}, {"charity_north", "charity_south"}, "`end_date` 2029-12-31"),
        ({"spine_of": "nowhere"}, {"charity_north", "charity_south"}, "`spine_of` names project 'nowhere'"),
    ],
)
def test_bad_applications_are_refused_and_nothing_is_stored(
    tmp_path: Path, changes: dict[str, object], nodes: set[str], message: str
) -> None:
    s = store(tmp_path)
    with pytest.raises(BadInput, match=message):
        s.apply(application(**changes), "ana", {}, nodes, lambda r: None)
    assert s.records() == [] and kinds(s) == []


def test_an_application_checks_its_own_fields() -> None:
    with pytest.raises(ValueError, match=r"node\.table"):
        application(datasets=[{"dataset": "support_episodes", "legal_gateway": GATEWAY}])
    with pytest.raises(ValueError, match="named twice"):
        application(datasets=[{"dataset": "a.b", "legal_gateway": "x"}, {"dataset": "a.b", "legal_gateway": "y"}])
    with pytest.raises(ValueError, match="its own link spine"):
        application(spine_of="p1")


def told(config: NodeConfig, record: ProjectRecord) -> None:
    approvals.sync(config, ProjectList(projects=(record,)))


def pending_record(**changes: object) -> ProjectRecord:
    return ProjectRecord(
        application=application(**changes),
        applicant="ana",
        applied_at="t",
        changed_at="t",
        approvers=("charity_north", "charity_south"),
    )


def test_a_node_decides_once_with_conditions_it_may_set(tmp_path: Path) -> None:
    config = node_config("charity_north", "127.0.0.1:1", tmp_path)
    with pytest.raises(BadInput, match="holds no application 'p1'"):
        approvals.decide(config, "p1", True)
    told(config, pending_record())
    assert [r.id for r, _ in approvals.pending(config)] == ["p1"]
    with pytest.raises(BadInput, match="`tables` names pupils"):
        approvals.decide(config, "p1", True, tables=("pupils",))
    with pytest.raises(BadInput, match="`identifiers` names postcode"):
        approvals.decide(config, "p1", True, identifiers=("postcode",))
    with pytest.raises(BadInput, match=r"`rho` must be between 0 and the 2\.0"):
        approvals.decide(config, "p1", True, rho=3.0)
    assert not config.approvals_path().exists()  # nothing written by a refused decision
    approvals.decide(config, "p1", True, rho=1.0, min_cohort=40, identifiers=("dob",))
    approval = config.approval("p1")
    assert approval == Approval(
        project="p1", rho=1.0, tables=("support_episodes",), linkage_concepts=("dob",), min_cohort=40
    )
    assert approvals.pending(config) == []
    with pytest.raises(BadInput, match="already approved at node 'charity_north'"):
        approvals.decide(config, "p1", False)
    entry = Register(config.register_path(), "charity_north").entries()[-1]
    assert entry.kind == "project_approved" and entry.fields["min_cohort"] == 40 and "rho" not in entry.fields
    decision = approvals.decision_of(config, pending_record())
    assert decision.decision == "approved" and decision.identifiers == ("dob",)
    assert decision.contacts is not None and decision.contacts.inbox == "data-requests@charity-north.example"
    assert decision.gateways == {"support_episodes": (GATEWAY,)}


def test_an_approval_written_by_hand_keeps_working_and_wins(tmp_path: Path) -> None:
    config = node_config("charity_north", "127.0.0.1:1", tmp_path)
    by_hand = config.model_copy(update={"approvals": (Approval(project="p1", rho=5.0),)})
    told(by_hand, pending_record())
    assert approvals.decision_of(by_hand, pending_record()).decided_at == "node.toml"
    with pytest.raises(BadInput, match=r"already approved at node 'charity_north' in node\.toml"):
        approvals.decide(by_hand, "p1", False)
    assert [a.project for a in by_hand.all_approvals()] == ["p1"]


def test_a_claimed_gateway_must_be_one_the_dataset_declares(tmp_path: Path) -> None:
    config = node_config("charity_north", "127.0.0.1:1", tmp_path)
    approvals.check_claims(config, application())
    bad = application(datasets=[{"dataset": "charity_north.support_episodes", "legal_gateway": "Made up Act"}])
    with pytest.raises(BadInput, match="declares no legal gateway 'Made up Act'"):
        approvals.check_claims(config, bad)
    missing = application(datasets=[{"dataset": "charity_north.nothing", "legal_gateway": GATEWAY}])
    with pytest.raises(BadInput, match="has no table 'nothing'"):
        approvals.check_claims(config, missing)


def test_the_checklist_escapes_user_text_in_both_formats(tmp_path: Path) -> None:
    config = node_config("charity_north", "127.0.0.1:1", tmp_path)
    record = pending_record().model_copy(update={"decisions": (approvals.decision_of(config, pending_record()),)})
    markdown = render_checklist(record, "md")
    assert "<script>" not in markdown and "](javascript" not in markdown
    assert markdown_text(HOSTILE) in markdown and "\\[x\\]\\(javascript:alert\\(1\\)\\)" in markdown
    assert "| [ ] | information asset owner |" in markdown and "not reported yet" in markdown
    page = render_checklist(record, "html")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "iao@charity-north.example" in page and GATEWAY in page
    with pytest.raises(BadInput, match="use md or html"):
        render_checklist(record, "pdf")


def test_the_register_page_shows_each_step_escaped(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.apply(application(), "ana", {}, {"charity_north", "charity_south"}, lambda r: None)
    s.decided("p1", {"charity_north": approved("charity_north"), "charity_south": approved("charity_south")})
    html_path, _ = export_register([("coordinator", tmp_path / "register.jsonl")], tmp_path / "public")
    page = html_path.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'id="project-p1"' in page and "(active)" in page
    for step in ("applied", "decision reported", "activated"):
        assert f"<td>{step}</td>" in page
    assert GATEWAY in page


def test_the_node_commands_review_and_decide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fedlink.cli.main import app
    from fedlink.node.config import load_node_config

    from ..conftest import ROOT

    monkeypatch.setenv("FEDLINK_STATE", str(tmp_path))  # the demo node.toml keeps its state there
    monkeypatch.setenv("COLUMNS", "250")
    path = ROOT / "nodes" / "charity_north" / "node.toml"
    config = load_node_config(path)
    assert config.approvals_path() == tmp_path / "charity_north" / "approvals.toml"
    told(config, pending_record())
    runner = CliRunner()
    review = runner.invoke(app, ["project", "review", "--config", str(path)])
    assert review.exit_code == 0 and "p1: <script>" in review.output and "pending" in review.output
    approve = runner.invoke(app, ["project", "approve", "p1", "--config", str(path), "--min-cohort", "40"])
    assert approve.exit_code == 0, approve.output
    assert load_node_config(path).approval("p1") == Approval(
        project="p1", rho=2.0, tables=("support_episodes",), linkage_concepts=("first_name", "dob"), min_cohort=40
    )
    again = runner.invoke(app, ["project", "reject", "p1", "--config", str(path)])
    assert again.exit_code == 2 and "error: project 'p1' was already approved at node 'charity_north'" in again.output
    assert "nothing awaits" in runner.invoke(app, ["project", "review", "--config", str(path)]).output
