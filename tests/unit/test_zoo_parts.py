"""Zoo building blocks: tokenizer, skills, deterministic training."""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge import zoo


def test_tokenizer_is_character_level_and_round_trips(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = zoo.build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    text = "add:12+7=19"
    ids = loaded(text)["input_ids"]
    assert ids[0] == zoo.BOS
    assert ids[1:] == zoo.encode(text, zoo.vocab())
    assert loaded.decode(ids, skip_special_tokens=True) == text
    assert loaded.pad_token_id == zoo.PAD and loaded.eos_token_id == zoo.EOS


def test_skill_items_are_deterministic_and_splits_differ() -> None:
    for skill in zoo.SKILLS:
        a = zoo.skill_items(skill, 50, split="dev")
        assert a == zoo.skill_items(skill, 50, split="dev")
        assert a != zoo.skill_items(skill, 50, split="test")


def test_skill_answers_are_correct() -> None:
    for prompt, answer in zoo.skill_items("caesar", 20):
        word = prompt.split(":")[1].rstrip("=")
        assert answer == "".join(chr((ord(c) - 97 + 3) % 26 + 97) for c in word)
    for prompt, answer in zoo.skill_items("add", 20):
        a, b = prompt.split(":")[1].rstrip("=").split("+")
        assert int(answer) == int(a) + int(b)


def test_training_is_deterministic() -> None:
    plan = zoo.TrainPlan(mix={"copy": 1.0, "caesar": 1.0}, steps=3, lr=1e-3, batch_size=8)
    shape = zoo.ModelShape(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2)
    states = []
    for _ in range(2):
        m = zoo.new_model(shape, seed=5)
        zoo.train(m, plan, zoo.vocab())
        states.append({k: v.clone() for k, v in m.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_spec_digest_tracks_every_field() -> None:
    assert zoo.ZooSpec().digest() == zoo.ZooSpec().digest()
    assert zoo.ZooSpec(seed=1).digest() != zoo.ZooSpec().digest()
    assert zoo.ZooSpec(expert_lr=1e-4).digest() != zoo.ZooSpec().digest()


def test_default_spec_keeps_its_digest_and_the_qwen2_spec_has_its_own() -> None:
    # the default zoo's cache directory is named by this digest: new skills must not move it
    assert zoo.ZooSpec().digest() == "e0e0fbfad298"
    spec = zoo.QWEN2_SPEC
    assert spec.digest() != zoo.ZooSpec().digest()
    assert spec.shape.arch == "qwen2" and spec.shape.tie_word_embeddings and spec.shape.num_hidden_layers >= 3
    assert set(spec.experts).isdisjoint(zoo.ZooSpec().experts) and set(spec.experts) <= set(zoo.SKILLS)
    assert set(spec.pretrain) <= set(zoo.PRETRAIN)


def test_default_zoo_dir_gives_another_spec_its_own_directory(monkeypatch) -> None:
    monkeypatch.setenv("EVOMERGE_ZOO", "/somewhere/zoo")
    assert zoo.default_zoo_dir() == Path("/somewhere/zoo")
    assert zoo.default_zoo_dir(zoo.ZooSpec()) == Path("/somewhere/zoo")
    assert zoo.default_zoo_dir(zoo.QWEN2_SPEC).name == f"zoo-{zoo.QWEN2_SPEC.digest()}"


def test_qwen2_skill_answers_are_correct() -> None:
    for prompt, answer in zoo.skill_items("sub", 50):
        a, b = prompt.split(":")[1].rstrip("=").split("-")
        assert int(answer) == int(a) - int(b) >= 0 and int(b) <= 9
    for prompt, answer in zoo.skill_items("count", 50):
        word, letter = prompt.split(":")[1].rstrip("=").split(">")
        assert answer == str(word.count(letter))
    for prompt, answer in zoo.skill_items("sort", 50):
        assert answer == "".join(sorted(prompt.split(":")[1].rstrip("=")))


def test_a_tied_model_reloads_tied_and_identical(tmp_path: Path) -> None:
    """transformers saves a tied model without lm_head.weight; the zoo scores what it reloads."""
    from safetensors import safe_open

    shape = zoo.ModelShape(arch="qwen2", hidden_size=32, intermediate_size=64, num_attention_heads=2,
                           num_key_value_heads=1, num_hidden_layers=3, tie_word_embeddings=True)
    model = zoo.new_model(shape, seed=3).eval()
    zoo._save(model, zoo.build_tokenizer(), tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    again = zoo._reload(tmp_path)
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[zoo.BOS, *zoo.encode("srt:cab=", zoo.vocab())]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert list(zoo._state(again)) == [n for n, _ in again.named_parameters()]  # the tied head counted once
