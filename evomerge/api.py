"""The Python API: search, resume, and query the archive (what the CLI calls).

Candidates are named ``RUN:INDEX`` (the run's name or id, a colon, the candidate index).

    from evomerge import api
    outcome = api.search("search_spaces/demo.yaml", backend="local")
    api.best(outcome.run.name, k=3)
    api.export(f"{outcome.run.name}:{api.best(outcome.run.name)[0]['index']}", "merged/")
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError, ExportError
from evomerge.store import CandidateRow, RunInfo, Store
from evomerge.store.records import MAX_INDEX


def open_store(db: str | None = None, workdir: str | Path | None = None) -> Store:
    """The archive: ``db`` is a SQLAlchemy URL; default ``sqlite:///<workdir>/evomerge.db``."""
    return Store.open(db, workdir=Path(workdir) if workdir else Path.cwd())


def iso_time(t: float | None) -> str | None:
    """A stored time (Unix seconds) as ISO 8601 in this machine's time zone, with its offset
    (``2026-12-04T23:14:05+01:00``); None stays None. Every time in the API's dicts is one."""
    if t is None:
        return None
    return datetime.fromtimestamp(float(t), tz=UTC).astimezone().isoformat(timespec="seconds")


def run_dict(r: RunInfo) -> dict[str, Any]:
    """A run as JSON-ready values (``created_at`` in ISO 8601 with offset)."""
    cfg = r.config or {}
    space = cfg.get("space", {})
    return {"id": r.id, "name": r.name, "status": r.status, "seed": r.seed, "budget": r.budget,
            "kind": space.get("kind"), "strategy": (space.get("strategy") or {}).get("name"),
            "engine": cfg.get("engine"), "created_at": iso_time(r.created_at), "counts": dict(r.counts or {}),
            "objectives": r.objectives}


def candidate_dict(row: CandidateRow, *, scores: bool = False) -> dict[str, Any]:
    """A candidate as JSON-ready values (``started_at``/``finished_at`` in ISO 8601 with offset,
    None until the candidate started/finished)."""
    d = {"index": row.index, "generation": row.generation, "status": row.status, "recipe_id": row.recipe_id,
         "fitness": row.fitness, "objectives": row.objectives, "parents": list(row.parents or ()),
         "attempts": row.attempts, "seconds": row.seconds, "error": row.error, "cached_from": row.cached_from,
         "worker": row.worker, "started_at": iso_time(row.started_at), "finished_at": iso_time(row.finished_at),
         "recipe": json.loads(row.recipe_json)}
    if scores:
        d["item_scores"] = row.item_scores
    return d


def parse_candidate(ref: str) -> tuple[str, int]:
    """``RUN:INDEX`` -> (run, index). The index is ASCII digits and at most the archive's
    largest index (2**31 - 1); anything else is a ConfigError naming the reference."""
    run, sep, idx = ref.rpartition(":")
    if not sep or not run or not re.fullmatch(r"[0-9]+", idx):
        raise ConfigError(f"{ref!r} is not a candidate reference", hint="write RUN:INDEX, e.g. demo-s0-1:17 "
                          "(`evomerge best RUN` lists candidates)")
    if len(idx) > len(str(MAX_INDEX)) or int(idx) > MAX_INDEX:
        raise ConfigError(f"candidate index {idx} in {ref!r} is out of range (at most {MAX_INDEX})",
                          hint="indices run from 0 to the run's budget - 1; `evomerge best RUN -k 10` lists candidates")
    return run, int(idx)


def runs(db: str | None = None, workdir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every run in the archive, oldest first (see :func:`run_dict`)."""
    with open_store(db, workdir) as store:
        return [run_dict(r) for r in store.list_runs()]


def best(run: str, *, objective: str | None = None, k: int = 1, db: str | None = None,
         workdir: str | Path | None = None) -> list[dict[str, Any]]:
    """The ``k`` best candidates (1 <= k <= 2**31 - 1) by fitness, or by one objective."""
    if not 1 <= k <= MAX_INDEX:
        raise ConfigError(f"-k {k} is out of range", hint=f"ask for 1 to {MAX_INDEX} candidates")
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
           overwrite: bool = False, any_status: bool = False) -> Path:
    """Materialize a candidate as a Hugging Face model directory (atomic, with a sha256 manifest,
    the canonical recipe and a mergekit config).

    Only a COMPLETE candidate is exported unless ``any_status`` (CLI ``--any-status``): a FAILED,
    INVALID, TIMEOUT, PENDING or RUNNING one raises :class:`ExportError` naming its status, before
    anything is written. ``overwrite`` replaces only a directory evomerge wrote
    (see :class:`evomerge.merge.writer.ModelDirWriter`)."""
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.recipe import recipe_from_dict

    run, index = parse_candidate(ref)
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        row = store.candidate(info.id, index)
        seed = info.seed
    if row.status != "COMPLETE" and not any_status:
        raise ExportError(f"candidate {info.name}:{index} is {row.status}, not COMPLETE; refusing to export it",
                          hint=f"`evomerge show {info.name}:{index}` says why; pass --any-status "
                          "(api: any_status=True) to export it anyway")
    recipe = recipe_from_dict(json.loads(row.recipe_json), source=ref)
    out = Path(out)
    merge_to_dir(recipe, out, seed=seed, overwrite=overwrite)
    return out


# Limits of the run options (each refused with the option named and this range)
MAX_WORKERS = 4096
MAX_ATTEMPTS = 100
BACKENDS = ("ray", "local")
ENGINES = ("hf", "vllm", "synthetic")


def _check_int(option: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ConfigError(f"{option} {value!r} is out of range: it must be a whole number from {low} "
                          f"to {high}",
                          hint=f"pass {option} between {low} and {high}")


def _check_float(option: str, value: float, *, positive: bool = False, hint: str | None = None) -> None:
    """``value`` must be a finite number, above 0 when ``positive``, else at least 0."""
    bound = "above 0" if positive else "0 or more"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and (
        value > 0 if positive else value >= 0)
    if not ok:
        raise ConfigError(f"{option} {value!r} is out of range: it must be a finite number {bound}",
                          hint=hint or f"pass {option} with a finite value {bound}")


def check_exec_options(*, workers: int, backend: str, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """How a run executes (``search`` and ``resume``): 1 to MAX_WORKERS evaluation slots, a known
    backend, finite non-negative CPUs and GPUs per worker (on Ray, amounts above 1 are whole numbers)."""
    _check_int("--workers", workers, 1, MAX_WORKERS)
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}",
                          hint="use ray (worker actors) or local (evaluate in this process)")
    for option, amount in (("--cpus-per-worker", cpus_per_worker), ("--gpus-per-worker", gpus_per_worker)):
        _check_float(option, amount)
        if backend == "ray" and amount > 1 and amount != int(amount):
            raise ConfigError(f"{option} {amount} is not allowed: Ray needs amounts above 1 to be whole "
                              "numbers",
                              hint=f"pass {option} as a fraction up to 1 or a whole number")


def _check_ray_address(backend: str, address: str | None) -> None:
    """A Ray address (``--address`` or ``RAY_ADDRESS``) must answer before a run is created or taken."""
    import os

    target = address or os.environ.get("RAY_ADDRESS")
    if backend == "ray" and target:
        from evomerge.runner.ray_backend import check_reachable

        check_reachable(target)


def check_search_options(*, budget: int | None, seed: int | None, strategy: str | None, engine: str,
                         deadline_s: float | None, max_attempts: int, lag: int | None, snapshot_every: int,
                         name: str | None, deadline_slack_s: float = 30.0, grace_s: float = 60.0,
                         heartbeat_s: float = 5.0) -> None:
    """The options of ``search`` beyond the space: each is refused, named, with its allowed range."""
    from evomerge.space.schema import MAX_BUDGET, MAX_SEED
    from evomerge.store.sql import RUN_NAME
    from evomerge.strategies.registry import NAMES

    if budget is not None:
        _check_int("--budget", budget, 1, MAX_BUDGET)
    if seed is not None:
        _check_int("--seed", seed, 0, MAX_SEED)
    if strategy is not None and strategy not in NAMES:
        raise ConfigError(f"--strategy {strategy!r} is not one of {', '.join(NAMES)}",
                          hint=f"pass --strategy {' | '.join(NAMES)}")
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}",
                          hint="use hf (transformers), vllm, or synthetic (plumbing tests)")
    if deadline_s is not None:
        _check_float("--deadline", deadline_s, positive=True,
                     hint="pass --deadline in seconds above 0, or leave it out for no deadline")
    _check_int("--max-attempts", max_attempts, 1, MAX_ATTEMPTS)
    if lag is not None:
        _check_int("lag", lag, 1, MAX_BUDGET)
    _check_int("--snapshot-every", snapshot_every, 1, MAX_BUDGET)
    _check_float("deadline_slack_s", deadline_slack_s)
    _check_float("grace_s", grace_s, positive=True)
    _check_float("heartbeat_s", heartbeat_s, positive=True)
    if name is not None and not RUN_NAME.match(name):
        raise ConfigError(f"--name {name!r} is not a run name",
                          hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def _with_overrides(space: Any, source: str, *, budget: int | None, seed: int | None, strategy: str | None,
                    optimizer: str | None) -> Any:
    """The space with the command line's overrides applied, validated like the file itself."""
    from pydantic import ValidationError

    from evomerge.space.schema import describe_validation_error

    name = strategy or space.strategy.name
    if optimizer is not None and name != "nevergrad":
        raise ConfigError(f"--optimizer {optimizer!r} applies to strategy nevergrad, not {name}",
                          hint="add --strategy nevergrad, or leave --optimizer out")
    update: dict[str, Any] = {}
    if budget is not None:
        update["budget"] = budget
    if seed is not None:
        update["seed"] = seed
    if strategy is not None or optimizer is not None:
        update["strategy"] = space.strategy.model_dump() | ({"name": strategy} if strategy else {}) | (
            {"optimizer": optimizer} if optimizer else {})
    if not update:
        return space
    try:
        return type(space).model_validate(space.model_dump() | update)
    except ValidationError as err:
        raise ConfigError(f"{source} with the command-line overrides: {describe_validation_error(err)}",
                          hint="change the override or the space file") from None


def preflight(space: Any, *, workers: int = 1, build_zoo: bool = True,
              log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Everything a run needs, checked before its row exists, from headers and task files only
    (no weights read, no PS+DFS merge materialized): each objective's task spec and search data,
    distinct task names, the sources' compatibility and the start recipe's plan (for ps_dfs also
    the PS merge's plan), and the strategy built over the genome. ``build_zoo``: build the
    built-in zoo first when the space uses it, as the run would; without it, sources that do not
    exist skip the source and strategy checks (``missing`` lists them).
    Returns ``{"tasks": names, "genes": d or None, "missing": paths}``."""
    from evomerge.evaluate.tasks import load_task
    from evomerge.merge.plan import plan_merge
    from evomerge.space.codec import check_sources, make_codec
    from evomerge.strategies.registry import check_strategy

    names = [load_task(o.task).name for o in space.objectives]
    if len(set(names)) != len(names):
        raise ConfigError(f"two objectives have the same task name ({names})",
                          hint="give each task spec its own name")
    if build_zoo and space.uses_zoo():
        from evomerge.zoo import ensure_zoo

        ensure_zoo(log=log)
    merged = space.merged_recipe()
    needed = [space.base, *space.experts, *(merged.source_names() if merged is not None else [])]
    missing = [p for p in dict.fromkeys(needed) if not Path(p).exists()]
    if missing and not build_zoo:
        return {"tasks": names, "genes": None, "missing": missing}
    if merged is not None:  # the PS merge of a ps_dfs space, planned from headers (the run materializes it)
        with plan_merge(merged):
            pass
    codec = make_codec(space, materialize=False)
    check_sources(space, codec)
    check_strategy(space, codec, workers=workers)
    return {"tasks": names, "genes": codec.dim, "missing": []}


def validate(space_path: str | Path) -> dict[str, Any]:
    """Check a search space without running anything: schema, bounds and sizes, each objective's
    task spec and data, and, when the models exist, their headers, the start recipe's plan and
    the strategy. Returns a summary (kind, experts, objectives, genes or None, missing, budget, hash;
    ``zoo_unbuilt``: every missing model is in the built-in zoo, which the first search builds)."""
    from evomerge.space.schema import load_space
    from evomerge.zoo import default_zoo_dir

    space = load_space(space_path)
    checked = preflight(space, build_zoo=False, log=None)
    zoo = str(default_zoo_dir())
    flow = space.flow
    what = space.merge_method if space.kind == "ps" else f"{flow.repeats} repeats, {flow.scales} scales"
    return {"space": space, "kind": space.kind, "what": what, "experts": len(space.experts),
            "objectives": len(space.objectives), "genes": checked["genes"], "missing": checked["missing"],
            "zoo_unbuilt": bool(checked["missing"]) and all(p.startswith(zoo) for p in checked["missing"]),
            "budget": space.budget, "hash": space.space_hash}


def search(space_path: str | Path, *, db: str | None = None, workdir: str | Path | None = None,
           name: str | None = None, budget: int | None = None, seed: int | None = None, engine: str = "hf",
           workers: int = 1, backend: str = "ray", address: str | None = None, deadline_s: float | None = None,
           max_attempts: int = 3, lag: int | None = None, cpus_per_worker: float = 1.0,
           gpus_per_worker: float = 0.0, verbose: bool = False, log: Callable[[str], None] = print,
           progress: Callable[[Any], None] | None = None, deadline_slack_s: float = 30.0,
           grace_s: float = 60.0, heartbeat_s: float = 5.0, engine_options: dict[str, Any] | None = None,
           strategy: str | None = None, optimizer: str | None = None, snapshot_every: int = 50):
    """Create a run for a search space and drive it to its budget (returns a RunOutcome).
    ``strategy``/``optimizer`` override the space's strategy name / nevergrad optimizer.

    The run's row is created only after every check has passed (the options, the space with its
    overrides, the tasks and their data, the sources' headers, the strategy; see :func:`preflight`),
    so a bad input leaves no run behind."""
    check_search_options(budget=budget, seed=seed, strategy=strategy, engine=engine, deadline_s=deadline_s,
                         max_attempts=max_attempts, lag=lag, snapshot_every=snapshot_every, name=name,
                         deadline_slack_s=deadline_slack_s, grace_s=grace_s, heartbeat_s=heartbeat_s)
    check_exec_options(workers=workers, backend=backend, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker)
    from evomerge.runner.service import ExecOptions, create_run, default_lag, execute, space_text
    from evomerge.space.schema import load_space

    space = _with_overrides(load_space(space_path), str(space_path), budget=budget, seed=seed,
                            strategy=strategy, optimizer=optimizer)
    text = space_text(Path(space_path))
    preflight(space, workers=workers, log=log)
    _check_ray_address(backend, address)
    with open_store(db, workdir) as store:
        run = create_run(store, space, text, name=name, engine=engine,
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
    """Continue a crashed or stopped run: nothing lost, nothing repeated (returns a RunOutcome).
    The execution options are checked (see :func:`check_exec_options`) before the archive is opened."""
    check_exec_options(workers=workers, backend=backend, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker)
    _check_float("grace_s", grace_s, positive=True)
    _check_float("heartbeat_s", heartbeat_s, positive=True)
    from evomerge.runner.service import ExecOptions, execute

    _check_ray_address(backend, address)
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        opts = ExecOptions(workers=workers, backend=backend, address=address, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, verbose=verbose, grace_s=grace_s, heartbeat_s=heartbeat_s)
        return execute(store, info, opts, log=log, progress=progress)
