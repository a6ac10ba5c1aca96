"""Bad inputs to `validate`, `search` and `resume` are refused up front (issue 19, "Validate what
search needs, before a run row exists"): exit status 2, one `error:` line naming the problem (and a
`fix:`), no traceback, and no run row left in the archive. Runs use tiny local models, the
synthetic engine and the local backend, so no zoo and no Ray."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from evomerge.store import Store
from tests.conftest import REPO, run_cli, save_tiny

TIMEOUT = 180  # a refused start takes seconds; before the checks, `--workers 0` hung forever

GOOD: dict[str, Any] = {
    "name": "t", "kind": "ps", "base": "models/base", "experts": ["models/a", "models/b"],
    "merge_method": "task_arithmetic", "vary": {"weight": {"low": 0.0, "high": 1.5, "init": 1.0}},
    "objectives": [{"task": "fitness/zoo_add.yaml"}], "strategy": {"name": "cmaes", "popsize": 4, "sigma": 0.25},
    "budget": 4, "seed": 0}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models (base, two experts, one of another width, one 46 layers deep), the zoo_add task
    spec and data copied from fitness/, and a malformed and a dangling copy of that task."""
    root = tmp_path_factory.mktemp("validation")
    for i, name in enumerate(["base", "a", "b"]):
        save_tiny(root / "models" / name, seed=i)
    save_tiny(root / "models" / "narrow", seed=3, hidden_size=16, intermediate_size=32)
    save_tiny(root / "models" / "deep", seed=4, hidden_size=8, intermediate_size=16, num_hidden_layers=46)
    fit = root / "fitness"
    (fit / "data").mkdir(parents=True)
    for spec_name in ("zoo_add", "zoo_caesar_loglik"):
        shutil.copy(REPO / "fitness" / f"{spec_name}.yaml", fit / f"{spec_name}.yaml")
    for task in ("zoo_add", "zoo_caesar"):
        for split in ("dev", "test"):
            shutil.copy(REPO / "fitness" / "data" / f"{task}.{split}.jsonl", fit / "data")
    spec = (fit / "zoo_add.yaml").read_text()
    lines = (fit / "data" / "zoo_add.dev.jsonl").read_text().splitlines()
    (fit / "data" / "broken.jsonl").write_text("\n".join([*lines[:3], '{"question": "1+1=", "answer":', *lines[3:6]]))
    (fit / "broken.yaml").write_text(spec.replace("name: zoo_add", "name: broken")
                                     .replace("data/zoo_add.dev.jsonl", "data/broken.jsonl"))
    (fit / "dangling.yaml").write_text(spec.replace("name: zoo_add", "name: dangling")
                                       .replace("data/zoo_add.dev.jsonl", "data/nowhere.jsonl"))
    return root


def write_space(ws: Path, file: str, /, **changes: Any) -> Path:
    """A copy of the good space, as ``file``.yaml, with top-level ``changes`` (``strategy``
    entries merge into the good strategy)."""
    d = dict(GOOD)
    for k, v in changes.items():
        d[k] = dict(GOOD["strategy"], **v) if k == "strategy" and isinstance(v, dict) else v
    p = ws / f"{file}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def runs_in(db: Path) -> list[Any]:
    with Store.open(f"sqlite:///{db}") as store:
        return store.list_runs()


def assert_refused(proc: Any, *needles: str) -> str:
    """Exit status 2, no traceback, stderr's first line is `error: ...` holding every needle."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error:"), out
    for needle in needles:
        assert needle in lines[0], out
    assert any(line.strip().startswith("fix:") for line in lines[1:]), out
    return lines[0]


def search(ws: Path, space: Path, db: Path, *args: str) -> Any:
    return run_cli("search", "--space", str(space), "--engine", "synthetic", "--backend", "local",
                   "--db", f"sqlite:///{db}", *args, cwd=ws, timeout=TIMEOUT)


def test_a_good_space_validates_and_its_search_creates_one_run(ws: Path, tmp_path: Path) -> None:
    """The control for every refusal below: the same files and options, unchanged, do run."""
    dfs = write_space(ws, "good_dfs", name="gd", kind="dfs", vary={}, merge_method="task_arithmetic",
                      dataflow={"repeats": 2, "scales": "transition"})
    ps_dfs = write_space(ws, "good_ps_dfs", name="gpd", kind="ps_dfs", vary={}, dataflow={"merged": {
        "merge_method": "task_arithmetic", "base_model": "models/base",
        "models": [{"model": "models/a", "parameters": {"weight": 0.5}}]}})
    proc = run_cli("validate", str(write_space(ws, "good")), str(dfs), str(ps_dfs), cwd=ws, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "good.yaml: ok (ps, task_arithmetic, 2 experts, 1 objectives, 4 genes" in proc.stdout
    assert "good_dfs.yaml: ok (dfs, 2 repeats, transition scales" in proc.stdout
    assert "good_ps_dfs.yaml: ok (ps_dfs, 1 repeats, slot scales" in proc.stdout
    db = tmp_path / "a.db"
    proc = search(ws, ws / "good.yaml", db, "--name", "good")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(r.name, r.status) for r in runs_in(db)] == [("good", "finished")]


BAD_SPACES = {  # file name: (changes to the good space, what the error line names)
    "weight_nan": ({"objectives": [{"task": "fitness/zoo_add.yaml", "weight": math.nan}]},
                   ("objectives.0.weight", "finite number")),
    "weight_inf": ({"objectives": [{"task": "fitness/zoo_add.yaml", "weight": -math.inf}]},
                   ("objectives.0.weight", "finite number")),
    "bound_inf": ({"vary": {"weight": {"low": 0.0, "high": math.inf}}}, ("vary.weight.high", "finite number")),
    "bound_neg_inf": ({"vary": {"weight": {"low": -math.inf, "high": 1.0}}}, ("vary.weight.low", "finite number")),
    "fixed_inf": ({"merge_method": "task_arithmetic", "fixed": {"lambda": math.inf}}, ("fixed.lambda", "inf")),
    "popsize_1e9": ({"strategy": {"popsize": 1_000_000_000}}, ("strategy.popsize", "10000")),
    "archive_huge": ({"strategy": {"name": "m2n2", "popsize": None, "archive_size": 1_000_000}},
                     ("strategy.archive_size", "1000")),
    "pycma_unknown_option": ({"strategy": {"options": {"xyz": 1}}}, ("strategy cmaes cannot start", "xyz")),
    "pycma_string_option": ({"strategy": {"options": {"tolx": "__import__('os').getpid()"}}},
                            ("strategy", "options.tolx", "number")),
    "pycma_reserved_option": ({"strategy": {"options": {"bounds": [0, 2]}}}, ("options.bounds",)),
    "nevergrad_unknown": ({"strategy": {"name": "nevergrad", "optimizer": "NoSuchOptimizer"}},
                          ("unknown nevergrad optimizer", "NoSuchOptimizer")),
    "seed_negative": ({"seed": -1}, ("seed", "greater than or equal to 0")),
    "unknown_key": ({"bogus": 1}, ("bogus: unknown key",)),
    "malformed_jsonl": ({"objectives": [{"task": "fitness/broken.yaml"}]}, ("broken.jsonl:4", "invalid JSON")),
    "dangling_data": ({"objectives": [{"task": "fitness/dangling.yaml"}]}, ("nowhere.jsonl", "not found")),
    "same_task_twice": ({"objectives": [{"task": "fitness/zoo_add.yaml"}, {"task": "fitness/zoo_add.yaml"}]},
                        ("same task name",)),
    "misfit_expert": ({"experts": ["models/a", "models/narrow"]}, ("hidden_size", "narrow")),
    "cmaes_too_many_genes": ({"name": "deep", "kind": "dfs", "vary": {}, "base": "models/deep",
                              "experts": ["models/deep"], "dataflow": {"scales": "transition"},
                              "strategy": {"popsize": None}}, ("8556 genes", "2048")),
    "racing_error_high": ({"fitness": {"racing": {"error": 0.7}}}, ("fitness.racing.error", "less than 0.5")),
    "racing_rank_zero": ({"fitness": {"racing": {"reference": 0}}}, ("racing.reference", "a rank from 1")),
    "racing_loglik": ({"fitness": {"racing": {"test": "t"}},
                       "objectives": [{"task": "fitness/zoo_add.yaml"}, {"task": "fitness/zoo_caesar_loglik.yaml"}]},
                      ("racing needs item scores in [0, 1]", "zoo_caesar_loglik")),
    "ps_dfs_merge_nan": ({"kind": "ps_dfs", "vary": {}, "dataflow": {"merged": {
        "merge_method": "task_arithmetic", "base_model": "models/base",
        "models": [{"model": "models/a", "parameters": {"weight": math.nan}}]}}},
        ("dataflow.merged.models[0].parameters.weight", "nan")),
}


@pytest.fixture(scope="module")
def validated(ws: Path) -> Any:
    """One `evomerge validate` over every bad space, with the good one in the middle."""
    cases = sorted(BAD_SPACES)
    files = [write_space(ws, case, **BAD_SPACES[case][0]) for case in cases]
    files.insert(len(files) // 2, write_space(ws, "good"))
    return run_cli("validate", *map(str, files), cwd=ws, timeout=TIMEOUT)


def test_validate_checks_every_file_and_fails_if_any_is_bad(validated: Any) -> None:
    out = validated.stdout + validated.stderr
    assert validated.returncode == 2 and "Traceback" not in out, out
    assert sum(line.startswith("error:") for line in validated.stderr.splitlines()) == len(BAD_SPACES), out
    assert "good.yaml: ok (ps, task_arithmetic, 2 experts, 1 objectives, 4 genes" in validated.stdout


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_a_bad_space_is_refused_by_validate_and_by_search_without_a_run(ws: Path, tmp_path: Path, validated: Any,
                                                                        case: str) -> None:
    _, needles = BAD_SPACES[case]
    lines = validated.stderr.splitlines()
    mine = [i for i, line in enumerate(lines) if line.startswith("error:") and f"/{case}.yaml" in line]
    assert len(mine) == 1, validated.stderr
    assert all(n in lines[mine[0]] for n in needles), lines[mine[0]]
    assert lines[mine[0] + 1].strip().startswith("fix:"), validated.stderr
    db = tmp_path / "a.db"
    assert_refused(search(ws, ws / f"{case}.yaml", db), *needles)
    assert runs_in(db) == []


def test_a_missing_source_is_refused_by_search_and_flagged_by_validate(ws: Path, tmp_path: Path) -> None:
    space = write_space(ws, "missing_source", experts=["models/a", "models/nowhere"])
    proc = run_cli("validate", str(space), cwd=ws, timeout=TIMEOUT)  # models may come later: a note
    assert proc.returncode == 0 and "sources not checked" in proc.stdout and "models/nowhere" in proc.stdout
    db = tmp_path / "a.db"
    assert_refused(search(ws, space, db), "models/nowhere", "not found")
    assert runs_in(db) == []


BAD_OPTIONS = [
    (["--workers", "0"], ("--workers 0", "1 to 4096")),
    (["--budget", "0"], ("--budget 0", "1 to 1000000")),
    (["--budget", "-3"], ("--budget -3", "1 to 1000000")),
    (["--strategy", "foo"], ("--strategy 'foo'", "cmaes, nevergrad, m2n2, random")),
    (["--max-attempts", "0"], ("--max-attempts 0", "1 to 100")),
    (["--deadline", "-1"], ("--deadline -1", "above 0")),
    (["--deadline", "nan"], ("--deadline nan", "finite")),
    (["--cpus-per-worker", "-1"], ("--cpus-per-worker -1", "0 or more")),
    (["--gpus-per-worker", "-0.5"], ("--gpus-per-worker -0.5", "0 or more")),
    (["--backend", "ray", "--gpus-per-worker", "1.5"], ("--gpus-per-worker 1.5", "whole numbers")),
    (["--snapshot-every", "0"], ("--snapshot-every 0", "1 to 1000000")),
    (["--seed", "-1"], ("--seed -1", "0 to 4294967294")),
    (["--backend", "foo"], ("--backend 'foo'", "ray, local")),
    (["--engine", "foo"], ("--engine 'foo'", "hf, vllm, synthetic")),
    (["--optimizer", "DE"], ("--optimizer 'DE'", "nevergrad, not cmaes")),
    (["--strategy", "nevergrad", "--optimizer", "NoSuchOptimizer"], ("NoSuchOptimizer",)),
    (["--name", "-x"], ("--name '-x'",)),
]


@pytest.mark.parametrize(("args", "needles"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_search_option_is_refused_without_a_run(ws: Path, tmp_path: Path, args: list[str],
                                                      needles: tuple[str, ...]) -> None:
    db = tmp_path / "a.db"
    assert_refused(search(ws, write_space(ws, "good"), db, *args), *needles)
    assert runs_in(db) == []


def test_strategy_override_is_refused_when_the_space_sets_a_stall_for_another_strategy(ws: Path,
                                                                                        tmp_path: Path) -> None:
    """`stall` counts CMA-ES generations but nevergrad evaluations: --strategy must not carry a
    space's window over to the other unit."""
    db = tmp_path / "a.db"
    space = write_space(ws, "stalled", strategy={"name": "cmaes", "stall": 12})
    assert_refused(search(ws, space, db, "--strategy", "nevergrad"), "--strategy nevergrad", "stall 12",
                   "cmaes counts generations, nevergrad evaluations")
    assert runs_in(db) == []


def test_lag_below_one_is_refused_by_the_api_without_a_run(ws: Path, tmp_path: Path) -> None:
    """`lag` is an API option (the CLI derives it from --workers); 0 used to mean the default."""
    from evomerge import api
    from evomerge.errors import ConfigError

    db = tmp_path / "a.db"
    with pytest.raises(ConfigError, match=r"lag 0 is out of range: it must be a whole number from 1 to"):
        api.search(write_space(ws, "good"), db=f"sqlite:///{db}", engine="synthetic", backend="local", lag=0,
                   log=lambda _m: None)
    assert runs_in(db) == []


@pytest.fixture(scope="module")
def finished_run(ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("resume") / "a.db"
    proc = search(ws, write_space(ws, "good"), db, "--name", "done")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return db


@pytest.mark.parametrize(("args", "needles"), [
    (["--workers", "0"], ("--workers 0", "1 to 4096")),
    (["--cpus-per-worker", "-1"], ("--cpus-per-worker -1", "0 or more")),
    (["--gpus-per-worker", "-1"], ("--gpus-per-worker -1", "0 or more")),
    (["--backend", "foo"], ("--backend 'foo'", "ray, local")),
])
def test_a_bad_resume_option_is_refused_and_the_run_is_untouched(ws: Path, finished_run: Path, args: list[str],
                                                                 needles: tuple[str, ...]) -> None:
    (before,) = runs_in(finished_run)
    proc = run_cli("resume", "done", "--db", f"sqlite:///{finished_run}", "--backend", "local", *args, cwd=ws,
                   timeout=TIMEOUT)
    assert_refused(proc, *needles)
    (after,) = runs_in(finished_run)
    assert (after.status, after.counts, after.lease_owner) == (before.status, before.counts, before.lease_owner)
    assert before.status == "finished" and sum(before.counts.values()) == GOOD["budget"]


def test_a_space_name_too_long_for_the_default_run_name_is_refused_without_a_run(ws: Path, tmp_path: Path) -> None:
    long = "n" * 60  # a valid space name, but <name>-s0-1 exceeds the archive's 64 characters
    db = tmp_path / "a.db"
    assert_refused(search(ws, write_space(ws, "long_name", name=long), db), "default run name", "-s0-1")
    assert runs_in(db) == []
    proc = search(ws, write_space(ws, "long_name", name=long), db, "--name", "short")  # the fix the hint names
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r.name for r in runs_in(db)] == ["short"]
