"""Developer tasks, run in the project's .venv (made from uv.lock by scripts/env.sh): nothing here
builds another environment. ``bash scripts/test.sh`` runs ``lint``, ``docs`` and ``tests``.

    nox -l                          list the sessions
    nox -s lint docs                what CI checks before the tests
    nox -s tests                    every test tier, as CI runs them (DEVELOPERS.md, "Test tiers")
    nox -s tests -- -x              the same, arguments after -- going to each tier's pytest
    nox -s pytest -- tests/unit -x  plain pytest with any arguments
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
    """ruff, mypy and the layering contracts (import-linter, ``[tool.importlinter]`` in pyproject.toml)."""
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("mypy", "src")
    session.run("lint-imports")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation strictly (broken links and anchors fail) into a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="fedlink-site-") as site:
        session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


#: The test tiers, fastest first, each on two xdist workers: (paths, how xdist shares them out, measured
#: for coverage). The spec tier's federations are class-scoped (``loadscope``); integration and
#: end-to-end files start servers per module (``loadfile``). Coverage is measured over the tiers that
#: test the library's code paths; the end-to-end tier runs the ``fedlink`` command as a user does, in
#: many short processes, where coverage's tracing would cost about a third more time for little gain.
TIERS: list[tuple[list[str], str, bool]] = [
    (["tests/unit", "tests/statistical"], "load", True),
    (["tests/spec"], "loadscope", True),
    (["tests/integration", "tests/faults"], "loadfile", True),
    (["tests/e2e"], "loadfile", False),
]


@nox.session
def tests(session: nox.Session) -> None:
    """Every tier; the first failing tier stops the run. The measured tiers share one coverage
    measurement (subprocesses included); the last of them prints the total and fails below the floor
    in pyproject.toml."""
    session.run("python", "-m", "coverage", "erase")
    last_measured = max(i for i, (_, _, measured) in enumerate(TIERS) if measured)
    for i, (paths, dist, measured) in enumerate(TIERS):
        coverage: list[str] = []
        if measured:
            report = ["--cov-report=term"] if i == last_measured else ["--cov-report=", "--cov-fail-under=0"]
            coverage = ["--cov", "--cov-append", *report]
        session.run("python", "-m", "pytest", "-n", "2", "--dist", dist, *coverage, *paths, *session.posargs)


@nox.session
def pytest(session: nox.Session) -> None:
    """Plain pytest; arguments after ``--`` go to it."""
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
