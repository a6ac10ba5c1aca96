"""Per-layer schedules: mergekit's scalar, gradient and filter forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evomerge import schedule
from evomerge.errors import ConfigError


def v1(value, name: str, layer: int | None, n: int):
    """Format 1: position on the whole stack."""
    return schedule.resolve(value, name, schedule.depth_position(name, layer, n), fmt=1)


def v2(value, name: str, offset: int | None, n: int):
    """Format 2 (mergekit 0.1.5): position within a slice of n layers."""
    return schedule.resolve(value, name, schedule.slice_position(offset, n), fmt=2)


BOTH = pytest.mark.parametrize("res", [v1, v2], ids=["format1", "format2"])


@BOTH
def test_scalar_is_constant(res) -> None:
    assert res(0.3, "model.layers.1.mlp.up_proj.weight", 1, 4) == 0.3


@BOTH
def test_gradient_interpolates_over_depth(res) -> None:
    grad = [0.0, 1.0]
    vals = [res(grad, f"model.layers.{i}.x", i, 5) for i in range(5)]
    assert vals == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


@BOTH
@given(values=st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=12))
def test_per_layer_list_returns_each_entry_exactly(res, values: list[float]) -> None:
    n = len(values)
    got = [res(values, f"model.layers.{i}.self_attn.q_proj.weight", i, n) for i in range(n)]
    assert got == values


def test_format1_puts_non_layer_tensors_at_the_ends() -> None:
    grad = [0.1, 0.5, 0.9]
    assert v1(grad, "model.embed_tokens.weight", None, 4) == 0.1
    assert v1(grad, "lm_head.weight", None, 4) == 0.9
    assert v1(grad, "model.norm.weight", None, 4) == 0.9


def test_format2_puts_non_layer_tensors_at_the_first_value() -> None:
    """mergekit 0.1.5 plans embeddings, the final norm and lm_head at t = 0."""
    grad = [0.1, 0.5, 0.9]
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert v2(grad, name, None, 4) == 0.1


def test_format2_one_layer_slice_takes_the_last_value() -> None:
    assert schedule.slice_position(0, 1) == 1.0
    assert v2([0.2, 0.8], "model.layers.0.x", 0, 1) == 0.8


def test_format2_interpolates_as_mergekit_does() -> None:
    """(1 - f) * a + f * b, not a + (b - a) * f: the two differ in the last bit for some values."""
    values, n = [0.1, 0.7, 0.3], 11
    for i in range(n):
        t = i / (n - 1)
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        f = scaled - i0
        want = (1 - f) * values[i0] + f * values[min(2, i0 + 1)]
        assert v2(values, f"model.layers.{i}.x", i, n) == want


@BOTH
def test_filters_pick_first_match_and_default(res) -> None:
    value = schedule.check_value(
        "t", [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.7}, {"value": 0.5}], "x"
    )
    assert res(value, "model.layers.2.self_attn.q_proj.weight", 2, 3) == 1.0
    assert res(value, "model.layers.0.mlp.up_proj.weight", 0, 3) == 0.7
    assert res(value, "model.norm.weight", None, 3) == 0.5


def test_star_filter_is_a_wildcard_in_format2_only() -> None:
    value = schedule.check_value("w", [{"filter": "mlp", "value": 0.2}, {"filter": "*", "value": 0.9}], "x")
    assert v2(value, "model.layers.0.self_attn.o_proj.weight", 0, 2) == 0.9
    assert v1(value, "model.layers.0.self_attn.o_proj.weight", 0, 2) is None  # format 1: plain text


@BOTH
def test_unmatched_filter_resolves_to_none_and_is_dropped(res) -> None:
    value = schedule.check_value("w", [{"filter": "mlp", "value": 0.2}], "x")
    name = "model.layers.0.self_attn.o_proj.weight"
    assert res(value, name, 0, 2) is None
    fmt = 1 if res is v1 else 2
    t = schedule.depth_position(name, 0, 2) if fmt == 1 else schedule.slice_position(0, 2)
    assert schedule.resolve_all({"w": value, "lambda": 1.0}, name, t, fmt=fmt) == {"lambda": 1.0}


@BOTH
def test_lines_depth_scaling_is_a_gradient(res) -> None:
    """LiNeS eq. 2: lambda(l) = alpha + beta (l-1)/(L-1), as the gradient [alpha, alpha+beta]."""
    alpha, beta, L = 0.2, 0.6, 7
    vals = [res([alpha, alpha + beta], f"model.layers.{i}.x", i, L) for i in range(L)]
    assert vals == pytest.approx([alpha + beta * i / (L - 1) for i in range(L)])


@pytest.mark.parametrize(
    "bad",
    ["high", None, [], [1, "a"], [{"filter": "x"}], [{"filter": 3, "value": 1}], [{"value": [{"value": 1}]}],
     [{"value": 1, "other": 2}]],
)
def test_bad_values_raise_config_error(bad) -> None:
    with pytest.raises(ConfigError, match="parameter 'w'"):
        schedule.check_value("w", bad, "models[0]")


def test_ints_become_floats_bools_stay() -> None:
    assert schedule.check_value("w", 1, "x") == 1.0 and isinstance(schedule.check_value("w", 1, "x"), float)
    assert schedule.check_value("normalize", True, "x") is True
