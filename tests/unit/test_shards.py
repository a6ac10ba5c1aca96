"""Tensor-parallel shards of a merge (issue 20, ops.shard_into): each rank computes only its part
of every tensor, with the whole tensors' cuts and DARE bits, and the parts concatenate to the
full merge bit for bit (the shard arithmetic, tested without a TP engine on this machine)."""

from __future__ import annotations

import pytest
import torch

from evomerge.merge.ops import shard_indices
from evomerge.merge.registry import get_op

PARAMS = {
    "linear": {"weight": [0.5, 0.3, 0.2]},
    "task_arithmetic": {"weight": [1.0, 0.7, 0.5]},
    "ties": {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8]},
    "dare_ties": {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8]},
    "breadcrumbs_ties": {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8], "gamma": 0.01},
    "della": {"weight": [1.0, 0.7, 0.5], "density": [0.5, 0.3, 0.8], "epsilon": 0.1},
}


def sources(shape, seed: int, dtype=torch.float32):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    experts = [base + torch.randn(shape, generator=g) * 0.003 for _ in range(3)]
    experts[1][: shape[0] // 2] = base[: shape[0] // 2]  # half a task vector all zero (the zero cut)
    return base.to(dtype), [e.to(dtype) for e in experts]


@pytest.mark.parametrize("method", sorted(PARAMS))
@pytest.mark.parametrize("shape", [(64, 48), (512, 256)])  # below and above the sampled-cut size
def test_shards_of_every_rank_concatenate_to_the_full_merge(method: str, shape: tuple[int, int]) -> None:
    base, experts = sources(shape, seed=len(method))
    op = get_op(method)
    kw = {"base": None if method == "linear" else base, "params": PARAMS[method]}

    def gen():  # type: ignore[no-untyped-def]
        return torch.Generator().manual_seed(7) if op.spec.stochastic else None

    full = op(experts, generator=gen(), **kw)
    for dim in (0, 1):  # column-parallel (q/k/v, gate/up, embeddings) and row-parallel (o, down)
        for tp in (2, 4):
            parts = []
            for rank in range(tp):
                shard_shape = list(shape)
                shard_shape[dim] //= tp
                out = torch.empty(shard_shape)
                op.shard_into(out, experts, generator=gen(), dim=dim, rank=rank, tp=tp, **kw)
                parts.append(out)
            assert torch.equal(torch.cat(parts, dim=dim), full), (method, dim, tp)


def test_16_bit_sources_shard_the_full_merge() -> None:
    base, experts = sources((64, 48), seed=3, dtype=torch.bfloat16)
    op = get_op("ties")
    full = op(experts, base=base, params=PARAMS["ties"])
    out = torch.empty((32, 48), dtype=torch.bfloat16)
    op.shard_into(out, experts, base=base, params=PARAMS["ties"], dim=0, rank=1, tp=2)
    assert torch.equal(out, full[32:])


def test_shard_indices_and_uneven_splits() -> None:
    assert shard_indices((4, 6), 1, 1, 2).tolist() == [3, 4, 5, 9, 10, 11, 15, 16, 17, 21, 22, 23]
    assert shard_indices((4, 6), 0, 1, 2).tolist() == list(range(12, 24))
    from evomerge.errors import ConfigError

    with pytest.raises(ConfigError, match="does not split into 4 equal shards"):
        shard_indices((6, 4), 0, 0, 4)
