"""The merged model's tokenizer (evomerge.merge.tokenizer): tokenizer_source, tokenizer: and
chat_template as mergekit 0.1.5 reads them. Merges mergekit would re-index embeddings for are
refused before anything is written, naming the model and the reason; parity of the accepted
forms with mergekit itself is tests/parity (tokenizer_* and chat_template_* configs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import recipe_from_dict
from tests.conftest import save_tiny


def linear(*models: Path, **extra) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models],
            "dtype": "float32", **extra}


def refused(recipe: dict, out: Path, needle: str) -> str:
    with pytest.raises(ConfigError, match=needle) as err:
        merge_to_dir(recipe_from_dict(recipe), out)
    assert not out.exists()
    return err.value.message


def test_models_with_another_vocabulary_are_refused_with_tokenizer_source(tmp_path: Path) -> None:
    from evomerge import zoo

    a = save_tiny(tmp_path / "a", seed=0)
    b = save_tiny(tmp_path / "b", seed=1)
    zoo.build_tokenizer("\u00e9\u00e8").save_pretrained(b)  # same embedding rows, another vocabulary
    message = refused(linear(a, b, tokenizer_source="union"), tmp_path / "out", "another vocabulary")
    assert str(b) in message
    merge_to_dir(recipe_from_dict(linear(a, b)), tmp_path / "plain")  # without it: a's tokenizer, as mergekit copies


def test_padded_embeddings_are_refused_because_mergekit_would_resize_them(tmp_path: Path) -> None:
    from evomerge import zoo

    a = save_tiny(tmp_path / "a", seed=0, extra_chars="\u00e9\u00e8\u00ea")
    zoo.build_tokenizer("").save_pretrained(a)  # three embedding rows beyond the vocabulary
    refused(linear(a, tokenizer_source="base"), tmp_path / "out", "rows for")
    refused(linear(a, tokenizer={"source": "base", "pad_to_multiple_of": 7}), tmp_path / "out", "rows for|pad")


def test_token_overrides_padding_and_builtin_template_names_are_refused(tmp_path: Path) -> None:
    a = save_tiny(tmp_path / "a", seed=0)
    refused(linear(a, tokenizer={"source": "base", "tokens": {"<x>": {"source": str(a)}}}), tmp_path / "o", "tokens")
    refused(linear(a, tokenizer={"source": "union", "pad_to_multiple_of": 1000}), tmp_path / "o", "pad_to_multiple_of")
    refused(linear(a, chat_template="{{ x }}"), tmp_path / "o", "neither auto nor a Jinja template")
    refused(linear(a, tokenizer_source=str(tmp_path / "nowhere")), tmp_path / "o", "not a model directory")


def test_a_chat_template_is_written_into_the_merged_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    a = save_tiny(tmp_path / "a", seed=0)
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    merge_to_dir(recipe_from_dict(linear(a, chat_template=template)), tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert tok.chat_template == template
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi\n"
    assert AutoTokenizer.from_pretrained(str(a)).chat_template is None  # the source is left alone


def test_builtin_template_names_need_an_installed_mergekit(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without mergekit on the path a built-in name is refused with the fix (the parity suite
    resolves the names through mergekit's real package)."""
    import importlib
    import sys

    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p or ".") / "mergekit").exists()])
    importlib.invalidate_caches()
    a = save_tiny(tmp_path / "a", seed=0)
    with pytest.raises(ConfigError, match="built-in templates") as err:
        merge_to_dir(recipe_from_dict(linear(a, chat_template="llama3")), tmp_path / "o")
    assert "pip install mergekit" in err.value.hint and not (tmp_path / "o").exists()
