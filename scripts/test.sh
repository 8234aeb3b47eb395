#!/usr/bin/env bash
# Install everything the tests need into .venv and run the whole suite (offline, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[device,train,dev]"
.venv/bin/python -m device models
exec .venv/bin/python -m pytest -q "$@"
