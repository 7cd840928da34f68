"""A real federation's registers verified together: after normal use they agree query by query; refused
requests are on the coordinator's register without values; comments (which can hold names) reach no
register and not the public page; a node register edited and re-chained whole, or deleted, is caught."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedlink.errors import BadInput, BudgetExhausted, PolicyRefused, QueryError
from fedlink.governance import Register, export_register
from fedlink.governance.federation import verify_federation
from fedlink.transparency.register import head_path

from ..conftest import NODES, InProcessFederation, connect_analyst, start_federation
from ..unit.test_register_federation import rewrite_whole

pytestmark = pytest.mark.usefixtures("workdir")
CHARITIES = ["charity_north", "charity_south"]
PROJECT = "homelessness-outcomes"
NAME = "Aisha Khan"
COMMENTED = f"SELECT region, COUNT(*) AS n -- asked for {NAME}\nFROM support_episodes /* {NAME} */ GROUP BY region"


@pytest.fixture(scope="module")
def used(workdir: Path) -> Iterator[tuple[InProcessFederation, dict[str, str]]]:
    """A federation of the two charities after a released query with comments, an identifier probe, two
    requests for projects that may not read the table, a query the nodes refuse (over budget), a model
    with a name in its formula and a link request for an unknown project."""
    fed = start_federation(CHARITIES)
    try:
        client = connect_analyst(fed.address, workdir)
        ids = {"released": client.query(COMMENTED, project=PROJECT, epsilon=1.0, pet="dp").raw.query_id}
        probe = f"SELECT COUNT(*) FROM support_episodes WHERE last_name = '{NAME}' /* {NAME} */"
        with pytest.raises(QueryError, match="identifier"):
            client.query(probe, project=PROJECT, epsilon=1.0, pet="dp")
        with pytest.raises(PolicyRefused, match="not registered for dataset"):
            client.query(COMMENTED, project="justice-attainment", epsilon=1.0, pet="dp")
        with pytest.raises(BadInput, match="unknown project"):
            client.query(COMMENTED, project="no-such-project", epsilon=1.0, pet="dp")
        with pytest.raises(BudgetExhausted):
            client.query(COMMENTED, project=PROJECT, epsilon=50.0, pet="dp")
        with pytest.raises(QueryError, match="not a declared category"):  # quoting the name back to the analyst
            client.fit(f"outcome = '{NAME}' ~ last_name", table="support_episodes", project=PROJECT, rho=0.5)
        with pytest.raises(BadInput, match="unknown project"):
            client.link("no-such-project")
    finally:
        fed.stop()
    yield fed, ids


def registers(fed: InProcessFederation) -> list[tuple[str, Path]]:
    return [(p.parent.name, p) for p in sorted(fed.state.glob("*/register.jsonl"))]


def test_registers_of_a_normal_run_agree(used: tuple[InProcessFederation, dict[str, str]]) -> None:
    fed, _ = used
    report = verify_federation(registers(fed))
    assert report.ok, (report.missing, report.crosscheck.disagreements, [p.problems for p in report.broken])
    check = report.crosscheck
    assert (check.released, check.refused_by_coordinator, check.refused_by_nodes, check.failed) == (1, 5, 1, 0)
    # the coordinator registers seven nodes; the five that never joined are expected to have no register
    never = sorted(set(NODES) - set(CHARITIES))
    assert [n.split(":")[0] for n in report.notes[1:]] == never


def test_refusals_are_on_the_coordinator_register_without_values(
    used: tuple[InProcessFederation, dict[str, str]],
) -> None:
    fed, _ = used
    entries = Register(fed.state / "coordinator" / "register.jsonl", "coordinator").entries()
    refused = [e.fields for e in entries if e.kind == "query" and e.fields["status"] == "refused"]
    by_project = {(f["project"], f["reason"].split(";")[0]): f for f in refused}
    probe = by_project[(PROJECT, "column 'last_name' is an identifier and can never be queried")]
    assert probe["query"] == "SELECT COUNT(*) FROM support_episodes WHERE last_name = ?"
    assert probe["analyst"] == "demo-analyst" and probe["privacy_loss"] == {} and probe["released"] is None
    unapproved = by_project[
        (
            "justice-attainment",
            "project 'justice-attainment' is not registered for dataset charity_north.support_episodes, "
            "charity_south.support_episodes",
        )
    ]
    assert unapproved["query"] == "SELECT region, COUNT(*) AS n FROM support_episodes GROUP BY region"
    assert ("no-such-project", "unknown project 'no-such-project'") in by_project
    over_budget = [f for f in refused if f["privacy_loss"]]  # refused by the nodes at reserve: recorded once
    assert len(over_budget) == 1 and set(over_budget[0]["privacy_loss"]) == set(CHARITIES)
    model = next(f for f in refused if f.get("request") == "model")
    assert model["query"] == "MODEL logistic outcome = ? ~ last_name ON support_episodes"
    assert model["reason"] == "'?' is not a declared category of 'outcome'; see `fedlink catalog`"
    link = next(f for f in refused if f.get("request") == "link")
    assert (link["project"], link["query"], link["reason"].split(";")[0]) == (
        "no-such-project",
        None,
        "unknown project 'no-such-project'",
    )


def test_comments_reach_no_register_and_not_the_public_page(
    used: tuple[InProcessFederation, dict[str, str]], tmp_path: Path
) -> None:
    fed, ids = used
    for _, path in registers(fed):
        text = path.read_text()
        assert NAME not in text and "Khan" not in text, path
    released = [
        e.fields
        for _, path in registers(fed)
        for e in Register(path, path.parent.name).entries()
        if e.kind == "query" and e.fields["query_id"] == ids["released"]
    ]
    assert len(released) == 3  # the coordinator and both nodes
    assert {f["query"] for f in released} == {"SELECT region, COUNT(*) AS n FROM support_episodes GROUP BY region"}
    page, document = export_register(registers(fed), tmp_path / "public")
    assert "Khan" not in page.read_text() and "Khan" not in document.read_text()


def test_a_node_entry_edited_and_rechained_is_caught(
    used: tuple[InProcessFederation, dict[str, str]], tmp_path: Path
) -> None:
    fed, ids = used
    state = tmp_path / "state"
    for party, path in registers(fed):
        (state / party).mkdir(parents=True)
        (state / party / path.name).write_bytes(path.read_bytes())
        head_path(state / party / path.name).write_bytes(head_path(path).read_bytes())
    node = state / "charity_south" / "register.jsonl"
    entry = next(e for e in Register(node, "charity_south").entries() if e.fields.get("query_id") == ids["released"])
    rewrite_whole(node, {entry.seq: {"status": "failed", "reason": "never ran"}})
    report = verify_federation([(p.parent.name, p) for p in sorted(state.glob("*/register.jsonl"))])
    assert report.broken == ()
    assert report.crosscheck.disagreements == (
        f"query {ids['released']}: coordinator released, charity_north released, charity_south failed: the "
        "coordinator released it but charity_south did not commit",
    )

    node.unlink()
    head_path(node).unlink()
    report = verify_federation([(p.parent.name, p) for p in sorted(state.glob("*/register.jsonl"))])
    assert [m.split(":")[0] for m in report.missing] == ["charity_south"]
    assert "joining at seq" in report.missing[0] and report.crosscheck.disagreements == ()


def test_export_json_carries_the_heads_verify_checks(
    used: tuple[InProcessFederation, dict[str, str]], tmp_path: Path
) -> None:
    fed, _ = used
    _, document = export_register(registers(fed), tmp_path / "public")
    heads = {r["party"]: r["head"] for r in json.loads(document.read_text())["registers"]}
    assert set(heads) == {"coordinator", *CHARITIES}
    assert verify_federation(registers(fed), published=document).ok
    with pytest.raises(BadInput, match="is not JSON"):
        verify_federation(registers(fed), published=fed.state / "coordinator" / "register.jsonl")
