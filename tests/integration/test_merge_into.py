"""merge_into (the search path: straight into live weights) against iter_merged / an export, and the
scaled zoo sizes the benchmarks use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evomerge.errors import ConfigError, MergeError
from evomerge.evaluate.resident import ResidentSources
from evomerge.merge import rank_index
from evomerge.merge.io import ModelDir
from evomerge.merge.materialize import iter_merged, merge_into, merge_to_dir
from evomerge.merge.plan import plan_merge
from evomerge.recipe import recipe_from_dict
from evomerge.zoo_scaled import SIZES, ScaledShape, build_scaled_zoo


def recipe(models: dict[str, Path], method: str = "dare_ties", dtype: str | None = None):  # type: ignore[no-untyped-def]
    dens = [{"density": 0.5}, {"density": 0.7}] if method != "task_arithmetic" else [{}, {}]
    data = {"merge_method": method, "base_model": str(models["base"]),
            "models": [{"model": str(models["expert_a"]), "parameters": {"weight": [0.3, 0.9], **dens[0]}},
                       {"model": str(models["expert_b"]), "parameters": {"weight": 0.6, **dens[1]}}]}
    if dtype:
        data["dtype"] = dtype
    return recipe_from_dict(data)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties"])
def test_merge_into_live_buffers_equals_iter_merged_and_the_export(tiny_models, tmp_path: Path, method: str) -> None:
    rec = recipe(tiny_models, method)
    with plan_merge(rec) as plan:
        fresh = dict(iter_merged(plan, seed=4))
    resident = ResidentSources()
    plan = plan_merge(rec, resident.for_recipe(rec.source_names()))
    live = {m.name: torch.full(m.shape, 123.0, dtype=m.dtype) for m in plan.metas}
    ptrs = {k: v.data_ptr() for k, v in live.items()}
    builds = rank_index.INDEXES.builds
    for _ in range(3):  # the same buffers again (later candidates cut from rank indexes)
        merge_into(plan, live, seed=4)
    assert {k: v.data_ptr() for k, v in live.items()} == ptrs
    assert (rank_index.INDEXES.builds > builds) == (method in ("ties", "breadcrumbs_ties"))
    assert set(live) == set(fresh)
    for name, t in fresh.items():
        assert torch.equal(live[name], t), name
    merge_to_dir(rec, tmp_path / "out", seed=4)
    with ModelDir(tmp_path / "out") as out:
        for name in out.tensor_names:
            assert torch.equal(out.read(name), fresh[name]), name


def test_merge_into_rounds_to_the_planned_dtype_and_checks_outputs(tiny_models) -> None:
    rec = recipe(tiny_models, "task_arithmetic", dtype="bfloat16")
    resident = ResidentSources()
    plan = plan_merge(rec, resident.for_recipe(rec.source_names()))
    live = {m.name: torch.empty(m.shape, dtype=torch.float32) for m in plan.metas}  # a float32 engine
    merge_into(plan, live)
    exported = dict(iter_merged(plan))
    for name, t in exported.items():
        assert t.dtype == torch.bfloat16
        assert torch.equal(live[name], t.float()), name  # evaluated == exported, rounding included
    live.pop(next(iter(live)))
    with pytest.raises(MergeError, match="no output tensor"):
        merge_into(plan, live)
    bad = {m.name: torch.empty(3) for m in plan.metas}
    with pytest.raises(MergeError, match="has shape"):
        merge_into(plan, bad)


def test_hf_evaluator_writes_candidates_into_the_model_parameters(tiny_models) -> None:
    from evomerge.evaluate.hf import HFEvaluator

    ev = HFEvaluator()
    engine = ev.write_weights(recipe(tiny_models, "ties"), seed=1)
    params = dict(engine.model.named_parameters())
    ptrs = {k: p.data_ptr() for k, p in params.items()}
    engine2 = ev.write_weights(recipe(tiny_models, "dare_ties"), seed=2)
    assert engine2 is engine and {k: p.data_ptr() for k, p in engine.model.named_parameters()} == ptrs
    with plan_merge(recipe(tiny_models, "dare_ties")) as plan:
        for name, t in iter_merged(plan, seed=2):
            assert torch.equal(params[name].detach(), t), name


def test_scaled_zoo_builds_loadable_deterministic_models(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    shape = ScaledShape(64, 128, 3, 4, 2, 96)
    m1 = build_scaled_zoo(tmp_path / "a", shape, experts=2, seed=3, log=None)
    build_scaled_zoo(tmp_path / "b", shape, experts=2, seed=3, log=None)
    assert m1["models"] == ["base", "expert_0", "expert_1"]
    assert m1["parameters"] == shape.num_parameters()
    for name in m1["models"]:
        a = (tmp_path / "a" / name / "model.safetensors").read_bytes()
        assert a == (tmp_path / "b" / name / "model.safetensors").read_bytes(), name
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / name)
        assert sum(p.numel() for p in model.parameters()) == shape.num_parameters()
    with ModelDir(tmp_path / "a" / "base") as base, ModelDir(tmp_path / "a" / "expert_0") as e0:
        name = "model.layers.0.mlp.down_proj.weight"
        d = e0.read(name) - base.read(name)
        assert 0.0 < float(d.abs().mean()) < 0.01  # a small task vector ...
        s = torch.linalg.svdvals(d)
        assert float(s[:8].sum() / s.sum()) > 0.3  # ... with a strong low-rank part
    assert json.loads((tmp_path / "a" / "zoo.json").read_text())["kind"] == "scaled"
    with pytest.raises(ConfigError, match="already exists"):
        build_scaled_zoo(tmp_path / "a", shape, log=None)
    with pytest.raises(ConfigError, match="unknown zoo size"):
        build_scaled_zoo(tmp_path / "c", "7b", log=None)
    with pytest.raises(ConfigError, match="vocab_size 10 is below"):
        build_scaled_zoo(tmp_path / "d", ScaledShape(64, 128, 1, 4, 4, 10), log=None)
    assert SIZES["100m"].num_parameters() == 97_536_768
