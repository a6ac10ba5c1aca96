"""Data-flow (DFS) candidates as plain checkpoints: input scales folded into output projections
and unused slots as identity layers equal an explicit scaled forward over the source layers."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.hfmodel import load_hf_model
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import recipe_from_dict

# slot: (model, layer) or None for an unused slot; then the scale on the slot's input
PATH = [("expert_caesar", 0, 1.0), ("base", 1, 0.5), (None, None, 2.5), ("expert_length", 1, 1.7), ("expert_add", 0, 0.8)]


def dfs_recipe(zoo: Path):
    # empty slices of the first source at both ends: its embeddings, final norm and head
    ends = {"sources": [{"model": str(zoo / PATH[0][0]), "layer_range": [0, 0]}]}
    slices = [ends]
    for model, layer, scale in PATH:
        if model is None:
            slices.append({"identity": True, "input_scale": scale})
        else:
            slices.append({"sources": [{"model": str(zoo / model), "layer_range": [layer, layer + 1]}],
                           "input_scale": scale})
    return recipe_from_dict({"merge_method": "passthrough", "slices": [*slices, ends]})


def explicit_scaled_forward(zoo: Path, ids: torch.Tensor) -> torch.Tensor:
    """Embeddings of the first source, then each slot's real layer applied to c * h (identity
    slots return c * h), then the final norm and head: the DFS definition, no folding."""
    models = {name: load_hf_model(zoo / name) for name in {m for m, _, _ in PATH if m}}
    ref = copy.deepcopy(models[PATH[0][0]])
    layers = []
    for model, layer, scale in PATH:
        if model is None:
            layers.append((None, scale))
        else:
            layers.append((models[model].model.layers[layer], scale))
    ref.model.layers = torch.nn.ModuleList([copy.deepcopy(models[PATH[0][0]].model.layers[0]) for _ in PATH])
    for k, (layer, scale) in enumerate(layers):
        if layer is not None:
            ref.model.layers[k] = copy.deepcopy(layer)
        ref.model.layers[k].self_attn.layer_idx = k

        def pre(module, args, kwargs, c=scale):
            if args:
                return (args[0] * c, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * c}

        def identity(module, args, kwargs, output):
            return args[0] if args else kwargs["hidden_states"]

        ref.model.layers[k].register_forward_pre_hook(pre, with_kwargs=True)
        if layer is None:
            ref.model.layers[k].register_forward_hook(identity, with_kwargs=True)
    ref.config.num_hidden_layers = len(PATH)
    with torch.no_grad():
        return ref(input_ids=ids, use_cache=False).logits


def test_folded_path_equals_explicit_scaled_forward(zoo_dir: Path, tmp_path: Path) -> None:
    merge_to_dir(dfs_recipe(zoo_dir), tmp_path / "dfs")
    folded = load_hf_model(tmp_path / "dfs")
    assert folded.config.num_hidden_layers == len(PATH)
    ids = torch.tensor([[1, 31, 28, 33, 43, 14, 15, 16, 17, 42], [1, 26, 19, 27, 43, 21, 18, 25, 25, 42]])
    with torch.no_grad():
        got = folded(input_ids=ids, use_cache=False).logits
    want = explicit_scaled_forward(zoo_dir, ids)
    # exact up to RMSNorm's eps (the scale changes eps's relative weight) and float32 rounding
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    # the identity slot's output projections are zero; scales are folded as 1 / cumulative product
    layer2 = folded.model.layers[2]
    assert not layer2.self_attn.o_proj.weight.any() and not layer2.mlp.down_proj.weight.any()
    base = load_hf_model(zoo_dir / "base")
    torch.testing.assert_close(folded.model.layers[1].mlp.down_proj.weight, base.model.layers[1].mlp.down_proj.weight / 0.5)
    torch.testing.assert_close(folded.model.layers[1].self_attn.q_proj.weight, base.model.layers[1].self_attn.q_proj.weight)


def test_folding_matters(zoo_dir: Path, tmp_path: Path) -> None:
    """The same path without scales gives different logits, so the test above is not vacuous."""
    plain = recipe_from_dict({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(zoo_dir / m), "layer_range": [li, li + 1]}]} for m, li, _ in PATH if m]})
    merge_to_dir(plain, tmp_path / "plain")
    merge_to_dir(dfs_recipe(zoo_dir), tmp_path / "dfs")
    ids = torch.tensor([[1, 31, 28, 33, 43, 14, 15, 16, 17, 42]])
    with torch.no_grad():
        a = load_hf_model(tmp_path / "plain")(input_ids=ids).logits
        b = load_hf_model(tmp_path / "dfs")(input_ids=ids).logits
    assert a.shape[-1] == b.shape[-1] and (a[..., -1, :] - b[..., -1, :]).abs().max() > 1e-2


@pytest.mark.parametrize(("slice_", "needle"), [
    ({"identity": True, "sources": [{"model": "x", "layer_range": [0, 1]}]}, "identity slice takes no sources"),
    ({"input_scale": 1.0}, "needs at least one source"),
    ({"sources": [{"model": "x", "layer_range": [0, 1]}, {"model": "y", "layer_range": [0, 1]}]},
     "a passthrough slice takes one source"),
    ({"identity": True, "input_scale": 0.0}, "input_scale"),
    ({"identity": True, "input_scale": float("inf")}, "input_scale"),
])
def test_bad_dataflow_slices(slice_, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        recipe_from_dict({"merge_method": "passthrough", "slices": [slice_]})
