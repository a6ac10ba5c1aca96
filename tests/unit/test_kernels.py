"""Fused merge kernels and exact rank cuts: compiled == eager == chunked == a plain reference,
DARE's counter-based mask, and the fallback when compiling is impossible."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.merge import kernels, native, sparsify
from evomerge.merge.ops import resolve_params
from evomerge.merge.registry import get_op

W = [1.0, -0.6, 0.8]
DENS = [0.5, 0.3, 0.9]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


MODES = ["native", "compiled", "eager"]


def use(monkeypatch, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Run the kernels as the C++ build, torch.compile'd, or eagerly in chunks."""
    monkeypatch.setenv("EVOMERGE_NATIVE", "1" if mode == "native" else "0")
    monkeypatch.setenv("EVOMERGE_COMPILE", "1" if mode == "compiled" else "0")


def sources(n: int = 300_000, experts: int = 3, dtype=torch.float32, seed: int = 0):  # type: ignore[no-untyped-def]
    g = gen(seed)
    base = torch.randn(n, generator=g) * 0.02
    return base.to(dtype), [(base + torch.randn(n, generator=g) * 0.003).to(dtype) for _ in range(experts)]


# ---------------------------------------------------------------- references (the math, written plainly)


def ref_topk_mask(d: torch.Tensor, density: float) -> torch.Tensor:
    """k = max(1, int(density n)) largest |d|; ties at the threshold: lower flat index first."""
    n = d.numel()
    k = max(1, int(density * n))
    order = sorted(range(n), key=lambda j: (-abs(float(d[j])), j)) if n < 5000 else None
    if order is not None:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[:k]] = True
        return mask
    # large n: stable sort of -|d| keeps equal magnitudes in index order
    idx = torch.sort(-d.abs(), stable=True).indices[:k]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return mask


def ref_ties(experts, base, weights, densities, *, normalize=True, lam=1.0):  # type: ignore[no-untyped-def]
    """TIES as mergekit computes it (ALGORITHMS.md): trim, weight, elect sign, disjoint merge."""
    b = base.float()
    xs = []
    for e, w, dens in zip(experts, weights, densities, strict=True):
        d = e.float() - b
        xs.append(torch.where(ref_topk_mask(d, dens), d, 0.0) * w)
    x = torch.stack(xs)
    elected = torch.where(x.sum(0) >= 0, 1.0, -1.0)
    agree = torch.sign(x) == elected
    merged = (x * agree).sum(0)
    if normalize:
        div = (torch.tensor(weights).unsqueeze(1) * agree).sum(0)
        merged = merged / torch.where(div == 0, 1.0, div)
    return b + lam * merged


# ---------------------------------------------------------------- rank cuts


@pytest.mark.parametrize("density", [1e-5, 0.03, 0.5, 0.97])
def test_rank_cut_selects_exactly_the_reference_top_k(density: float) -> None:
    base, experts = sources(200_000, 1)
    d = experts[0] - base
    k = max(1, int(density * d.numel()))
    cut = sparsify.rank_cut(experts[0], base, k)
    got = sparsify.in_cut(d.abs(), cut)
    assert int(got.sum()) == k
    assert torch.equal(got, ref_topk_mask(d, density))


def test_rank_cut_with_many_ties_keeps_lower_indices_first() -> None:
    """bfloat16 task vectors repeat magnitudes: the cut must split a tie group by index."""
    g = gen(3)
    d = (torch.randn(150_000, generator=g) * 0.01).to(torch.bfloat16).float()
    for density in (0.1, 0.5, 0.77):
        k = int(density * d.numel())
        cut = sparsify.rank_cut(d, None, k)
        mask = sparsify.in_cut(d.abs(), cut)
        assert int(mask.sum()) == k
        assert int((d.abs() == cut.threshold).sum()) > 1  # really a tie group at the threshold
        assert torch.equal(mask, ref_topk_mask(d, density))


@pytest.mark.parametrize("sigmas", [-1e9, -7.9, 0.0])
def test_rank_cut_falls_back_to_a_full_selection_when_the_bracket_misses(monkeypatch, sigmas: float) -> None:
    """Brackets of zero or (nearly) no width around sampled values miss the k-th value; the
    result is still exact (the fallback selects over every entry)."""
    monkeypatch.setattr(sparsify, "_BRACKET_SIGMAS", sigmas)
    base, experts = sources(100_000, 1, seed=5)
    d = experts[0] - base
    for k in (31_337, 50_000, 99_000):
        cut = sparsify.rank_cut(experts[0], base, k)
        assert torch.equal(sparsify.in_cut(d.abs(), cut), ref_topk_mask(d, k / d.numel())), k


@pytest.mark.parametrize("nonzero", [0.0, 0.002, 0.3, 0.55])
def test_sparse_task_vectors_skip_the_cut_and_merge_exactly_as_the_reference(monkeypatch, nonzero: float) -> None:
    """Fewer than k entries differ from the base: the cut (every nonzero entry, then zeros by
    lower index) is found without selecting among the zeros, equals the cut of the selection
    path, keeps exactly k, and TIES equals the plain reference and the selection path bit for bit."""
    g = gen(11)
    n = 300_000  # above SMALL: the sampled path
    base = torch.randn(n, generator=g) * 0.02
    experts = []
    for i in range(3):
        keep = torch.rand(n, generator=g) < (nonzero if i else 0.0)  # expert 0: an all-zero task vector
        experts.append(torch.where(keep, base + torch.randn(n, generator=g) * 0.003, base))
    k = sparsify.top_k_count(0.5, n)
    cuts = [sparsify.rank_cut(e, base, k) for e in experts]
    assert all(cut.threshold == 0.0 for cut in cuts) == (nonzero < 0.5)
    for e, cut in zip(experts, cuts, strict=True):
        assert int(sparsify.in_cut((e - base).abs(), cut).sum()) == k
    params = {"density": [0.5, 0.5, 0.5], "weight": [1.0, 0.7, -0.4]}
    fast = get_op("ties")(experts, base=base, params=params)
    monkeypatch.setattr(sparsify, "_ZERO_MARGIN", -2.0)  # never take the shortcut
    assert [sparsify.rank_cut(e, base, k) for e in experts] == cuts
    slow = get_op("ties")(experts, base=base, params=params)
    assert torch.equal(fast, slow)
    assert torch.equal(fast, ref_ties(experts, base, params["weight"], params["density"]))


def test_rank_cut_edges_and_nan() -> None:
    d = torch.tensor([3.0, -1.0, 2.0, float("nan"), 0.5])
    assert sparsify.rank_cut(d, None, 10) == sparsify.RankCut.everything()
    assert sparsify.rank_cut(d, None, 0) == sparsify.RankCut.nothing()
    # a NaN task-vector entry is reported (the merge is flagged invalid) even where masks drop it
    for name, params in (("ties", {"density": 0.4}), ("dare_ties", {"density": 0.01}), ("linear", {})):
        out = torch.empty(5)
        base = torch.zeros(5) if name != "linear" else None
        bad = get_op(name).into(out, [d], base=base, params=params, generator=gen())
        assert bad >= 1, name
    cut = sparsify.rank_cut(d, None, 2)  # NaN ranks below everything: the top 2 are 3 and 2
    assert sparsify.in_cut(d.abs(), cut).tolist() == [True, False, True, False, False]


# ---------------------------------------------------------------- compiled vs eager vs chunked

PARAMS = {
    "linear": {"weight": W},
    "task_arithmetic": {"weight": W, "lambda": 0.9},
    "ties": {"weight": W, "density": DENS},
    "dare_ties": {"weight": W, "density": DENS},
    "dare_linear": {"weight": W, "density": DENS, "normalize": True},
    "breadcrumbs": {"weight": W, "density": DENS, "gamma": 0.05},
    "breadcrumbs_ties": {"weight": W, "density": DENS, "gamma": 0.05, "normalize": True},
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_native_compiled_and_chunked_eager_agree(name: str, monkeypatch) -> None:
    base, experts = sources(300_001)  # odd size: partial blocks and chunks at the end
    op = get_op(name)
    out = {}
    for mode in MODES:
        use(monkeypatch, mode)
        if mode == "eager":
            monkeypatch.setattr(kernels, "CHUNK", 4099)  # many chunks, boundaries off any power of two
        out[mode] = op(experts, base=base if name != "linear" else None, params=PARAMS[name], generator=gen(7))
    assert not kernels._compile_broken and not native.broken
    for mode in ("native", "compiled"):
        torch.testing.assert_close(out[mode], out["eager"], rtol=1e-6, atol=1e-8)
        if name.startswith(("dare", "ties", "breadcrumbs")):  # the same entries kept, not just close values
            assert torch.equal(out[mode] != base, out["eager"] != base), mode


def test_one_variant_over_every_dtype_whole_and_part_stays_compiled(monkeypatch) -> None:
    """Dynamo gives one code object 8 compiled graphs, then fails hard (fullgraph) and every later
    merge of the process runs eagerly. One TIES variant over float32, bfloat16 and float16 sources,
    written to float32 and to the sources' dtype, whole and as a tensor-parallel part: 10 kinds of
    call, each its own compiled kernel, none of them broken, every part the whole merge there."""
    from evomerge.merge import narrow

    use(monkeypatch, "compiled")
    monkeypatch.setattr(kernels, "_compile_broken", [])
    op = get_op("ties")
    params = {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8]}
    shape = (96, 80)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        base, experts = sources(shape[0] * shape[1], dtype=dtype, seed=4)
        base, experts = base.view(shape), [e.view(shape) for e in experts]
        for out_dtype in dict.fromkeys((torch.float32, dtype)):
            whole, part = torch.empty(shape, dtype=out_dtype), torch.empty(shape[0], 40, dtype=out_dtype)
            with narrow.float32_arithmetic():
                op.into(whole, experts, base=base, params=params)
                op.part_into(part, experts, base=base, params=params, dim=1, start=40, length=40)
            assert not kernels._compile_broken, (dtype, out_dtype)
            assert torch.equal(part, whole[:, 40:]), (dtype, out_dtype)


def test_ties_equals_the_plain_reference_with_and_without_normalize(monkeypatch) -> None:
    base, experts = sources(120_000)
    for mode in MODES:
        use(monkeypatch, mode)
        for normalize in (True, False):
            out = get_op("ties")(experts, base=base, params={**PARAMS["ties"], "normalize": normalize, "lambda": 1.3})
            ref = ref_ties(experts, base, W, DENS, normalize=normalize, lam=1.3)
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_output_of_float32_sources(monkeypatch, dtype: torch.dtype) -> None:
    base, experts = sources(300_000)
    ref = ref_ties(experts, base, W, DENS).to(dtype)
    got = {}
    for mode in MODES:
        use(monkeypatch, mode)
        got[mode] = out = torch.empty(base.shape, dtype=dtype)
        get_op("ties").into(out, experts, base=base, params=PARAMS["ties"])
        assert (out.float() - ref.float()).abs().max() <= 2 ** -8 * ref.float().abs().max(), mode
    assert torch.equal(got["native"], got["eager"])  # rounding to the output type: the same bits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_sources_merge_in_their_dtype_as_mergekit_does(dtype: torch.dtype) -> None:
    """16-bit sources take mergekit's arithmetic (evomerge.merge.gta; parity with mergekit
    itself is tests/parity), never the float32 kernels, in every mode."""
    from evomerge.merge import gta

    base, experts = sources(50_000, dtype=dtype)
    p = resolve_params(get_op("ties").spec, PARAMS["ties"], len(experts))
    want = gta.merge(experts, base, p, sparsify="magnitude", consensus=True)
    out = get_op("ties")(experts, base=base, params=PARAMS["ties"])
    assert out.dtype == dtype and torch.equal(out, want)
    kernel = get_op("ties")([e.float() for e in experts], base=base.float(), params=PARAMS["ties"]).to(dtype)
    assert not torch.equal(out, kernel)  # rounding at every step: not the float32 result rounded once


def test_into_writes_a_preallocated_output_of_another_dtype() -> None:
    base, experts = sources(50_000)
    out = torch.full((50_000,), 7.0, dtype=torch.float64)
    bad = get_op("task_arithmetic").into(out, experts, base=base, params={"weight": W})
    assert bad == 0
    ref = get_op("task_arithmetic")(experts, base=base, params={"weight": W})
    torch.testing.assert_close(out.float(), ref)


def test_compile_failure_falls_back_to_eager_with_the_same_result(monkeypatch, caplog) -> None:
    base, experts = sources(300_000)
    expected = get_op("dare_ties")(experts, base=base, params=PARAMS["dare_ties"], generator=gen(1))

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("no C++ compiler found")

    use(monkeypatch, "compiled")
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_compile_broken", [])
    monkeypatch.setattr(torch, "compile", lambda fn, **_k: broken)
    with caplog.at_level("WARNING", logger="evomerge.kernels"):
        out = get_op("dare_ties")(experts, base=base, params=PARAMS["dare_ties"], generator=gen(1))
    assert "torch.compile unavailable" in caplog.text and "no C++ compiler" in caplog.text
    assert kernels._compile_broken
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- DARE's counter-based mask


def test_dare_mask_is_bernoulli_and_independent_across_experts_and_neighbours() -> None:
    n = 400_000
    idx = torch.arange(n, dtype=torch.int64)
    seeds = [(0x1234, 0x9), (0xBEEF, 0x9)]
    p = 0.3
    keep = [kernels.random_bits(idx, torch.tensor(lo), torch.tensor(hi)) < int(p * 2**32) for lo, hi in seeds]
    sigma = math.sqrt(p * (1 - p) / n)
    for k in keep:
        assert abs(k.float().mean().item() - p) < 5 * sigma
        both_neighbours = (k[1:] & k[:-1]).float().mean().item()  # adjacent entries independent
        assert abs(both_neighbours - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)
    together = (keep[0] & keep[1]).float().mean().item()
    assert abs(together - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)
    # values are 32-bit and the high index word matters
    bits = kernels.random_bits(idx[:1000] + (1 << 32), torch.tensor(0x1234), torch.tensor(0x9))
    assert int(bits.min()) >= 0 and int(bits.max()) < 2**32
    assert not torch.equal(bits, kernels.random_bits(idx[:1000], torch.tensor(0x1234), torch.tensor(0x9)))


def test_eager_numpy_bits_equal_the_int64_formula() -> None:
    idx = torch.arange(5_000_000 - 70_000, 5_000_000, dtype=torch.int64)
    for seed, keep in ((0x9E3779B9, 2**31), (7, 12345), (0xFFFFFFFF, 2**32 - 1), (3, 2**32)):
        ref = kernels.mix32(idx ^ seed) < keep
        assert torch.equal(kernels.keep_bits_eager(int(idx[0]), idx.numel(), seed, keep), ref)


def test_dare_depends_on_the_generator_not_on_chunking(monkeypatch) -> None:
    base, experts = sources(200_000, 2)
    params = {"density": [0.4, 0.6]}
    monkeypatch.setenv("EVOMERGE_COMPILE", "0")
    a = get_op("dare_linear")(experts, base=base, params=params, generator=gen(5))
    monkeypatch.setattr(kernels, "CHUNK", 1000)
    b = get_op("dare_linear")(experts, base=base, params=params, generator=gen(5))
    c = get_op("dare_linear")(experts, base=base, params=params, generator=gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kept = ((a - base) != 0).float().mean().item()
    assert abs(kept - (1 - 0.6 * 0.4)) < 0.01  # kept by either expert


@pytest.mark.parametrize("mode", MODES)
def test_split_tie_groups_are_fixed_up_exactly(monkeypatch, mode: str) -> None:
    """Task vectors on a coarse grid tie in large groups at every threshold: the fused pass takes
    whole groups and the few entries a cut leaves out are recomputed; the result is the exact
    reference (lower indices first) for TIES, breadcrumbs and DARE-TIES alike."""
    use(monkeypatch, mode)
    g = gen(11)
    n = 300_000
    base = torch.zeros(n)
    experts = [torch.randint(-40, 41, (n,), generator=g).float() / 1000 for _ in range(3)]
    out = get_op("ties")(experts, base=base, params=PARAMS["ties"])
    torch.testing.assert_close(out, ref_ties(experts, base, W, DENS), rtol=0, atol=0)
    for e, dens in zip(experts, DENS, strict=True):
        cut = sparsify.rank_cut(e, base, int(dens * n))
        assert cut.outside_ties is not None and cut.outside_ties.numel() > 100  # really split groups
    bc = get_op("breadcrumbs")(experts, base=base, params=PARAMS["breadcrumbs"])
    kept = (bc != 0).float().mean().item()
    assert abs(kept - (1 - (1 - 0.5) * (1 - 0.3) * (1 - 0.9))) < 0.02  # per-expert bands of exact size


@pytest.mark.parametrize(("var", "value", "fix"), [("EVOMERGE_COMPILE", "sometimes", "0 (never"),
                                                  ("EVOMERGE_NATIVE", "maybe", "EVOMERGE_NATIVE to 0")])
def test_an_unknown_kernel_mode_is_refused_with_the_fix(monkeypatch, var: str, value: str, fix: str) -> None:
    from evomerge.errors import ConfigError

    monkeypatch.setenv(var, value)
    base, experts = sources(1000, 1)
    with pytest.raises(ConfigError, match=f"{var}='{value}'") as info:
        get_op("task_arithmetic")(experts, base=base, params={})
    assert fix in info.value.hint


# ---------------------------------------------------------------- the C++ kernel


def test_native_bracket_equals_the_torch_bracket(monkeypatch) -> None:
    base, experts = sources(250_003, 1, seed=9)
    d = (experts[0] - base).abs()
    edges = sorted(float(x) for x in d[::5000][:9])
    got = {}
    for mode in MODES:
        use(monkeypatch, mode)
        codes = torch.full((250_008,), 77, dtype=torch.uint8)
        counts = kernels.bracket(codes, experts[0], base, edges)
        got[mode] = (codes[:250_003].clone(), counts)
    assert got["native"][1] == got["eager"][1] == got["compiled"][1]
    assert got["native"][1][0] == int((d >= edges[0]).sum())
    assert torch.equal(got["native"][0], got["eager"][0]) and torch.equal(got["native"][0], got["compiled"][0])


def test_native_outputs_of_other_dtypes_and_overflow_are_checked(monkeypatch) -> None:
    use(monkeypatch, "native")
    base, experts = sources(70_000)
    out = torch.empty(70_000, dtype=torch.float64)
    assert get_op("task_arithmetic").into(out, experts, base=base, params={"weight": W}) == 0
    torch.testing.assert_close(out.float(), get_op("task_arithmetic")(experts, base=base, params={"weight": W}))
    # finite in float32, inf once rounded to float16: the stored value is what counts
    big = [base + 40_000.0 for _ in range(2)]
    half = torch.empty(70_000, dtype=torch.float16)
    assert get_op("task_arithmetic").into(half, big, base=base, params={"weight": [1.0, 1.0]}) == 1
    assert not torch.isfinite(half).all()


def test_a_failed_native_build_falls_back_with_one_warning(monkeypatch, caplog) -> None:
    from torch.utils import cpp_extension

    base, experts = sources(100_000)
    use(monkeypatch, "native")
    expected = get_op("dare_ties")(experts, base=base, params=PARAMS["dare_ties"], generator=gen(2))
    monkeypatch.setattr(native, "_module", [])
    monkeypatch.setattr(native, "broken", [])

    def no_compiler(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("Error building extension: g++ not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setenv("EVOMERGE_COMPILE", "0")
    with caplog.at_level("WARNING", logger="evomerge.kernels"):
        for _ in range(2):
            out = get_op("dare_ties")(experts, base=base, params=PARAMS["dare_ties"], generator=gen(2))
    assert caplog.text.count("native merge kernel unavailable") == 1 and "g++ not found" in caplog.text
    assert native.broken and native.module() is None
    assert torch.equal(out, expected)


def test_strided_inputs_take_the_torch_kernels_with_the_same_result(monkeypatch) -> None:
    use(monkeypatch, "native")
    base, experts = sources(60_000)
    wide = [torch.stack([e, torch.zeros_like(e)], 1).reshape(-1) for e in experts]
    strided = [w[::2] for w in wide]  # the same values, not contiguous
    assert not strided[0].is_contiguous() and not kernels.native_ok(strided[0])
    for name in ("ties", "dare_ties", "task_arithmetic"):
        a = get_op(name)(experts, base=base, params=PARAMS[name], generator=gen(3))
        b = get_op(name)(strided, base=base, params=PARAMS[name], generator=gen(3))
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        assert torch.equal(a != base, b != base), name


def _native_dare(threads: int) -> float:
    """A DARE-TIES merge of 2**20 entries straight through the C++ kernel on ``threads`` threads."""
    base, experts = sources(1 << 20, 2)
    out = torch.empty(1 << 20)
    fp = [1.0, 1.0, -1.0, math.inf, 0.7, 0.7, -1.0, math.inf]
    ip = [kernels.ALL_TIES, kernels.ALL_TIES, 1 << 31, 12345, 0] * 2
    flags = kernels.NATIVE_BASE | kernels.NATIVE_RANDOM | kernels.NATIVE_CONSENSUS
    assert not native.module().merge(out, base, experts, fp, ip, 1.0, 1.0, flags, threads, [])
    return float(out.double().sum())


def _merge_in_child(queue) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)  # torch's own OpenMP pool hangs after fork (a libgomp limit), not ours
    queue.put(_native_dare(2))


def test_a_forked_child_merges_with_a_fresh_helper_pool() -> None:
    """The helper threads of the C++ kernel do not survive fork(); a child must start its own
    instead of waiting forever on the parent's."""
    import multiprocessing

    if native.module() is None:
        pytest.skip(f"native kernel unavailable: {native.broken}")
    expected = _native_dare(2)  # the parent's pool is running now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_merge_in_child, args=(queue,))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked child hung in the merge"
    assert child.exitcode == 0
    assert queue.get(timeout=5) == expected == _native_dare(1)


def test_a_build_lock_left_by_a_killed_build_does_not_block_loading(monkeypatch, caplog) -> None:
    """torch's extension builder waits forever on a lock file a killed build left behind."""
    if native.module() is None:
        pytest.skip(f"native kernel unavailable: {native.broken}")
    build = native._build_dir()
    (build / "lock").touch()  # what a build SIGKILLed mid-way leaves
    monkeypatch.setattr(native, "_module", [])
    with caplog.at_level("WARNING", logger="evomerge.kernels"):
        mod = native.module()
    assert mod is not None and not (build / "lock").exists()
    assert "interrupted native kernel build" in caplog.text


def test_stale_native_builds_are_pruned_and_live_ones_kept(tmp_path) -> None:
    """Build directories (one per source version and CPU) untouched for 30 days go; the current
    one, recent ones and one whose lock another process holds stay."""
    import fcntl
    import os
    import time

    old = time.time() - 40 * 86400
    dirs = {name: tmp_path / name for name in ("current", "recent", "stale", "locked")}
    for d in dirs.values():
        d.mkdir()
        (d / "evomerge_native_merge.so").write_bytes(b"x")
    for name in ("current", "stale", "locked"):
        os.utime(dirs[name], (old, old))
    with open(dirs["locked"] / "evomerge.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = native.prune_stale_builds(tmp_path, keep=dirs["current"])
    assert removed == [dirs["stale"]] and not dirs["stale"].exists()
    assert all(dirs[n].exists() for n in ("current", "recent", "locked"))


@pytest.mark.parametrize("name", ["ties", "dare_ties", "breadcrumbs_ties"])
@pytest.mark.parametrize("normalize", [True, False])
def test_the_fused_two_expert_election_equals_eager(name: str, normalize: bool, monkeypatch) -> None:
    """Two float32 experts under a TIES election take a loop of their own in the C++ kernel."""
    base, experts = sources(200_003, 2, seed=12)
    params = {"weight": [1.0, -0.7], "density": [0.6, 0.35], "normalize": normalize, "lambda": 1.0}
    if name.startswith("breadcrumbs"):
        params["gamma"] = [0.02, 0.05]
    out = {}
    for mode in ("native", "eager"):
        use(monkeypatch, mode)
        out[mode] = get_op(name)(experts, base=base, params=params, generator=gen(5))
    assert torch.equal(out["native"], out["eager"])
    if name == "dare_ties":  # one expert keeping everything: the general loop, same result
        params["density"] = [1.0, 0.35]
        for mode in ("native", "eager"):
            use(monkeypatch, mode)
            out[mode] = get_op(name)(experts, base=base, params=params, generator=gen(5))
        assert torch.equal(out["native"], out["eager"])


@pytest.mark.parametrize("name", ["ties", "dare_ties", "task_arithmetic", "linear"])
@pytest.mark.parametrize("experts_n", [2, 3])
def test_streaming_stores_into_an_unaligned_view_write_exactly_the_view(monkeypatch, name: str,
                                                                       experts_n: int) -> None:
    """Outputs of 2**18 entries or more are written with non-temporal stores from a 64-byte
    boundary on: an output view starting 3 floats past one (and ending mid-line) gets the same
    values as a fresh tensor, and the guard entries around it are untouched."""
    use(monkeypatch, "native")
    n = (1 << 19) + 37  # past NATIVE_THREADED_NUMEL: both threads stream their halves
    base, experts = sources(n, experts_n)
    params = {"weight": W[:experts_n]}
    if name in ("ties", "dare_ties"):
        params["density"] = DENS[:experts_n]
    op = get_op(name)
    expected = op(experts, base=base if name != "linear" else None, params=params, generator=gen(4))
    buffer = torch.full((n + 8,), 123.0)
    view = buffer[3:3 + n]
    assert view.data_ptr() % 64 != 0
    assert op.into(view, experts, base=base if name != "linear" else None, params=params, generator=gen(4)) == 0
    assert torch.equal(view, expected)
    assert bool((buffer[:3] == 123.0).all()) and bool((buffer[3 + n:] == 123.0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("experts_n", [2, 3])
@pytest.mark.parametrize("name", ["ties", "breadcrumbs", "breadcrumbs_ties", "dare_ties"])
def test_tie_fix_ups_in_the_native_kernel_equal_eager_bit_for_bit(monkeypatch, name: str, experts_n: int,
                                                                  dtype: torch.dtype) -> None:
    """Coarse-grid task vectors split tie groups at every low and high cut; the C++ kernel
    rewrites those entries itself (two-expert fused loop and per-expert loops, float32 and
    bfloat16 outputs) and must give eager torch's result exactly."""
    g = gen(21)
    n = 200_000
    base = (torch.randn(n, generator=g) * 0.02).to(dtype)
    experts = [(base.float() + torch.randint(-40, 41, (n,), generator=g).float() / 1000).to(dtype)
               for _ in range(experts_n)]
    params = {"weight": W[:experts_n], "density": [0.5, 0.3, 0.9][:experts_n]}
    if name.startswith("breadcrumbs"):
        params["gamma"] = [0.05, 0.02, 0.1][:experts_n]
    got = {}
    for mode in ("native", "eager"):
        use(monkeypatch, mode)
        got[mode] = get_op(name)(experts, base=base, params=params, generator=gen(5))
    if name != "dare_ties":  # (DARE-TIES masks by hash: no rank cut, no fix-ups; compared for the election)
        cut = sparsify.rank_cut(experts[0], base, sparsify.top_k_count(params["density"][0], n))
        assert cut.outside_ties is not None and cut.outside_ties.numel() > 100
    assert torch.equal(got["native"], got["eager"])
