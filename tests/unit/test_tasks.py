"""Task specs: strict validation, JSONL loading with line numbers, answer extraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.evaluate.tasks import TaskSpec, extract_answer, load_task, reference

FITNESS = Path(__file__).resolve().parents[2] / "fitness"


def write_spec(tmp_path: Path, body: str, data: str = '{"q": "1+1", "a": "2"}\n') -> Path:
    (tmp_path / "d.jsonl").write_text(data)
    p = tmp_path / "t.yaml"
    p.write_text("name: t\ndata: d.jsonl\n" + body)
    return p


def test_shipped_specs_validate_and_zoo_data_loads() -> None:
    for spec in sorted(FITNESS.glob("*.yaml")):
        if spec.stem.startswith("zoo_"):
            for split in ("search", "heldout"):
                assert load_task(spec, split=split).items
        else:  # GSM8K / MGSM / MMLU point at user-supplied files
            with pytest.raises(ConfigError, match="data file not found"):
                load_task(spec)


@pytest.mark.parametrize(("body", "needle"), [
    ("kind: generate\nprompt: '{q.__class__}'\ntarget: a\n", "must be a plain {field_name}"),
    ("kind: generate\nprompt: '{q!r}'\ntarget: a\n", "must be a plain {field_name}"),
    ("kind: generate\nprompt: '{q:>10}'\ntarget: a\n", "must be a plain {field_name}"),
    ("kind: generate\nprompt: '{q}'\ntarget: a\nextract: regex\n", "needs `regex:`"),
    ("kind: generate\nprompt: '{q}'\ntarget: a\nextract: regex\nregex: 'a(b'\n", "does not compile"),
    ("kind: generate\nprompt: '{q}'\ntarget: a\nextract: regex\nregex: 'ab'\n", "exactly one capture group"),
    ("kind: rank\nprompt: '{q}'\ntarget: a\n", "kind"),
    ("kind: generate\nprompt: '{q}'\ntarget: a\ntemperature: 0.7\n", "temperature: Extra inputs"),
])
def test_bad_specs_are_config_errors(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError, match="invalid task spec") as info:
        load_task(write_spec(tmp_path, body))
    assert needle in str(info.value)


@pytest.mark.parametrize(("data", "needle"), [
    ('{"q": "1"}\n', r"d.jsonl:1: missing field\(s\) \['a'\]"),
    ('{"q": "1", "a": "2"}\n{oops\n', "d.jsonl:2: invalid JSON"),
    ('[1, 2]\n', "d.jsonl:1: each line must be a JSON object"),
    ("\n\n", "no items"),
])
def test_bad_data_names_file_and_line(tmp_path: Path, data: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_task(write_spec(tmp_path, "kind: generate\nprompt: '{q}'\ntarget: a\n", data))


def test_heldout_split_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no `heldout:` data file"):
        load_task(write_spec(tmp_path, "kind: generate\nprompt: '{q}'\ntarget: a\n"), split="heldout")


def test_answer_extraction() -> None:
    gsm = TaskSpec(name="g", kind="generate", data="x", prompt="{q}", extract="last_number", stop=("\n\nQ:",))
    assert extract_answer(gsm, "so 3 + 4 = 7, total 1,234.\n\nQ: next 99") == "1234"
    assert extract_answer(gsm, "no digits") == ""
    assert reference(gsm, {"answer": "work ... #### 72"}) == "72"
    assert reference(gsm, {"answer": 72.0}) == "72"
    rx = TaskSpec(name="r", kind="generate", data="x", prompt="{q}", extract="regex", regex=r"answer is (\w+)")
    assert extract_answer(rx, "I think the answer is Paris.") == "Paris"
    strip = TaskSpec(name="s", kind="generate", data="x", prompt="{q}", stop=("=",))
    assert extract_answer(strip, " defg=more") == "defg"
