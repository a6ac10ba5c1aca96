"""Which part of each checkpoint tensor a vLLM tensor-parallel rank holds, so that the rank merges
only that part (issue 20: merge work divides by the TP degree).

vLLM's loaders take the full checkpoint tensor and keep a slice of it per rank (Megatron-style
tensor parallelism, Shoeybi et al. 2019, "Megatron-LM", sec. 3):
- column-parallel projections (q/k/v, gate/up, and their biases) split the output dimension 0:
  rank r keeps rows r*n/tp .. (r+1)*n/tp; key/value heads fewer than ranks are replicated, and
  rank r keeps head r // (tp / kv_heads);
- row-parallel projections (o, down) split the input dimension 1; their biases are whole;
- vocabulary-parallel embeddings and LM heads split rows of the vocabulary padded to a multiple
  of 64: rank r keeps rows r*p .. min((r+1)*p, vocab) with p = padded / tp (the last rank's
  part may be short or empty);
- everything else (norms) is whole on every rank.

The rules cover the Llama, Mistral and Qwen2 families (their checkpoint names); any other
architecture, or a tensor whose shape is not what the rule expects, is merged whole (the loader
slices it, as without this module). The engine's worker checks the rules once per engine (the
parts outside a rank's slices are NaN on the first swap: a NaN in a loaded weight means vLLM
read outside them, and the worker merges whole from then on).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE
FAMILIES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

_COLUMN = re.compile(r"\.(?:self_attn\.(q|k|v)_proj|mlp\.(?:gate|up)_proj)\.(?:weight|bias)$")
_ROW = re.compile(r"\.(?:self_attn\.o_proj|mlp\.down_proj)\.weight$")
_VOCAB = re.compile(r"(?:^|\.)(?:embed_tokens|lm_head)\.weight$")


class Part(NamedTuple):
    """The slice ``start:start + length`` of a tensor along ``dim``."""

    dim: int
    start: int
    length: int


def rank_parts(config: Mapping[str, Any], tensors: Iterable[tuple[str, tuple[int, ...]]], rank: int,
               tp: int) -> dict[str, Part]:
    """The part of each tensor (name, shape) that rank ``rank`` of ``tp`` holds; tensors it holds
    whole are left out. Empty for ``tp`` 1 or an architecture outside FAMILIES."""
    if tp <= 1 or not set(config.get("architectures") or ()) & set(FAMILIES):
        return {}
    out = {}
    for name, shape in tensors:
        part = _part(config, name, tuple(shape), rank, tp)
        if part is not None and (part.start, part.length) != (0, shape[part.dim]):
            out[name] = part
    return out


def _part(config: Mapping[str, Any], name: str, shape: tuple[int, ...], rank: int, tp: int) -> Part | None:
    heads = int(config.get("num_attention_heads") or 0)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or (int(config.get("hidden_size", 0)) // heads if heads else 0))
    if (m := _COLUMN.search(name)) is not None:
        if m.group(1) in ("k", "v"):
            if shape[0] != kv_heads * head_dim:
                return None
            if kv_heads >= tp:
                return _even(shape, 0, rank, tp)
            if tp % kv_heads:
                return None
            return Part(0, (rank // (tp // kv_heads)) * head_dim, head_dim)
        if m.group(1) == "q" and shape[0] != heads * head_dim:
            return None
        return _even(shape, 0, rank, tp)
    if _ROW.search(name) is not None and len(shape) == 2:
        return _even(shape, 1, rank, tp)
    if _VOCAB.search(name) is not None:
        vocab = shape[0]
        padded = -(-vocab // VOCAB_PADDING) * VOCAB_PADDING
        if padded % tp:
            return None
        per = padded // tp
        start = min(rank * per, vocab)
        return Part(0, start, max(0, min(per, vocab - start)))
    return None


def _even(shape: tuple[int, ...], dim: int, rank: int, tp: int) -> Part | None:
    if shape[dim] % tp:
        return None
    n = shape[dim] // tp
    return Part(dim, rank * n, n)
