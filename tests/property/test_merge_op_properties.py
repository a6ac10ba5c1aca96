"""Merge-op properties (hypothesis): the invariants ARCHITECTURE.md lists, for every op."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evomerge.merge.registry import OPS, get_op

SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def stacks(draw, n_min=1, n_max=4):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    n = draw(st.integers(n_min, n_max))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    experts = [base + torch.randn(shape, generator=gen) * draw(st.floats(0.0, 2.0)) for _ in range(n)]
    return base, experts


@SETTINGS
@given(stacks(n_min=2), st.data(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_one_hot_linear_returns_that_input_exactly(bx, data, dtype) -> None:
    _, experts = bx
    experts = [e.to(dtype) for e in experts]
    k = data.draw(st.integers(0, len(experts) - 1))
    w = [1.0 if i == k else 0.0 for i in range(len(experts))]
    out = get_op("linear")(experts, base=None, params={"weight": w})
    assert torch.equal(out, experts[k])


@SETTINGS
@given(stacks(n_min=1, n_max=1))
def test_slerp_endpoints(bx) -> None:
    base, experts = bx
    op = get_op("slerp")
    assert torch.equal(op(experts, base=base, params={"t": 0.0}), base)
    assert torch.equal(op(experts, base=base, params={"t": 1.0}), experts[0])


@SETTINGS
@given(st.integers(1, 50), st.floats(0.0, 1.0), st.sampled_from(["zero", "same", "scaled", "opposite"]))
def test_slerp_finite_for_zero_and_colinear_vectors(n, t, kind) -> None:
    v = torch.linspace(-1, 1, n)
    base = torch.zeros(n) if kind == "zero" else v
    other = {"zero": v, "same": v.clone(), "scaled": 3 * v, "opposite": -v}[kind]
    out = get_op("slerp")([other], base=base, params={"t": t})
    assert torch.isfinite(out).all() and out.shape == base.shape


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**31 - 1), st.floats(0.1, 2.0))
def test_ties_at_density_one_without_sign_conflict_is_task_arithmetic(n, size, seed, lam) -> None:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(size, generator=gen)
    sign = torch.where(torch.randn(size, generator=gen) >= 0, 1.0, -1.0)
    experts = [base + sign * (torch.rand(size, generator=gen) + 0.01) for _ in range(n)]
    weights = (torch.rand(n, generator=gen) + 0.1).tolist()
    common = {"weight": weights, "lambda": lam, "normalize": False}
    ties = get_op("ties")(experts, base=base, params={**common, "density": 1.0})
    ta = get_op("task_arithmetic")(experts, base=base, params=common)
    torch.testing.assert_close(ties, ta, rtol=1e-5, atol=1e-5)
    # with normalize on, both divide by the same sum of weights when all signs agree
    ties_n = get_op("ties")(experts, base=base, params={**common, "density": 1.0, "normalize": True})
    ta_n = get_op("task_arithmetic")(experts, base=base, params={**common, "normalize": True})
    torch.testing.assert_close(ties_n, ta_n, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear"])
def test_dare_is_deterministic_under_a_seeded_generator(name) -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 32, generator=gen)
    experts = [base + torch.randn(64, 32, generator=gen) for _ in range(3)]
    op = get_op(name)
    a = op(experts, base=base, params={"density": 0.3}, generator=torch.Generator().manual_seed(7))
    b = op(experts, base=base, params={"density": 0.3}, generator=torch.Generator().manual_seed(7))
    c = op(experts, base=base, params={"density": 0.3}, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dare_is_unbiased_in_expectation() -> None:
    """E[mask * d / density] = d, so the mean of many DARE merges approaches task arithmetic."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(200, generator=gen)
    experts = [base + torch.randn(200, generator=gen) for _ in range(2)]
    params = {"density": 0.4, "weight": [0.7, 0.5]}
    op = get_op("dare_linear")
    runs = torch.stack([op(experts, base=base, params=params, generator=torch.Generator().manual_seed(s))
                        for s in range(3000)])
    ta = get_op("task_arithmetic")(experts, base=base, params={"weight": [0.7, 0.5]})
    # per-entry std of one run is about |d| * sqrt((1-p)/p) ~ 1.2; over 3000 runs ~0.023
    err = (runs.mean(0) - ta).abs()
    assert err.mean() < 0.03 and err.max() < 0.12


@SETTINGS
@given(stacks(), st.sampled_from(sorted(OPS)), st.sampled_from(DTYPES), st.sampled_from([0.0, 0.01, 0.5, 1.0]))
def test_every_op_returns_finite_input_shape_and_dtype(bx, name, dtype, density) -> None:
    base, experts = bx
    op = OPS[name]
    if op.spec.max_experts == 1:
        experts = experts[:1]
    base, experts = base.to(dtype), [e.to(dtype) for e in experts]
    params = {p.name: density for p in op.spec.params if p.name == "density"}
    out = op(experts, base=base, params=params, generator=torch.Generator().manual_seed(0))
    assert out.shape == base.shape and out.dtype == dtype and torch.isfinite(out).all()
    for e in experts:  # inputs are never mutated
        assert torch.isfinite(e).all()


@SETTINGS
@given(stacks(), st.sampled_from(sorted(OPS)))
def test_zero_task_vectors_return_the_base(bx, name) -> None:
    base, experts = bx
    op = OPS[name]
    n = 1 if op.spec.max_experts == 1 else len(experts)
    out = op([base.clone() for _ in range(n)], base=base, params={}, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, base)
