#!/usr/bin/env bash
# Quick start, command 2: set up .venv from uv.lock with the test extras, lint, build the docs, then run the whole test suite
# (unit, statistical, spec, integration, end-to-end). Extra arguments go to every tier's pytest.
source "$(dirname "$0")/env.sh" test
# lint (ruff, mypy, the import-linter layering contracts), the documentation (every internal link and anchor must resolve), then the test
# tiers (DEVELOPERS.md, "Test tiers") under one coverage measurement with its floor: noxfile.py
exec nox --session lint docs tests -- "$@"
