"""lm-evaluation-harness tasks as objectives (issue 17), offline on the zoo: custom task YAMLs over
local JSONL files, one ``generate_until`` task with a regex / take_first filter and one
``multiple_choice`` task. Parity is checked against lm-eval itself: ``lm_eval --model hf`` on the
exported model directory gives the same per-document scores as evomerge's in-place candidate."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.evaluate.lmeval import LMEvalRef
from evomerge.evaluate.tasks import load_task
from evomerge.recipe import recipe_from_dict
from tests.conftest import REPO

pytest.importorskip("lm_eval")

LIMIT = 24
DATA = REPO / "fitness" / "data"


def task_yaml(path: Path, name: str, data: Path, body: str, metric: str) -> Path:
    """An lm-eval task YAML over one local JSONL file (its `test` split), scored by a mean ``metric``."""
    path.write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{question}}}}"
{body}metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
""")
    return path


def two_split_yaml(path: Path, name: str) -> Path:
    """zadd over two local files: the dev items as `validation`, the test items as `test` (lm-eval
    scores `test` by default; a space can search `validation` and hold `test` out)."""
    path.write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {DATA / 'zoo_add.dev.jsonl'}
    test: {DATA / 'zoo_add.test.jsonl'}
validation_split: validation
test_split: test
doc_to_text: "{{{{question}}}}"
output_type: generate_until
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 10
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    return path


def task_yamls(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    generate = """output_type: generate_until
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 10
  do_sample: false
filter_list:
  - name: extract
    filter:
      - function: regex
        regex_pattern: "(-?\\\\d+)"
      - function: take_first
"""
    choice = """output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: answer
"""
    return {"zadd": task_yaml(root / "zadd.yaml", "zadd", DATA / "zoo_add.dev.jsonl", generate, "exact_match"),
            "zrot": task_yaml(root / "zrot.yaml", "zrot", DATA / "zoo_caesar_choice.dev.jsonl", choice, "acc"),
            "zgone": task_yaml(root / "zgone.yaml", "zgone", root / "nowhere.jsonl", generate, "exact_match"),
            "zsplit": two_split_yaml(root / "zsplit.yaml", "zsplit")}


@pytest.fixture(scope="module")
def yamls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return task_yamls(tmp_path_factory.mktemp("lmeval_tasks"))


def refs(yamls: dict[str, Path]) -> list[str]:
    return [LMEvalRef(task=str(yamls[n]), limit=LIMIT).as_ref() for n in ("zadd", "zrot")]


def lm_eval_cli(model_dir: Path, yamls: dict[str, Path], out: Path) -> dict[str, dict[int, float]]:
    """Per-document scores from ``lm_eval --model hf`` itself (its own process and model load)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
         "--tasks", "zadd,zrot,zsplit", "--include_path", str(yamls["zadd"].parent), "--device", "cpu",
         "--batch_size", "1", "--limit", str(LIMIT), "--log_samples", "--output_path", str(out)],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores: dict[str, dict[int, float]] = {}
    for task, metric, filt in (("zadd", "exact_match", "extract"), ("zrot", "acc", "none"),
                               ("zsplit", "exact_match", "none")):
        [path] = list(out.rglob(f"samples_{task}_*.jsonl"))
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        scores[task] = {int(r["doc_id"]): float(r[metric]) for r in rows if r["filter"] == filt}
    return scores


RECIPE = {"merge_method": "task_arithmetic", "base_model": "base", "models": [
    {"model": "expert_add", "parameters": {"weight": 0.9}}, {"model": "expert_caesar", "parameters": {"weight": 0.7}}]}


@pytest.fixture(scope="module")
def reference(yamls: dict[str, Path], zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The candidate, its exported directory and lm-eval's own per-document scores for it (one
    ``lm_eval --model hf`` run over zadd, zrot and zsplit's default split, its `test`)."""
    from evomerge.merge.materialize import merge_to_dir

    recipe = recipe_from_dict(RECIPE).resolved(zoo_dir)
    root = tmp_path_factory.mktemp("lmeval_reference")
    merge_to_dir(recipe, root / "merged")
    return {"recipe": recipe, "dir": root / "merged", "theirs": lm_eval_cli(root / "merged", yamls, root / "out")}


def held_out_ref(yamls: dict[str, Path]) -> str:
    return LMEvalRef(task=str(yamls["zsplit"]), limit=LIMIT, split="validation", held_out="test").as_ref()


def test_an_in_place_candidate_scores_as_lm_eval_scores_its_exported_directory(yamls: dict[str, Path],
                                                                              reference: dict) -> None:
    from evomerge.evaluate.hf import HFEvaluator

    recipe, theirs = reference["recipe"], reference["theirs"]
    tasks = [load_task(r) for r in refs(yamls)]
    assert [t.name for t in tasks] == ["zadd", "zrot"] and all(len(t.items) == LIMIT for t in tasks)
    evaluator = HFEvaluator()
    evaluator.load_sources({})
    res = evaluator.evaluate(recipe, tasks)
    assert res.status == "COMPLETE", res.error
    for t in tasks:
        assert res.item_scores[t.name] == [theirs[t.name][i] for i in range(LIMIT)], t.name
        assert res.objectives[t.name] == pytest.approx(sum(theirs[t.name].values()) / LIMIT, abs=1e-12)
    assert 0 < res.objectives["zadd"] and 0 < res.objectives["zrot"] < 1  # the case is informative
    # a chunk (racing, subsets) scores each document as the whole task does
    from evomerge.evaluate.base import engine_scorer

    chunk = [17, 3, 9]
    engine = evaluator.write_weights(recipe)
    for t in tasks:
        assert engine_scorer(engine)(t, chunk) == [res.item_scores[t.name][i] for i in chunk]
    # held out: the search scores the `validation` split, the held-out score reads `test`, which is
    # what lm-eval scores by default: equal to its own numbers document by document
    search, held = load_task(held_out_ref(yamls)), load_task(held_out_ref(yamls), split="heldout")
    assert (search.split, held.split) == ("search", "heldout")
    docs = {name: [d["question"] for d in t.task.eval_docs][:LIMIT] for name, t in (("s", search), ("h", held))}
    dev = [json.loads(line)["question"] for line in (DATA / "zoo_add.dev.jsonl").read_text().splitlines()[:LIMIT]]
    assert docs["s"] == dev and docs["h"] != dev
    scored = evaluator.evaluate(recipe, [held])
    assert scored.item_scores["zsplit"] == [theirs["zsplit"][i] for i in range(LIMIT)]


@pytest.mark.vllm
@pytest.mark.slow
def test_lm_eval_tasks_on_the_live_vllm_engine_score_as_lm_eval_does(yamls: dict[str, Path], reference: dict) -> None:
    """Issue 17: the vLLM engine answers lm-eval's requests in place (LiveVLLM): per document the
    same scores as ``lm_eval --model hf`` on the exported directory (greedy answers, choices),
    rolling log-likelihoods within float rounding of lm-eval's transformers backend."""
    pytest.importorskip("vllm")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evomerge.evaluate.lmeval_vllm import LiveVLLM
    from evomerge.evaluate.vllm import VLLMEvaluator
    from evomerge.hfmodel import load_hf_model, load_hf_tokenizer

    recipe, theirs = reference["recipe"], reference["theirs"]
    tasks = [load_task(r) for r in refs(yamls)] + [load_task(held_out_ref(yamls), split="heldout")]
    texts = ["add:12+7=19", "zyx abc " * 40]  # the second spans more than one rolling window (128 tokens)
    evaluator = VLLMEvaluator()
    try:
        res = evaluator.evaluate(recipe, tasks)
        engine, _ = evaluator.swap(recipe)
        window = LiveVLLM(engine).max_length - 2
        rolling = LiveVLLM(engine).loglikelihood_rolling(
            [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    finally:
        evaluator.close()
    assert res.status == "COMPLETE", res.error
    for t in tasks:
        assert res.item_scores[t.name] == [theirs[t.name][i] for i in range(LIMIT)], t.name
    assert res.tokens > 0
    # lm-eval's transformers backend with the windows a vLLM engine can take (its length less two)
    hf = HFLM(pretrained=load_hf_model(reference["dir"]), tokenizer=load_hf_tokenizer(reference["dir"]), batch_size=1,
              max_length=window)
    expected = hf.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    assert rolling == pytest.approx(expected, rel=1e-4, abs=1e-3)
    assert expected[1] < expected[0] < 0


def test_a_search_scores_lm_eval_objectives_and_archives_every_document(yamls: dict[str, Path], zoo_dir: Path,
                                                                       tmp_path: Path) -> None:
    from evomerge import api

    space = tmp_path / "space.yaml"
    space.write_text(f"""name: lme
base: {zoo_dir / 'base'}
experts: [{zoo_dir / 'expert_add'}, {zoo_dir / 'expert_caesar'}]
merge_method: task_arithmetic
vary: {{weight: {{low: 0.0, high: 1.0, init: 0.8}}}}
layer_groups: 1
objectives:
  - lm_eval: {{task: {yamls['zadd']}, limit: {LIMIT}}}
  - lm_eval: {{task: {yamls['zrot']}, limit: {LIMIT}, metric: acc}}
strategy: {{name: random}}
budget: 3
""")
    db = f"sqlite:///{tmp_path / 'a.db'}"
    out = api.search(space, db=db, engine="hf", backend="local", name="lme", log=lambda _m: None)
    assert out.told == 3
    rows = [api.show(f"lme:{i}", db=db) for i in range(3)]
    assert all(r["status"] == "COMPLETE" for r in rows)
    for r in rows:
        assert set(r["item_scores"]) == {"zadd", "zrot"} and all(len(v) == LIMIT for v in r["item_scores"].values())
        for task, scores in r["item_scores"].items():
            assert math.isclose(r["objectives"][task], sum(scores) / LIMIT, abs_tol=1e-6)


def test_lm_eval_settings_that_cannot_hold_are_refused_before_a_run(yamls: dict[str, Path], zoo_dir: Path,
                                                                    tmp_path: Path) -> None:
    from evomerge import api

    with pytest.raises(ConfigError, match="no held-out split"):
        load_task(refs(yamls)[0], split="heldout")
    with pytest.raises(ConfigError, match="has no split 'dev'"):
        load_task(LMEvalRef(task=str(yamls["zsplit"]), split="dev").as_ref())
    space = tmp_path / "space.yaml"
    space.write_text(f"""name: chat
base: {zoo_dir / 'base'}
experts: [{zoo_dir / 'expert_add'}]
vary: {{weight: {{low: 0.0, high: 1.0}}}}
objectives:
  - lm_eval: {{task: {yamls['zadd']}, limit: 4, apply_chat_template: true}}
""")
    with pytest.raises(ConfigError, match="apply a chat template, and the tokenizer of .* has none"):
        api.validate(space)


def test_an_lm_eval_task_whose_data_is_missing_is_refused_by_name(yamls: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="zgone: its dataset could not be loaded") as info:
        load_task(LMEvalRef(task=str(yamls["zgone"])).as_ref())
    assert "local files" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="has no metric 'bleu'"):
        load_task(LMEvalRef(task=str(yamls["zrot"]), metric="bleu").as_ref())


EVOLVE_CONFIG = """# written the way mergekit's docs/evolve.md shows a genome config, on the zoo
genome:
  models:
    - {zoo}/expert_add
    - {zoo}/expert_caesar
  merge_method: task_arithmetic
  base_model: {zoo}/base
  layer_granularity: 1
  allow_negative_weights: true
tasks:
  - name: zadd
    weight: 1.0
    metric: "exact_match,extract"
  - name: zrot
    weight: 0.5
    metric: "acc,none"
limit: {limit}
apply_chat_template: false
fewshot_as_multiturn: false
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_a_mergekit_evolve_config_searches_and_its_best_scores_as_lm_eval_scores_the_export(
        yamls: dict[str, Path], zoo_dir: Path, tmp_path: Path, engine: str) -> None:
    """Issue 17's acceptance: a mergekit-evolve config (changed only in its model paths) and lm-eval
    tasks, imported and searched with `evomerge search` on each engine; the best candidate's
    per-document lm-eval scores in the archive equal `lm_eval --model hf` on its export."""
    if engine == "vllm":
        pytest.importorskip("vllm")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

    def cli(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "evomerge.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    cfg = tmp_path / "evol_merge_config.yml"
    cfg.write_text(EVOLVE_CONFIG.format(zoo=zoo_dir, limit=LIMIT))
    cli("import-evolve", str(cfg), "--out", "space.yaml", "--max-fevals", "4", "--task-search-path",
        str(yamls["zadd"].parent))
    db = f"sqlite:///{tmp_path / 'evo.db'}"
    cli("search", "--space", "space.yaml", "--db", db, "--engine", engine, "--backend", "local", "--name", "evo")
    best = json.loads(cli("best", "evo", "--db", db, "--json").stdout)[0]
    shown = json.loads(cli("show", f"evo:{best['index']}", "--db", db, "--json").stdout)
    assert shown["status"] == "COMPLETE" and set(shown["item_scores"]) == {"zadd", "zrot"}
    cli("export", f"evo:{best['index']}", "--out", "best", "--db", db)
    theirs = lm_eval_cli(tmp_path / "best", yamls, tmp_path / "lm_eval_out")
    for task in ("zadd", "zrot"):
        assert shown["item_scores"][task] == [theirs[task][i] for i in range(LIMIT)], task
    fitness = shown["objectives"]["zadd"] + 0.5 * shown["objectives"]["zrot"]
    assert best["fitness"] == pytest.approx(fitness, abs=1e-6)


def test_eval_scores_a_space_s_objectives_on_their_held_out_splits(yamls: dict[str, Path], reference: dict,
                                                                   zoo_dir: Path, tmp_path: Path) -> None:
    """``evomerge eval RECIPE --space space.yaml --split both``: the search split and the held-out
    split of an lm-eval objective, the held-out one equal to lm-eval's default (`test`) split."""
    from typer.testing import CliRunner

    from evomerge.cli import app

    space = tmp_path / "space.yaml"
    space.write_text(f"""name: held
base: {zoo_dir / 'base'}
experts: [{zoo_dir / 'expert_add'}]
vary: {{weight: {{low: 0.0, high: 1.0}}}}
objectives:
  - lm_eval: {{task: {yamls['zsplit']}, limit: {LIMIT}, split: validation, held_out: test}}
""")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(reference["recipe"].to_yaml())
    r = CliRunner().invoke(app, ["eval", str(recipe), "--space", str(space), "--split", "both", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["search"]["status"] == out["heldout"]["status"] == "COMPLETE"
    assert out["heldout"]["item_scores"]["zsplit"] == [reference["theirs"]["zsplit"][i] for i in range(LIMIT)]
    assert len(out["search"]["item_scores"]["zsplit"]) == LIMIT
