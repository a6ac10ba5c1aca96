"""DFS and PS+DFS spaces: schema rules, the path codec, per-module PS genes, multi-objective rules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.schedule import resolve, slice_position
from evomerge.space.codec import PSCodec
from evomerge.space.dataflow import OFF, ON, DFSCodec
from evomerge.space.schema import SearchSpace, load_space

OBJ = [{"task": "/a.yaml"}, {"task": "/b.yaml"}]


def dfs_space(**flow) -> SearchSpace:
    return SearchSpace.model_validate(dict(name="d", kind="dfs", base="/m/base", experts=("/m/a", "/m/b"),
                                           dataflow=flow, objectives=OBJ))


def test_slot_codec_genes_start_point_and_decoding() -> None:
    codec = DFSCodec(dfs_space(repeats=2, scale={"low": 0.5, "high": 2.0, "init": 1.0}),
                     ["/m/base", "/m/a", "/m/b"], [2, 2, 2])
    assert (codec.M, codec.T, codec.dim) == (6, 12, 24)
    x0 = codec.initial()
    path = codec.path(x0)
    assert [s.layer if s else None for s, _ in path][:2] == [0, 1] and all(s is None for s, _ in path[2:])
    assert all(c == pytest.approx(1.0) for _, c in path)
    r = codec.decode(x0)
    assert r.merge_method == "passthrough" and r.base_model == "/m/base" and len(r.slices) == 12 + 2
    # empty slices of the first source at both ends: its embeddings, final norm and head
    for end in (r.slices[0], r.slices[-1]):
        assert end.num_layers == 0 and end.sources[0].model == "/m/base"
    path_slices = r.slices[1:-1]
    assert path_slices[0].sources[0].layer_range == (0, 1) and path_slices[2].identity
    # slot 9 is layer 1 of the second repeat's source list: /m/a layer 1
    x = x0.copy()
    x[codec.include_index(9)] = 0.9
    x[2 * 9 + 1] = 1.0  # the top of the scale bounds
    r = codec.decode(x)
    assert r.slices[1 + 9].sources[0].model == "/m/a" and r.slices[1 + 9].sources[0].layer_range == (1, 2)
    assert r.slices[1 + 9].input_scale == 2.0
    # the other sources' own paths seed M2N2
    seeds = codec.expert_genomes()
    assert len(seeds) == 2 and [s.source for s, _ in codec.path(seeds[1]) if s] == [2, 2]
    assert ON > 0.5 > OFF


def test_transition_codec_uses_the_matrix_entry_of_the_previous_layer() -> None:
    codec = DFSCodec(dfs_space(scales="transition"), ["/m/base", "/m/a"], [2, 2])
    assert codec.dim == 4 + 16
    x = np.full(codec.dim, 0.0)
    x[[0, 3]] = 1.0  # base layer 0, then a's layer 1 (order index 3)
    x[codec.T + 0 * 4 + 3] = 1.0  # W[0, 3] at the top of [0.5, 2.0]
    path = codec.path(x)
    assert [(s.source, s.layer) if s else None for s, _ in path] == [(0, 0), None, None, (1, 1)]
    assert path[0][1] == 1.0 and path[3][1] == 2.0


@pytest.mark.parametrize(("kw", "needle"), [
    (dict(kind="dfs", vary={"weight": {"low": 0, "high": 1}}), "vary/fixed/per_module are for kind ps"),
    (dict(kind="ps_dfs"), "kind ps_dfs needs dataflow.merged"),
    (dict(kind="dfs", dataflow={"merged": {"merge_method": "linear"}}), "dataflow.merged is for kind ps_dfs"),
    (dict(kind="ps"), "a ps space needs `vary:`"),
    (dict(kind="dfs", dataflow={"scale": {"low": 0.0, "high": 2.0}}), "dataflow.scale.low must be above 0"),
    (dict(kind="dfs", dataflow={"repeats": 9}), "less than or equal to 8"),
    (dict(kind="dfs", multi_objective=True), "multi_objective: true needs strategy nevergrad"),
])
def test_bad_dataflow_spaces(kw: dict, needle: str) -> None:
    d = dict(name="d", base="/m/base", experts=("/m/a",), objectives=OBJ) | kw
    with pytest.raises(ValueError, match="validation error") as info:
        SearchSpace.model_validate(d)
    assert needle in str(info.value)


def test_ps_dfs_merged_recipe_is_checked_at_load_with_paths_resolved(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("x: 1\n")
    p = tmp_path / "s.yaml"
    p.write_text("name: s\nkind: ps_dfs\nbase: m/base\nexperts: [m/a]\nobjectives: [{task: t.yaml}]\n"
                 "dataflow:\n  merged: {merge_method: task_arithmetic, base_model: m/base,\n"
                 "           models: [{model: m/a, parameters: {weight: 0.5}}]}\n")
    s = load_space(p)
    r = s.merged_recipe()
    assert r.base_model == str(tmp_path / "m" / "base") and r.models[0].model == str(tmp_path / "m" / "a")
    p.write_text(p.read_text().replace("weight: 0.5", "wieght: 0.5").replace("task_arithmetic", "passthrough"))
    with pytest.raises(ConfigError, match="dataflow.merged"):
        load_space(p)
    # a recipe file: its own relative paths resolve against its own directory
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ps.yaml").write_text("merge_method: linear\nmodels: [{model: ../m/a, parameters: {weight: 1}}]\n")
    p.write_text("name: s\nkind: ps_dfs\nbase: m/base\nexperts: [m/a]\nobjectives: [{task: t.yaml}]\n"
                 "dataflow: {merged: r/ps.yaml}\n")
    assert load_space(p).merged_recipe().models[0].model == str(tmp_path / "m" / "a")


def test_per_module_genes_write_mergekit_filters() -> None:
    s = SearchSpace.model_validate(dict(name="p", base="/m/base", experts=("/m/a",), merge_method="task_arithmetic",
                                        per_module=True, vary={"weight": {"low": 0.0, "high": 1.0}},
                                        objectives=OBJ))
    codec = PSCodec(s, num_layers=2)
    assert [(g.group, g.module) for g in codec.genes] == [(0, "self_attn"), (0, "mlp"), (1, "self_attn"), (1, "mlp")]
    r = codec.decode(np.array([0.1, 0.2, 0.3, 0.4]))
    w = r.models[0].parameters["weight"]
    assert r.recipe_format == 2
    assert resolve(w, "model.layers.1.self_attn.q_proj.weight", slice_position(1, 2), fmt=2) == pytest.approx(0.3)
    assert resolve(w, "model.layers.0.mlp.up_proj.weight", slice_position(0, 2), fmt=2) == pytest.approx(0.2)
    assert resolve(w, "model.layers.1.input_layernorm.weight", slice_position(1, 2), fmt=2) == pytest.approx(0.35)


def test_filters_give_each_filter_and_the_rest_their_own_genes_and_smooth_writes_anchors() -> None:
    """Issue 17 (mergekit-evolve's genome): ``filters`` are gene sets per tensor-name filter plus the
    rest; ``smooth`` writes each group's value as a gradient anchor instead of one step per layer."""
    base = dict(name="p", base="/m/base", experts=("/m/a",), merge_method="task_arithmetic",
                vary={"weight": {"low": 0.0, "high": 1.0}}, objectives=OBJ, layer_groups=2)
    s = SearchSpace.model_validate(dict(base, filters=["mlp"]))
    codec = PSCodec(s, num_layers=4)
    assert [(g.group, g.module) for g in codec.genes] == [(0, "mlp"), (0, None), (1, "mlp"), (1, None)]
    w = codec.decode(np.array([0.1, 0.2, 0.3, 0.4])).models[0].parameters["weight"]
    assert w == [{"filter": "mlp", "value": [0.1, 0.1, 0.3, 0.3]}, {"value": [0.2, 0.2, 0.4, 0.4]}]
    smooth = PSCodec(SearchSpace.model_validate(dict(base, filters=["mlp"], smooth=True)), num_layers=4)
    w = smooth.decode(np.array([0.1, 0.2, 0.3, 0.4])).models[0].parameters["weight"]
    assert w == [{"filter": "mlp", "value": [0.1, 0.3]}, {"value": [0.2, 0.4]}]
    plain = PSCodec(SearchSpace.model_validate(dict(base, smooth=True, layer_groups=1, tokenizer_source="base")),
                    num_layers=4)
    one = plain.decode(np.array([0.7]))
    assert one.models[0].parameters["weight"] == 0.7  # one anchor: a scalar
    assert one.tokenizer_choice == "base"  # the space's tokenizer_source reaches every recipe
    for bad, match in ((dict(filters=["mlp"], per_module=True), "either `per_module: true` or `filters:`"),
                       (dict(filters=["mlp", "mlp"]), "filters must be distinct"),
                       (dict(smooth=True, non_layer="ends"), "non_layer: ends reads per-group steps")):
        with pytest.raises(ValueError, match=re.escape(match)):
            SearchSpace.model_validate(dict(base, **bad))
