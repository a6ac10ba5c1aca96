"""Loading model directories with transformers: safetensors only, no remote code, offline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_hf_model(path: str | Path, *, dtype: str | None = None):
    """A causal LM from a local directory, weights read from safetensors only (never pickle)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from evomerge.merge.io import ModelDir

    ModelDir(path).close()  # refuses pickle-only, corrupt or escaping directories with a clear error
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=False, local_files_only=True, **kwargs
    )
    model.eval()
    return model


def load_hf_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
