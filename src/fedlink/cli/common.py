"""What every ``fedlink`` command module shares: the consoles, the error handling (one line, exit 2 or
1; library errors' parameter names spelled as flags), the output formats and the analyst's connection
options. The command modules (:mod:`fedlink.cli.main` and the groups beside it) import it, so none of
them imports another."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

import fedlink
from fedlink.cli import render
from fedlink.errors import FedlinkError

# Neither console reads Rich markup: queries, names, paths and error messages print exactly as written.
out = render.console()
err = render.console(stderr=True)
#: Set by the ``--debug`` option of the ``fedlink`` command.
state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def progress_lines(prefix: str) -> Callable[[str], None]:
    """Progress lines on stderr: ``prefix`` dimmed, the message as written."""
    return lambda message: err.print(render.styled(prefix, "dim", f" {message}"), highlight=False)


#: Library errors name a parameter in backquotes (`epsilon`, `epsilon=E`); the command line says its flag.
PARAMETER_FLAGS = {
    "project": "--project",
    "epsilon": "--epsilon",
    "rho": "--rho",
    "pet": "--pet",
    "profile": "--profile",
    "coordinator": "--coordinator",
    "cert": "--cert",
    "key": "--key",
    "ca": "--ca",
    "root_certificates": "--root-certificates",
    "inputs": "--input",
    "mapping": "--map",
    "truth": "--truth",
    "source": "--from",
    "out": "--out",
    "out_dir": "--out",
    "pki_dir": "--dir",
    "workdir": "--workdir",
    "summary": "--summary",
    "results": "--result",
}
_PARAMETER = re.compile(r"`(\w+)(?:=([^`]*))?`")


def with_flags(message: str) -> str:
    """``message`` with each parameter it names spelled as the command line's flag (`epsilon=E` -> --epsilon E)."""

    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name not in PARAMETER_FLAGS:
            return match.group(0)
        return PARAMETER_FLAGS[name] if value is None else f"{PARAMETER_FLAGS[name]} {value}"

    return _PARAMETER.sub(flag, message)


def handles_errors(func: F) -> F:
    """Turn a FedlinkError into one line on stderr and exit code 2 (bad input) or 1 (fault)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FedlinkError as exc:
            if state["debug"]:
                raise
            err.print(render.styled("error:", "bold red", f" {with_flags(exc.message)}"), highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:  # a bug: still one line, and the traceback on request
            if state["debug"]:
                raise
            detail = f" {type(exc).__name__}: {' '.join(str(exc).split())}; rerun with --debug for the traceback"
            err.print(render.styled("internal error:", "bold red", detail), highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# The analyst's connection: a profile, or the coordinator's address with a certificate, key and CA.
Profile = Annotated[
    Path | None, typer.Option(help="Analyst profile (default $FEDLINK_PROFILE or .fedlink/analyst.toml).")
]
Coordinator = Annotated[str | None, typer.Option(help="Coordinator host:port (instead of a profile).")]
Cert = Annotated[Path | None, typer.Option(help="Analyst certificate (with --coordinator).")]
Key = Annotated[Path | None, typer.Option(help="Analyst private key (with --coordinator).")]
Ca = Annotated[Path | None, typer.Option(help="Federation CA certificate (with --coordinator).")]
FormatOpt = Annotated[Format, typer.Option("--format", help="table, json or csv.")]


def connect(profile: Path | None, coordinator: str | None, cert: Path | None, key: Path | None, ca: Path | None) -> Any:
    return fedlink.connect(coordinator, cert=cert, key=key, ca=ca, profile=profile)
