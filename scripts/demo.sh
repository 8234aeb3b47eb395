#!/usr/bin/env bash
# Set up the device side (first run only) and run the pipeline on the built-in demo source:
# real faces, no camera, no download at run time. Pass any `python -m device run` flags to change it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import ai_edge_litert, mediapipe" 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[device]"
fi
.venv/bin/python -m device models          # face-detection models, pinned sha256 (once)
mkdir -p runs
exec .venv/bin/python -m device run --source demo --output runs/demo.mp4 --csv runs/demo.csv "$@"
