"""`evomerge search` locally on the zoo: every candidate recorded, deterministic, improving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.runner.local import run_search
from evomerge.space.schema import load_space

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("strategy", ["cmaes", "random", "nevergrad", "m2n2"])
def test_search_is_deterministic_and_records_every_candidate(zoo_dir: Path, tmp_path: Path, strategy: str) -> None:
    space = load_space(REPO / "search_spaces" / "demo.yaml")
    space = space.model_copy(update={
        "base": str(zoo_dir / "base"), "experts": tuple(str(zoo_dir / f"expert_{s}") for s in ("add", "caesar", "length")),
        "budget": 12, "strategy": space.strategy.model_copy(update={"name": strategy, "popsize": 6, "optimizer": "TwoPointsDE", "archive_size": 6})})
    a = run_search(space, out=tmp_path / "a.jsonl", log=lambda _m: None)
    b = run_search(space, out=tmp_path / "b.jsonl", log=lambda _m: None)
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines] == list(range(12))
    assert all(r["status"] == "COMPLETE" and len(r["item_scores"]["zoo_add"]) == 200 for r in lines)
    assert [r["recipe_id"] for r in a.records] == [r["recipe_id"] for r in b.records]
    assert [r["fitness"] for r in a.records] == [r["fitness"] for r in b.records]
    best = a.best()
    assert best is not None and best["fitness"] >= max(r["fitness"] for r in lines)
    front = a.pareto()
    assert best["index"] in [r["index"] for r in front]  # the best weighted sum is never dominated
    names = a.objective_names
    for r in front:
        for q in front:
            assert not all(r["objectives"][n] >= q["objectives"][n] for n in names) or r is q or \
                not any(r["objectives"][n] > q["objectives"][n] for n in names)


@pytest.mark.parametrize(("strategy", "optimizer"), [("cmaes", None), ("nevergrad", "NGOpt"), ("m2n2", None), ("random", None)])
def test_each_strategy_runs_from_the_cli_through_the_local_driver(zoo_dir: Path, tmp_path: Path, strategy: str,
                                                                 optimizer: str | None) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), EVOMERGE_ZOO=str(zoo_dir))
    db = f"sqlite:///{tmp_path / 'a.db'}"
    args = [sys.executable, "-m", "evomerge.cli", "search", "--space", str(REPO / "search_spaces/demo.yaml"),
            "--budget", "8", "--backend", "local", "--db", db, "--name", "cli", "--strategy", strategy, "-v"]
    if optimizer:
        args += ["--optimizer", optimizer]
    proc = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "run cli: finished, 8/8 candidates" in out and "best: cli:" in out
    assert out.count("complete: fitness") == 8  # one line per candidate at -v
    best = json.loads(subprocess.run([sys.executable, "-m", "evomerge.cli", "best", "cli", "--db", db, "--json"],
                                     env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120).stdout)
    assert best[0]["status"] == "COMPLETE" and best[0]["recipe"]["merge_method"] == "task_arithmetic"
    assert str(zoo_dir) in json.dumps(best[0]["recipe"])


def zoo_space(name: str, zoo_dir: Path, tmp_path: Path, **update):
    """A shipped space pointed at the test zoo (its zoo:// names resolved there)."""
    text = (REPO / "search_spaces" / f"{name}.yaml").read_text().replace("zoo://", f"{zoo_dir}/")
    text = text.replace("../fitness/", f"{REPO}/fitness/")
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    space = load_space(p)
    return space.model_copy(update=update)


@pytest.mark.parametrize("name", ["dfs", "ps_dfs"])
def test_dataflow_searches_run_and_paths_are_fixed_depth(zoo_dir: Path, tmp_path: Path, name: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    space = zoo_space(name, zoo_dir, tmp_path, budget=8)
    messages: list[str] = []
    result = run_search(space, log=messages.append)
    assert len(result.records) == 8 and all(r["status"] == "COMPLETE" for r in result.records), messages
    # every path has its T slots between two empty slices naming the first source's ends
    depths = {len(r["recipe"]["slices"]) - 2 for r in result.records}
    assert depths == {8 * space.flow.repeats}  # excluded slots are identity layers: one engine serves all
    # candidate 0 is the start point injected into CMA-ES's first generation: the first source's own path
    ends, first, ends_again = (lambda s: (s[0], s[1:-1], s[-1]))(result.records[0]["recipe"]["slices"])
    assert ends == ends_again and ends["sources"][0]["layer_range"] == [0, 0]
    assert [s.get("sources", [{}])[0].get("layer_range") for s in first[:2]] == [[0, 1], [1, 2]]
    assert all(s.get("identity") for s in first[2:])
    if name == "ps_dfs":  # the PS merge was materialized once into the cache and is the first source
        merged = list((tmp_path / "cache" / "merged").iterdir())
        assert len(merged) == 1 and first[0]["sources"][0]["model"] == str(merged[0])
        # the merge alone scores like the per-layer task arithmetic it is (the zoo's fixed PS recipe)
        assert sum(result.records[0]["objectives"].values()) / 3 > 0.5


def test_a_signal_stops_a_local_search_with_an_error_not_a_short_result(zoo_dir: Path, tmp_path: Path) -> None:
    """SIGTERM during a candidate: the run stops after it and run_search raises with the records so
    far (its archive is temporary) rather than returning them as if the budget had been spent."""
    import signal

    from evomerge.errors import SearchInterrupted
    from evomerge.evaluate.synthetic import SyntheticEvaluator

    class SignalledOnce(SyntheticEvaluator):  # the real synthetic scorer; SIGTERM arrives during candidate 1
        calls = 0

        def evaluate(self, *args, **kwargs):
            SignalledOnce.calls += 1
            if SignalledOnce.calls == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().evaluate(*args, **kwargs)

    out = tmp_path / "records.jsonl"
    space = zoo_space("demo", zoo_dir, tmp_path, budget=6)
    before = signal.getsignal(signal.SIGTERM)  # (Ray, once started in this process, installs its own)
    with pytest.raises(SearchInterrupted, match="stopped by SIGTERM after 2 of 6 candidates") as got:
        run_search(space, evaluator=SignalledOnce(), out=out, log=lambda _m: None)
    assert [r["status"] for r in got.value.result.records] == ["COMPLETE", "COMPLETE"]
    assert len(out.read_text().splitlines()) == 2
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was put back


def test_multi_objective_nevergrad_search_keeps_a_front(zoo_dir: Path, tmp_path: Path) -> None:
    space = zoo_space("demo", zoo_dir, tmp_path, budget=10, multi_objective=True)
    space = space.model_copy(update={"strategy": space.strategy.model_copy(update={"name": "nevergrad", "optimizer": "DE", "popsize": 5})})
    result = run_search(space, log=lambda _m: None)
    front = result.pareto()
    assert len(result.records) == 10 and front
    for r in result.records:  # every candidate off the front is dominated by a member
        if r in front or r["objectives"] is None:
            continue
        assert any(all(f["objectives"][n] >= r["objectives"][n] for n in result.objective_names) for f in front)


def test_validate_plans_every_shipped_space_against_the_zoo(zoo_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), EVOMERGE_ZOO=str(zoo_dir))
    spaces = sorted(str(p) for p in (REPO / "search_spaces").glob("*.yaml"))
    proc = subprocess.run([sys.executable, "-m", "evomerge.cli", "validate", *spaces], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert out.count(": ok (") == len(spaces) >= 5
    assert "(dfs, 2 repeats, slot scales, 3 experts, 3 objectives, 32 genes" in out
    assert "(ps_dfs, 1 repeats, slot scales, 3 experts, 3 objectives, 16 genes" in out
    # a space whose experts do not fit the base is refused before any weight is read
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "search_spaces" / "dfs.yaml").read_text().replace("zoo://expert_length", "zoo://variants/wide")
                   .replace("../fitness/", f"{REPO}/fitness/"))
    proc = subprocess.run([sys.executable, "-m", "evomerge.cli", "validate", str(bad)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "fix:" in proc.stderr
