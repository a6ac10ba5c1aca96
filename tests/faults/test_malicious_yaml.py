"""docs/reliability.md promises 5 and 7: malicious YAML gives a clear ConfigError with the line, fast, nothing executed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.recipe import load_recipe
from evomerge.safe_yaml import load_yaml, loads_yaml

pytestmark = pytest.mark.faults


def test_python_tags_are_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"a: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="line 1"):
        loads_yaml(text)
    assert not marker.exists()


def test_alias_bomb_is_refused_fast() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="anchor"):
        loads_yaml("\n".join(lines))
    assert time.perf_counter() - t0 < 1.0


def test_duplicate_keys_name_both_lines() -> None:
    with pytest.raises(ConfigError, match=r"line 3.*duplicate key 'x' \(first on line 1\)"):
        loads_yaml("x: 1\ny: 2\nx: 3\n")


def test_unknown_keys_in_a_recipe(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("merge_method: ties\nbase_model: b\nmodels: [{model: a, paramters: {weight: 1}}]\n")
    with pytest.raises(ConfigError, match=r"models\.0\.paramters: unknown key"):
        load_recipe(p)


def test_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_bytes(b"a: 1\n" + b"#" * (2 * 2**20))
    with pytest.raises(ConfigError, match="larger than"):
        load_yaml(p)


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_yaml(p)


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        loads_yaml("a: 1\nb: [1, 2\nc: 3\n", source="s.yaml")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml("/nonexistent/recipe.yaml")
