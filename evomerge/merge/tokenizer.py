"""The merged model's tokenizer and side files: ``tokenizer_source``, ``tokenizer:`` and
``chat_template`` as mergekit 0.1.5 reads them.

Without them the merged model gets the reference model's tokenizer files (the base, else the
first model), as mergekit copies its donor's. With ``tokenizer_source`` (``base``, ``union`` or a
model path) mergekit builds an output vocabulary and re-indexes every model's embedding and
``lm_head`` rows onto it. When every model has the output vocabulary, with token ids 0..n-1 and
exactly n rows in each vocabulary tensor, that re-indexing is the identity: evomerge merges as
usual and gives the merged model that tokenizer, the same weights as mergekit's. Everything else
(models with different vocabularies, padded embedding matrices, per-token embedding overrides,
padding the vocabulary) would need the re-indexing itself, which evomerge does not build: such a
recipe is refused before any weight is read, naming the model and the reason.

``chat_template`` is ``auto`` (the template most of the models' tokenizers carry), one of
mergekit's built-in template names (``chatml``, ``llama3``, ...: read from an installed mergekit's
package data, since evomerge ships no copy of them; refused with the fix when mergekit is not
installed) or a Jinja template; it is written into the merged tokenizer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.errors import ConfigError

if TYPE_CHECKING:
    from evomerge.merge.io import ModelDir
    from evomerge.recipe import Recipe

MERGEKIT_TEMPLATE_NAMES = ("alpaca", "chatml", "exaone", "llama3", "mistral")

_NOT_COPIED = re.compile(r"(\.safetensors|\.safetensors\.index\.json|\.bin|\.pt|\.pth|\.ckpt|\.pkl)$")
_SKIP_FILES = {"config.json", "evomerge-manifest.json", "evomerge-recipe.json", "mergekit_config.yml"}
MAX_COPIED_FILE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class TokenizerChoice:
    """Which model directory gives the merged model its tokenizer files, and the chat template to
    write into them (None: the donor's files unchanged)."""

    donor: Path
    chat_template: str | None = None


def is_vocabulary_tensor(name: str) -> bool:
    """A tensor with one row per token (Llama-family names)."""
    return "embed_tokens." in name or name.startswith("lm_head.")


@lru_cache(maxsize=64)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - any failure to load is the same answer to the user
        raise ConfigError(f"{path}: cannot load its tokenizer ({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                          hint="point the tokenizer source at a model directory with tokenizer files") from None


def _vocabulary(path: str) -> dict[str, int]:
    return dict(_tokenizer(path).get_vocab())


def choose_tokenizer(recipe: Recipe, sources: dict[str, ModelDir]) -> TokenizerChoice:
    """The tokenizer of ``recipe``'s merge over ``sources`` (opened), or a ConfigError."""
    reference = Path(sources[recipe.reference].path)
    choice = recipe.tokenizer_choice
    if choice is None:
        return TokenizerChoice(reference, _chat_template(recipe, sources))
    donor = reference if choice in ("base", "union") else Path(choice)
    if not donor.is_dir():
        raise ConfigError(f"tokenizer_source {choice}: not a model directory",
                          hint="use base, union, or the path of a model directory")
    spec = recipe.tokenizer
    if spec is not None and spec.tokens:
        raise ConfigError("tokenizer.tokens: per-token embedding overrides re-index the embedding rows, which "
                          "evomerge does not build", hint="drop `tokens:` or merge with mergekit")
    vocab = _vocabulary(str(donor))
    n = len(vocab)
    if sorted(vocab.values()) != list(range(n)):
        raise ConfigError(f"{donor}: its tokenizer's token ids are not 0..{n - 1}, so mergekit would re-index "
                          "the embeddings, which evomerge does not build", hint="drop tokenizer_source")
    if spec is not None and spec.pad_to_multiple_of and n % spec.pad_to_multiple_of:
        raise ConfigError(f"tokenizer.pad_to_multiple_of {spec.pad_to_multiple_of}: padding the {n}-token "
                          "vocabulary adds embedding rows, which evomerge does not build",
                          hint="drop pad_to_multiple_of or merge with mergekit")
    for name in recipe.source_names():
        src = sources[name]
        if _vocabulary(str(src.path)) != vocab:
            raise ConfigError(f"tokenizer_source {choice}: {name} has another vocabulary than {donor}; mapping "
                              "embeddings between vocabularies is not built in evomerge",
                              hint="merge models that share one tokenizer, or drop tokenizer_source")
        rows = {t: src.meta(t).shape[0] for t in src.tensor_names if is_vocabulary_tensor(t)}
        padded = {t: r for t, r in rows.items() if r != n}
        if padded:
            t, r = next(iter(padded.items()))
            raise ConfigError(f"tokenizer_source {choice}: {name}'s {t} has {r} rows for {n} tokens; mergekit "
                              f"would resize it to the vocabulary, which evomerge does not build",
                              hint="drop tokenizer_source to keep the embedding matrices as they are")
    return TokenizerChoice(donor, _chat_template(recipe, sources))


def _chat_template(recipe: Recipe, sources: dict[str, ModelDir]) -> str | None:
    """mergekit's reading of ``chat_template``: ``auto`` is the most common template among the
    models (none: the tokenizer is left as it is); a Jinja template (20 characters or more, with
    a ``{``) is used as written."""
    template = recipe.chat_template
    if template is None:
        return None
    if template == "auto":
        found = []
        for name in recipe.source_names():
            t = _tokenizer(str(sources[name].path)).chat_template
            if isinstance(t, dict):
                t = t.get("default")
            if t:
                found.append(t.strip())
        return Counter(found).most_common(1)[0][0] if found else None
    if len(template) < 256 and "\n" not in template and "{" not in template:  # a name, as mergekit tells them
        builtin = mergekit_template(template)
        if builtin is not None:
            return builtin
        if template in MERGEKIT_TEMPLATE_NAMES:
            raise ConfigError(f"chat_template {template!r} names one of mergekit's built-in templates, which evomerge "
                              "does not ship and reads from an installed mergekit, and none is installed",
                              hint="pip install mergekit (its templates are read, it is not imported), paste the "
                                   "template's Jinja text into chat_template, or use auto")
    if len(template) < 20 or "{" not in template:
        raise ConfigError(f"chat_template {template[:40]!r} is neither auto nor a Jinja template",
                          hint="write the Jinja template text, or chat_template: auto")
    return template


def mergekit_template(name: str) -> str | None:
    """The text of mergekit's built-in chat template ``name`` from an installed mergekit's package
    data (found without importing mergekit, whose pins may not fit this environment), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("mergekit")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "_data" / "chat_templates" / f"{name}.jinja"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def copy_side_files(src: Path, writer: Any, *, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Copy tokenizer and generation files (not weights, not config, not ``skip``) from ``src``."""
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.is_symlink() or p.name in _SKIP_FILES or p.name in skip or _NOT_COPIED.search(p.name):
            continue
        if p.stat().st_size > MAX_COPIED_FILE_BYTES or p.name.startswith("."):
            continue
        writer.copy_file(p, p.name)


def write_tokenizer(choice: TokenizerChoice, writer: Any) -> None:
    """Write the donor's tokenizer and side files through ``writer``; with a chat template the
    tokenizer is saved by transformers with that template (as mergekit saves it)."""
    if choice.chat_template is None:
        copy_side_files(choice.donor, writer)
        return
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="evomerge-tokenizer-") as scratch:
        tok = AutoTokenizer.from_pretrained(str(choice.donor))  # its own copy: the cached one stays as loaded
        tok.chat_template = choice.chat_template
        tok.save_pretrained(scratch)
        saved = sorted(p for p in Path(scratch).iterdir() if p.is_file())
        copy_side_files(choice.donor, writer, skip={p.name for p in saved})
        for p in saved:
            writer.copy_file(p, p.name)
