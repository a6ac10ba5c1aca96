"""Hand-computed examples of the merge ops and their parameter errors."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.merge.registry import get_op, list_ops

B = torch.zeros(4)


def test_registry_names_follow_mergekit() -> None:
    assert list_ops() == sorted(["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
                                 "breadcrumbs_ties", "slerp", "passthrough"])
    with pytest.raises(ConfigError, match="unknown merge method 'tiez'") as info:
        get_op("tiez")
    assert "ties" in str(info.value)


def test_task_arithmetic_lambda_and_weights() -> None:
    e1, e2 = torch.tensor([1.0, 2, 3, 4]), torch.tensor([-1.0, 0, 1, 2])
    out = get_op("task_arithmetic")([e1, e2], base=B, params={"weight": [0.5, 1.0], "lambda": 2.0})
    assert out.tolist() == [-1.0, 2.0, 5.0, 8.0]


def test_ties_trims_elects_and_divides_by_agreeing_weights() -> None:
    d1 = torch.tensor([3.0, -2.0, 0.5, 1.0])
    d2 = torch.tensor([-1.0, -4.0, 0.2, -1.5])
    # density 0.5 keeps the 2 largest |d|: d1 -> [3, -2, 0, 0]; d2 -> [0, -4, 0, -1.5]
    out = get_op("ties")([d1, d2], base=B, params={"density": 0.5, "weight": [1.0, 1.0]})
    # entry 0: only d1 (+3) -> 3/1; entry 1: both negative -> (-2-4)/2; entry 3: only d2 -> -1.5/1
    assert out.tolist() == [3.0, -3.0, 0.0, -1.5]


def test_ties_zero_sum_elects_plus() -> None:
    d1, d2 = torch.tensor([2.0]), torch.tensor([-2.0])
    out = get_op("ties")([d1, d2], base=torch.zeros(1), params={"normalize": True})
    assert out.tolist() == [2.0]  # sign of 0 counts as +, only d1 agrees, divided by its weight


def test_breadcrumbs_keeps_the_band_below_the_outliers() -> None:
    d = torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -10.0])
    out = get_op("breadcrumbs")([d], base=torch.zeros(10), params={"density": 0.3, "gamma": 0.1})
    # drop the top 10% (|-10|), keep the next 30% by magnitude (0.9, -0.8, 0.7)
    assert torch.allclose(out, torch.tensor([0, 0, 0, 0, 0, 0, 0.7, -0.8, 0.9, 0.0]))


def test_dare_density_zero_is_the_base() -> None:
    out = get_op("dare_ties")([torch.ones(8)], base=B.repeat(2), params={"density": 0.0},
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.zeros(8))


def test_passthrough_copies_and_scales() -> None:
    e = torch.randn(3, 3)
    assert torch.equal(get_op("passthrough")([e], base=None, params={}), e)
    assert torch.allclose(get_op("passthrough")([e], base=None, params={"scale": 0.5}), e * 0.5)


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("ties", {"densty": 0.5}, r"unknown parameter\(s\) \['densty'\]"),
        ("ties", {"density": 1.5}, r"density=1.5 is outside \[0.0, 1.0\]"),
        ("ties", {"weight": [1.0, 2.0, 3.0]}, "weight has 3 values for 2 models"),
        ("ties", {"lambda": [1.0, 2.0]}, "lambda is one global value"),
        ("ties", {"normalize": "yes"}, "normalize must be true or false"),
        ("ties", {"weight": float("nan")}, "must be finite"),
        ("slerp", {"t": -0.1}, "t=-0.1 is outside"),
    ],
)
def test_bad_parameters_name_the_problem(name, params, needle) -> None:
    experts = [torch.ones(2), torch.ones(2)] if name != "slerp" else [torch.ones(2)]
    with pytest.raises(ConfigError, match=needle):
        get_op(name)(experts, base=torch.zeros(2), params=params)


def test_shape_mismatch_and_missing_base_and_generator() -> None:
    with pytest.raises(ConfigError, match="shapes differ"):
        get_op("linear")([torch.ones(2), torch.ones(3)], base=None, params={})
    with pytest.raises(ConfigError, match="needs a base model"):
        get_op("ties")([torch.ones(2)], base=None, params={})
    with pytest.raises(ConfigError, match="seeded torch.Generator"):
        get_op("dare_ties")([torch.ones(2)], base=torch.zeros(2), params={})
    with pytest.raises(ConfigError, match="needs 1..1 models"):
        get_op("slerp")([torch.ones(2), torch.ones(2)], base=torch.zeros(2), params={})
