"""mergekit 0.1.5 in its own virtual environment (its pins conflict with evomerge's), made once
per machine under evomerge's cache; the parity tests and bench.merge_vs_mergekit run it there.

    python -m bench.mergekit_venv      # make it now (scripts/test.sh does, outside pytest's timeout)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

MERGEKIT = "mergekit==0.1.5"
TORCH = "torch==2.13.0"  # the CPU build on this machine's disk; a bare torch pulls a CUDA build


def default_venv() -> Path:
    from evomerge.cache import cache_root

    return cache_root() / "bench-venv" / MERGEKIT.replace("==", "-")


def mergekit_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_mergekit(venv: Path | None = None) -> Path:
    """A virtual environment holding mergekit (and the pinned CPU torch); made once. A half-made
    one (no ``mergekit-yaml``) is completed by pip on the next call."""
    venv = venv or default_venv()
    exe = venv / "bin" / "mergekit-yaml"
    if exe.exists():
        return venv
    t0 = time.perf_counter()
    print(f"making {venv} with {MERGEKIT} (first use only; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(mergekit_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, MERGEKIT, TORCH], check=True)
    print(f"mergekit ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return venv


if __name__ == "__main__":
    print(ensure_mergekit())
