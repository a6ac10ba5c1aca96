"""`evomerge eval`: a recipe or a model directory scored on both splits, as JSON or a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_eval_recipe_and_model_dir(zoo_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {zoo_dir / 'base'}\n"
                      f"models: [{{model: {zoo_dir / 'expert_caesar'}}}]\n")
    proc = run("eval", str(recipe), "-t", str(REPO / "fitness/zoo_caesar.yaml"), "--split", "both", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["search"]["objectives"]["zoo_caesar"] == 1.0 and out["heldout"]["objectives"]["zoo_caesar"] == 1.0
    assert len(out["heldout"]["item_scores"]["zoo_caesar"]) == 200 and out["search"]["tokens"] > 0
    table = run("eval", str(zoo_dir / "base"), "-t", str(REPO / "fitness/zoo_add.yaml"), cwd=tmp_path)
    assert table.returncode == 0 and "zoo_add" in table.stdout and "search: ok; 200 items" in table.stdout


def test_eval_bad_inputs(zoo_dir: Path, tmp_path: Path) -> None:
    bad = run("eval", str(zoo_dir / "base"), "-t", str(REPO / "fitness/zoo_add.yaml"), "--split", "dev", cwd=tmp_path)
    assert bad.returncode == 2 and "--split 'dev' is not one of search, heldout, both" in bad.stderr
    missing = run("eval", str(zoo_dir / "base"), "-t", str(REPO / "fitness/gsm8k.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "data file not found" in missing.stderr and "Traceback" not in missing.stderr
