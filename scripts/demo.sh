#!/usr/bin/env bash
# Quick start, command 1: set up .venv, then run the whole demo (PKI, synthetic departments, a local
# federation of a coordinator and seven nodes, example queries, clean stop). Extra arguments go to
# `fedlink demo` (e.g. --people 100000, --serve).
source "$(dirname "$0")/env.sh" demo
exec fedlink demo "$@"
