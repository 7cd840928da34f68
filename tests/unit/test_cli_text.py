"""The CLI shows text as written: no query, category, note, path or error message is read as markup."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import fedlink
from fedlink.cli import render
from fedlink.plan.aggregate import Aggregate, AggregatePlan, GroupKey
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.protocol.results import build_result
from fedlink.protocol.tasks import PrivacyLoss

# Each would be eaten, restyled or raise MarkupError if Rich read it as markup.
BRACKETED = ("[[nodes]]", "[tls]", "'.[test]'", "[/x]", "[bold red]", "[link=https://example.org]")


def _printed(draw: object) -> str:
    console = render.console()
    console.file = io.StringIO()
    console.width = 400
    draw(console)  # type: ignore[operator]
    return console.file.getvalue()


def test_result_table_prints_brackets_in_sql_keys_and_notes_as_written() -> None:
    plan = AggregatePlan(
        table="t",
        nodes=("a",),
        aggregates=(Aggregate(func="count", label="n [tls]"),),
        group_by=(GroupKey(column="g", categories=BRACKETED),),
        sql='SELECT g, COUNT(*) AS "n [tls]" FROM "[/x]" WHERE note = \'[[nodes]]\' GROUP BY g',
    )
    counts = np.full(len(BRACKETED), 500.0)
    raw = build_result(
        plan,
        {"rows:*": counts},
        query_id="q",
        project="[bold red]p",
        pet="dp",
        noise={},
        noiseless=True,
        privacy_loss={"a": PrivacyLoss(epsilon=1.0)},
        policy=DisclosurePolicy(),
    )
    res = fedlink.Result(raw.model_copy(update={"notes": (*raw.notes, "see '.[test]' and [link=https://example.org]")}))
    shown = _printed(lambda c: render.result(c, res, "table"))
    for text in (*BRACKETED, "[bold red]p", plan.sql, "n [tls]"):
        assert text in shown, text


def test_styled_labels_keep_the_text_after_them() -> None:
    shown = _printed(lambda c: c.print(render.styled("error:", "bold red", " add it to [[nodes]]; point [tls] at it")))
    assert shown.strip() == "error: add it to [[nodes]]; point [tls] at it"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlink", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_error_messages_with_brackets_are_one_line_as_written(tmp_path: Path) -> None:
    # a path the error message quotes: on a markup console, "[/x]" raised MarkupError (a traceback)
    # and "[tls]" vanished
    for name in ("[/x]", "[tls]", "[[nodes]]"):
        missing = tmp_path / name / "analyst.toml"
        proc = _cli("catalog", "--profile", str(missing))
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith("error: ") and str(missing) in lines[0], proc.stderr
