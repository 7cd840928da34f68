"""Developer tasks, run in the project's .venv (made from uv.lock by scripts/env.sh): nothing here
builds another environment. ``bash scripts/test.sh`` runs ``lint`` and ``docs`` and then pytest.

    nox -l                          list the sessions
    nox -s lint docs                what CI checks before the tests
    nox -s tests -- tests/unit -x   pytest with any arguments
    nox -s demo -- --people 5000    the demo (as bash scripts/demo.sh)
    nox -s bench -- --quick         the benchmark suites (fedlink bench run)
    nox -s lock                     re-resolve uv.lock after editing dependencies in pyproject.toml
"""

from __future__ import annotations

import os
import tempfile

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "docs", "tests"]
nox.options.error_on_missing_interpreters = True


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy, as CI runs them."""
    session.run("ruff", "check", "src", "tests", "benchmarks")
    session.run("mypy", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation strictly (broken links and anchors fail) into a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="fedlink-site-") as site:
        session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def tests(session: nox.Session) -> None:
    """pytest; arguments after ``--`` go to it."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The whole demo; arguments after ``--`` go to ``fedlink demo``."""
    session.run("fedlink", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suites; arguments after ``--`` go to ``fedlink bench run`` (e.g. ``--quick``)."""
    session.run("fedlink", "bench", "run", *session.posargs)


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve uv.lock from pyproject.toml (``-- --upgrade`` moves every pin to the newest allowed)."""
    uv = os.environ.get("UV", ".uv/bin/uv")
    session.run(uv, "lock", *session.posargs, external=True)
