"""Scaled zoo sizes: a base and any number of experts at a chosen architecture size, untrained.

Training is what makes the tiny zoo (``evomerge.zoo``) mergeable, and a 100M-parameter model
cannot be trained on this machine's two cores in useful time (about 10 s per step). Speed and
scaling benchmarks need the bytes, shapes and depth of real models, not their skills, so a
scaled zoo is a randomly initialized base (transformers' own initialization) plus experts that
are the base plus a seeded task vector shaped like a fine-tuning update: a dense small
Gaussian part plus a low-rank part (fine-tuning updates have low intrinsic rank; Hu et al.
2022, "LoRA", sec. 4), so magnitude trimming (TIES) and sign election have real work to do.

Every model is a standard Hugging Face directory (config, safetensors, the zoo's character-level
tokenizer; the embedding is padded to ``vocab_size`` rows like a real model's padded vocabulary)
that transformers and vLLM load, and the bytes are deterministic for a given size and seed.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from evomerge import cache
from evomerge.errors import ConfigError


@dataclass(frozen=True)
class ScaledShape:
    """A Llama-family architecture size."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False

    def num_parameters(self) -> int:
        h, i, L, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        kv = h * self.num_key_value_heads // self.num_attention_heads
        layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
        return L * layer + v * h * (1 if self.tie_word_embeddings else 2) + h


# Named sizes. "100m" is GPT-2-small's body (hidden 768, 12 layers) with an 8k vocabulary.
SIZES: dict[str, ScaledShape] = {
    "tiny": ScaledShape(128, 384, 2, 4, 4, 64),
    "10m": ScaledShape(256, 704, 8, 4, 4, 4096),
    "100m": ScaledShape(768, 2048, 12, 12, 12, 8192),
}


def shape_of(size: str) -> ScaledShape:
    if size not in SIZES:
        raise ConfigError(f"unknown zoo size {size!r}", hint=f"choose one of {sorted(SIZES)}")
    return SIZES[size]


def task_vector(shape: tuple[int, ...], generator: torch.Generator, *, scale: float, rank: int = 8) -> torch.Tensor:
    """A fine-tuning-like update: scale * (dense N(0, 1) + a rank-``rank`` part of unit
    entry variance). One-dimensional tensors (norm weights) get the dense part only."""
    d = torch.randn(shape, generator=generator)
    if len(shape) == 2 and min(shape) > rank:
        u = torch.randn(shape[0], rank, generator=generator)
        v = torch.randn(rank, shape[1], generator=generator)
        d.addmm_(u, v, alpha=1.0 / math.sqrt(rank))
    return d.mul_(scale)


def _config(shape: ScaledShape) -> dict:
    from evomerge.zoo import ModelShape, make_config

    cfg = make_config(ModelShape(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
                                 num_hidden_layers=shape.num_hidden_layers,
                                 num_attention_heads=shape.num_attention_heads,
                                 num_key_value_heads=shape.num_key_value_heads,
                                 tie_word_embeddings=shape.tie_word_embeddings))
    tokens = cfg.vocab_size
    if shape.vocab_size < tokens:
        raise ConfigError(f"vocab_size {shape.vocab_size} is below the zoo tokenizer's {tokens} tokens",
                          hint=f"use a vocab_size of at least {tokens}")
    cfg.vocab_size = shape.vocab_size
    cfg.max_position_embeddings = 512
    return cfg


def build_scaled_zoo(
    out_dir: str | Path,
    size: str | ScaledShape = "100m",
    *,
    experts: int = 3,
    seed: int = 0,
    delta_scale: float = 2e-3,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Write ``base`` and ``expert_0`` .. ``expert_{n-1}`` under ``out_dir`` (atomically: a
    temporary directory renamed when complete) and return the manifest saved as ``zoo.json``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from evomerge.zoo import build_tokenizer, building

    shape = shape_of(size) if isinstance(size, str) else size
    if experts < 1:
        raise ConfigError(f"a scaled zoo needs at least one expert, got {experts}", hint="pass experts >= 1")
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    with building(out_dir, overwrite=overwrite) as tmp:
        cfg = _config(shape)
        torch.manual_seed(seed)
        base_model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        tok = build_tokenizer()
        base_model.save_pretrained(tmp / "base", safe_serialization=True)
        tok.save_pretrained(tmp / "base")
        state = {k: v.detach() for k, v in base_model.state_dict().items()
                 if not (shape.tie_word_embeddings and k == "lm_head.weight")}
        say(f"scaled zoo {shape}: {sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters, "
            f"base + {experts} experts")
        for i in range(experts):
            gen = torch.Generator().manual_seed(seed * 1000 + i + 1)
            weights = {k: v + task_vector(tuple(v.shape), gen, scale=delta_scale) for k, v in state.items()}
            d = tmp / f"expert_{i}"
            d.mkdir()
            save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
            del weights
            for f in (tmp / "base").iterdir():
                if not f.name.endswith(".safetensors"):
                    shutil.copy2(f, d / f.name)
        manifest = {
            "kind": "scaled",
            "shape": asdict(shape),
            "parameters": sum(v.numel() for v in state.values()),
            "bytes_per_model": sum(v.numel() * v.element_size() for v in state.values()),
            "largest_tensor_bytes": max(v.numel() * v.element_size() for v in state.values()),
            "models": ["base"] + [f"expert_{i}" for i in range(experts)],
            "seed": seed,
            "delta_scale": delta_scale,
            "build_seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def ensure_scaled_zoo(size: str = "100m", *, experts: int = 3, seed: int = 0, root: Path | None = None,
                      log: Callable[[str], None] | None = print) -> Path:
    """The scaled zoo in the cache (``~/.cache/evomerge/zoo-scaled-SIZE-eN-sS``), built if missing."""
    p = (root or cache.cache_root()) / f"zoo-scaled-{size}-e{experts}-s{seed}"
    if not (p / "zoo.json").exists():
        build_scaled_zoo(p, size, experts=experts, seed=seed, overwrite=p.exists(), log=log)
    return p
