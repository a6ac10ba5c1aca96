"""`evomerge merge` end to end: recipe file -> model directory that transformers loads and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evomerge.hfmodel import load_hf_model
from evomerge.merge.io import ModelDir
from evomerge.merge.writer import verify_manifest
from tests.conftest import run_cli


def write_recipe(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_merge_cli_writes_a_loadable_model(tiny_models, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, """
merge_method: dare_ties
base_model: base
models:
  - model: expert_a
    parameters: {weight: [0.2, 0.9], density: 0.6}
  - model: expert_b
    parameters: {weight: 0.5, density: 0.6}
parameters: {lambda: 1.0}
""")
    proc = run_cli("merge", str(recipe), "--out", "merged", "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "merged 21 tensors" in proc.stdout
    out = tmp_path / "merged"
    verify_manifest(out)
    assert json.loads((out / "evomerge-recipe.json").read_text())["merge_method"] == "dare_ties"
    model = load_hf_model(out)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        gen = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 8)
    # same seed -> same bytes; another seed -> other DARE masks
    assert run_cli("merge", str(recipe), "--out", "again", "--seed", "3", cwd=tmp_path).returncode == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert run_cli("merge", str(recipe), "--out", "other", "--seed", "4", cwd=tmp_path).returncode == 0
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()


@pytest.mark.parametrize("recipe_format", [2, 1])
def test_per_layer_weights_land_in_the_right_layers(tiny_models, tmp_path: Path, recipe_format: int) -> None:
    """A per-layer weight list [0, 1] gives layer 0 the base and layer 1 the expert, exactly.
    Format 2 (mergekit's reading) puts lm_head and the final norm at the gradient's first value
    (the base); format 1, an archive's older recipes, put them at its last (the expert)."""
    recipe = write_recipe(tmp_path, f"""
merge_method: task_arithmetic
base_model: base
recipe_format: {recipe_format}
models:
  - model: expert_a
    parameters: {{weight: [0.0, 1.0]}}
""")
    assert run_cli("merge", str(recipe), "--out", "m", cwd=tmp_path).returncode == 0
    with ModelDir(tmp_path / "m") as m, ModelDir(tiny_models["base"]) as b, ModelDir(tiny_models["expert_a"]) as e:
        name0, name1 = "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"
        assert torch.equal(m.read(name0), b.read(name0))
        assert torch.allclose(m.read(name1), e.read(name1), atol=1e-6)
        head = e if recipe_format == 1 else b
        for name in ("lm_head.weight", "model.norm.weight"):
            assert torch.allclose(m.read(name), head.read(name), atol=1e-6), name
        assert not torch.allclose(b.read("lm_head.weight"), e.read("lm_head.weight"), atol=1e-6)
        assert torch.equal(m.read("model.embed_tokens.weight"), b.read("model.embed_tokens.weight"))


def test_passthrough_stacks_layers(tiny_models, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, """
merge_method: passthrough
slices:
  - sources: [{model: expert_a, layer_range: [0, 2]}]
  - sources: [{model: expert_b, layer_range: [1, 2]}]
""")
    assert run_cli("merge", str(recipe), "--out", "stack", cwd=tmp_path).returncode == 0
    model = load_hf_model(tmp_path / "stack")
    assert model.config.num_hidden_layers == 3
    with ModelDir(tmp_path / "stack") as m, ModelDir(tiny_models["expert_b"]) as b:
        assert torch.equal(m.read("model.layers.2.self_attn.q_proj.weight"), b.read("model.layers.1.self_attn.q_proj.weight"))


def test_slerp_and_linear_merges_load(tiny_models, tmp_path: Path) -> None:
    for i, text in enumerate([
        "merge_method: slerp\nbase_model: base\nmodels: [{model: base}, {model: expert_a}]\n"
        "parameters: {t: [{filter: self_attn, value: [0.1, 0.9]}, {value: 0.5}]}\n",
        "merge_method: linear\nmodels: [{model: expert_a, parameters: {weight: 0.3}}, {model: expert_b, parameters: {weight: 0.7}}]\n",
    ]):
        recipe = write_recipe(tmp_path, text)
        proc = run_cli("merge", str(recipe), "--out", f"m{i}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        load_hf_model(tmp_path / f"m{i}")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("merge_method: tiez\nbase_model: base\nmodels: [{model: expert_a}]\n", "unknown merge method 'tiez'"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: expert_a, parameters: {densty: 0.5}}]\n",
         "has no parameter(s) ['densty']"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: expert_a, parameters: {lambda: 0.5}}]\n",
         "global for 'ties', not per model"),
        ("merge_method: ties\nmodels: [{model: expert_a}]\n", "needs `base_model:`"),
        ("merge_method: slerp\nbase_model: base\nmodels: [{model: expert_a}, {model: expert_b}]\n", "takes 1 model"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: nowhere}]\n", "model directory not found"),
        ("merge_method: ties\nbase_model: base\nmodels: [{model: expert_a, parameters: {weight: 1, density: 2}}]\n",
         "density=2.0 is outside"),
        # mergekit refuses a missing required parameter; so does a (format 2) recipe
        ("merge_method: ties\nbase_model: base\nmodels: [{model: expert_a, parameters: {density: 0.5}}]\n",
         "parameter 'weight' is required"),
        ("merge_method: slerp\nbase_model: base\nmodels: [{model: expert_a}]\n", "parameter 't' is required"),
        ("merge_method: passthrough\nslices: [{sources: [{model: expert_a, layer_range: [0, 5]}]}]\n",
         "past the 2 layers"),
    ],
)
def test_bad_recipes_fail_clearly_and_write_nothing(tiny_models, tmp_path: Path, text: str, needle: str) -> None:
    recipe = write_recipe(tmp_path, text)
    proc = run_cli("merge", str(recipe), "--out", "bad", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.tmp")]
