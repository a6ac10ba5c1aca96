"""Per-layer schedules: mergekit's scalar, gradient and filter forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evomerge import schedule
from evomerge.errors import ConfigError


def test_scalar_is_constant() -> None:
    assert schedule.resolve(0.3, "model.layers.1.mlp.up_proj.weight", 1, 4) == 0.3


def test_gradient_interpolates_over_depth() -> None:
    grad = [0.0, 1.0]
    vals = [schedule.resolve(grad, f"model.layers.{i}.x", i, 5) for i in range(5)]
    assert vals == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=12))
def test_per_layer_list_returns_each_entry_exactly(values: list[float]) -> None:
    n = len(values)
    got = [schedule.resolve(values, f"model.layers.{i}.self_attn.q_proj.weight", i, n) for i in range(n)]
    assert got == values


def test_non_layer_tensors_sit_at_the_ends() -> None:
    grad = [0.1, 0.5, 0.9]
    assert schedule.resolve(grad, "model.embed_tokens.weight", None, 4) == 0.1
    assert schedule.resolve(grad, "lm_head.weight", None, 4) == 0.9
    assert schedule.resolve(grad, "model.norm.weight", None, 4) == 0.9


def test_filters_pick_first_match_and_default() -> None:
    value = schedule.check_value(
        "t", [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.7}, {"value": 0.5}], "x"
    )
    assert schedule.resolve(value, "model.layers.2.self_attn.q_proj.weight", 2, 3) == 1.0
    assert schedule.resolve(value, "model.layers.0.mlp.up_proj.weight", 0, 3) == 0.7
    assert schedule.resolve(value, "model.norm.weight", None, 3) == 0.5


def test_unmatched_filter_resolves_to_none_and_is_dropped() -> None:
    value = schedule.check_value("w", [{"filter": "mlp", "value": 0.2}], "x")
    assert schedule.resolve(value, "model.layers.0.self_attn.o_proj.weight", 0, 2) is None
    assert schedule.resolve_all({"w": value, "lambda": 1.0}, "model.layers.0.self_attn.o_proj.weight", 0, 2) == {
        "lambda": 1.0
    }


def test_lines_depth_scaling_is_a_gradient() -> None:
    """LiNeS eq. 2: lambda(l) = alpha + beta (l-1)/(L-1), as the gradient [alpha, alpha+beta]."""
    alpha, beta, L = 0.2, 0.6, 7
    vals = [schedule.resolve([alpha, alpha + beta], f"model.layers.{i}.x", i, L) for i in range(L)]
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
