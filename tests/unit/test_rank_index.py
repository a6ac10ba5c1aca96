"""Rank indexes of resident task vectors: cuts read from an index equal the sampled-bracket cuts
and a sort-based reference, the index is built only for registered, unchanged tensors on their
second cut, and its memory budget is honoured."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.merge import rank_index, sparsify
from evomerge.merge.registry import get_op
from tests.unit.test_kernels import ref_topk_mask


@pytest.fixture
def indexes(monkeypatch):  # type: ignore[no-untyped-def]
    """A fresh process-wide index registry for each test."""
    fresh = rank_index.RankIndexes()
    monkeypatch.setattr(rank_index, "INDEXES", fresh)
    return fresh


def pair(kind: str, n: int = 120_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g) * 0.02
    delta = torch.randn(n, generator=g) * 0.003
    if kind == "bf16":  # few distinct magnitudes: large tie groups at every threshold
        return (base + delta).to(torch.bfloat16), base.to(torch.bfloat16)
    if kind == "zeros":  # a third of the entries unchanged by fine-tuning
        delta[: n // 3] = 0.0
    if kind == "grid":  # magnitudes on a coarse grid
        delta = torch.round(delta * 2000) / 2000
    return base + delta, base


def test_keys_are_monotone_in_the_magnitude_and_nan_ranks_lowest() -> None:
    g = torch.Generator().manual_seed(1)
    mag = torch.cat([torch.rand(50_000, generator=g) * 10.0 ** torch.randint(-40, 38, (50_000,), generator=g).float(),
                     torch.tensor([0.0, 1e-45, 3.4e38, float("inf")])])
    keys = rank_index.magnitude_keys(mag.clone())
    order = torch.argsort(mag)
    m, k = mag[order], keys[order]
    assert bool((k[1:] > k[:-1])[m[1:] > m[:-1]].all()) and bool((k[1:] == k[:-1])[m[1:] == m[:-1]].all())
    nan_key = rank_index.magnitude_keys(torch.tensor([float("nan"), 0.0, 1.0]))
    assert nan_key.tolist()[0] < nan_key.tolist()[1] < nan_key.tolist()[2]


@pytest.mark.parametrize("kind", ["float", "bf16", "zeros"])
def test_the_order_is_by_magnitude_then_descending_index(kind: str) -> None:
    expert, base = pair(kind, n=30_000, seed=11)
    expert[::501] = float("nan")
    mag = sparsify.magnitudes(expert, base).nan_to_num(nan=-1.0)
    for index in (rank_index.build(expert, base), rank_index.build_torch(expert, base)):
        order = index.order.to(torch.int64)
        assert torch.equal(torch.sort(order).values, torch.arange(order.numel()))  # a permutation
        m = mag[order]
        assert bool((m[1:] >= m[:-1]).all())
        tied = m[1:] == m[:-1]
        assert bool((order[1:] < order[:-1])[tied].all()) and int(tied.sum()) > 0


@pytest.mark.parametrize("mode", ["native", "torch"])
@pytest.mark.parametrize("kind", ["float", "bf16", "zeros", "grid"])
def test_indexed_cuts_equal_sampled_cuts_and_the_reference(indexes, monkeypatch, kind: str, mode: str) -> None:
    """Index built and read in C++ (native) or by torch ops alone (EVOMERGE_NATIVE=0)."""
    monkeypatch.setenv("EVOMERGE_NATIVE", "1" if mode == "native" else "0")
    expert, base = pair(kind)
    d = expert.float() - base.float()
    n = d.numel()
    ks = [1, 7, n // 1000, n // 3, n // 3 + 1, n // 2, 2 * n // 3, n - 5]
    sampled = {k: sparsify.rank_cut(expert, base, k) for k in ks}  # not registered: no index
    assert indexes.builds == 0
    indexes.register(expert)
    indexes.register(base)
    for k in ks:
        cut = sparsify.rank_cut(expert, base, k)
        assert cut == sampled[k], k
        got = sparsify.in_cut(d.abs(), cut)
        assert int(got.sum()) == k
        assert torch.equal(got, ref_topk_mask(d, k / n) if k > 1 else ref_topk_mask(d, 0.0)), k
        if cut.outside_ties is not None:  # the tie entries the cut leaves out, exactly
            ties_out = ((d.abs() == cut.threshold) & ~got).nonzero().squeeze(1)
            assert torch.equal(torch.sort(cut.outside_ties).values, ties_out)
    assert indexes.builds == 1
    if kind == "bf16":  # the case the fix-up path exists for
        assert any(sampled[k].outside_ties is not None for k in ks)


@pytest.mark.parametrize("mode", ["native", "torch"])
def test_no_base_and_nan_entries(indexes, monkeypatch, mode: str) -> None:
    monkeypatch.setenv("EVOMERGE_NATIVE", "1" if mode == "native" else "0")
    g = torch.Generator().manual_seed(2)
    d = torch.randn(80_000, generator=g)
    d[::97] = float("nan")
    ks = (10, 40_000, 78_000, 79_000, 79_900)  # 79_900: among the ~825 NaN entries (ranked lowest)
    reference = [sparsify.rank_cut(d, None, k) for k in ks]
    indexes.register(d)
    for _ in range(2):
        assert [sparsify.rank_cut(d, None, k) for k in ks] == reference
    assert indexes.builds == 1


def test_built_on_the_second_cut_and_rebuilt_after_an_in_place_edit(indexes) -> None:
    expert, base = pair("float", seed=3)
    indexes.register(expert)
    indexes.register(base)
    sparsify.rank_cut(expert, base, 500)
    assert indexes.builds == 0  # a one-shot merge never pays for the index
    sparsify.rank_cut(expert, base, 500)
    assert indexes.builds == 1 and indexes.used >= 4 * expert.numel()
    expert[:1000] += 1.0  # resident tensors should not change; if one does, the index is stale
    d = expert - base
    for _ in range(2):
        cut = sparsify.rank_cut(expert, base, 2000)
        assert torch.equal(sparsify.in_cut(d.abs(), cut), ref_topk_mask(d, 2000 / d.numel()))
    assert indexes.builds == 2
    assert indexes.used < 2 * 4 * expert.numel() + 2**20  # the stale index was let go


def test_the_memory_budget_is_honoured_and_bad_values_are_refused(indexes, monkeypatch) -> None:
    expert, base = pair("float", seed=4)
    indexes.register(expert)
    indexes.register(base)
    monkeypatch.setenv("EVOMERGE_RANK_INDEX_MEMORY", "0")
    for _ in range(3):
        sparsify.rank_cut(expert, base, 100)
    assert indexes.builds == 0 and indexes.used == 0
    monkeypatch.setenv("EVOMERGE_RANK_INDEX_MEMORY", "lots")
    with pytest.raises(ConfigError, match="EVOMERGE_RANK_INDEX_MEMORY") as err:
        sparsify.rank_cut(expert, base, 100)
    assert "bytes" in err.value.hint
    monkeypatch.setenv("EVOMERGE_RANK_INDEX_MEMORY", str(8 * expert.numel()))
    sparsify.rank_cut(expert, base, 100)
    assert indexes.builds == 1


@pytest.mark.parametrize("mode", ["native", "torch"])
@pytest.mark.parametrize("name", ["ties", "breadcrumbs", "breadcrumbs_ties"])
def test_merges_over_indexed_sources_equal_the_unindexed_merge(indexes, monkeypatch, name: str, mode: str) -> None:
    monkeypatch.setenv("EVOMERGE_NATIVE", "1" if mode == "native" else "0")
    monkeypatch.setenv("EVOMERGE_COMPILE", "0")
    g = torch.Generator().manual_seed(5)
    # float32 sources: 16-bit ones merge with mergekit's own arithmetic (evomerge.merge.narrow)
    base = torch.randn(90_000, generator=g) * 0.02
    e1, e2 = ((base + torch.randn(90_000, generator=g) * 0.003).to(torch.bfloat16).float() for _ in range(2))
    params = {"weight": [1.0, 0.7], "density": [0.4, 0.25]}
    if name.startswith("breadcrumbs"):
        params["gamma"] = [0.02, 0.05]
    op = get_op(name)
    plain = op([e1, e2], base=base, params=params)
    for t in (base, e1, e2):
        indexes.register(t)
    for _ in range(3):
        assert torch.equal(op([e1, e2], base=base, params=params), plain)
    assert indexes.builds == 2 if name == "ties" else indexes.builds >= 2


@pytest.mark.parametrize("kind", ["float", "bf16", "zeros"])
def test_the_native_build_equals_the_torch_build(kind: str) -> None:
    from evomerge.merge import native

    if native.module() is None:
        pytest.skip(f"native kernel unavailable: {native.broken}")
    expert, base = pair(kind, seed=8)
    expert[::1001] = float("nan") if kind == "float" else expert[::1001]
    a, b = rank_index.build(expert, base), rank_index.build_torch(expert, base)
    assert a.order.dtype == b.order.dtype == torch.int32
    assert torch.equal(a.order, b.order)


def test_indexes_of_freed_sources_are_dropped(indexes) -> None:
    import gc

    expert, base = pair("float", seed=9)
    indexes.register(expert)
    indexes.register(base)
    for _ in range(2):
        sparsify.rank_cut(expert, base, 300)
    assert indexes.builds == 1 and indexes.used > 0
    del expert
    gc.collect()
    other, base2 = pair("float", n=5000, seed=10)
    indexes.register(other)  # any later call prunes
    assert indexes.used == 0 and len(indexes._pairs) == 0
    assert len(indexes._resident) == 2  # the live base and the new tensor


@pytest.mark.parametrize("kind", ["float", "bf16", "zeros"])
def test_the_threaded_native_build_is_the_same_stable_order(kind: str) -> None:
    """Both counting-sort passes split over 2 and 3 threads (uneven parts) give the single
    thread's order, which is the torch build's."""
    from evomerge.merge import native

    mod = native.module()
    if mod is None:
        pytest.skip(f"native kernel unavailable: {native.broken}")
    expert, base = pair(kind, n=(1 << 19) + 7, seed=12)
    if kind == "float":
        expert[::997] = float("nan")
    one = mod.rank_order(expert, base, 1)
    for threads in (2, 3):
        assert torch.equal(mod.rank_order(expert, base, threads), one), threads
    assert torch.equal(one, rank_index.build_torch(expert, base).order)


def test_cuts_from_an_int64_order_take_the_torch_path_and_agree(indexes) -> None:
    """Past 2**31 entries an order is int64 and cuts are read by torch ops; the same cuts."""
    expert, base = pair("bf16", n=50_000, seed=13)
    d = expert.float() - base.float()
    order = rank_index.build_torch(expert, base).order
    for k in (1, 3, 5_000, 25_000, 49_999):
        narrow = sparsify._cut_from_order(expert, base, order, k)
        wide = sparsify._cut_from_order(expert, base, order.to(torch.int64), k)
        assert narrow == wide and torch.equal(sparsify.in_cut(d.abs(), wide), ref_topk_mask(d, k / d.numel()))
        if wide.outside_ties is not None:
            assert torch.equal(wide.outside_ties, narrow.outside_ties)


def test_a_cut_at_zero_magnitude_lists_no_ties_and_merges_the_same(indexes) -> None:
    """Where rank k falls among entries with d = 0 the cut is still exact, but those ties are
    not listed for fix-ups: kept or dropped, a zero task-vector entry adds nothing."""
    expert, base = pair("zeros", n=60_000, seed=14)  # a third of d is exactly 0
    d = expert - base
    k = 50_000  # past the 40,000 nonzero entries
    plain = sparsify.rank_cut(expert, base, k)
    indexes.register(expert)
    indexes.register(base)
    for _ in range(2):
        cut = sparsify.rank_cut(expert, base, k)
        assert cut.threshold == 0.0 and cut.outside_ties is None and cut == plain
        assert torch.equal(sparsify.in_cut(d.abs(), cut), ref_topk_mask(d, k / d.numel()))
    params = {"weight": [1.0], "density": [k / d.numel()]}
    merged = get_op("ties")([expert], base=base, params=params)
    masked = torch.where(ref_topk_mask(d, k / d.numel()), d, torch.zeros_like(d))
    assert torch.equal(merged, base + masked)
