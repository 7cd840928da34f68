#!/usr/bin/env bash
# Quick start, command 2: set up .venv with the test extras, lint, build the docs, then run the whole test suite
# (unit, spec, integration, end-to-end). Extra arguments go to every tier's pytest.
source "$(dirname "$0")/env.sh" test
ruff check src tests benchmarks
mypy src
# the documentation: every internal link and anchor must resolve (built into a scratch folder)
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$site"
rm -rf "$site"
# the tiers (DEVELOPERS.md, "Test tiers") on two workers each, fastest first, under one coverage measurement
# (subprocesses included); the last prints the total over all tiers and fails below the floor in pyproject.toml
tiers=(-n 2 --cov --cov-append --cov-report= --cov-fail-under=0)
python -m coverage erase &&
  python -m pytest "${tiers[@]}" tests/unit tests/statistical "$@" &&
  python -m pytest "${tiers[@]}" --dist loadscope tests/spec "$@" &&
  python -m pytest "${tiers[@]}" --dist loadfile tests/integration tests/faults "$@" &&
  exec python -m pytest -n 2 --dist loadfile --cov --cov-append --cov-report=term tests/e2e "$@"
