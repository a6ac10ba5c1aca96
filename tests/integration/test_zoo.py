"""The offline zoo: deterministic, loadable, specialized experts, and merging pays off."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from evomerge import zoo
from evomerge.demo import fixed_recipes
from evomerge.errors import ShapeMismatchError
from evomerge.hfmodel import load_hf_model, load_hf_tokenizer
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import recipe_from_dict


def _digest(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*.safetensors"))}


def test_build_is_deterministic(tmp_path: Path) -> None:
    spec = zoo.ZooSpec(base_steps=15, expert_steps=5)
    a = zoo.build_zoo(tmp_path / "a", spec, log=None)
    b = zoo.build_zoo(tmp_path / "b", spec, log=None)
    assert a["accuracy"] == b["accuracy"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert len(_digest(tmp_path / "a")) == 4 + len(zoo.VARIANTS) + 1


def test_experts_are_specialists(zoo_dir: Path) -> None:
    m = zoo.load_zoo_manifest(zoo_dir)
    acc = m["accuracy"]
    for skill in m["skills"]:
        assert acc[f"expert_{skill}"][skill] >= 0.95, acc
        assert acc["base"][skill] <= 0.6, acc
        for other in m["skills"]:
            if other != skill:
                # an expert is no better than the base on the other skills
                assert acc[f"expert_{skill}"][other] <= acc["base"][other] + 0.1, acc


def test_a_merge_beats_every_expert_on_the_mean(zoo_dir: Path, tmp_path: Path) -> None:
    m = zoo.load_zoo_manifest(zoo_dir)
    skills = m["skills"]
    best_expert = max(sum(m["accuracy"][f"expert_{s}"].values()) / len(skills) for s in skills)
    recipe = fixed_recipes(skills)["per_layer_task_arithmetic"].resolved(zoo_dir)
    merge_to_dir(recipe, tmp_path / "merged")
    model = load_hf_model(tmp_path / "merged")
    scores = {s: zoo.skill_accuracy(model, s, zoo.vocab(), n=200) for s in skills}
    mean = sum(scores.values()) / len(skills)
    assert mean > best_expert, (scores, best_expert)


def test_every_zoo_model_loads_and_generates(zoo_dir: Path) -> None:
    import torch

    dirs = [zoo_dir / n for n in zoo.load_zoo_manifest(zoo_dir)["models"]]
    dirs += sorted((zoo_dir / "variants").iterdir())
    for d in dirs:
        tok = load_hf_tokenizer(d)
        model = load_hf_model(d)
        enc = tok("rot:abcd=", return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] == enc["input_ids"].shape[1] + 3, d
    expert = load_hf_model(zoo_dir / "expert_caesar")
    assert zoo.greedy_answers(expert, ["rot:abcd="], zoo.vocab()) == ["defg"]


@pytest.mark.parametrize(("variant", "needle"), [
    ("wide", "hidden_size"), ("deep", "num_hidden_layers"), ("vocab", "vocabularies differ"),
    ("qwen2_base", "architectures differ"), ("tied", "tie_word_embeddings"),
])
def test_variants_are_refused_against_the_base(zoo_dir: Path, tmp_path: Path, variant: str, needle: str) -> None:
    r = recipe_from_dict({"merge_method": "ties", "base_model": str(zoo_dir / "base"),
                          "models": [{"model": str(zoo_dir / "variants" / variant), "parameters": {"weight": 1.0}}]})
    with pytest.raises(ShapeMismatchError, match=needle):
        merge_to_dir(r, tmp_path / "out")


def test_second_architecture_and_tied_embeddings_merge(zoo_dir: Path, tmp_path: Path) -> None:
    v = zoo_dir / "variants"
    qwen = recipe_from_dict({"merge_method": "ties", "base_model": str(v / "qwen2_base"),
                             "models": [{"model": str(v / "qwen2_expert"), "parameters": {"weight": 1.0, "density": 0.5}}]})
    merge_to_dir(qwen, tmp_path / "qwen")
    assert type(load_hf_model(tmp_path / "qwen")).__name__ == "Qwen2ForCausalLM"
    tied = recipe_from_dict({"merge_method": "linear",
                             "models": [{"model": str(v / "tied"), "parameters": {"weight": 1.0}}]})
    merge_to_dir(tied, tmp_path / "tied")
    model = load_hf_model(tmp_path / "tied")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
