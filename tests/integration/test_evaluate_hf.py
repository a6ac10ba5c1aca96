"""The transformers evaluator on the zoo: every task kind, in place == from disk, statuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.demo import fixed_recipes
from evomerge.evaluate.hf import HFEngine, HFEvaluator
from evomerge.evaluate.tasks import load_task, score_task
from evomerge.hfmodel import load_hf_model, load_hf_tokenizer
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import recipe_from_dict
from evomerge.zoo import skill_accuracy, vocab

FITNESS = Path(__file__).resolve().parents[2] / "fitness"
SKILLS = ["add", "caesar", "length"]


@pytest.fixture(scope="module")
def evaluator() -> HFEvaluator:
    return HFEvaluator()


def one_model(path: Path):
    return recipe_from_dict({"merge_method": "linear", "models": [{"model": str(path), "parameters": {"weight": 1.0}}]})


def test_each_task_kind_scores_the_expert_and_the_base(zoo_dir: Path, evaluator: HFEvaluator) -> None:
    tasks = [load_task(FITNESS / "zoo_caesar.yaml", split="heldout"),
             load_task(FITNESS / "zoo_caesar_choice.yaml"), load_task(FITNESS / "zoo_caesar_loglik.yaml")]
    expert = evaluator.evaluate(one_model(zoo_dir / "expert_caesar"), tasks)
    base = evaluator.evaluate(one_model(zoo_dir / "base"), tasks)
    assert expert.status == base.status == "COMPLETE"
    assert expert.objectives["zoo_caesar"] == 1.0 and base.objectives["zoo_caesar"] == 0.0
    assert expert.objectives["zoo_caesar_choice"] > 0.9 > base.objectives["zoo_caesar_choice"]
    assert expert.objectives["zoo_caesar_loglik"] > -0.1 > -5 > base.objectives["zoo_caesar_loglik"]
    assert len(expert.item_scores["zoo_caesar"]) == 200 and expert.items == 200 + 100 + 200
    # building the model object (another reference model or depth) is timed apart from merging
    assert set(expert.phases) - {"build_model"} == {"materialize", "evaluate"}
    again = evaluator.evaluate(one_model(zoo_dir / "base"), tasks[1:2])
    assert set(again.phases) == {"materialize", "evaluate"}  # the same model object, reused
    # token cost: at least every prompt's tokens plus one generated token per generate item
    assert expert.tokens > sum(len(it["question"]) + 1 for it in tasks[0].items) + 200


def test_generate_task_matches_the_zoo_reference_scorer(zoo_dir: Path) -> None:
    model = load_hf_model(zoo_dir / "expert_length")
    engine = HFEngine(model, load_hf_tokenizer(zoo_dir / "expert_length"))
    for skill in SKILLS:
        scores = score_task(load_task(FITNESS / f"zoo_{skill}.yaml", split="heldout"), engine)
        assert sum(scores) / len(scores) == skill_accuracy(model, skill, vocab(), n=200, split="test")


def test_in_place_equals_write_to_disk_and_reload(zoo_dir: Path, evaluator: HFEvaluator, tmp_path: Path) -> None:
    recipe = fixed_recipes(SKILLS)["per_layer_task_arithmetic"].resolved(zoo_dir)
    tasks = [load_task(FITNESS / f"zoo_{s}.yaml") for s in SKILLS] + [load_task(FITNESS / "zoo_caesar_loglik.yaml")]
    live = evaluator.evaluate(recipe, tasks)
    merge_to_dir(recipe, tmp_path / "m")
    disk = load_hf_model(tmp_path / "m")
    engine = HFEngine(disk, load_hf_tokenizer(tmp_path / "m"))
    for t in tasks:
        assert score_task(t, engine) == pytest.approx(live.item_scores[t.name], abs=1e-5)


def test_nan_weights_are_invalid_and_deadline_is_timeout(zoo_dir: Path, evaluator: HFEvaluator, tmp_path) -> None:
    tasks = [load_task(FITNESS / "zoo_add.yaml")]
    huge = recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(zoo_dir / "base"),
                             "models": [{"model": str(zoo_dir / "expert_add"), "parameters": {"weight": 1e38}}],
                             "parameters": {"lambda": 1e38}})
    res = evaluator.evaluate(huge, tasks)
    assert res.status == "INVALID" and res.objectives is None and "NaN or inf" in res.error
    slow = evaluator.evaluate(one_model(zoo_dir / "expert_add"), tasks, deadline_s=0.0)
    assert slow.status == "TIMEOUT" and slow.objectives is None
    ok = evaluator.evaluate(one_model(zoo_dir / "expert_add"), tasks, deadline_s=600)
    assert ok.status == "COMPLETE" and ok.objectives["zoo_add"] == 1.0
