"""The ruff config bans pickle, torch.load, yaml.load and eval/exec (promise 5)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is part of the test extra")
def test_banned_calls_are_reported(tmp_path: Path) -> None:
    bad = REPO / "evomerge" / f"_ban_probe_{tmp_path.name}.py"
    bad.write_text('import pickle\nimport torch\nimport yaml\ntorch.load("x")\nyaml.load("a")\neval("1")\nexec("1")\n')
    try:
        proc = subprocess.run(["ruff", "check", "--output-format", "concise", str(bad)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    finally:
        bad.unlink()
    out = proc.stdout
    assert proc.returncode != 0
    for needle in ("`pickle` is banned", "`torch.load` is banned", "`yaml.load` is banned", "S307", "S102"):
        assert needle in out, out
