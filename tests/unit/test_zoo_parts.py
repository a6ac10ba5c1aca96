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
