"""lm-evaluation-harness tasks as objectives (issue 17), offline on the zoo: custom task YAMLs over
local JSONL files, one ``generate_until`` task with a regex / take_first filter and one
``multiple_choice`` task. Parity is checked against lm-eval itself: ``lm_eval --model hf`` on the
exported model directory gives the same per-document scores as evomerge's in-place candidate."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.evaluate.lmeval import LMEvalRef
from evomerge.evaluate.tasks import load_task
from evomerge.recipe import recipe_from_dict
from tests.conftest import REPO

pytest.importorskip("lm_eval")

LIMIT = 24
DATA = REPO / "fitness" / "data"


def task_yaml(path: Path, name: str, data: Path, body: str, metric: str) -> Path:
    """An lm-eval task YAML over one local JSONL file (its `test` split), scored by a mean ``metric``."""
    path.write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{question}}}}"
{body}metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
""")
    return path


def task_yamls(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    generate = """output_type: generate_until
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 10
  do_sample: false
filter_list:
  - name: extract
    filter:
      - function: regex
        regex_pattern: "(-?\\\\d+)"
      - function: take_first
"""
    choice = """output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: answer
"""
    return {"zadd": task_yaml(root / "zadd.yaml", "zadd", DATA / "zoo_add.dev.jsonl", generate, "exact_match"),
            "zrot": task_yaml(root / "zrot.yaml", "zrot", DATA / "zoo_caesar_choice.dev.jsonl", choice, "acc"),
            "zgone": task_yaml(root / "zgone.yaml", "zgone", root / "nowhere.jsonl", generate, "exact_match")}


@pytest.fixture(scope="module")
def yamls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return task_yamls(tmp_path_factory.mktemp("lmeval_tasks"))


def refs(yamls: dict[str, Path]) -> list[str]:
    return [LMEvalRef(task=str(yamls[n]), limit=LIMIT).as_ref() for n in ("zadd", "zrot")]


def lm_eval_cli(model_dir: Path, yamls: dict[str, Path], out: Path) -> dict[str, dict[int, float]]:
    """Per-document scores from ``lm_eval --model hf`` itself (its own process and model load)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
         "--tasks", "zadd,zrot", "--include_path", str(yamls["zadd"].parent), "--device", "cpu",
         "--batch_size", "1", "--limit", str(LIMIT), "--log_samples", "--output_path", str(out)],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores: dict[str, dict[int, float]] = {}
    for task, metric, filt in (("zadd", "exact_match", "extract"), ("zrot", "acc", "none")):
        [path] = list(out.rglob(f"samples_{task}_*.jsonl"))
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        scores[task] = {int(r["doc_id"]): float(r[metric]) for r in rows if r["filter"] == filt}
    return scores


def test_an_in_place_candidate_scores_as_lm_eval_scores_its_exported_directory(yamls: dict[str, Path],
                                                                              zoo_dir: Path, tmp_path: Path) -> None:
    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.merge.materialize import merge_to_dir

    recipe = recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(zoo_dir / "base"), "models": [
        {"model": str(zoo_dir / "expert_add"), "parameters": {"weight": 0.9}},
        {"model": str(zoo_dir / "expert_caesar"), "parameters": {"weight": 0.7}}]})
    tasks = [load_task(r) for r in refs(yamls)]
    assert [t.name for t in tasks] == ["zadd", "zrot"] and all(len(t.items) == LIMIT for t in tasks)
    evaluator = HFEvaluator()
    evaluator.load_sources({})
    res = evaluator.evaluate(recipe, tasks)
    assert res.status == "COMPLETE", res.error
    merge_to_dir(recipe, tmp_path / "merged")
    theirs = lm_eval_cli(tmp_path / "merged", yamls, tmp_path / "out")
    for t in tasks:
        assert res.item_scores[t.name] == [theirs[t.name][i] for i in range(LIMIT)], t.name
        assert res.objectives[t.name] == pytest.approx(sum(theirs[t.name].values()) / LIMIT, abs=1e-12)
    assert 0 < res.objectives["zadd"] and 0 < res.objectives["zrot"] < 1  # the case is informative
    # a chunk (racing, subsets) scores each document as the whole task does
    from evomerge.evaluate.base import engine_scorer

    chunk = [17, 3, 9]
    engine = evaluator.write_weights(recipe)
    for t in tasks:
        assert engine_scorer(engine)(t, chunk) == [res.item_scores[t.name][i] for i in chunk]


def test_a_search_scores_lm_eval_objectives_and_archives_every_document(yamls: dict[str, Path], zoo_dir: Path,
                                                                       tmp_path: Path) -> None:
    from evomerge import api

    space = tmp_path / "space.yaml"
    space.write_text(f"""name: lme
base: {zoo_dir / 'base'}
experts: [{zoo_dir / 'expert_add'}, {zoo_dir / 'expert_caesar'}]
merge_method: task_arithmetic
vary: {{weight: {{low: 0.0, high: 1.0, init: 0.8}}}}
layer_groups: 1
objectives:
  - lm_eval: {{task: {yamls['zadd']}, limit: {LIMIT}}}
  - lm_eval: {{task: {yamls['zrot']}, limit: {LIMIT}, metric: acc}}
strategy: {{name: random}}
budget: 3
""")
    db = f"sqlite:///{tmp_path / 'a.db'}"
    out = api.search(space, db=db, engine="hf", backend="local", name="lme", log=lambda _m: None)
    assert out.told == 3
    rows = [api.show(f"lme:{i}", db=db) for i in range(3)]
    assert all(r["status"] == "COMPLETE" for r in rows)
    for r in rows:
        assert set(r["item_scores"]) == {"zadd", "zrot"} and all(len(v) == LIMIT for v in r["item_scores"].values())
        for task, scores in r["item_scores"].items():
            assert math.isclose(r["objectives"][task], sum(scores) / LIMIT, abs_tol=1e-6)


def test_an_lm_eval_task_whose_data_is_missing_is_refused_by_name(yamls: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="zgone: its dataset could not be loaded") as info:
        load_task(LMEvalRef(task=str(yamls["zgone"])).as_ref())
    assert "local files" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="has no metric 'bleu'"):
        load_task(LMEvalRef(task=str(yamls["zrot"]), metric="bleu").as_ref())
