"""``fedlink project publish``: an analyst's plain-language summary of a project's released outputs,
stored by the coordinator and shown on the public register page beside the outputs and their privacy loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import fedlink
from fedlink.cli import render
from fedlink.cli.common import Ca, Cert, Coordinator, Format, FormatOpt, Key, Profile, handles_errors, out
from fedlink.cli.project import project_app


@project_app.command("publish")
@handles_errors
def project_publish(
    project: Annotated[str, typer.Argument(help="The project whose released outputs the summary is about.")],
    summary: Annotated[
        str | None, typer.Option(help="What the outputs show, in plain language, for the public register page.")
    ] = None,
    summary_file: Annotated[
        Path | None, typer.Option("--summary-file", help="Read the summary from this UTF-8 text file instead.")
    ] = None,
    result: Annotated[
        list[str] | None,
        typer.Option(
            "--result", help="A released output's query id (`fedlink result list`); repeat it. Default: every one."
        ),
    ] = None,
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Publish a plain-language summary of a project's released outputs on the transparency register;
    publishing again about any of the same outputs supersedes the earlier summary (both stay on record)."""
    text = _summary(summary, summary_file)
    fed = fedlink.connect(coordinator, cert=cert, key=key, ca=ca, profile=profile)
    render.publication(out, fed.publish(text, project=project, results=result or ()), fmt.value)


def _summary(summary: str | None, summary_file: Path | None) -> str:
    if (summary is None) == (summary_file is None):
        raise fedlink.BadInput("give the summary as --summary TEXT or --summary-file FILE (one of them)")
    if summary_file is None:
        assert summary is not None
        return summary
    try:
        return summary_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise fedlink.BadInput(f"{summary_file} is not UTF-8 text; save the summary as UTF-8") from exc
    except OSError as exc:
        raise fedlink.BadInput(f"cannot read the summary file {summary_file} ({exc.strerror}); check the path") from exc
