"""Outcomes published, end to end in one process: released query results of a real federation, a
summary published for them from the Python API and from `fedlink project publish`, the coordinator's
register holding it, and the exported public page showing the summary beside the outputs and the
privacy loss that produced them (in headless Chromium where it is installed). Bad input changes
nothing. The publish calls cross the wire with no identifier in them (the wire audit)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedlink
from fedlink import pki
from fedlink.cli.main import app
from fedlink.governance import export_register
from fedlink.governance.federation import verify_federation
from fedlink.protocol import audit
from fedlink.transparency.register import find_registers

from ..conftest import (
    ANALYST,
    InProcessFederation,
    connect_analyst,
    find_leaks,
    identifier_values,
    start_federation,
    without_sealed_results,
)
from .test_register_page import render

PROJECT = "homelessness-outcomes"
COUNTS = "SELECT outcome, COUNT(*) AS n FROM support_episodes GROUP BY outcome"
DAYS = "SELECT region, AVG(duration_days) AS days FROM support_episodes GROUP BY region"
SUMMARY = "About half of the people the charities supported were housed <b>by the end</b> & few lost contact."


@pytest.fixture(scope="module")
def federation(workdir: Path) -> Iterator[InProcessFederation]:
    fed = start_federation(["charity_north", "charity_south"])
    yield fed
    fed.stop()


def _flags(fed: InProcessFederation, workdir: Path) -> list[str]:
    folder = workdir / "pki"
    return [
        "--coordinator", fed.address,
        "--cert", str(folder / f"analyst-{ANALYST}.crt"),
        "--key", str(folder / f"analyst-{ANALYST}.key"),
        "--ca", str(folder / "ca.crt"),
    ]  # fmt: skip


def _publications(fed: InProcessFederation) -> list[dict[str, object]]:
    return [e.fields for e in fed.coordinator.register.entries() if e.kind == "publication"]


class Text(HTMLParser):
    """The text of a document's published-outcomes section."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.parts: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.inside = dict(attrs).get("id") == "publications"
        elif self.inside:
            self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


def test_released_outputs_are_published_on_the_register_and_the_page(
    federation: InProcessFederation, workdir: Path, tmp_path: Path
) -> None:
    identifiers = identifier_values(workdir)
    summary_file = tmp_path / "summary.txt"
    summary_file.write_text("Corrected: most were housed.\n\nStays averaged a few months.", encoding="utf-8")
    with audit.recording() as captured:
        fed = connect_analyst(federation.address, workdir)
        counts = fed.query(COUNTS, project=PROJECT, epsilon=1.0, pet="dp")  # released in the clear: on the register
        days = fed.query(DAYS, project=PROJECT, rho=0.25)  # he+dp: only the analyst holds its values
        first = fed.publish(SUMMARY, project=PROJECT, results=[counts])
        outputs = ["--result", counts.query_id, "--result", days.query_id, "--format", "json"]
        command = ["project", "publish", PROJECT, "--summary-file", str(summary_file), *outputs]
        cli = CliRunner().invoke(app, [*command, *_flags(federation, workdir)])
    assert cli.exit_code == 0, cli.output
    second = fedlink.Publication.model_validate_json(cli.stdout)
    assert second.supersedes == (first.publication_id,)  # it names the same counts: the newer summary stands
    assert second.summary == "Corrected: most were housed.\n\nStays averaged a few months."

    # the coordinator's register holds both, exactly as returned, with each output's public record only
    assert [fedlink.Publication.model_validate(f) for f in _publications(federation)] == [first, second]
    by_id = {o.query_id: o for o in second.outputs}
    assert by_id[counts.query_id].query == COUNTS and by_id[counts.query_id].pet == "dp"
    assert by_id[days.query_id].pet == "he+dp" and by_id[days.query_id].kind == "horizontal"
    assert by_id[counts.query_id].datasets == ("charity_north.support_episodes", "charity_south.support_episodes")
    assert {n: (loss.epsilon, loss.rho) for n, loss in by_id[days.query_id].privacy_loss.items()} == {
        "charity_north": (0.0, 0.25),
        "charity_south": (0.0, 0.25),
    }
    assert counts.privacy_loss == {n: {"epsilon": 1.0, "rho": 0.0} for n in ("charity_north", "charity_south")}
    assert fed.register().verified

    # nothing of the departments' people crossed the wire, the publish calls included
    messages = without_sealed_results([data for _, data in captured])
    assert any(b"Corrected: most were housed." in m for m in messages)  # the audit saw the publish call
    assert find_leaks(messages, identifiers) == []

    # the registers still verify as one federation's, and the public page shows each summary beside its
    # outputs and the loss that produced them
    assert verify_federation(find_registers([federation.state])).ok
    page, _ = export_register(find_registers([federation.state]), tmp_path / "public")
    html = page.read_text("utf-8")
    section = Text()
    section.feed(html)
    text = section.text
    assert "About half of the people the charities supported were housed <b>by the end</b> & few lost contact." in text
    assert "b" not in section.tags[section.tags.index("blockquote") :]  # the analyst's tags stay text
    assert "Corrected: most were housed." in text and "Stays averaged a few months." in text
    assert text.index("Corrected") < text.index("About half")  # newest first
    assert f"Superseded by {second.publication_id}" in text
    assert COUNTS in text and DAYS in text
    assert "charity_north: ε 1, ρ 0" in text and "charity_north: ε 0, ρ 0.25" in text
    assert "charged in ρ (zCDP): charity_north 0.75; charity_south 0.75." in text  # 1²/2 + 0.25 at each node
    assert "released output" in text and "with the analyst only" in text  # dp values on the page, he+dp not

    if shutil.which("chromium") or shutil.which("/usr/bin/chromium"):  # as the public's browser shows it
        dom = Text()
        dom.feed(render(page, tmp_path / "profile", "--dump-dom").stdout)
        assert "Corrected: most were housed." in dom.text and "<b>by the end</b>" in dom.text
        assert "charged in ρ (zCDP): charity_north 0.75; charity_south 0.75." in dom.text


def test_bad_publications_are_one_line_errors_and_write_nothing(
    federation: InProcessFederation, workdir: Path, tmp_path: Path
) -> None:
    fed = connect_analyst(federation.address, workdir)
    released = fed.query(COUNTS, project=PROJECT, epsilon=0.5, pet="dp")
    before = len(federation.coordinator.register.entries())
    runner = CliRunner()
    cases = [
        (
            ["no-such-project", "--summary", "x", "--result", released.query_id],
            "error: unknown project 'no-such-project'",
        ),
        ([PROJECT, "--summary", "   "], "error: the --summary is empty; say in plain language what the outputs show"),
        ([PROJECT, "--summary", "x", "--result", "f" * 32], "error: no result ffffffff at this coordinator"),
        ([PROJECT], "error: give the summary as --summary TEXT or --summary-file FILE"),
        ([PROJECT, "--summary-file", str(tmp_path / "missing.txt")], "error: cannot read the summary file"),
        ([PROJECT, "--summary", "x", "--result", "y" * 65], "error: invalid --result (String should have at most 64"),
    ]
    for arguments, message in cases:
        outcome = runner.invoke(app, ["project", "publish", *arguments, *_flags(federation, workdir)])
        assert outcome.exit_code == 2, (arguments, outcome.output)
        assert outcome.stderr.startswith(message) and outcome.stderr.count("\n") == 1, outcome.stderr
    pki.issue(workdir / "pki", "analyst", "dora")  # a federation's analyst, but not on this project
    with pytest.raises(
        fedlink.AccessDenied, match="analyst 'dora' is not registered on project 'homelessness-outcomes'"
    ):
        connect_analyst(federation.address, workdir, name="dora").publish("x", project=PROJECT)
    assert len(federation.coordinator.register.entries()) == before  # nothing recorded, nothing stored
    assert not any(released.query_id in str(p["outputs"]) and p["summary"] == "x" for p in _publications(federation))
