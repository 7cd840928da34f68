"""``fedlink project``: a project's life, from application to published outcome."""

from __future__ import annotations

import typer

project_app = typer.Typer(help="Projects: from application to published outcome.", no_args_is_help=True)
