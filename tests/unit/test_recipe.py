"""Recipes: validation, canonical JSON and ids, mergekit YAML in and out."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.recipe import Recipe, load_recipe, loads_recipe

TIES = """
merge_method: ties
base_model: base
models:
  - model: base
  - model: expert_a
    parameters: {weight: [0.5, 0.7], density: 0.5}
  - model: expert_b
    parameters:
      weight: 0.5
      density: [{filter: self_attn, value: 0.3}, {value: 0.6}]
parameters: {normalize: true, lambda: 1}
dtype: float32
"""


def test_mergekit_yaml_loads_and_drops_base_from_models() -> None:
    r = loads_recipe(TIES)
    assert r.merge_method == "ties" and r.base_model == "base"
    assert [m.model for m in r.models] == ["expert_a", "expert_b"]
    assert r.parameters == {"normalize": True, "lambda": 1.0}
    assert r.source_names() == ["base", "expert_a", "expert_b"]


def test_recipe_id_is_stable_and_ignores_formatting() -> None:
    a = loads_recipe(TIES)
    b = loads_recipe(TIES.replace("lambda: 1}", "lambda: 1.0}").replace("{normalize: true,", "{normalize: true ,"))
    assert a.recipe_id == b.recipe_id
    assert a.canonical_json() == b.canonical_json()
    assert a.recipe_id.startswith("r-") and len(a.recipe_id) == 18


def test_recipe_id_changes_with_any_value() -> None:
    a = loads_recipe(TIES)
    b = loads_recipe(TIES.replace("[0.5, 0.7]", "[0.5, 0.71]"))
    assert a.recipe_id != b.recipe_id


def test_yaml_round_trip_preserves_identity(tmp_path: Path) -> None:
    r = loads_recipe(TIES)
    p = tmp_path / "r.yaml"
    p.write_text(r.to_yaml())
    assert load_recipe(p).recipe_id == r.recipe_id


def test_slerp_export_lists_base_among_models_like_mergekit() -> None:
    r = loads_recipe("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters: {t: 0.3}\n")
    assert [m.model for m in r.models] == ["b"]
    assert [m["model"] for m in r.to_mergekit()["models"]] == ["a", "b"]
    assert loads_recipe(r.to_yaml()).recipe_id == r.recipe_id


def test_resolved_makes_paths_absolute(tmp_path: Path) -> None:
    r = loads_recipe(TIES).resolved(tmp_path)
    assert r.base_model == str((tmp_path / "base").resolve())
    assert all(Path(m.model).is_absolute() for m in r.models)


def test_passthrough_needs_slices() -> None:
    r = loads_recipe(
        "merge_method: passthrough\nslices:\n  - sources: [{model: a, layer_range: [0, 2]}]\n"
        "  - sources: [{model: b, layer_range: [1, 2]}]\n"
    )
    assert r.source_names() == ["a", "b"]
    with pytest.raises(ConfigError, match="passthrough needs `slices:`"):
        loads_recipe("merge_method: passthrough\nmodels: [{model: a}]\n")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\nfoo: 1\n", "foo: unknown key"),
        ("merge_method: ties\nbase_model: b\n", "`models:` is empty"),
        ("merge_method: ties\nmodels: [{model: a, parameters: {weight: high}}]\n", "parameter 'weight'"),
        ("merge_method: ties\nmodels: [{model: a}]\ndtype: float64\n", "dtype"),
        ("- a\n- b\n", "must be a mapping"),
        ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [3, 1]}]}]\n", "layer_range"),
    ],
)
def test_bad_recipes_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        loads_recipe(text, source="r.yaml")


def test_recipe_is_frozen() -> None:
    r = loads_recipe(TIES)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its ValidationError
        r.merge_method = "linear"  # type: ignore[misc]
    assert isinstance(r, Recipe)


def test_recipe_formats_keep_stored_ids_and_readings() -> None:
    """A recipe stored before formats existed has no recipe_format: it is read as format 1 and
    keeps its id; a new recipe is format 2 and its id names the format, so the two never share
    an id (they can build different models: lm_head at a gradient's last or first value)."""
    import json

    from evomerge.recipe import RECIPE_FORMAT, recipe_from_dict, stored_recipe

    cfg = {"merge_method": "task_arithmetic", "base_model": "b",
           "models": [{"model": "e", "parameters": {"weight": [0.0, 1.0]}}]}
    new = recipe_from_dict(cfg)
    assert new.recipe_format == RECIPE_FORMAT == 2
    old_json = new.model_copy(update={"recipe_format": 1}).canonical_json()
    assert "recipe_format" not in old_json  # the canonical form archives held before formats
    old = stored_recipe(json.loads(old_json))
    assert old.recipe_format == 1 and old.canonical_json() == old_json
    assert old.recipe_id != new.recipe_id
    again = stored_recipe(json.loads(new.canonical_json()))
    assert again.recipe_format == 2 and again.recipe_id == new.recipe_id
    # mergekit's YAML never carries the current format; a format 1 recipe says what it is
    assert "recipe_format" not in new.to_yaml() and "recipe_format: 1" in old.to_yaml()
    assert recipe_from_dict(old.to_mergekit()).recipe_id == old.recipe_id


@pytest.mark.parametrize(("text", "needle"), [
    ("merge_method: ties\nbase_model: b\nslices: [{sources: [{model: a, layer_range: [0, 2]}, "
     "{model: b, layer_range: [0, 3]}]}]\n", "same number of layers"),
    ("merge_method: ties\nbase_model: b\nslices: [{sources: [{model: a, layer_range: [0, 2]}, "
     "{model: a, layer_range: [2, 4]}]}]\n", "same model twice"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 2]}]}]\n",
     "either `models:` or `slices:`"),
    ("merge_method: slerp\nbase_model: b\nslices: [{identity: true}]\n", "for passthrough paths"),
])
def test_merged_slices_are_checked(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        loads_recipe(text)


def test_merged_slices_list_every_source_and_keep_slice_parameters() -> None:
    r = loads_recipe("merge_method: slerp\nbase_model: a\nslices:\n  - sources:\n"
                     "      - {model: a, layer_range: [0, 4]}\n      - {model: b, layer_range: [2, 6]}\n"
                     "    parameters: {t: [0.1, 0.9]}\n")
    assert r.source_names() == ["a", "b"] and r.slices[0].parameters == {"t": [0.1, 0.9]}
    assert loads_recipe(r.to_yaml()).recipe_id == r.recipe_id
    assert "models" not in r.to_mergekit()  # mergekit takes models or slices, never both


# ---------------------------------------------------------------- mergekit 0.1.5's value forms


def test_mergekit_value_forms_read_as_their_plain_equivalents() -> None:
    """A single {filter, value} mapping is a one-entry list; numbers written as strings (YAML leaves
    1e-3 a string) are numbers; bool words are bools; an empty `parameters:` is none; torch.*
    dtype names are dtype names."""
    loose = loads_recipe("""
merge_method: ties
base_model: b
models:
  - model: a
    parameters:
      weight: {filter: mlp, value: 1e-3}
      density: [" 0.5", 1]
  - model: c
    parameters:
parameters:
  normalize: "yes"
  int8_mask: "off"
dtype: torch.bfloat16
out_dtype: torch.float16
""")
    plain = loads_recipe("""
merge_method: ties
base_model: b
models:
  - model: a
    parameters:
      weight: [{filter: mlp, value: 0.001}]
      density: [0.5, 1.0]
  - model: c
parameters: {normalize: true, int8_mask: false}
dtype: bfloat16
out_dtype: float16
""")
    assert loose == plain and loose.recipe_id == plain.recipe_id


@pytest.mark.parametrize("value", ["high", "[0.5, true]", "[[0.5]]", "{filter: mlp}"])
def test_values_that_are_neither_numbers_bools_gradients_nor_filters_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="parameter 'weight'"):
        loads_recipe(f"merge_method: linear\nmodels: [{{model: a, parameters: {{weight: {value}}}}}]\n")


def test_numbers_and_bools_cross_over_as_mergekit_reads_them() -> None:
    from evomerge.merge.ops import resolve_params
    from evomerge.merge.registry import get_op

    p = resolve_params(get_op("ties").spec, {"weight": True, "normalize": 0, "int8_mask": 1.0}, 1)
    assert p["weight"] == [1.0] and p["normalize"] is False and p["int8_mask"] is True
    with pytest.raises(ConfigError, match="normalize must be true or false"):
        resolve_params(get_op("ties").spec, {"normalize": 2}, 1)


def test_tokenizer_keys_and_slice_keys_of_mergekit_are_read(tmp_path: Path) -> None:
    r = loads_recipe("""
merge_method: ties
slices:
  - sources: [{model: b, layer_range: [0, 2]}, {model: a, layer_range: [0, 2]}]
    base_model: b
    residual_weight: 0.5
tokenizer:
  source: tok
  pad_to_multiple_of: 8
chat_template: auto
""")
    assert r.slices[0].base_model == "b" and r.tokenizer_choice == "tok"
    resolved = r.resolved(tmp_path)
    assert resolved.tokenizer_choice == str((tmp_path / "tok").resolve())
    assert resolved.slices[0].base_model == str((tmp_path / "b").resolve())
    with pytest.raises(ConfigError, match="either `tokenizer_source:` or `tokenizer:`"):
        loads_recipe("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: base\ntokenizer: {source: base}\n")
    assert loads_recipe("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: union\n").resolved(
        tmp_path).tokenizer_choice == "union"
