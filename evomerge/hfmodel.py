"""Loading model directories with transformers: safetensors only, no remote code, offline.

transformers reads config, tokenizer and template files itself, with no size cap and with a
blocking ``open``; so before it runs, every file at the top of the directory must be a regular
file (a FIFO or device is refused, naming it) and the ones it reads whole (:data:`TEXT_SUFFIXES`)
at most :data:`MAX_SIDE_FILE_BYTES` (docs/reliability.md promise 7).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from evomerge.errors import ConfigError
from evomerge.textfile import not_regular

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MAX_SIDE_FILE_BYTES = 256 * 2**20
TEXT_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken", ".vocab")  # config, tokenizer, chat template


def check_model_files(path: str | Path) -> None:
    """Refuse a model directory whose top-level entries transformers could open but should not:
    anything other than regular files and subdirectories (a FIFO would block it forever, a device
    like /dev/zero would fill memory), and config / tokenizer / template files over the cap.
    Hidden entries are skipped (transformers ignores them); dangling links are left to it."""
    root = Path(path)
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(entry, "model file", st.st_mode)
        if entry.suffix.lower() in TEXT_SUFFIXES and st.st_size > MAX_SIDE_FILE_BYTES:
            raise ConfigError(
                f"{entry}: {st.st_size} bytes is larger than the {MAX_SIDE_FILE_BYTES}-byte limit for "
                "config and tokenizer files",
                hint="re-export the tokenizer with save_pretrained; such files are a few MiB",
            )


def load_hf_model(path: str | Path, *, dtype: str | None = None):
    """A causal LM from a local directory, weights read from safetensors only (never pickle)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from evomerge.merge.io import ModelDir

    ModelDir(path).close()  # refuses pickle-only, corrupt or escaping directories with a clear error
    check_model_files(path)
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=False, local_files_only=True, **kwargs
    )
    model.eval()
    return model


def load_hf_tokenizer(path: str | Path):
    """The tokenizer of a local directory (its files checked first, see :func:`check_model_files`)."""
    from transformers import AutoTokenizer

    check_model_files(path)
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
