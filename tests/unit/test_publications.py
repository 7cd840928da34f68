"""Published outcomes at the coordinator: the checks (project, analyst, outputs released, summary), the
store and its register entry written together or not at all, re-publishing that supersedes, recovery of
a publication whose store commit failed; and the public page's section, hostile summaries escaped."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fedlink.coordinator.journal import QueryJournal
from fedlink.coordinator.projects import Project, ProjectRegistry
from fedlink.coordinator.publications import PublicationStore, publish
from fedlink.errors import AccessDenied, BadInput, Fault
from fedlink.governance import Register, export_register
from fedlink.plan.aggregate import Aggregate, AggregatePlan
from fedlink.protocol import rpc
from fedlink.protocol.publication import MAX_SUMMARY_CHARS, Publication, PublishRequest, check_summary
from fedlink.protocol.tasks import PrivacyLoss, QueryTask

from .test_register import stepping_clock
from .test_register_page_escaping import HOSTILE, Page

PROJECT = "homelessness"
ANALYST = "ana"
SQL = "SELECT outcome, COUNT(*) AS n FROM support_episodes GROUP BY outcome"


class Coordinator:
    """The coordinator's parts that publishing touches, real and on disk, without its servers."""

    def __init__(self, root: Path) -> None:
        self.projects = ProjectRegistry(
            projects=(
                Project(
                    id=PROJECT,
                    title="Homelessness outcomes",
                    purpose="p",
                    analysts=(ANALYST, "bo"),
                    datasets=("north.support_episodes", "south.support_episodes"),
                ),
                Project(id="other", title="Other", purpose="p", analysts=(ANALYST,), datasets=("north.x",)),
            )
        )
        self.journal = QueryJournal(root / "queries.sqlite")
        self.store = PublicationStore(root / "publications.sqlite")
        self.register = Register(
            root / "register.jsonl",
            "coordinator",
            clock=stepping_clock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC), timedelta(minutes=1)),
        )

    def query(self, query_id: str, state: str = "released", project: str = PROJECT, epsilon: float = 1.0) -> None:
        """A query through the journal's own steps to ``state`` ("suppressed": released as a refusal)."""
        plan = AggregatePlan(
            table="support_episodes",
            nodes=("north", "south"),
            aggregates=(Aggregate(func="count", label="n"),),
            sql=SQL,
        )
        task = QueryTask(
            query_id=query_id, plan=plan, analyst=ANALYST, project=project, loss=PrivacyLoss(epsilon=epsilon), pet="dp"
        )
        self.journal.begin(
            query_id,
            analyst=ANALYST,
            project=project,
            kind="horizontal",
            nodes=plan.nodes,
            task=task.model_dump_json(),
            extra=b"{}",
            recipient="",
        )
        if state == "failed":
            self.journal.fail(query_id, "a node stopped")
        if state in ("committing", "released", "suppressed"):
            self.journal.decide(query_id)
        if state == "released":
            self.journal.release(query_id, rpc.RESULT, b"sealed")
        if state == "suppressed":
            self.journal.release(query_id, rpc.ERROR, json.dumps({"message": "cohort too small"}).encode())

    def publish(
        self, summary: str, results: tuple[str, ...] = (), analyst: str = ANALYST, project: str = PROJECT
    ) -> Publication:
        request = PublishRequest(project=project, summary=summary, results=results)
        return publish(request, analyst, self.projects, self.journal, self.store, self.register)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    made = Coordinator(tmp_path)
    yield made
    made.store.close()
    made.journal.close()


def _published(coordinator: Coordinator) -> list[dict[str, object]]:
    return [e.fields for e in coordinator.register.entries() if e.kind == "publication"]


def test_a_publication_records_summary_outputs_and_their_loss(coordinator: Coordinator) -> None:
    coordinator.query("q1", epsilon=1.0)
    coordinator.query("q2", epsilon=0.5)
    pub = coordinator.publish("  Most people supported were housed.\n\nFew lost contact.  ", ("q2", "q1", "q2"))

    assert pub.summary == "Most people supported were housed.\n\nFew lost contact."
    assert pub.query_ids == ("q2", "q1")  # each once, in the order given
    first = pub.outputs[0]
    assert first.query == SQL and first.pet == "dp" and first.kind == "horizontal"
    assert first.datasets == ("north.support_episodes", "south.support_episodes")
    assert first.privacy_loss == {"north": PrivacyLoss(epsilon=0.5), "south": PrivacyLoss(epsilon=0.5)}
    # stored, and on the register exactly as stored, with nothing but the public record of each query
    assert coordinator.store.publications(PROJECT) == [pub]
    [entry] = _published(coordinator)
    assert Publication.model_validate(entry) == pub
    assert set(entry["outputs"][0]) == {"query_id", "kind", "query", "pet", "datasets", "privacy_loss"}  # type: ignore[index]
    assert "sealed" not in json.dumps(entry)


def test_without_results_every_released_output_of_the_project_is_named(coordinator: Coordinator) -> None:
    coordinator.query("q1")
    coordinator.query("q2", state="suppressed")
    coordinator.query("q3", state="failed")
    coordinator.query("q4", project="other")
    coordinator.query("q5")
    assert coordinator.publish("All of it.").query_ids == ("q1", "q5")


@pytest.mark.parametrize(
    ("state", "project", "message"),
    [
        ("missing", PROJECT, "no result q-x at this coordinator; check the id"),
        ("released", "other", "result q-x belongs to project 'other', not 'homelessness'; publish it there"),
        ("failed", PROJECT, "result q-x failed and released nothing"),
        ("running", PROJECT, "result q-x is not released yet (running)"),
        ("committing", PROJECT, "result q-x is not released yet (committing); collect it with `fedlink result get"),
        ("suppressed", PROJECT, "result q-x was withheld by disclosure control and released nothing"),
    ],
)
def test_an_output_that_is_not_a_released_result_of_the_project_is_refused(
    coordinator: Coordinator, state: str, project: str, message: str
) -> None:
    coordinator.query("q-ok")
    if state != "missing":
        coordinator.query("q-x", state=state, project=project)
    with pytest.raises(BadInput) as info:
        coordinator.publish("summary", ("q-ok", "q-x"))
    assert info.value.message.startswith(message) and "\n" not in info.value.message
    assert _published(coordinator) == [] and coordinator.store.publications() == []


def test_bad_requests_are_refused_and_nothing_is_written(coordinator: Coordinator) -> None:
    coordinator.query("q1")
    with pytest.raises(BadInput, match="unknown project 'nope'; registered projects: homelessness, other"):
        coordinator.publish("summary", ("q1",), project="nope")
    with pytest.raises(AccessDenied, match="analyst 'eve' is not registered on project 'homelessness'"):
        coordinator.publish("summary", ("q1",), analyst="eve")
    with pytest.raises(BadInput, match="the `summary` is empty"):
        coordinator.publish(" \n\t ", ("q1",))
    with pytest.raises(BadInput, match="project 'other' has no released outputs yet"):
        coordinator.publish("summary", project="other")
    assert _published(coordinator) == [] and coordinator.store.publications() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (3, "the `summary` must be text, not int"),
        ("", "the `summary` is empty"),
        ("x" * (MAX_SUMMARY_CHARS + 1), "the `summary` is 5,001 characters long, more than the limit of 5,000"),
        ("a\x1b[31mred", "the `summary` holds the control character U+001B; write plain text"),
        ("a\x00b", "the `summary` holds the control character U+0000"),
        ("half \ud800 a surrogate", "the `summary` holds the control character U+D800"),
    ],
)
def test_summaries_are_plain_text(text: object, message: str) -> None:
    with pytest.raises(BadInput) as info:
        check_summary(text)
    assert info.value.message.startswith(message)
    assert check_summary("Tabs\tand\nnew lines are fine. Ünïcödé too.") == "Tabs\tand\nnew lines are fine. Ünïcödé too."


def test_republishing_supersedes_publications_about_the_same_outputs_only(coordinator: Coordinator) -> None:
    for query_id in ("q1", "q2", "q3"):
        coordinator.query(query_id)
    first = coordinator.publish("first", ("q1", "q2"))
    beside = coordinator.publish("about q3 only", ("q3",))
    second = coordinator.publish("second, corrected", ("q2",))

    assert first.supersedes == () and beside.supersedes == () and second.supersedes == (first.publication_id,)
    assert [p.publication_id for p in coordinator.store.current(PROJECT)] == [
        beside.publication_id,
        second.publication_id,
    ]
    assert coordinator.store.superseded_by(first.publication_id) == second.publication_id
    assert len(coordinator.store.publications(PROJECT)) == 3 and len(_published(coordinator)) == 3  # nothing deleted
    third = coordinator.publish("everything", ())  # every output: supersedes both current ones
    assert set(third.supersedes) == {beside.publication_id, second.publication_id}
    assert [p.publication_id for p in coordinator.store.current(PROJECT)] == [third.publication_id]


def test_a_register_that_refuses_the_entry_leaves_nothing_stored(coordinator: Coordinator) -> None:
    coordinator.query("q1")
    coordinator.publish("first", ("q1",))
    # a register cut short (its head file no longer matches) refuses every append
    lines = coordinator.register.path.read_bytes().splitlines(keepends=True)
    coordinator.register.path.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(Fault, match="does not match its head file"):
        coordinator.publish("second", ("q1",))
    [kept] = coordinator.store.publications()
    assert kept.summary == "first" and coordinator.store.superseded_by(kept.publication_id) is None


def test_a_publication_on_the_register_but_not_in_the_store_is_recovered(coordinator: Coordinator) -> None:
    coordinator.query("q1")
    first = coordinator.publish("first", ("q1",))
    second = coordinator.publish("second", ("q1",))
    # as if the second's commit had failed after its register entry was written
    with sqlite3.connect(coordinator.store.path) as db:
        db.execute("DELETE FROM publication WHERE publication_id = ?", (second.publication_id,))
        db.execute("UPDATE publication SET superseded_by = NULL")
    restarted = PublicationStore(coordinator.store.path)
    try:
        assert restarted.recover(coordinator.register.entries()) == 1
        assert restarted.publications() == [first, second]
        assert restarted.superseded_by(first.publication_id) == second.publication_id
        assert restarted.recover(coordinator.register.entries()) == 0  # once only
    finally:
        restarted.close()


class Sections(HTMLParser):
    """The text of the page's published-outcomes section, and every tag in it."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.inside = 1 if dict(attrs).get("id") == "publications" else 0
        elif self.inside:
            self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text.append(data)


def _section(page: Path) -> Sections:
    parsed = Sections()
    parsed.feed(page.read_text("utf-8"))
    return parsed


def test_the_page_shows_each_publication_beside_its_outputs_and_loss(coordinator: Coordinator, tmp_path: Path) -> None:
    coordinator.query("q1", epsilon=1.0)
    coordinator.query("q2", epsilon=0.5)
    coordinator.register.append("project", coordinator.projects.get(PROJECT).model_dump(mode="json"))
    # the queries' own register entries, as the lifecycle writes them (q1 released in the clear)
    for query_id, released in (("q1", {"columns": ["outcome", "n"], "rows": [["housed", 40]]}), ("q2", None)):
        task = QueryTask.model_validate_json(coordinator.journal.get(query_id).task)  # type: ignore[union-attr]
        coordinator.register.append("query", task.register_fields(task.plan.nodes, "released", None, released))
    first = coordinator.publish("Most were housed.\n\nSee the table.", ("q1",))
    second = coordinator.publish("Corrected: most were housed.", ("q1", "q2"))
    page, _ = export_register([("coordinator", coordinator.register.path)], tmp_path / "public")

    section = _section(page)
    text = " ".join(" ".join(section.text).split())
    assert "Most were housed." in text and "See the table." in text and "Corrected: most were housed." in text
    assert text.index("Corrected") < text.index("See the table.")  # newest first
    assert text.count("Project homelessness (Homelessness outcomes): published 2026-01-05 09:0") == 2
    assert f"Superseded by {second.publication_id}" in text and f"Supersedes {first.publication_id}" in text
    assert SQL in text and "north.support_episodes, south.support_episodes" in text
    assert "north: ε 1, ρ 0" in text and "north: ε 0.5, ρ 0" in text
    # charged rho = epsilon^2 / 2 per output, summed: 0.5 + 0.125
    assert "charged in ρ (zCDP): north 0.625; south 0.625." in text
    links = [a.get("href") for tag, a in section.tags if tag == "a"]
    assert "#query-1" in links and "#output-1" in links and "#query-2" in links and "#output-2" not in links
    assert f"#publication-{second.publication_id}" in links and f"#publication-{first.publication_id}" in links
    assert "with the analyst only" in text  # q2's values were never released in the clear
    # the publications are not repeated among the other events
    assert page.read_text("utf-8").count("Corrected: most were housed.") == 1


def test_a_page_without_publications_says_so_and_a_bad_entry_is_flagged(tmp_path: Path) -> None:
    register = Register(tmp_path / "register.jsonl", "coordinator")
    register.append("startup", {"nodes": []})
    page, _ = export_register([("coordinator", register.path)], tmp_path / "empty")
    assert "No outcomes published yet." in " ".join(_section(page).text)
    register.append("publication", {"summary": "not a publication"})
    page, _ = export_register([("coordinator", register.path)], tmp_path / "bad")
    text = " ".join(" ".join(_section(page).text).split())
    assert "A publication entry that is not a valid publication (entry 2 of the register kept by coordinator)" in text
    assert "not a publication" not in text


def test_a_hostile_summary_and_names_are_text_on_the_page(coordinator: Coordinator, tmp_path: Path) -> None:
    coordinator.query("q1")
    hostile_project = Project(id=HOSTILE, title="t", purpose="p", analysts=(HOSTILE,), datasets=("n.t",))
    coordinator.projects = ProjectRegistry(projects=(*coordinator.projects.projects, hostile_project))
    coordinator.query("q-hostile", project=HOSTILE)
    coordinator.publish(f"{HOSTILE}\n\n{HOSTILE}", ("q-hostile",), analyst=HOSTILE, project=HOSTILE)
    page, _ = export_register([("coordinator", coordinator.register.path)], tmp_path / "public")

    html = page.read_text("utf-8")
    assert "<script" not in html
    section = _section(page)
    assert "script" not in {tag for tag, _ in section.tags}
    assert "".join(section.text).count(HOSTILE) == 4  # two paragraphs, the project and the analyst, as written
    parsed = Page()
    parsed.feed(html)
    assert "script" not in parsed.tags
