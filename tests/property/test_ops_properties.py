"""Merge-op invariants, checked with hypothesis on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evomerge.errors import ConfigError
from evomerge.merge import sparsify
from evomerge.merge.registry import OPS, get_op

SETTINGS = settings(max_examples=60, deadline=None)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(INT_VIEW[x.dtype])


@st.composite
def shapes(draw) -> tuple[int, ...]:
    return tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))


@st.composite
def models(draw, n_min: int = 1, n_max: int = 4):
    """(base, experts): a random base and experts at random distances from it (some at 0)."""
    shape = draw(shapes())
    n = draw(st.integers(n_min, n_max))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    base = torch.randn(shape, generator=g) * draw(st.sampled_from([0.0, 0.02, 1.0, 30.0]))
    scales = draw(st.lists(st.sampled_from([0.0, 1e-3, 0.1, 1.0, 10.0]), min_size=n, max_size=n))
    return base, [base + torch.randn(shape, generator=g) * s for s in scales]


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
finite_bf16 = st.floats(-(2.0**100), 2.0**100, allow_nan=False, allow_infinity=False, width=32)


# ---------------------------------------------------------------- linear


@SETTINGS
@given(st.data(), st.sampled_from([torch.float32, torch.bfloat16]), st.integers(1, 4), st.booleans())
def test_one_hot_linear_returns_that_input_bitwise(data, dtype, n, normalize) -> None:
    size = data.draw(st.integers(1, 12))
    elems = finite32 if dtype == torch.float32 else finite_bf16
    experts = [torch.tensor(data.draw(st.lists(elems, min_size=size, max_size=size)), dtype=torch.float32).to(dtype)
               for _ in range(n)]
    k = data.draw(st.integers(0, n - 1))
    weights = [1.0 if i == k else 0.0 for i in range(n)]
    out = get_op("linear")(experts, base=None, params={"weight": weights, "normalize": normalize})
    assert out.dtype == dtype
    if dtype == torch.float32:
        assert torch.equal(bits(out), bits(experts[k]))  # bitwise: -0.0, subnormals and all
    else:  # 16-bit: mergekit's float32 accumulation from +0, so -0.0 comes back as +0.0
        assert torch.equal(out, experts[k]) and torch.equal(bits(out), bits(experts[k] + 0.0))


@SETTINGS
@given(models(n_min=2), st.floats(0.1, 10.0))
def test_linear_normalized_is_invariant_to_scaling_all_weights(bx, c) -> None:
    _, experts = bx
    w = [float(i + 1) for i in range(len(experts))]
    a = get_op("linear")(experts, base=None, params={"weight": w})
    b = get_op("linear")(experts, base=None, params={"weight": [c * x for x in w]})
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- SLERP


@SETTINGS
@given(models(n_min=1, n_max=1), st.sampled_from(DTYPES))
def test_slerp_endpoints_are_the_inputs(bx, dtype) -> None:
    base, experts = bx
    base, expert = base.to(dtype), experts[0].to(dtype)
    op = get_op("slerp")
    assert torch.equal(op([expert], base=base, params={"t": 0.0}), base)
    assert torch.equal(op([expert], base=base, params={"t": 1.0}), expert)
    # close to the endpoints the result is close to them too (continuity)
    near0 = op([expert], base=base, params={"t": 1e-7})
    near1 = op([expert], base=base, params={"t": 1 - 1e-7})
    scale = float(torch.cat([base.float().flatten(), expert.float().flatten()]).abs().max()) + 1e-3
    tol = scale * (1e-4 if dtype == torch.float32 else 2e-2)
    torch.testing.assert_close(near0.float(), base.float(), rtol=0, atol=tol)
    torch.testing.assert_close(near1.float(), expert.float(), rtol=0, atol=tol)


@SETTINGS
@given(st.integers(1, 40), st.floats(0.0, 1.0), st.floats(0.01, 5.0) | st.floats(-5.0, -0.01),
       st.sampled_from(["zero-base", "zero-expert", "both-zero", "colinear", "tiny"]), st.sampled_from(DTYPES))
def test_slerp_is_finite_for_zero_and_colinear_vectors(n, t, c, kind, dtype) -> None:
    v = torch.linspace(-1, 1, n) + 0.1
    base, expert = {
        "zero-base": (torch.zeros(n), v),
        "zero-expert": (v, torch.zeros(n)),
        "both-zero": (torch.zeros(n), torch.zeros(n)),
        "colinear": (v, c * v),
        "tiny": (v * 1e-12, v * 1e-10),
    }[kind]
    out = get_op("slerp")([expert.to(dtype)], base=base.to(dtype), params={"t": t})
    assert out.shape == (n,) and out.dtype == dtype and torch.isfinite(out).all()
    if kind == "colinear":  # |cos| = 1 (or a zero vector): linear interpolation
        torch.testing.assert_close(out.float(), torch.lerp(base, expert, t).to(dtype).float(),
                                   rtol=2e-2, atol=1e-2)


@SETTINGS
@given(st.integers(2, 30), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_slerp_of_unit_vectors_stays_on_the_sphere(n, seed, t) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    a, b = a / a.norm(), b / b.norm()
    cos = float(a @ b)
    out = get_op("slerp")([b], base=a, params={"t": t})
    if abs(cos) <= 0.999:  # clear of the linear fallback
        assert abs(out.norm().item() - 1.0) < 1e-4
        # the angle to the base is t * theta (atan2 is well conditioned near 0 and pi)
        a64, b64, o64 = a.double(), b.double(), out.double()
        theta = math.atan2(float((b64 - (b64 @ a64) * a64).norm()), float(b64 @ a64))
        angle = math.atan2(float((o64 - (o64 @ a64) * a64).norm()), float(o64 @ a64))
        assert abs(angle - t * theta) < 1e-4


# ---------------------------------------------------------------- TIES vs task arithmetic


@SETTINGS
@given(st.integers(1, 4), shapes(), st.integers(0, 2**31 - 1), st.floats(-2.0, 2.0), st.booleans())
def test_ties_at_density_one_without_sign_conflict_is_task_arithmetic(n, shape, seed, lam, normalize) -> None:
    """With every expert's delta of the same sign pattern (and positive weights) TIES elects that
    sign everywhere, keeps every nonzero entry, and (normalize on) divides by the sum of all
    weights that are nonzero there: task arithmetic with the same ``normalize``. Entries where
    every delta is zero are the base in both."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    sign = torch.where(torch.randn(shape, generator=g) >= 0, 1.0, -1.0)
    experts = [base + sign * (torch.rand(shape, generator=g) + 0.01) for _ in range(n)]
    weights = (torch.rand(n, generator=g) + 0.1).tolist()
    common = {"weight": weights, "lambda": lam, "normalize": normalize}
    ties = get_op("ties")(experts, base=base, params={**common, "density": 1.0})
    ta = get_op("task_arithmetic")(experts, base=base, params=common)
    torch.testing.assert_close(ties, ta, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(models(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_ties_with_one_expert_is_the_trimmed_task_vector(bx, density, w) -> None:
    base, experts = bx
    expert = experts[0]
    w += 0.05
    out = get_op("ties")([expert], base=base, params={"density": density, "weight": w})
    trimmed = sparsify.magnitude_topk(expert - base, density)
    torch.testing.assert_close(out, base + trimmed, rtol=1e-5, atol=1e-5)  # normalize divides w back out


# ---------------------------------------------------------------- sparsifiers


@SETTINGS
@given(st.lists(st.sampled_from([-3.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=60),
       st.floats(0.0, 1.0))
def test_magnitude_topk_keeps_exactly_k_of_the_largest(values, density) -> None:
    d = torch.tensor(values)
    kept = sparsify.magnitude_topk(d.clone(), density)
    k = max(1, int(density * d.numel())) if density < 1 else d.numel()
    nz = kept != 0
    assert int(nz.sum()) == k  # exactly k even with many equal magnitudes
    assert torch.equal(kept[nz], d[nz])
    if k < d.numel():
        assert d[nz].abs().min() >= d[~nz].abs().max()


@SETTINGS
@given(st.lists(st.sampled_from([-4.0, -2.0, -1.0, 0.25, 1.0, 2.0, 8.0]), min_size=1, max_size=60),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_breadcrumbs_keeps_a_band_of_density_below_gamma_outliers(values, density, gamma) -> None:
    d = torch.tensor(values)
    n = d.numel()
    kept = sparsify.breadcrumbs(d.clone(), density, gamma)
    nz = kept != 0
    assert torch.equal(kept[nz], d[nz])
    if density >= 1:
        assert torch.equal(kept, d)
        return
    n_keep = int(density * n)
    n_top = min(int(gamma * n), n - n_keep)
    assert int(nz.sum()) == n_keep
    mag = d.abs()
    order = sorted(range(n), key=lambda i: (-mag[i].item(), i))  # descending, lower index first
    assert sorted(i for i in range(n) if nz[i]) == sorted(order[n_top:n_top + n_keep])


@SETTINGS
@given(models(n_min=1, n_max=3), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1),
       st.sampled_from(["dare_ties", "dare_linear"]))
def test_dare_is_deterministic_under_a_seeded_generator(bx, density, seed, name) -> None:
    base, experts = bx
    op = get_op(name)
    params = {"density": density}
    a = op(experts, base=base, params=params, generator=torch.Generator().manual_seed(seed))
    b = op(experts, base=base, params=params, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(bits(a), bits(b))


def test_dare_different_seeds_give_different_masks() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 32, generator=g)
    experts = [base + torch.randn(64, 32, generator=g) for _ in range(2)]
    op = get_op("dare_ties")
    a = op(experts, base=base, params={"density": 0.3}, generator=torch.Generator().manual_seed(7))
    c = op(experts, base=base, params={"density": 0.3}, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)


@pytest.mark.parametrize("densities", [[0.5, 0.5], [0.2, 0.9], [0.05, 0.3]])
def test_dare_linear_is_unbiased_in_expectation(densities) -> None:
    """E[m d / p] = d for m ~ Bernoulli(p): the mean over many seeds approaches task arithmetic.
    Per entry, one run has variance sum_i w_i^2 d_i^2 (1 - p_i) / p_i; the mean of S runs is
    checked against 6 standard errors (about 2e-9 per entry under a normal approximation) and
    the average of the 300 standardized errors against 6 of its standard deviations (1/sqrt(300)).
    A biased merge (no 1/p rescale, or a mask not drawn with probability p) fails by far."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(300, generator=g)
    deltas = [torch.randn(300, generator=g) for _ in range(2)]
    experts = [base + d for d in deltas]
    weights = [0.7, -0.4]
    params = {"density": densities, "weight": weights, "lambda": 1.5}
    op = get_op("dare_linear")
    runs = 2000
    mean = torch.zeros(300, dtype=torch.float64)
    for s in range(runs):
        mean += op(experts, base=base, params=params, generator=torch.Generator().manual_seed(s)).double()
    mean /= runs
    ta = get_op("task_arithmetic")(experts, base=base, params={"weight": weights, "lambda": 1.5}).double()
    var = sum((1.5 * w * d.double()) ** 2 * (1 - p) / p for w, d, p in zip(weights, deltas, densities, strict=True))
    z = (mean - ta) / (var / runs).sqrt().clamp_min(1e-6)
    assert z.abs().max() < 6.0
    assert abs(z.mean().item()) < 6.0 / math.sqrt(300)


# ---------------------------------------------------------------- every op


def della_epsilon(d: float) -> float:
    """An epsilon DELLA accepts for density ``d``: half the distance to the nearer end of (0, 1),
    halved again while d +- epsilon rounds onto an end in floating point (d within an ulp of 1:
    d + (1 - d) / 2 can round to 1.0)."""
    if not 0 < d < 1:
        return 0.1
    eps = 0.5 * min(d, 1 - d)
    while d + eps >= 1 or d - eps <= 0:
        eps /= 2
    return eps


def params_for(name: str, data, n: int, density_choice) -> dict:
    spec = OPS[name].spec
    params: dict = {}
    for p in spec.params:
        if p.name in ("density", "gamma"):
            params[p.name] = [data.draw(density_choice) for _ in range(n)]
        elif p.name == "weight" and spec.name in ("nuslerp", "multislerp"):  # points on a sphere: positive weights
            params[p.name] = [data.draw(st.sampled_from([0.3, 1.0, 2.5])) for _ in range(n)]
        elif p.name == "weight":
            params[p.name] = [data.draw(st.sampled_from([0.0, 0.3, 1.0, 2.5, -0.5])) for _ in range(n)]
        elif p.name in ("t",):
            params[p.name] = data.draw(st.sampled_from([0.0, 1e-7, 0.3, 0.5, 0.999, 1.0]))
        elif p.name in ("lambda", "scale"):
            params[p.name] = data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
        elif p.name == "epsilon":  # DELLA: density +- epsilon inside (0, 1)
            params[p.name] = [della_epsilon(d) for d in params["density"]]
        elif p.name == "select_topk":
            params[p.name] = data.draw(st.sampled_from([0.0, 0.3, 1.0]))
        elif p.kind == "bool":
            params[p.name] = data.draw(st.booleans())
    return params


@settings(max_examples=150, deadline=None)
@given(models(), st.sampled_from(sorted(OPS)), st.sampled_from(DTYPES), st.data())
def test_every_op_returns_finite_values_of_the_input_shape_and_dtype(bx, name, dtype, data) -> None:
    base, experts = bx
    op = OPS[name]
    if op.spec.max_experts is not None:
        experts = experts[:op.spec.max_experts]
    if len(experts) < op.spec.min_experts:
        experts = [*experts, *([base + 0.5] * (op.spec.min_experts - len(experts)))]
    base, experts = base.to(dtype), [e.to(dtype) for e in experts]
    before = [bits(x).clone() for x in [base, *experts]]
    # float16 tops out at 65504: DARE's 1/density rescale of a tiny density can overflow it honestly
    low = 0.05 if dtype == torch.float16 else 0.01
    density = st.sampled_from([0.0, 1.0, low, 0.5]) | st.floats(low, 1.0)
    params = params_for(name, data, len(experts), density)
    try:
        out = op(experts, base=base, params=params, generator=torch.Generator().manual_seed(0))
    except ConfigError as err:  # the one documented refusal: no mean direction on the sphere
        assert name == "multislerp" and "antipodal" in err.message, err.message
        return
    assert out.shape == base.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    for x, b in zip([base, *experts], before, strict=True):  # inputs are never mutated
        assert torch.equal(bits(x), b)


@SETTINGS
@given(models(), st.sampled_from(sorted(set(OPS) - {"linear", "passthrough"})), st.sampled_from(DTYPES), st.data())
def test_zero_task_vectors_return_the_base(bx, name, dtype, data) -> None:
    """Every op with a base returns the base when each expert equals it (linear and passthrough
    have no task vectors)."""
    base, experts = bx
    op = OPS[name]
    base = base.to(dtype)
    n = min(max(len(experts), op.spec.min_experts), op.spec.max_experts or len(experts) + op.spec.min_experts)
    params = params_for(name, data, n, st.floats(0.0, 1.0))
    out = op([base.clone() for _ in range(n)], base=base, params=params, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype
    if name == "slerp":  # mergekit's (1 - t) B + t B in float32: the base to within rounding
        torch.testing.assert_close(out.float(), base.float(), rtol=2 ** -7 if dtype != torch.float32 else 3e-7,
                                   atol=0)
    else:
        assert torch.equal(out, base)  # B + lambda * 0, exactly
