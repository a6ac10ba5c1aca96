#!/usr/bin/env bash
# Set up a fresh machine and run the main job: bash scripts/demo.sh [workdir]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
python -m pip install -q --disable-pip-version-check -e .
evomerge demo --workdir "${1:-evomerge-demo}"
