"""docs/reliability.md promise 7, bounded inputs (issue 19): every bad input is a one-line error, fast.

- A FIFO or a device (``/dev/zero``) given as a search space, recipe, task spec, task data or
  tokenizer file is refused before it is read ("give a regular file"): it would block forever
  or fill memory, since a size cap on ``st_size`` sees 0 bytes.
- A ``regex:`` extractor that backtracks catastrophically scores the item as wrong, in bounded
  time, instead of hanging the evaluation.
- A model config that contradicts its tensors (layer count, vocabulary, width) is refused when
  the directory is opened, so ``validate`` cannot spin on 10**12 layers and ``merge`` cannot
  write a config that contradicts the weights.
- Deep nesting (YAML, JSONL, recipe JSON, config.json) and huge number literals are
  ConfigErrors naming the file, the line and the limit, not RecursionError / ValueError.

Whatever would hang or eat memory if a fix regressed runs in a fresh interpreter with a 4 GiB
address-space cap and a generous timeout: a regression fails the test instead of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.errors import ConfigError, CorruptArtifactError
from tests.conftest import REPO, run_cli, save_tiny

pytestmark = pytest.mark.faults

HANG_S = 300  # a fixed build answers in seconds; only a regression (blocked or spinning) gets near this
MEM_CAP = 4 * 2**30
WIDE = {"COLUMNS": "1000"}  # rich wraps stderr at 80 columns otherwise


def _python(code: str, *, cwd: Path, timeout: float = HANG_S) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this checkout, offline, memory capped)."""
    prelude = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({MEM_CAP}, {MEM_CAP}))\n"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **WIDE)
    try:
        return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s: it blocked or spun instead of refusing the input")


def _errors(imports: str, exprs: list[str], *, cwd: Path) -> list[dict | None]:
    """For each expression (run in one fresh interpreter), the EvomergeError it raised as
    ``{type, message, hint}``, or None if it raised nothing."""
    lines = [imports, "import json", "from evomerge.errors import EvomergeError", "out = []"]
    for e in exprs:
        lines += ["try:", f"    {e}", "    out.append(None)", "except EvomergeError as err:",
                  "    out.append({'type': type(err).__name__, 'message': err.message, 'hint': err.hint})"]
    lines.append("print(json.dumps(out))")
    proc = _python("\n".join(lines), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``evomerge ARGS`` with memory capped (for inputs that made the old code allocate without end)."""
    return _python(f"import sys\nsys.argv = ['evomerge', *{list(args)!r}]\nfrom evomerge.cli import main\nmain()",
                   cwd=cwd)


def _said(proc: subprocess.CompletedProcess) -> str:
    return " ".join(proc.stderr.split())


def _refused_as_not_regular(err: dict | None, path: Path | str) -> None:
    assert err is not None, f"{path} was read"
    assert err["type"] == "ConfigError"
    assert err["message"].startswith(f"{path}: ") and "not a regular file" in err["message"]
    assert "\n" not in err["message"] and "give a regular file" in err["hint"]


def _spec(tmp_path: Path, data: str = "d.jsonl", extra: str = "") -> Path:
    p = tmp_path / "t.yaml"
    p.write_text(f"name: t\nkind: generate\ndata: {data}\nprompt: '{{q}}'\ntarget: a\n{extra}")
    return p


# ---------------------------------------------------------------- non-regular files


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_space_recipe_and_task_spec_must_be_regular_files(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path: Path = tmp_path / "in.yaml"
        os.mkfifo(path)  # no writer: opening it for reading the ordinary way blocks forever
    else:
        path = Path("/dev/zero")  # st_size 0, endless data
    errs = _errors(
        "from evomerge.space.schema import load_space\nfrom evomerge.recipe import load_recipe\n"
        "from evomerge.evaluate.tasks import load_task_spec",
        [f"load_space({str(path)!r})", f"load_recipe({str(path)!r})", f"load_task_spec({str(path)!r})"],
        cwd=tmp_path,
    )
    for err in errs:
        _refused_as_not_regular(err, path)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_task_data_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    data = {"fifo": tmp_path / "d.jsonl", "dev_zero": Path("/dev/zero"), "directory": tmp_path / "dir"}[kind]
    if kind == "fifo":
        os.mkfifo(data)
    elif kind == "directory":
        data.mkdir()
    spec = _spec(tmp_path, str(data))
    [err] = _errors("from evomerge.evaluate.tasks import load_task", [f"load_task({str(spec)!r})"], cwd=tmp_path)
    _refused_as_not_regular(err, data)


def test_cli_refuses_fifo_and_device_inputs(tmp_path: Path) -> None:
    fifo = tmp_path / "space.yaml"
    os.mkfifo(fifo)
    proc = run_cli("validate", str(fifo), cwd=tmp_path, timeout=HANG_S, **WIDE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{fifo}: YAML file is a FIFO (named pipe), not a regular file" in _said(proc)
    assert "give a regular file" in _said(proc)

    proc = _cli("validate", "/dev/zero", cwd=tmp_path)  # the old code read /dev/zero until memory ran out
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "/dev/zero: YAML file is a character device, not a regular file" in _said(proc)

    recipe = tmp_path / "recipe.yaml"
    os.mkfifo(recipe)
    proc = run_cli("merge", str(recipe), "--out", str(tmp_path / "out"), cwd=tmp_path, timeout=HANG_S, **WIDE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{recipe}: YAML file is a FIFO (named pipe), not a regular file" in _said(proc)
    assert not (tmp_path / "out").exists()


def test_eval_refuses_fifo_task_data(tmp_path: Path) -> None:
    model = save_tiny(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    os.mkfifo(data)
    proc = run_cli("eval", str(model), "-t", str(_spec(tmp_path)), cwd=tmp_path, timeout=HANG_S, **WIDE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{data}: data file is a FIFO (named pipe), not a regular file" in _said(proc)


def test_tokenizer_files_must_be_regular(tmp_path: Path) -> None:
    fifo_dir = save_tiny(tmp_path / "fifo_tok")
    (fifo_dir / "tokenizer.json").unlink()
    os.mkfifo(fifo_dir / "tokenizer.json")  # transformers would open it and wait forever
    zero_dir = save_tiny(tmp_path / "zero_tok")
    (zero_dir / "tokenizer_config.json").unlink()
    (zero_dir / "tokenizer_config.json").symlink_to("/dev/zero")  # ... or read until memory ran out
    errs = _errors("from evomerge.hfmodel import load_hf_model, load_hf_tokenizer",
                   [f"load_hf_tokenizer({str(fifo_dir)!r})", f"load_hf_model({str(fifo_dir)!r})",
                    f"load_hf_tokenizer({str(zero_dir)!r})"], cwd=tmp_path)
    _refused_as_not_regular(errs[0], fifo_dir / "tokenizer.json")
    _refused_as_not_regular(errs[1], fifo_dir / "tokenizer.json")
    _refused_as_not_regular(errs[2], zero_dir / "tokenizer_config.json")
    assert "character device" in errs[2]["message"]


def test_read_regular_reads_at_most_cap_plus_one_bytes(tmp_path: Path) -> None:
    from evomerge.textfile import read_regular

    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    asked: list[int] = []

    def watching_open(path, mode="r", **kw):  # noqa: ANN001, ANN202
        fh = open(path, mode, **kw)  # noqa: SIM115 - returned to the caller, who closes it
        real_read = fh.read

        class Watched:
            def read(self, n: int = -1) -> bytes:
                asked.append(n)
                return real_read(n)

            def __getattr__(self, name: str):  # noqa: ANN204
                return getattr(fh, name)

            def __enter__(self):  # noqa: ANN204
                return self

            def __exit__(self, *exc: object) -> None:
                fh.close()

        return Watched()

    assert read_regular(p, cap=100, open_fn=watching_open) == b"x" * 100
    assert asked == [101]
    with pytest.raises(ConfigError, match=r"f: file is larger than the 99-byte limit"):
        read_regular(p, cap=99, open_fn=watching_open)


# ---------------------------------------------------------------- catastrophic regex


def test_catastrophic_regex_scores_wrong_instead_of_hanging(tmp_path: Path) -> None:
    code = r'''
import logging, time
from evomerge.evaluate.tasks import Task, TaskSpec, score_task

logging.basicConfig(level=logging.WARNING)
spec = TaskSpec(name="t", kind="generate", data="d.jsonl", prompt="{q}", target="a", extract="regex",
                regex=r"(a+)+$")
items = ({"q": "1", "a": "aaa"}, {"q": "2", "a": ""}, {"q": "3", "a": "a"})
outs = {"1": "aaa", "2": "a" * 5000 + "b", "3": "a"}  # item 2: exponential backtracking for re

class Engine:
    def generate(self, prompts, *, max_new_tokens, stop):
        return [outs[p] for p in prompts]

t0 = time.perf_counter()
scores = score_task(Task(spec=spec, items=items), Engine())
print(scores, time.perf_counter() - t0)
'''
    proc = _python(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores, seconds = proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    # the runaway item is wrong even though "" would equal an empty extraction; the others score as before
    assert scores == "[1.0, 0.0, 1.0]"
    assert float(seconds) < 60  # one 0.5 s limit (plus the regex module's slack), even on a loaded machine
    assert "task t: item 1: `regex:` '(a+)+$' ran past its 0.5 s limit" in _said(proc)


def test_regex_is_compiled_once_at_load_and_extracts_as_before(tmp_path: Path) -> None:
    import re

    from evomerge.evaluate import tasks

    (tmp_path / "d.jsonl").write_text('{"q": "x", "a": "1"}\n')
    tasks.compile_extractor.cache_clear()
    task = tasks.load_task(_spec(tmp_path, extra="extract: regex\nregex: 'answer:\\s*(-?\\d+)'\nstop: ['\\n\\n']\n"))
    assert tasks.compile_extractor.cache_info().misses == 1  # compiled when the spec loaded
    texts = ["answer: 42", "the answer:7 then answer: 9", "no number", "answer: -3\n\nanswer: 5", ""]
    for text in texts:
        cut = text.split("\n\n")[0]
        m = re.search(r"answer:\s*(-?\d+)", cut)
        assert tasks.extract_answer(task.spec, text) == (m.group(1).strip() if m else "")
    assert tasks.compile_extractor.cache_info().misses == 1  # and never again
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "d.jsonl").write_text('{"q": "x", "a": "1"}\n')
    with pytest.raises(ConfigError, match="invalid task spec") as info:
        tasks.load_task(_spec(bad, extra="extract: regex\nregex: '(?P<x'\n"))
    assert "`regex:` does not compile" in str(info.value)


# ---------------------------------------------------------------- config against tensors


def _set_config(model: Path, **kw) -> Path:
    cfg = json.loads((model / "config.json").read_text()) | kw
    (model / "config.json").write_text(json.dumps(cfg))
    return model


def test_inflated_layer_count_is_refused_on_open(tmp_path: Path) -> None:
    from evomerge.merge.io import ModelDir

    model = _set_config(save_tiny(tmp_path / "m"), num_hidden_layers=10**12)
    with pytest.raises(CorruptArtifactError) as info:
        ModelDir(model)
    assert info.value.message == (f"{model / 'config.json'}: num_hidden_layers is 1000000000000 but the weights "
                                  "hold 2 layers (indices 0..1)")
    assert "set num_hidden_layers in config.json" in info.value.hint


def test_validate_refuses_inflated_layers_instead_of_spinning(tmp_path: Path) -> None:
    base = _set_config(save_tiny(tmp_path / "base"), num_hidden_layers=10**12)
    expert = save_tiny(tmp_path / "expert", seed=1)
    (tmp_path / "d.jsonl").write_text('{"q": "x", "a": "1"}\n')
    _spec(tmp_path)
    space = tmp_path / "s.yaml"
    space.write_text(f"name: s\nkind: ps\nbase: {base}\nexperts: [{expert}]\nmerge_method: task_arithmetic\n"
                     "vary: {weight: {low: 0.0, high: 1.0}}\nobjectives: [{task: t.yaml}]\nbudget: 4\n")
    proc = _cli("validate", str(space), cwd=tmp_path)  # the old code built 10**12 genes
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{base / 'config.json'}: num_hidden_layers is 1000000000000 but the weights hold 2 layers" in _said(proc)


def test_merge_refuses_a_config_that_contradicts_its_tensors(tmp_path: Path) -> None:
    model = _set_config(save_tiny(tmp_path / "m"), num_hidden_layers=3)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels: [{{model: {model}, parameters: {{weight: 1}}}}]\n")
    out = tmp_path / "out"
    proc = run_cli("merge", str(recipe), "--out", str(out), cwd=tmp_path, timeout=HANG_S, **WIDE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{model / 'config.json'}: num_hidden_layers is 3 but the weights hold 2 layers (indices 0..1)" in _said(proc)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize(("cfg", "needle"), [
    ({"vocab_size": 10**9}, r"vocab_size is 1000000000 but model.embed_tokens.weight has \d+ rows \(shape \[\d+, 32\]\)"),
    ({"hidden_size": 2**40}, r"hidden_size is 1099511627776 but model.embed_tokens.weight has 32 columns"),
    ({"intermediate_size": 10**9}, r"intermediate_size is 1000000000 but model.layers.\d.mlp.down_proj.weight has "
                                   r"64 columns \(shape \[32, 64\]\)"),
    ({"num_key_value_heads": 10**6}, r"num_key_value_heads is 1000000 \(x head size 16 = 16000000\) but "
                                     r"model.layers.\d.self_attn.k_proj.weight has 32 rows"),
    ({"head_dim": 4096}, r"num_attention_heads is 2 \(x head size 4096 = 8192\) but "
                         r"model.layers.\d.self_attn.q_proj.weight has 32 rows"),
])
def test_inflated_sizes_that_loaders_allocate_by_are_refused(tmp_path: Path, cfg: dict, needle: str) -> None:
    from evomerge.merge.io import ModelDir

    model = _set_config(save_tiny(tmp_path / "m"), **cfg)
    with pytest.raises(CorruptArtifactError, match=needle) as info:
        ModelDir(model)
    assert str(model) in info.value.message and info.value.hint


def test_layer_stack_with_a_gap_or_a_garbage_index_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from evomerge.merge.io import ModelDir

    model = save_tiny(tmp_path / "m", num_hidden_layers=3)
    tensors = load_file(str(model / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if ".layers.1." not in k}, str(model / "model.safetensors"))
    with pytest.raises(CorruptArtifactError, match="num_hidden_layers is 3 but the weights hold no tensors for layer 1"):
        ModelDir(model)

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "llama"}))  # layer count from tensor names
    norm = tensors["model.norm.weight"]
    save_file({"model.layers.0.w": norm.clone(), "model.layers.99999999999.w": norm.clone()},
              str(odd / "model.safetensors"))
    with pytest.raises(CorruptArtifactError, match="has a 11-digit layer index"):
        ModelDir(odd)


def test_prediction_layers_after_the_stack_are_allowed(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from evomerge.merge.io import ModelDir

    model = save_tiny(tmp_path / "m")
    tensors = load_file(str(model / "model.safetensors"))
    tensors["model.layers.2.eh_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"].clone()
    save_file(tensors, str(model / "model.safetensors"))
    with pytest.raises(CorruptArtifactError, match="num_hidden_layers is 2 but the weights hold 3 layers"):
        ModelDir(model)
    _set_config(model, num_nextn_predict_layers=1)  # DeepSeek-V3 / GLM style multi-token prediction
    with ModelDir(model) as m:
        assert m.num_layers == 2


# ---------------------------------------------------------------- nesting and huge numbers


@pytest.mark.parametrize("depth", [65, 100, 50_000])
def test_deep_yaml_is_a_config_error_naming_file_line_and_limit(tmp_path: Path, depth: int) -> None:
    from evomerge.space.schema import load_space

    p = tmp_path / "s.yaml"
    p.write_text("name: s\nvary: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError) as info:
        load_space(p)
    msg = info.value.message
    assert msg.startswith(f"{p}: line 2, column ") and msg.endswith("nested deeper than the 64-level limit "
                                                                   "for mappings and lists")


def test_yaml_nesting_at_the_limit_is_fine() -> None:
    from evomerge.safe_yaml import loads_yaml

    v = loads_yaml("[" * 64 + "]" * 64)
    for _ in range(63):
        v = v[0]
    assert v == []


def test_huge_yaml_number_is_a_config_error(tmp_path: Path) -> None:
    from evomerge.space.schema import load_space

    p = tmp_path / "s.yaml"
    p.write_text("name: s\nseed: " + "7" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_space(p)
    assert info.value.message == f"{p}: line 2, column 7: a number of 5000 characters exceeds the 1000-character limit"


@pytest.mark.parametrize(("body", "needle"), [
    ({"merge_method": "linear", "models": [{"model": "m", "parameters": {"weight": "DEEP"}}]},
     "nested deeper than the 64-level limit"),
    ({"merge_method": "linear", "models": [{"model": "m", "parameters": {"weight": "HUGE"}}]},
     "a number of 5000 characters exceeds the 1000-character limit"),
])
def test_recipe_json_nesting_and_numbers_are_bounded(tmp_path: Path, body: dict, needle: str) -> None:
    from evomerge.recipe import load_recipe

    text = json.dumps(body).replace('"DEEP"', "[" * 5000 + "1" + "]" * 5000).replace('"HUGE"', "9" * 5000)
    p = tmp_path / "r.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_recipe(p)
    assert info.value.message.startswith(f"{p}: line 1, column ")


@pytest.mark.parametrize(("line", "needle"), [
    ('{"q": ' + "[" * 100 + "]" * 100 + ', "a": "1"}', "JSON nests deeper than the 64-level limit"),
    ('{"q": ' + "[" * 100_000 + "]" * 100_000 + ', "a": "1"}', "JSON nests deeper than the 64-level limit"),
    ('{"q": "x", "a": ' + "1" * 5000 + "}", "a number of 5000 characters exceeds the 1000-character limit"),
    ('{"q": "x", "a": 1.' + "5" * 5000 + "}", "a number of 5002 characters exceeds the 1000-character limit"),
])
def test_jsonl_nesting_and_numbers_name_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    from evomerge.evaluate.tasks import load_task

    (tmp_path / "d.jsonl").write_text('{"q": "ok", "a": "1"}\n' + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_task(_spec(tmp_path))
    assert info.value.message == f"{tmp_path / 'd.jsonl'}:2: {needle}"


def test_jsonl_at_the_limits_still_loads(tmp_path: Path) -> None:
    from evomerge.evaluate.tasks import load_task

    deep = "[" * 63 + "]" * 63  # 63 levels inside the item object: 64 in all
    (tmp_path / "d.jsonl").write_text(f'{{"q": {deep}, "a": {"9" * 1000}}}\r\n{{"q": "b", "a": "2"}}\r{{"q": "c", "a": 3}}\n')
    task = load_task(_spec(tmp_path))
    assert [it["q"] for it in task.items[1:]] == ["b", "c"] and task.items[0]["a"] == int("9" * 1000)


@pytest.mark.parametrize(("content", "needle"), [
    ('{"model_type": "llama", "x": ' + "[" * 100 + "]" * 100 + "}", "nests deeper than the 64-level limit"),
    ('{"model_type": "llama", "x": ' + "1" * 5000 + "}", "a number of 5000 characters exceeds the 1000-character"),
])
def test_config_json_nesting_and_numbers_are_bounded(tmp_path: Path, content: str, needle: str) -> None:
    from evomerge.merge.io import ModelDir

    model = save_tiny(tmp_path / "m")
    (model / "config.json").write_text(content)
    with pytest.raises(CorruptArtifactError, match=needle) as info:
        ModelDir(model)
    assert info.value.message.startswith(f"{model / 'config.json'}: ") and "\n" not in info.value.message
