"""The Python API: search, resume, and query the archive (what the CLI calls).

Candidates are named ``RUN:INDEX`` (the run's name or id, a colon, the candidate index).

    from evomerge import api
    outcome = api.search("search_spaces/demo.yaml", backend="local")
    api.best(outcome.run.name, k=3)
    api.export(f"{outcome.run.name}:{api.best(outcome.run.name)[0]['index']}", "merged/")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.store import CandidateRow, RunInfo, Store


def open_store(db: str | None = None, workdir: str | Path | None = None) -> Store:
    """The archive: ``db`` is a SQLAlchemy URL; default ``sqlite:///<workdir>/evomerge.db``."""
    return Store.open(db, workdir=Path(workdir) if workdir else Path.cwd())


def run_dict(r: RunInfo) -> dict[str, Any]:
    cfg = r.config or {}
    space = cfg.get("space", {})
    return {"id": r.id, "name": r.name, "status": r.status, "seed": r.seed, "budget": r.budget,
            "kind": space.get("kind"), "strategy": (space.get("strategy") or {}).get("name"),
            "engine": cfg.get("engine"), "created_at": str(r.created_at), "counts": dict(r.counts or {}),
            "objectives": r.objectives}


def candidate_dict(row: CandidateRow, *, scores: bool = False) -> dict[str, Any]:
    d = {"index": row.index, "generation": row.generation, "status": row.status, "recipe_id": row.recipe_id,
         "fitness": row.fitness, "objectives": row.objectives, "parents": list(row.parents or ()),
         "attempts": row.attempts, "seconds": row.seconds, "error": row.error, "cached_from": row.cached_from,
         "worker": row.worker, "recipe": json.loads(row.recipe_json)}
    if scores:
        d["item_scores"] = row.item_scores
    return d


def parse_candidate(ref: str) -> tuple[str, int]:
    run, sep, idx = ref.rpartition(":")
    if not sep or not run or not idx.isdigit():
        raise ConfigError(f"{ref!r} is not a candidate reference", hint="write RUN:INDEX, e.g. demo-s0-1:17 "
                          "(`evomerge best RUN` lists candidates)")
    return run, int(idx)


def runs(db: str | None = None, workdir: str | Path | None = None) -> list[dict[str, Any]]:
    with open_store(db, workdir) as store:
        return [run_dict(r) for r in store.list_runs()]


def best(run: str, *, objective: str | None = None, k: int = 1, db: str | None = None,
         workdir: str | Path | None = None) -> list[dict[str, Any]]:
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        if objective is not None and objective not in [o["name"] for o in info.objectives]:
            raise ConfigError(f"run {info.name} has no objective {objective!r}",
                              hint=f"use one of {[o['name'] for o in info.objectives]}")
        return [candidate_dict(r) for r in store.best(info.id, objective=objective, k=k)]


def pareto(run: str, *, db: str | None = None, workdir: str | Path | None = None) -> list[dict[str, Any]]:
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        return [candidate_dict(r) for r in store.pareto(info.id)]


def show(ref: str, *, db: str | None = None, workdir: str | Path | None = None, depth: int = 3) -> dict[str, Any]:
    """One candidate with its recipe, scores and lineage (ancestors ``depth`` levels up, children)."""
    run, index = parse_candidate(ref)
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        row = store.candidate(info.id, index)
        d = candidate_dict(row, scores=True) | {"run": info.name}
        rows = {r.index: r for r in store.candidates(info.id)}
        ancestors, frontier = [], list(row.parents or ())
        for level in range(1, depth + 1):
            nxt = []
            for p in frontier:
                if p in rows:
                    ancestors.append({"index": p, "level": level, "fitness": rows[p].fitness,
                                      "parents": list(rows[p].parents or ())})
                    nxt += list(rows[p].parents or ())
            frontier = nxt
        d["lineage"] = {"ancestors": ancestors,
                        "children": [r.index for r in rows.values() if index in (r.parents or ())]}
        return d


def export(ref: str, out: str | Path, *, db: str | None = None, workdir: str | Path | None = None,
           overwrite: bool = False) -> Path:
    """Materialize a candidate as a Hugging Face model directory (atomic, with a sha256 manifest,
    the canonical recipe and a mergekit config)."""
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.recipe import recipe_from_dict

    run, index = parse_candidate(ref)
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        row = store.candidate(info.id, index)
        seed = info.seed
    recipe = recipe_from_dict(json.loads(row.recipe_json), source=ref)
    out = Path(out)
    merge_to_dir(recipe, out, seed=seed, overwrite=overwrite)
    return out


def search(space_path: str | Path, *, db: str | None = None, workdir: str | Path | None = None,
           name: str | None = None, budget: int | None = None, seed: int | None = None, engine: str = "hf",
           workers: int = 1, backend: str = "ray", address: str | None = None, deadline_s: float | None = None,
           max_attempts: int = 3, lag: int | None = None, cpus_per_worker: float = 1.0,
           gpus_per_worker: float = 0.0, verbose: bool = False, log: Callable[[str], None] = print,
           progress: Callable[[Any], None] | None = None, deadline_slack_s: float = 30.0,
           grace_s: float = 60.0, heartbeat_s: float = 5.0, engine_options: dict[str, Any] | None = None,
           strategy: str | None = None, optimizer: str | None = None, snapshot_every: int = 50):
    """Create a run for a search space and drive it to its budget (returns a RunOutcome).
    ``strategy``/``optimizer`` override the space's strategy name / nevergrad optimizer."""
    from evomerge.runner.service import ExecOptions, create_run, default_lag, execute, space_text
    from evomerge.space.schema import load_space

    space = load_space(space_path)
    update: dict[str, Any] = {}
    if budget is not None:
        update["budget"] = budget
    if seed is not None:
        update["seed"] = seed
    if strategy is not None or optimizer is not None:
        update["strategy"] = space.strategy.model_dump() | ({"name": strategy} if strategy else {}) | (
            {"optimizer": optimizer} if optimizer else {})
    if update:
        space = type(space).model_validate(space.model_dump() | update)
    from evomerge.runner.worker import make_evaluator

    if engine not in ("hf", "vllm", "synthetic"):
        make_evaluator(engine)  # raises the ConfigError naming the choices
    with open_store(db, workdir) as store:
        run = create_run(store, space, space_text(Path(space_path)), name=name, engine=engine,
                         lag=lag or default_lag(workers), max_attempts=max_attempts, deadline_s=deadline_s,
                         strategy_workers=workers, engine_options=engine_options, deadline_slack_s=deadline_slack_s,
                         snapshot_every=snapshot_every)
        log(f"run {run.name} ({run.id}) in {store.url}")
        opts = ExecOptions(workers=workers, backend=backend, address=address, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, verbose=verbose, grace_s=grace_s, heartbeat_s=heartbeat_s)
        return execute(store, run, opts, log=log, progress=progress)


def resume(run: str, *, db: str | None = None, workdir: str | Path | None = None, workers: int = 1,
           backend: str = "ray", address: str | None = None, cpus_per_worker: float = 1.0,
           gpus_per_worker: float = 0.0, verbose: bool = False, log: Callable[[str], None] = print,
           progress: Callable[[Any], None] | None = None, grace_s: float = 60.0, heartbeat_s: float = 5.0):
    """Continue a crashed or stopped run: nothing lost, nothing repeated (returns a RunOutcome)."""
    from evomerge.runner.service import ExecOptions, execute

    with open_store(db, workdir) as store:
        info = store.get_run(run)
        opts = ExecOptions(workers=workers, backend=backend, address=address, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, verbose=verbose, grace_s=grace_s, heartbeat_s=heartbeat_s)
        return execute(store, info, opts, log=log, progress=progress)
