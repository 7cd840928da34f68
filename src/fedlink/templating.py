"""Jinja2 for the HTML and SVG fedlink writes (the public register page, a Result in a notebook).

Every value put on those pages may be user input (query text, purposes, party names), so the one
environment here escapes every ``{{ value }}`` (autoescape on for every template, whatever its name)
and a misspelt variable is an error rather than an empty string.
"""

from __future__ import annotations

from jinja2 import BaseLoader, Environment, PackageLoader, StrictUndefined


def environment(package: str | None = None) -> Environment:
    """An autoescaping, strict environment; with ``package``, loading that package's ``templates/`` folder."""
    loader: BaseLoader | None = PackageLoader(package, "templates") if package else None
    return Environment(loader=loader, autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
