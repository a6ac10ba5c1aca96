"""Merge ops on hand-computed examples, the parameter contract (resolve_params) and its errors."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.merge import sparsify
from evomerge.merge.ops import OpSpec, ParamSpec, resolve_params
from evomerge.merge.registry import OPS, get_op, list_ops

NAMES = ["breadcrumbs", "breadcrumbs_ties", "dare_linear", "dare_ties", "della", "della_linear", "linear",
         "model_stock", "multislerp", "nuslerp", "passthrough", "sce", "slerp", "task_arithmetic", "ties"]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- registry


def test_registry_lists_exactly_the_mergekit_names() -> None:
    assert list_ops() == NAMES
    assert all(OPS[name].spec.name == name for name in NAMES)
    assert get_op("ties") is OPS["ties"]


def test_unknown_op_lists_the_known_names() -> None:
    with pytest.raises(ConfigError, match="unknown merge method 'tiez'") as info:
        get_op("tiez")
    for name in NAMES:
        assert name in str(info.value)
    assert "mergekit" not in info.value.message
    for name in ("karcher", "arcee_fusion", "nearswap", "ram", "ramplus_tl"):  # mergekit's, not built here
        with pytest.raises(ConfigError, match=f"'{name}': a mergekit method that evomerge does not build"):
            get_op(name)


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        OPS["mine"] = OPS["linear"]  # type: ignore[index]


def test_specs_describe_base_expert_count_and_randomness() -> None:
    spec = {name: OPS[name].spec for name in NAMES}
    assert [n for n in NAMES if spec[n].stochastic] == ["dare_linear", "dare_ties", "della", "della_linear"]
    no_base = ("linear", "passthrough", "nuslerp", "multislerp")
    assert not any(spec[n].requires_base for n in no_base)
    assert all(spec[n].requires_base for n in NAMES if n not in no_base)
    assert [n for n in NAMES if spec[n].optional_base] == ["multislerp", "nuslerp"]
    assert (spec["nuslerp"].min_experts, spec["nuslerp"].max_experts) == (2, 2)
    assert spec["model_stock"].min_experts == 2
    assert (spec["slerp"].min_experts, spec["slerp"].max_experts) == (1, 1)
    assert (spec["passthrough"].min_experts, spec["passthrough"].max_experts) == (1, 1)
    assert all(spec[n].paper for n in NAMES)
    for name in NAMES:
        params = {p.name: p for p in spec[name].params}
        if "lambda" in params:
            assert params["lambda"].default == 1.0 and not params["lambda"].per_source
        for per in ("weight", "density", "gamma"):
            if per in params:
                assert params[per].per_source
    def defaults(param: str) -> dict[str, bool]:
        return {n: p.default for n in NAMES for p in spec[n].params if p.name == param}

    # mergekit 0.1.5's registry: linear, ties and della normalize by default; DARE and DELLA rescale
    assert defaults("normalize") == {"linear": True, "task_arithmetic": False, "ties": True, "dare_ties": False,
                                     "breadcrumbs_ties": False, "dare_linear": False, "breadcrumbs": False,
                                     "della": True, "della_linear": False}
    assert defaults("rescale") == {"task_arithmetic": False, "ties": False, "dare_ties": True,
                                   "dare_linear": True, "breadcrumbs": False, "breadcrumbs_ties": False,
                                   "della": True, "della_linear": True}


# ---------------------------------------------------------------- resolve_params


def test_resolve_fills_defaults_and_broadcasts_per_source_scalars() -> None:
    spec = OPS["breadcrumbs_ties"].spec
    p = resolve_params(spec, {"density": 0.5, "lambda": 2}, 3)
    assert p == {"weight": [1.0, 1.0, 1.0], "density": [0.5, 0.5, 0.5], "gamma": [0.01, 0.01, 0.01],
                 "lambda": 2.0, "normalize": False, "rescale": False, "int8_mask": False}


def test_resolve_accepts_tuples_and_tensors_for_per_source_values() -> None:
    spec = OPS["ties"].spec
    assert resolve_params(spec, {"weight": (0.5, 2)}, 2)["weight"] == [0.5, 2.0]
    assert resolve_params(spec, {"density": torch.tensor([0.25, 0.75])}, 2)["density"] == [0.25, 0.75]


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("ties", {"densty": 0.5}, r"unknown parameter\(s\) \['densty'\]"),
        ("ties", {"density": 1.5}, r"density=1.5 is outside \[0.0, 1.0\]"),
        ("ties", {"density": [0.5, -0.1]}, r"density=-0.1 is outside \[0.0, 1.0\]"),
        ("breadcrumbs", {"gamma": 2.0}, r"gamma=2.0 is outside \[0.0, 1.0\]"),
        ("slerp", {"t": -0.1}, r"t=-0.1 is outside \[0.0, 1.0\]"),
        ("ties", {"weight": [1.0, 2.0, 3.0]}, "weight has 3 values for 2 models"),
        ("ties", {"weight": []}, "weight has 0 values for 2 models"),
        ("ties", {"lambda": [1.0, 2.0]}, "lambda is one global value"),
        ("ties", {"normalize": "yes"}, "normalize must be true or false"),
        ("ties", {"normalize": 2}, "normalize must be true or false"),  # (0 and 1 read as mergekit reads them)
        ("ties", {"weight": float("nan")}, "weight must be finite"),
        ("ties", {"lambda": float("inf")}, "lambda must be finite"),
        ("ties", {"weight": "1"}, "weight must be a number"),
        ("ties", {"density": None}, "density must be a number"),
    ],
)
def test_bad_parameters_name_the_parameter(name, params, needle) -> None:
    experts = [t(1, 2), t(3, 4)] if name != "slerp" else [t(1, 2)]
    with pytest.raises(ConfigError, match=needle) as info:
        get_op(name)(experts, base=t(0, 0), params=params, generator=gen())
    assert info.value.hint  # every parameter error says how to fix it
    with pytest.raises(ConfigError, match=needle):
        resolve_params(get_op(name).spec, params, len(experts))


def test_unknown_parameter_error_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_params(OPS["task_arithmetic"].spec, {"density": 0.5}, 1)
    assert "density" in str(info.value)
    for known in ("lambda", "normalize", "weight"):
        assert known in str(info.value)


def test_unbounded_side_is_shown_as_infinite() -> None:
    spec = OpSpec(name="demo",
                  params=(ParamSpec(name="x", default=0.0, low=0.0, high=None, per_source=False),),
                  requires_base=False, min_experts=1, max_experts=None, stochastic=False, paper="none")
    with pytest.raises(ConfigError, match=r"x=-1.0 is outside \[0.0, inf\]"):
        resolve_params(spec, {"x": -1}, 1)
    assert resolve_params(spec, {"x": 1e30}, 1) == {"x": 1e30}
    # weight and lambda are unbounded: negative values are allowed (as in mergekit)
    assert resolve_params(OPS["ties"].spec, {"weight": -3.0, "lambda": -2.0}, 1)["weight"] == [-3.0]


# ---------------------------------------------------------------- input checks


def test_shape_mismatch_missing_base_generator_and_expert_count() -> None:
    with pytest.raises(ConfigError, match="shapes differ"):
        get_op("linear")([t(1, 2), t(1, 2, 3)], base=None, params={})
    with pytest.raises(ConfigError, match="shapes differ"):
        get_op("ties")([t(1, 2), t(1, 2)], base=t(0, 0, 0), params={})
    with pytest.raises(ConfigError, match="shapes differ"):
        get_op("linear")([torch.ones(2, 3), torch.ones(3, 2)], base=None, params={})
    with pytest.raises(ConfigError, match="needs a base model"):
        get_op("ties")([t(1, 2)], base=None, params={})
    for name in ("dare_ties", "dare_linear"):
        with pytest.raises(ConfigError, match="seeded torch.Generator"):
            get_op(name)([t(1, 2)], base=t(0, 0), params={})
    with pytest.raises(ConfigError, match="needs 1..1 models, got 2"):
        get_op("slerp")([t(1, 2), t(1, 2)], base=t(0, 0), params={})
    with pytest.raises(ConfigError, match="got 0"):
        get_op("linear")([], base=None, params={})
    with pytest.raises(ConfigError, match="floating-point"):
        get_op("linear")([torch.ones(2, dtype=torch.int64)], base=None, params={})


# ---------------------------------------------------------------- linear / task arithmetic


def test_linear_weighted_average_and_unnormalized_sum() -> None:
    a, b = t(1, 2, 3), t(5, 6, 7)
    assert get_op("linear")([a, b], base=None, params={"weight": [1, 3]}).tolist() == [4.0, 5.0, 6.0]
    assert get_op("linear")([a, b], base=None, params={"weight": [1, 3], "normalize": False}).tolist() == \
        [16.0, 20.0, 24.0]
    # weights summing to zero: divide by 1 instead of by 0
    assert get_op("linear")([a, b], base=None, params={"weight": [1, -1]}).tolist() == [-4.0, -4.0, -4.0]


def test_task_arithmetic_lambda_weights_and_normalize() -> None:
    base = t(1, 1, 1, 1)
    e1, e2 = t(2, 3, 4, 5), t(0, 1, 2, 3)  # d1 = [1, 2, 3, 4], d2 = [-1, 0, 1, 2]
    op = get_op("task_arithmetic")
    assert op([e1, e2], base=base, params={}).tolist() == [1.0, 3.0, 5.0, 7.0]
    assert op([e1, e2], base=base, params={"weight": [0.5, 1.0], "lambda": 2.0}).tolist() == [0.0, 3.0, 6.0, 9.0]
    # normalize: (0.5 d1 + 1.0 d2) / 1.5 = [-1/3, 2/3, 5/3, 8/3]
    out = op([e1, e2], base=base, params={"weight": [0.5, 1.0], "normalize": True})
    torch.testing.assert_close(out, base + t(-1, 2, 5, 8) / 3)
    assert torch.equal(op([e1, e2], base=base, params={"lambda": 0.0}), base)


# ---------------------------------------------------------------- TIES


def test_ties_trims_elects_and_divides_by_agreeing_weights() -> None:
    d1 = t(3.0, -2.0, 0.5, 1.0)
    d2 = t(-1.0, -4.0, 0.2, -1.5)
    # density 0.5 keeps the 2 largest |d|: d1 -> [3, -2, 0, 0]; d2 -> [0, -4, 0, -1.5]
    out = get_op("ties")([d1, d2], base=torch.zeros(4), params={"density": 0.5, "weight": [1.0, 1.0]})
    # entry 0: only d1 (+3) -> 3/1; entry 1: both negative -> (-2-4)/2; entry 3: only d2 -> -1.5/1
    assert out.tolist() == [3.0, -3.0, 0.0, -1.5]


def test_ties_sign_election_uses_weighted_sums_and_zero_counts_as_plus() -> None:
    base = t(10, 10, 10)
    d1, d2 = t(2, 3, -1), t(-2, -1, 4)
    # weights [1, 1]: sums [0, 2, 3] -> elected [+, +, +]; agreeing: [d1], [d1], [d2]
    out = get_op("ties")([base + d1, base + d2], base=base, params={})
    assert out.tolist() == [12.0, 13.0, 14.0]
    # weights [1, 3]: weighted d2 = [-6, -3, 12]; sums [-4, 0, 11] -> elected [-, +, +]
    # entry 0: only d2 agrees -> -6 / 3 = -2; entry 1: only d1 -> 3 / 1; entry 2: only d2 -> 12 / 3
    out = get_op("ties")([base + d1, base + d2], base=base, params={"weight": [1, 3]})
    assert out.tolist() == [8.0, 13.0, 14.0]
    # without normalize the agreeing weighted deltas are summed; lambda scales the result
    out = get_op("ties")([base + d1, base + d2], base=base, params={"weight": [1, 3], "normalize": False,
                                                                     "lambda": 0.5})
    assert out.tolist() == [7.0, 11.5, 16.0]


def test_ties_divisor_sums_weights_of_all_agreeing_experts() -> None:
    base = torch.zeros(2)
    experts = [t(1, -1), t(2, 1), t(-4, 3)]
    # weights [1, 2, 1]: weighted [[1, -1], [4, 2], [-4, 3]], sums [1, 4] -> [+, +]
    # entry 0: agree 1, 4 -> (1 + 4) / (1 + 2); entry 1: agree 2, 3 -> (2 + 3) / (2 + 1)
    out = get_op("ties")(experts, base=base, params={"weight": [1, 2, 1]})
    torch.testing.assert_close(out, t(5 / 3, 5 / 3))


def test_ties_zero_divisor_and_all_zero_deltas_give_the_base() -> None:
    base = t(1, 2)
    out = get_op("ties")([base.clone(), base.clone()], base=base, params={"density": 0.5})
    assert torch.equal(out, base)
    # weights [1, -1] on deltas [1, 1] and [-1, -1]: both weighted deltas are +1 and agree, but
    # their weights sum to 0, so the divisor becomes 1 and the sum 2 is kept as it is
    out = get_op("ties")([base + t(1, 1), base - t(1, 1)], base=base, params={"weight": [1, -1]})
    assert out.tolist() == [3.0, 4.0]


def test_ties_keeps_at_least_one_entry_and_exactly_k_with_equal_magnitudes() -> None:
    d = t(0.5, -4.0, 1.0, 2.0)
    out = get_op("ties")([d], base=torch.zeros(4), params={"density": 0.1})  # int(0.4) = 0 -> 1
    assert out.tolist() == [0.0, -4.0, 0.0, 0.0]
    out = get_op("ties")([d], base=torch.zeros(4), params={"density": 0.0})
    assert out.tolist() == [0.0, -4.0, 0.0, 0.0]
    same = t(1, -1, 1, -1, 1, -1)
    kept = sparsify.magnitude_topk(same.clone(), 0.5)
    assert kept.tolist() == [1.0, -1.0, 1.0, 0.0, 0.0, 0.0]  # exactly k = 3: lower indices win ties


# ---------------------------------------------------------------- breadcrumbs


def test_breadcrumbs_keeps_the_band_below_the_outliers() -> None:
    d = t(0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -10.0)
    out = get_op("breadcrumbs")([d], base=torch.zeros(10), params={"density": 0.3, "gamma": 0.1})
    # drop the top 10% (|-10|), keep the next 30% by magnitude (0.9, -0.8, 0.7), drop the rest
    assert out.tolist() == pytest.approx([0, 0, 0, 0, 0, 0, 0.7, -0.8, 0.9, 0])
    out = get_op("breadcrumbs")([d], base=torch.zeros(10), params={"density": 0.2, "gamma": 0.3})
    # drop the 3 largest (10, 0.9, 0.8), keep the next 2 (0.7, 0.6)
    assert out.tolist() == pytest.approx([0, 0, 0, 0, 0, -0.6, 0.7, 0, 0, 0])
    out = get_op("breadcrumbs")([d], base=torch.zeros(10), params={"density": 0.5, "gamma": 0.0})
    assert out.tolist() == pytest.approx([0, 0, 0, 0, 0, -0.6, 0.7, -0.8, 0.9, -10.0])


def test_breadcrumbs_density_takes_precedence_over_gamma() -> None:
    d = t(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    # density 0.8 + gamma 0.5 > 1: keep 8 entries, so only 2 outliers are dropped
    out = get_op("breadcrumbs")([d], base=torch.zeros(10), params={"density": 0.8, "gamma": 0.5})
    assert out.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 0, 0]
    # density 1 keeps everything (gamma is ignored), density 0 keeps nothing
    out = get_op("breadcrumbs")([d], base=torch.zeros(10), params={"density": 1.0, "gamma": 0.5})
    assert torch.equal(out, d)
    out = get_op("breadcrumbs")([d], base=t(*range(10)), params={"density": 0.0})
    assert torch.equal(out, t(*range(10)))


def test_breadcrumbs_weights_lambda_and_ties_consensus() -> None:
    base = torch.zeros(5)
    d1 = t(1, 2, 3, 4, 100)  # gamma 0.2 drops 100; density 0.4 keeps 4, 3
    d2 = t(-1, -5, -6, 2, 50)  # drops 50, keeps -6, -5
    params = {"density": 0.4, "gamma": 0.2, "weight": [1.0, 0.5]}
    # breadcrumbs: [0, 0, 3, 4, 0] + 0.5 * [0, -5, -6, 0, 0] = [0, -2.5, 0, 4, 0]; lambda 2
    out = get_op("breadcrumbs")([d1, d2], base=base, params={**params, "lambda": 2.0})
    assert out.tolist() == [0.0, -5.0, 0.0, 8.0, 0.0]
    # breadcrumbs_ties: sums [0, -2.5, 0, 4, 0] -> [+, -, +, +, +]; entry 2 (3 vs -3): only d1
    # agrees -> 3 / 1; entry 1: only d2 -> -2.5 / 0.5 = -5; entry 3: only d1 -> 4
    out = get_op("breadcrumbs_ties")([d1, d2], base=base, params={**params, "normalize": True})
    assert out.tolist() == [0.0, -5.0, 3.0, 4.0, 0.0]
    # without normalize (mergekit's default): the agreeing weighted deltas are summed
    out = get_op("breadcrumbs_ties")([d1, d2], base=base, params=params)
    assert out.tolist() == [0.0, -2.5, 3.0, 4.0, 0.0]


# ---------------------------------------------------------------- DARE


def test_dare_survivors_are_rescaled_by_one_over_density() -> None:
    base = torch.full((4000,), 2.0)
    d = torch.linspace(0.5, 1.5, 4000)
    out = get_op("dare_linear")([base + d], base=base, params={"density": 0.25}, generator=gen(3))
    delta = out - base
    kept = delta != 0
    torch.testing.assert_close(delta[kept], d[kept] / 0.25)
    assert 0.2 < kept.float().mean().item() < 0.3  # about density of the entries survive


def test_dare_density_zero_and_one() -> None:
    base, e1, e2 = t(1, 1, 1), t(2, 0, 3), t(0, 0, 5)
    for name in ("dare_linear", "dare_ties"):
        out = get_op(name)([e1, e2], base=base, params={"density": 0.0}, generator=gen())
        assert torch.equal(out, base)
    out = get_op("dare_linear")([e1, e2], base=base, params={"density": 1.0}, generator=gen())
    assert torch.equal(out, get_op("task_arithmetic")([e1, e2], base=base, params={}))
    # dare_ties at density 1 is TIES without trimming: d1 = [1, -1, 2], d2 = [-1, -1, 4]
    out = get_op("dare_ties")([e1, e2], base=base, params={"density": 1.0, "normalize": True}, generator=gen())
    assert out.tolist() == [2.0, 0.0, 4.0]  # [+: 1/1, -: -2/2, +: 6/2] on top of 1
    out = get_op("dare_ties")([e1, e2], base=base, params={"density": 1.0}, generator=gen())
    assert out.tolist() == [2.0, -1.0, 7.0]  # mergekit's default: no division, [+: 1, -: -2, +: 6]


def test_dare_uses_only_the_given_generator() -> None:
    state = torch.get_rng_state()
    base = torch.zeros(100)
    out = get_op("dare_ties")([torch.ones(100)], base=base, params={"density": 0.5}, generator=gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    again = get_op("dare_ties")([torch.ones(100)], base=base, params={"density": 0.5}, generator=gen(1))
    assert torch.equal(out, again)


# ---------------------------------------------------------------- SLERP and passthrough


def test_slerp_orthogonal_colinear_and_zero() -> None:
    op = get_op("slerp")
    out = op([t(0, 1)], base=t(1, 0), params={"t": 0.5})
    torch.testing.assert_close(out, t(math.sqrt(0.5), math.sqrt(0.5)))
    out = op([t(0, 2)], base=t(1, 0), params={"t": 1 / 3})  # angle pi/6 along the arc
    a, b = math.sin(math.pi / 3) / 1, math.sin(math.pi / 6) / 1
    torch.testing.assert_close(out, t(a, 2 * b))
    out = op([t(3, 6)], base=t(1, 2), params={"t": 0.25})  # colinear: linear interpolation
    torch.testing.assert_close(out, t(1.5, 3.0))
    out = op([t(-1, -2)], base=t(1, 2), params={"t": 0.5})  # opposite: linear interpolation
    torch.testing.assert_close(out, t(0, 0))
    out = op([t(0, 2)], base=t(0, 0), params={"t": 0.5})  # zero norm counts as 1: theta = pi/2
    torch.testing.assert_close(out, t(0, 2 * math.sqrt(0.5)))


@pytest.mark.parametrize(("cos", "lerp"), [(0.9996, True), (0.9994, False)])
def test_slerp_switches_to_lerp_at_the_threshold_on_long_vectors(cos, lerp) -> None:
    """|cos| > 0.9995 -> linear interpolation. The cosine is a float32 sum over chunks, as in
    mergekit 0.1.5 (whose result evomerge reproduces bit for bit): on 4M entries it is off by
    ~1e-5 (0.99949 is taken for > 0.9995), so the decision holds to a 1e-4 margin."""
    n = 4_000_000
    g = gen(2)
    a = torch.randn(n, generator=g, dtype=torch.float64)
    a /= a.norm()
    o = torch.randn(n, generator=g, dtype=torch.float64)
    o -= (o @ a) * a
    o /= o.norm()
    b = cos * a + math.sqrt(1 - cos**2) * o
    base, expert = (a * 3).float(), (b * 3).float()  # same norms, so only the angle matters
    out = get_op("slerp")([expert], base=base, params={"t": 0.5})
    norm = float(out.double().norm()) / 3
    if lerp:  # mergekit's linear branch: (1 - t) * B + t * E in float32
        assert torch.equal(out, 0.5 * base + 0.5 * expert)
        assert abs(norm - math.sqrt((1 + cos) / 2)) < 1e-7  # the chord midpoint is inside the sphere
    else:
        assert abs(norm - 1.0) < 1e-5  # slerp stays on the sphere (to float32 precision)


def test_slerp_keeps_the_shape_of_matrices() -> None:
    base, e = torch.eye(3), torch.ones(3, 3)
    out = get_op("slerp")([e], base=base, params={"t": 0.3})
    assert out.shape == (3, 3) and torch.isfinite(out).all()


def test_passthrough_copies_and_scales() -> None:
    e = torch.randn(3, 3, generator=gen())
    out = get_op("passthrough")([e], base=None, params={})
    assert torch.equal(out, e) and out.data_ptr() != e.data_ptr()
    torch.testing.assert_close(get_op("passthrough")([e], base=None, params={"scale": 0.5}), e * 0.5)
    assert get_op("passthrough")([e.half()], base=None, params={"scale": 2.0}).dtype == torch.float16


# ---------------------------------------------------------------- purity


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inputs_are_never_mutated_or_returned(name, dtype) -> None:
    g = gen(5)
    base = torch.randn(6, 5, generator=g).to(dtype)
    n = min(3, OPS[name].spec.max_experts or 3)
    experts = [(base.float() + torch.randn(6, 5, generator=g)).to(dtype) for _ in range(n)]
    copies = [x.clone() for x in [base, *experts]]
    for params in ({}, {"t": 0.0} if name == "slerp" else {}, {"t": 1.0} if name == "slerp" else {}):
        out = get_op(name)(experts, base=base, params=params, generator=gen(1))
        assert out.dtype == dtype and out.shape == base.shape
        for x, c in zip([base, *experts], copies, strict=True):
            assert torch.equal(x, c)
            assert out.data_ptr() != x.data_ptr()


def test_dare_tiny_density_drops_everything_instead_of_dividing_by_zero() -> None:
    """float32 cannot hold 1/density for density ~1e-52, and torch.rand cannot draw a keep
    probability below 2**-24: such densities drop every entry (zero delta), never NaN/inf."""
    base = t(1, -2, 3)
    experts = [t(1, -2, 3), t(2, 0, 3)]  # a zero and a nonzero task vector
    for name in ("dare_linear", "dare_ties"):
        for density in (1e-300, 3e-52, 1e-30, 2.0**-25):
            out = get_op(name)(experts, base=base, params={"density": density}, generator=gen())
            assert torch.equal(out, base), (name, density)
        out = get_op(name)(experts, base=base, params={"density": sparsify.MIN_DARE_DENSITY}, generator=gen())
        assert torch.isfinite(out).all()


STRIDED_PARAMS = {
    "linear": {"weight": [0.2, 0.5, 0.3]},
    "task_arithmetic": {"weight": [0.2, 0.5, 0.3], "lambda": 0.8},
    "ties": {"density": [0.3, 0.6, 0.9]},
    "dare_ties": {"density": [0.3, 0.6, 0.9]},
    "dare_linear": {"density": [0.3, 0.6, 0.9]},
    "breadcrumbs": {"density": [0.3, 0.6, 0.9], "gamma": 0.1},
    "breadcrumbs_ties": {"density": [0.3, 0.6, 0.9], "gamma": 0.1},
    "slerp": {"t": 0.4},
    "passthrough": {"scale": 0.5},
    "della": {"density": [0.3, 0.6, 0.9], "epsilon": 0.05},
    "della_linear": {"density": [0.3, 0.6, 0.8], "epsilon": [0.1, 0.2, 0.15]},
    "sce": {"select_topk": 0.4},
    "model_stock": {"filter_wise": True},
    "nuslerp": {"weight": [0.3, 0.7], "nuslerp_row_wise": True, "nuslerp_flatten": False},
    "multislerp": {"weight": [0.2, 0.3, 0.5]},
}


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_inputs_give_the_contiguous_result(name) -> None:
    """Masks are computed in logical (row-major) order, whatever the inputs' strides."""
    g = gen(9)
    base = torch.randn(5, 7, generator=g)
    n = min(3, OPS[name].spec.max_experts or 3)
    experts = [base + torch.randn(5, 7, generator=g) for _ in range(n)]
    op = get_op(name)
    dense = op(experts, base=base, params=STRIDED_PARAMS[name], generator=gen(2))
    # transposed views of transposed copies: the same logical values with non-contiguous strides
    strided = [e.t().contiguous().t() for e in experts]
    assert not strided[0].is_contiguous()
    out = op(strided, base=base.t().contiguous().t(), params=STRIDED_PARAMS[name], generator=gen(2))
    assert out.shape == base.shape
    assert torch.equal(out, dense)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_all_finite_reads_the_exponent_bits(dtype) -> None:  # type: ignore[no-untyped-def]
    from evomerge.merge.materialize import all_finite

    t = (torch.randn(1000) * 100).to(dtype)
    assert all_finite(t) and all_finite(t[::2])  # contiguous (bits) and strided (isfinite)
    for bad in (float("nan"), float("inf"), float("-inf")):
        u = t.clone()
        u[417] = bad
        assert not all_finite(u) and not all_finite(u[1::2])
    big = torch.tensor([torch.finfo(dtype).max, -torch.finfo(dtype).max, torch.finfo(dtype).tiny, 0.0, -0.0], dtype=dtype)
    assert all_finite(big)  # the largest finite values and zeros are finite


FUSED_PARAMS = {
    "linear": {"weight": [0.5, 0.3, 0.2]},
    "task_arithmetic": {"weight": [1.0, 0.7, 0.5]},
    "ties": {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8]},
    "dare_ties": {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8]},
    "dare_linear": {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8]},
    "breadcrumbs_ties": {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8], "gamma": 0.01},
}


@pytest.mark.parametrize("mode", ["native", "compiled", "eager"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", sorted(FUSED_PARAMS))
def test_float32_arithmetic_over_16_bit_inputs_equals_merging_their_float32_copies(
        method: str, half: torch.dtype, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe's ``dtype: float32`` over 16-bit sources: the fused kernels read the 16-bit
    values as they are and widen them per block; the merge equals the merge of float32 copies bit
    for bit (whole and a part of it), in the C++ kernel, compiled by torch.compile and eagerly."""
    from evomerge.merge import narrow

    monkeypatch.setenv("EVOMERGE_NATIVE", "1" if mode == "native" else "0")
    monkeypatch.setenv("EVOMERGE_COMPILE", "1" if mode == "compiled" else "0")
    g = torch.Generator().manual_seed(5)
    shape = (96, 80)
    base = (torch.randn(shape, generator=g) * 0.02).to(half)
    experts = [(base.float() + torch.randn(shape, generator=g) * 0.003).to(half) for _ in range(3)]
    op = get_op(method)
    assert op.fused(resolve_params(op.spec, FUSED_PARAMS[method], 3))
    kw = {"base": None if method == "linear" else base, "params": FUSED_PARAMS[method]}
    kw32 = {**kw, "base": None if method == "linear" else base.float()}

    def gen():  # type: ignore[no-untyped-def]
        return torch.Generator().manual_seed(7) if op.spec.stochastic else None

    want = op([e.float() for e in experts], generator=gen(), **kw32)
    out = torch.empty(shape)
    with narrow.float32_arithmetic():
        op.into(out, experts, generator=gen(), **kw)
        part = torch.empty(shape[0], 40)
        op.part_into(part, experts, generator=gen(), dim=1, start=40, length=40, **kw)
    assert torch.equal(out, want)
    assert torch.equal(part, want[:, 40:])  # compiled: the part runs the whole's compiled body
    rounded = torch.empty(shape, dtype=half)  # the live bf16 model's write: rounded once
    with narrow.float32_arithmetic():
        op.into(rounded, experts, generator=gen(), **kw)
    assert torch.equal(rounded, want.to(half))
    outside = torch.empty(shape)  # without the context 16-bit inputs keep mergekit's 16-bit arithmetic
    op.into(outside, experts, generator=gen(), **kw)
    if method in ("linear", "task_arithmetic", "ties", "breadcrumbs_ties"):
        assert not torch.equal(outside, want)
