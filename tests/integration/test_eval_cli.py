"""`evomerge eval`: a recipe or a model directory scored on both splits, as JSON or a table."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO, run_cli


def test_eval_recipe_and_model_dir(zoo_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {zoo_dir / 'base'}\n"
                      f"models: [{{model: {zoo_dir / 'expert_caesar'}, parameters: {{weight: 1.0}}}}]\n")
    proc = run_cli("eval", str(recipe), "-t", str(REPO / "fitness/zoo_caesar.yaml"), "--split", "both", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["search"]["objectives"]["zoo_caesar"] == 1.0 and out["heldout"]["objectives"]["zoo_caesar"] == 1.0
    assert len(out["heldout"]["item_scores"]["zoo_caesar"]) == 200 and out["search"]["tokens"] > 0
    table = run_cli("eval", str(zoo_dir / "base"), "-t", str(REPO / "fitness/zoo_add.yaml"), cwd=tmp_path)
    assert table.returncode == 0 and "zoo_add" in table.stdout and "search: COMPLETE; 200 items" in table.stdout


def test_eval_bad_inputs(zoo_dir: Path, tmp_path: Path) -> None:
    bad = run_cli("eval", str(zoo_dir / "base"), "-t", str(REPO / "fitness/zoo_add.yaml"), "--split", "dev", cwd=tmp_path)
    assert bad.returncode == 2 and "--split 'dev' is not one of search, heldout, both" in bad.stderr
    missing = run_cli("eval", str(zoo_dir / "base"), "-t", str(REPO / "fitness/gsm8k.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "data file not found" in missing.stderr and "Traceback" not in missing.stderr
