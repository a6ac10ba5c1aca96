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


@pytest.mark.parametrize("mode", ["native", "compiled", "eager"])
@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs_ties"])
def test_large_parts_with_split_tie_groups_equal_the_full_merge(method: str, mode: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts big enough for the C++ kernel's helper threads (one row block split among them, and
    many column blocks), task vectors on a coarse grid so the rank cuts split tie groups (the tie
    fix-ups a part must apply at its own places), in the C++ kernel, compiled and eagerly."""
    monkeypatch.setenv("EVOMERGE_NATIVE", "1" if mode == "native" else "0")
    monkeypatch.setenv("EVOMERGE_COMPILE", "0" if mode == "eager" else "auto")  # 1.2M entries compile
    shape = (1536, 768)  # 1.2M entries: parts of 2 ranks still run threaded
    g = torch.Generator().manual_seed(11)
    base = torch.randn(shape, generator=g) * 0.02
    experts = [base + torch.round(torch.randn(shape, generator=g) * 4) / 1000 for _ in range(3)]
    op = get_op(method)
    gen = (lambda: torch.Generator().manual_seed(7)) if op.spec.stochastic else (lambda: None)
    full = op(experts, base=base, params=PARAMS[method], generator=gen())
    for dim, tp, starts in ((0, 2, (0, 768)), (1, 3, (0, 256, 512)), (1, 2, (0, 384))):
        pieces, in_place = [], torch.full(shape, float("nan"))
        for start in starts:
            part_shape = list(shape)
            part_shape[dim] //= tp
            out = torch.empty(part_shape)
            op.part_into(out, experts, base=base, params=PARAMS[method], generator=gen(), dim=dim, start=start,
                         length=part_shape[dim])
            pieces.append(out)
            # the same part written at its place in a buffer of the whole shape (an engine's staging buffer)
            op.part_into(in_place, experts, base=base, params=PARAMS[method], generator=gen(), dim=dim,
                         start=start, length=part_shape[dim])
            assert torch.equal(in_place.narrow(dim, start, part_shape[dim]), out)
        assert torch.equal(torch.cat(pieces, dim=dim), full), (method, mode, dim, tp)
        assert torch.equal(in_place, full), (method, mode, dim, tp)  # every part landed at its own place


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


# ----------------------------------------------------------------------------- a vLLM rank's parts

LLAMA = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "num_key_value_heads": 2,
         "hidden_size": 128, "head_dim": 32, "vocab_size": 46}


def test_rank_parts_follow_vllm_loaders() -> None:
    """Column-parallel rows, row-parallel columns, key/value heads shared by ranks when fewer than
    them, the padded vocabulary's short last part; norms whole (left out)."""
    from evomerge.evaluate.vllm_shards import Part, rank_parts

    tensors = [("model.layers.0.self_attn.q_proj.weight", (128, 128)),
               ("model.layers.0.self_attn.k_proj.weight", (64, 128)),
               ("model.layers.0.self_attn.v_proj.bias", (64,)),
               ("model.layers.0.self_attn.o_proj.weight", (128, 128)),
               ("model.layers.0.mlp.up_proj.weight", (384, 128)),
               ("model.layers.0.mlp.down_proj.weight", (128, 384)),
               ("model.layers.0.input_layernorm.weight", (128,)),
               ("model.embed_tokens.weight", (46, 128)),
               ("lm_head.weight", (46, 128))]
    p = rank_parts(LLAMA, tensors, 1, 2)
    assert p["model.layers.0.self_attn.q_proj.weight"] == Part(0, 64, 64)
    assert p["model.layers.0.self_attn.k_proj.weight"] == Part(0, 32, 32)  # 2 kv heads, 2 ranks: one each
    assert p["model.layers.0.self_attn.o_proj.weight"] == Part(1, 64, 64)
    assert p["model.layers.0.mlp.up_proj.weight"] == Part(0, 192, 192)
    assert p["model.layers.0.mlp.down_proj.weight"] == Part(1, 192, 192)
    assert p["model.embed_tokens.weight"] == Part(0, 32, 14)  # vocab 46 padded to 64: rows 32..45
    assert "model.layers.0.input_layernorm.weight" not in p
    four = [rank_parts(LLAMA, tensors, r, 4) for r in range(4)]
    assert [q["model.layers.0.self_attn.k_proj.weight"] for q in four] == [Part(0, 0, 32), Part(0, 0, 32),
                                                                          Part(0, 32, 32), Part(0, 32, 32)]
    assert [q["model.layers.0.self_attn.v_proj.bias"] for q in four][2] == Part(0, 32, 32)
    assert [q["lm_head.weight"] for q in four] == [Part(0, 0, 16), Part(0, 16, 16), Part(0, 32, 14), Part(0, 46, 0)]
    assert rank_parts(LLAMA, tensors, 0, 1) == {}
    assert rank_parts({**LLAMA, "architectures": ["GPT2LMHeadModel"]}, tensors, 0, 2) == {}  # rules unknown: whole
    odd = rank_parts(LLAMA, [("model.layers.0.self_attn.q_proj.weight", (100, 128))], 0, 2)
    assert odd == {}  # not the shape the rule expects: merged whole, the loader slices it


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties"])
def test_merge_into_parts_of_every_rank_assemble_the_whole_merge(zoo_dir, method: str) -> None:  # type: ignore[no-untyped-def]
    """Each rank merges only its parts into a buffer (the rest stays as it was: NaN here), and the
    parts every rank merged, with the whole tensors of the rest, are the whole merge bit for bit."""
    from evomerge.evaluate.vllm_shards import rank_parts
    from evomerge.merge.materialize import merge_into
    from evomerge.merge.plan import plan_merge
    from evomerge.recipe import recipe_from_dict

    params = {"weight": 0.8} if method == "task_arithmetic" else {"weight": 0.8, "density": 0.4}
    recipe = recipe_from_dict({"merge_method": method, "base_model": str(zoo_dir / "base"), "models": [
        {"model": str(zoo_dir / f"expert_{s}"), "parameters": params} for s in ("add", "caesar", "length")]})
    with plan_merge(recipe) as plan:
        whole = {m.name: torch.empty(m.shape, dtype=m.dtype) for m in plan.metas}
        merge_into(plan, whole, seed=5)
        tp = 2
        assembled = {m.name: torch.full(m.shape, float("nan"), dtype=m.dtype) for m in plan.metas}
        merged_entries = []
        for rank in range(tp):
            parts = rank_parts(plan.config, ((m.name, tuple(m.shape)) for m in plan.metas), rank, tp)
            assert parts, "the zoo is a Llama: its projections and embeddings have parts"
            mine = {m.name: torch.full(m.shape, float("nan"), dtype=m.dtype) for m in plan.metas}
            merge_into(plan, mine, seed=5, parts=parts)
            for name, t in mine.items():
                done = ~torch.isnan(t)
                assembled[name][done] = t[done]
            merged_entries.append(sum(int((~torch.isnan(t)).sum()) for t in mine.values()))
    for name, t in whole.items():
        assert torch.equal(assembled[name], t), name
    total = sum(t.numel() for t in whole.values())
    assert all(n < 0.55 * total for n in merged_entries), merged_entries  # norms are whole on both ranks



def test_a_tensor_parallel_degree_that_does_not_divide_the_heads_is_one_clear_error() -> None:
    from evomerge.errors import ConfigError
    from evomerge.evaluate.vllm import check_tensor_parallel

    check_tensor_parallel({"num_attention_heads": 9}, 3)
    with pytest.raises(ConfigError, match="tensor parallel 2 does not divide the model's 9 attention heads") as err:
        check_tensor_parallel({"num_attention_heads": 9}, 2)  # SmolLM2-135M
    assert "1, 3, 9" in err.value.hint
