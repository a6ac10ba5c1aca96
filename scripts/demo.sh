#!/usr/bin/env bash
# Set up a fresh machine and run the main job: bash scripts/demo.sh [workdir]
#   1. builds the offline zoo (once, ~2 min) and scores fixed merges of it (baselines);
#   2. runs a CMA-ES search over per-layer merge weights (search_spaces/demo.yaml, ~1 min).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
WORKDIR="${1:-evomerge-demo}"
export EVOMERGE_ZOO="$PWD/$WORKDIR/zoo"   # zoo:// in search spaces resolves here
python -m pip install -q --disable-pip-version-check -e .
evomerge demo --workdir "$WORKDIR"
evomerge search --space search_spaces/demo.yaml --out "$WORKDIR/runs/demo-0.jsonl"
evomerge eval "$WORKDIR/runs/demo-0.best.yaml" -t fitness/zoo_add.yaml -t fitness/zoo_caesar.yaml \
  -t fitness/zoo_length.yaml --split both
