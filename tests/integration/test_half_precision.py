"""16-bit checkpoints end to end (issue 20): a search over bfloat16 sources merges each tensor in
float32 and rounds it once to bfloat16 (its recipes say ``dtype: float32``, ``out_dtype:
bfloat16``); the live transformers model holds bfloat16 weights equal to that merge and to the
recipe's export; ``merge_dtype: source`` (and runs from before the option) keep mergekit's
arithmetic in the sources' own dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from evomerge.evaluate.hf import HFEvaluator
from evomerge.merge.io import ModelDir
from evomerge.merge.materialize import merge_to_dir
from evomerge.merge.registry import get_op
from evomerge.space.codec import PSCodec
from evomerge.space.schema import SearchSpace

OBJ = [{"task": "fitness/zoo_add.yaml"}]


def to_bf16(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    with ModelDir(src) as md:
        save_file({n: md.read(n).to(torch.bfloat16) for n in md.tensor_names}, str(dst / "model.safetensors"),
                  metadata={"format": "pt"})
    return dst


@pytest.fixture
def bf16_models(tiny_models: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    return {k: to_bf16(v, tmp_path / f"{k}-bf16") for k, v in tiny_models.items()}


def space(models: dict[str, Path], **kw) -> SearchSpace:  # type: ignore[no-untyped-def]
    return SearchSpace.model_validate(dict(
        name="h", base=str(models["base"]), experts=(str(models["expert_a"]), str(models["expert_b"])),
        merge_method="ties", vary={"weight": {"low": 0.0, "high": 1.0, "init": 0.7},
                                   "density": {"low": 0.1, "high": 1.0, "init": 0.4}},
        objectives=OBJ, **kw))


def test_bf16_sources_merge_in_float32_rounded_once_into_a_bf16_live_model(bf16_models, tmp_path: Path) -> None:
    codec = PSCodec(space(bf16_models))
    recipe = codec.decode(codec.initial())
    assert (recipe.dtype, recipe.out_dtype) == ("float32", "bfloat16")
    ev = HFEvaluator()
    live = dict(ev.write_weights(recipe).model.named_parameters())
    assert {p.dtype for p in live.values()} == {torch.bfloat16}
    op = get_op("ties")
    with ModelDir(bf16_models["base"]) as base, ModelDir(bf16_models["expert_a"]) as a, \
            ModelDir(bf16_models["expert_b"]) as b:
        checked = 0
        for name in base.tensor_names:
            if name not in live:
                continue
            params = {"weight": [0.7, 0.7], "density": [0.4, 0.4]}
            want = op([a.read(name).float(), b.read(name).float()], base=base.read(name).float(), params=params)
            assert torch.equal(live[name].detach(), want.to(torch.bfloat16)), name  # float32, rounded once
            in_bf16 = op([a.read(name), b.read(name)], base=base.read(name), params=params)
            checked += not torch.equal(in_bf16, want.to(torch.bfloat16))  # rounding at every step differs
        assert checked > 0
    merge_to_dir(recipe, tmp_path / "export")
    with ModelDir(tmp_path / "export") as out:
        for name in out.tensor_names:
            if name in live:
                t = out.read(name)
                assert t.dtype == torch.bfloat16 and torch.equal(t, live[name].detach()), name


def test_merge_dtype_source_keeps_the_sources_arithmetic_and_32_bit_sources_are_unchanged(
        bf16_models, tiny_models) -> None:
    codec = PSCodec(space(bf16_models, merge_dtype="source"))
    recipe = codec.decode(codec.initial())
    assert (recipe.dtype, recipe.out_dtype) == (None, None)
    ev = HFEvaluator()
    live = dict(ev.write_weights(recipe).model.named_parameters())
    assert {p.dtype for p in live.values()} == {torch.bfloat16}
    fp32 = PSCodec(space(tiny_models))  # float32 sources: recipes (and their ids) as before the option
    assert (fp32.decode(fp32.initial()).dtype, fp32.decode(fp32.initial()).out_dtype) == (None, None)


def test_runs_store_the_merge_dtype_and_older_runs_resume_in_the_sources_dtype() -> None:
    from evomerge.runner.service import run_space

    stored = {"name": "h", "base": "b", "experts": ["e"], "objectives": OBJ, "vary": {"weight": {"low": 0, "high": 1}}}
    assert run_space({"space": stored}).merge_dtype == "source"  # a run from before the option
    assert run_space({"space": {**stored, "merge_dtype": "float32"}}).merge_dtype == "float32"
