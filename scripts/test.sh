#!/usr/bin/env bash
# Quick start, command 2: set up .venv with the test extras, lint, then run the whole test suite
# (unit, integration, end-to-end). Extra arguments go to pytest.
source "$(dirname "$0")/env.sh" test
ruff check src tests benchmarks
mypy src
exec python -m pytest "$@"
