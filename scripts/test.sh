#!/usr/bin/env bash
# Quick start, command 2: set up .venv with the test extras, lint, build the docs, then run the whole test suite
# (unit, integration, end-to-end). Extra arguments go to pytest.
source "$(dirname "$0")/env.sh" test
ruff check src tests benchmarks
mypy src
# the documentation: every internal link and anchor must resolve (built into a scratch folder)
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$site"
rm -rf "$site"
exec python -m pytest "$@"
