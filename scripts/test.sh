#!/usr/bin/env bash
# Quick start, command 2: set up .venv from uv.lock with the test extras, lint, build the docs, then run the whole test suite
# (unit, integration, end-to-end). Extra arguments go to pytest.
source "$(dirname "$0")/env.sh" test
# lint (ruff, mypy) and the documentation (every internal link and anchor must resolve): noxfile.py
nox --session lint docs
exec python -m pytest "$@"
