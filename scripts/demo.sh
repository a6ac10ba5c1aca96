#!/usr/bin/env bash
# Set up a fresh machine and run the main job: bash scripts/demo.sh [workdir]
#   1. builds the offline zoo (once per machine, ~2 min, in ~/.cache/evomerge: the tests share it) and scores fixed merges of it (the baselines);
#   2. runs a CMA-ES search over per-layer merge weights (search_spaces/demo.yaml) on a local
#      Ray with two worker actors, every candidate recorded in a SQLite archive (~1-2 min);
#   3. queries the archive (best, Pareto front), exports the best candidate as a model
#      directory, scores it on the held-out split and plots the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
mkdir -p "${1:-evomerge-demo}"
WORKDIR="$(cd "${1:-evomerge-demo}" && pwd)"
DB="sqlite:///$WORKDIR/evomerge.db"
RUN="demo-$(date +%Y%m%d-%H%M%S)"
python -m pip install -q --disable-pip-version-check -e .
python -m evomerge.merge.native || true   # the C++ merge kernel, built once per machine (~30 s)
evomerge demo --workdir "$WORKDIR"
evomerge search --space search_spaces/demo.yaml --db "$DB" --name "$RUN" --workers 2
evomerge best "$RUN" --db "$DB" -k 3
evomerge pareto "$RUN" --db "$DB"
BEST=$(evomerge best "$RUN" --db "$DB" --json | python -c 'import json, sys; print(json.load(sys.stdin)[0]["index"])')
evomerge export "$RUN:$BEST" --db "$DB" --out "$WORKDIR/$RUN-best"
evomerge eval "$WORKDIR/$RUN-best" -t fitness/zoo_add.yaml -t fitness/zoo_caesar.yaml -t fitness/zoo_length.yaml \
  --split both
evomerge plot "$RUN" --db "$DB" --out "$WORKDIR/$RUN.png"
echo "archive: $DB (evomerge runs --db $DB); resume an interrupted run with: evomerge resume $RUN --db $DB"
echo "look at it in a browser: pip install -e '.[dashboard]' && evomerge dashboard --db $DB"
