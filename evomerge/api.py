"""The Python API: search, resume, and query the archive (what the CLI calls).

Candidates are named ``RUN:INDEX`` (the run's name or id, a colon, the candidate index).

    from evomerge import api
    outcome = api.search("search_spaces/demo.yaml", api.SearchOptions(budget=20),
                         api.ExecOptions(backend="local"))
    api.best(outcome.run.name, k=3)
    api.export(f"{outcome.run.name}:{api.best(outcome.run.name)[0]['index']}", "merged/")
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from evomerge.errors import ConfigError, ExportError
from evomerge.evaluate.registry import ENGINES as ENGINES
from evomerge.evaluate.registry import check_engine
from evomerge.result import Fidelity
from evomerge.runner.options import BACKENDS as BACKENDS
from evomerge.runner.options import MAX_WORKERS as MAX_WORKERS
from evomerge.runner.options import ExecOptions, check_float, check_int
from evomerge.runner.options import check_exec_options as check_exec_options
from evomerge.store import CandidateRow, RunInfo, Store
from evomerge.store.records import MAX_INDEX

# ENGINES (the engine names), BACKENDS, MAX_WORKERS and check_exec_options are re-exported above

if TYPE_CHECKING:
    from evomerge.runner.driver import Driver
    from evomerge.runner.service import RunOutcome
    from evomerge.space.schema import SearchSpace


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
         "recipe": json.loads(row.recipe_json), "fidelity": str(row.fidelity), "items_scored": row.items_scored,
         "stop_reason": row.stop_reason, "race_ref": row.race_ref,
         "intervals": {k: list(v) for k, v in row.intervals.items()}}
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


def _check_fidelity(fidelity: str | None) -> None:
    if fidelity is not None and fidelity not in set(Fidelity):
        raise ConfigError(f"--fidelity {fidelity!r} is not one of {[f.value for f in Fidelity]}",
                          hint="`--fidelity exact` keeps candidates scored on every item")


def best(run: str, *, objective: str | None = None, k: int = 1, db: str | None = None,
         workdir: str | Path | None = None, fidelity: str | None = None) -> list[dict[str, Any]]:
    """The ``k`` best candidates (1 <= k <= 2**31 - 1) by fitness, or by one objective;
    ``fidelity`` (``exact``, ``raced`` or ``subset``) keeps only candidates scored that way."""
    if not 1 <= k <= MAX_INDEX:
        raise ConfigError(f"-k {k} is out of range", hint=f"ask for 1 to {MAX_INDEX} candidates")
    _check_fidelity(fidelity)
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        if objective is not None and objective not in [o["name"] for o in info.objectives]:
            raise ConfigError(f"run {info.name} has no objective {objective!r}",
                              hint=f"use one of {[o['name'] for o in info.objectives]}")
        return [candidate_dict(r) for r in store.best(info.id, objective=objective, k=k, fidelity=fidelity)]


def pareto(run: str, *, db: str | None = None, workdir: str | Path | None = None,
           fidelity: str | None = None) -> list[dict[str, Any]]:
    """The non-dominated COMPLETE candidates (of ``fidelity`` when given)."""
    _check_fidelity(fidelity)
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        return [candidate_dict(r) for r in store.pareto(info.id, fidelity=fidelity)]


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
    from evomerge.recipe import stored_recipe

    run, index = parse_candidate(ref)
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        row = store.candidate(info.id, index)
        seed = info.seed
    if row.status != "COMPLETE" and not any_status:
        raise ExportError(f"candidate {info.name}:{index} is {row.status}, not COMPLETE; refusing to export it",
                          hint=f"`evomerge show {info.name}:{index}` says why; pass --any-status "
                          "(api: any_status=True) to export it anyway")
    recipe = stored_recipe(json.loads(row.recipe_json), source=ref)
    out = Path(out)
    merge_to_dir(recipe, out, seed=seed, overwrite=overwrite)
    return out


# Limits of the search options (each refused with the option named and this range); the execution
# options' (MAX_WORKERS, BACKENDS) are evomerge.runner.options'
MAX_ATTEMPTS = 100


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
    """The options of ``search`` beyond the space (what :class:`SearchOptions` checks when made;
    ``grace_s``/``heartbeat_s`` are :class:`ExecOptions`'): each is refused, named, with its allowed
    range."""
    from evomerge.space.schema import MAX_BUDGET, MAX_SEED
    from evomerge.store.sql import RUN_NAME
    from evomerge.strategies.registry import NAMES

    if budget is not None:
        check_int("--budget", budget, 1, MAX_BUDGET)
    if seed is not None:
        check_int("--seed", seed, 0, MAX_SEED)
    if strategy is not None and strategy not in NAMES:
        raise ConfigError(f"--strategy {strategy!r} is not one of {', '.join(NAMES)}",
                          hint=f"pass --strategy {' | '.join(NAMES)}")
    check_engine(engine)
    if deadline_s is not None:
        check_float("--deadline", deadline_s, positive=True,
                    hint="pass --deadline in seconds above 0, or leave it out for no deadline")
    check_int("--max-attempts", max_attempts, 1, MAX_ATTEMPTS)
    if lag is not None:
        check_int("lag", lag, 1, MAX_BUDGET)
    check_int("--snapshot-every", snapshot_every, 1, MAX_BUDGET)
    check_float("deadline_slack_s", deadline_slack_s)
    check_float("grace_s", grace_s, positive=True)
    check_float("heartbeat_s", heartbeat_s, positive=True)
    if name is not None and not RUN_NAME.match(name):
        raise ConfigError(f"--name {name!r} is not a run name",
                          hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def _with_overrides(space: SearchSpace, source: str, *, budget: int | None, seed: int | None,
                    strategy: str | None, optimizer: str | None) -> SearchSpace:
    """The space with the command line's overrides applied, validated like the file itself."""
    from pydantic import ValidationError

    from evomerge.space.schema import describe_validation_error

    name = strategy or space.strategy.name
    if optimizer is not None and name != "nevergrad":
        raise ConfigError(f"--optimizer {optimizer!r} applies to strategy nevergrad, not {name}",
                          hint="add --strategy nevergrad, or leave --optimizer out")
    if name != space.strategy.name and space.strategy.stall:
        # cmaes counts generations, nevergrad evaluations: the same number means another rule
        raise ConfigError(f"--strategy {name}: {source} sets stall {space.strategy.stall} for strategy "
                          f"{space.strategy.name} (cmaes counts generations, nevergrad evaluations)",
                          hint=f"remove stall from the space's strategy, or write a space for {name}")
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


def preflight(space: SearchSpace, *, workers: int = 1, build_zoo: bool = True,
              log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Everything a run needs, checked before its row exists, from headers and task files only
    (no weights read, no PS+DFS merge materialized): each objective's task spec and search data,
    distinct task names, the sources' compatibility and the start recipe's plan (for ps_dfs also
    the PS merge's plan), and the strategy built over the genome. ``build_zoo``: build the
    built-in zoo first when the space uses it, as the run would; without it, sources that do not
    exist skip the source and strategy checks (``missing`` lists them).
    Returns ``{"tasks": names, "genes": d or None, "missing": paths}``."""
    from evomerge.evaluate.lmeval import LMEvalTask, has_chat_template
    from evomerge.evaluate.tasks import load_task
    from evomerge.merge.plan import plan_merge
    from evomerge.runner.strategy import check_strategy
    from evomerge.space.codec import check_sources, make_codec

    tasks = [load_task(o.ref) for o in space.objectives]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"two objectives have the same task name ({names})",
                          hint="give each task spec its own name")
    cheaper = None if space.fitness is None else "racing" if space.fitness.racing else \
        "subset" if space.fitness.subset else None
    if cheaper is not None:
        unbounded = [t.name for t in tasks if t.spec.kind == "loglik" or (isinstance(t, LMEvalTask) and not t.bounded)]
        if unbounded:
            raise ConfigError(f"search space {space.name!r}: {cheaper} needs item scores in [0, 1], and the task(s) "
                              f"{unbounded} score otherwise (loglik tasks: mean log-probs; lm-eval metrics other "
                              "than acc, acc_norm, exact_match)",
                              hint=f"score fewer items only on tasks scored in [0, 1]: drop `fitness: {cheaper}:` or "
                                   "those objectives")
        fewshot = [t.name for t in tasks if isinstance(t, LMEvalTask) and t.fewshot]
        if fewshot:
            raise ConfigError(f"search space {space.name!r}: {cheaper} scores some documents alone, and lm-eval "
                              f"draws the few-shot examples of {fewshot} in document order, so they would see other "
                              "examples than a full run", hint="use zero-shot lm-eval tasks only (num_fewshot: 0)")
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
    templated = [t.name for t in tasks if isinstance(t, LMEvalTask) and t.ref.apply_chat_template]
    if templated and not has_chat_template(Path(space.tokenizer_source if space.tokenizer_source not in
                                                 (None, "base", "union") else space.base)):
        raise ConfigError(f"search space {space.name!r}: the lm-eval task(s) {templated} apply a chat template, and "
                          f"the tokenizer of {space.base} has none",
                          hint="set apply_chat_template: false on those objectives (mergekit-evolve's default is "
                               "true), or merge models whose tokenizer has a chat template")
    codec = make_codec(space, materialize=False)
    check_sources(space, codec)
    check_strategy(space, codec, workers=workers)
    return {"tasks": names, "genes": codec.dim, "missing": []}


def validate(space_path: str | Path, *, gpus_per_worker: float = 0.0,
             device_memory: int | None = None) -> dict[str, Any]:
    """Check a search space without running anything: schema, bounds and sizes, each objective's
    task spec and data, and, when the models exist, their headers, the start recipe's plan and
    the strategy. Returns a summary (kind, experts, objectives, genes or None, missing, budget, hash;
    ``zoo_unbuilt``: every missing model is in the built-in zoo, which the first search builds).
    With ``device_memory`` (bytes per GPU) and ``gpus_per_worker``: ``placement``, where a worker
    keeps the sources and what it needs per GPU (:mod:`evomerge.runner.placement`; a ConfigError
    when a candidate cannot fit)."""
    from evomerge.space.schema import load_space
    from evomerge.zoo import default_zoo_dir

    space = load_space(space_path)
    checked = preflight(space, build_zoo=False, log=None)
    zoo = str(default_zoo_dir())
    flow = space.flow
    what = space.merge_method if space.kind == "ps" else f"{flow.repeats} repeats, {flow.scales} scales"
    where = None
    if device_memory is not None and not checked["missing"]:
        where = placement(space, gpus_per_worker, device_memory).summary
    return {"space": space, "kind": space.kind, "what": what, "experts": len(space.experts),
            "objectives": len(space.objectives), "genes": checked["genes"], "missing": checked["missing"],
            "zoo_unbuilt": bool(checked["missing"]) and all(p.startswith(zoo) for p in checked["missing"]),
            "budget": space.budget, "hash": space.space_hash, "placement": where}


def placement(space: Any, gpus_per_worker: float, device_memory: int) -> Any:
    """Where a GPU worker of this space keeps its sources (:func:`evomerge.runner.placement.plan`)."""
    from evomerge.runner.placement import SourceSizes, plan

    return plan(SourceSizes.of([space.base, *space.experts]), gpus_per_worker=gpus_per_worker,
                device_bytes=device_memory)


@dataclass(frozen=True)
class SearchOptions:
    """What fixes a run beyond its space (stored in the run: a resume keeps them). Checked when
    made (see :func:`check_search_options`): a bad option is a ConfigError naming it and its range.

    ``budget``/``seed``/``strategy``/``optimizer`` override the space's (``optimizer``: the nevergrad
    optimizer); ``engine`` is a name of :data:`ENGINES`, made with ``engine_options`` as keywords;
    ``deadline_s`` (+ ``deadline_slack_s`` before a hard kill) per candidate, None for none;
    ``max_attempts`` per candidate; ``lag``: candidates asked ahead of the told prefix (default
    2 x workers); ``snapshot_every``: tells between strategy snapshots; ``name``: the run's name
    (default ``<space>-s<seed>-<n>``); ``reference_sources``: also score the base and each expert
    once, as they are (the dashboard shows them beside the merges; one evaluation per source,
    outside the budget)."""

    budget: int | None = None
    seed: int | None = None
    strategy: str | None = None
    optimizer: str | None = None
    engine: str = "hf"
    engine_options: Mapping[str, Any] | None = None
    deadline_s: float | None = None
    deadline_slack_s: float = 30.0
    max_attempts: int = 3
    lag: int | None = None
    snapshot_every: int = 50
    name: str | None = None
    reference_sources: bool = True

    def __post_init__(self) -> None:
        check_search_options(budget=self.budget, seed=self.seed, strategy=self.strategy, engine=self.engine,
                             deadline_s=self.deadline_s, max_attempts=self.max_attempts, lag=self.lag,
                             snapshot_every=self.snapshot_every, name=self.name,
                             deadline_slack_s=self.deadline_slack_s)


_O = TypeVar("_O")
# ExecOptions' fields that search and resume took as keywords before the options objects
_EXEC_KEYWORDS = ("workers", "backend", "address", "cpus_per_worker", "gpus_per_worker", "verbose", "grace_s",
                  "heartbeat_s")


def _split_keywords(fn: str, keywords: dict[str, Any],
                    groups: tuple[tuple[str, ...], ...]) -> tuple[dict[str, Any], ...]:
    """``keywords`` (options' fields passed the way before the options objects) split by object:
    one dict per group of field names; a keyword in no group is a TypeError."""
    known = {name for group in groups for name in group}
    for key in keywords:
        if key not in known:
            raise TypeError(f"{fn}() got an unexpected keyword argument {key!r}")
    return tuple({k: v for k, v in keywords.items() if k in group} for group in groups)


def _or_keywords(fn: str, what: str, given: _O | None, cls: type[_O], keywords: dict[str, Any]) -> _O:
    """``given``, or a ``cls`` made (and so checked) from ``keywords``; both is a TypeError."""
    if given is None:
        return cls(**keywords)
    if keywords:
        raise TypeError(f"{fn}() got {what} and its fields as keywords ({', '.join(keywords)}): pass one "
                        "or the other")
    return given


def search(space_path: str | Path, options: SearchOptions | None = None, exec_options: ExecOptions | None = None,
           *, db: str | None = None, workdir: str | Path | None = None, log: Callable[[str], None] = print,
           progress: Callable[[Driver], None] | None = None, **keywords: Any) -> RunOutcome:
    """Create a run for a search space and drive it to its budget. ``options`` fix the run (see
    :class:`SearchOptions`; default: the space's own settings, the hf engine), ``exec_options``
    say how it executes (:class:`ExecOptions`: workers, backend, Ray address, CPUs/GPUs per
    worker, grace and heartbeat periods, verbosity; default: one worker on a local Ray).

    The run's row is created only after every check has passed (the options, the space with its
    overrides, the tasks and their data, the sources' headers, the strategy; see :func:`preflight`),
    so a bad input leaves no run behind.

    Deprecated, accepted for one more release: the options' fields as keyword arguments
    (``api.search(path, engine="synthetic", workers=2, lag=6)``, the form before the options
    objects), mapped onto the two objects; a keyword together with its object is a TypeError."""
    from evomerge.runner.service import create_run, default_lag, execute, space_text

    by_search, by_exec = _split_keywords("search", keywords, (
        tuple(f.name for f in dataclasses.fields(SearchOptions)), _EXEC_KEYWORDS))
    options = _or_keywords("search", "options", options, SearchOptions, by_search)  # checked first, as before
    exec_options = _or_keywords("search", "exec_options", exec_options, ExecOptions, by_exec)
    from evomerge.space.schema import load_space

    o, x = options, exec_options
    space = _with_overrides(load_space(space_path), str(space_path), budget=o.budget, seed=o.seed,
                            strategy=o.strategy, optimizer=o.optimizer)
    text = space_text(Path(space_path))
    lag = o.lag or default_lag(x.workers)
    # the driver keeps up to `lag` candidates asked ahead of the told prefix: nevergrad must plan for as
    # many in flight (NGOpt built for one blocks on a second ask)
    in_flight = max(x.workers, lag)
    preflight(space, workers=in_flight, log=log)
    if x.device_memory is not None:  # refused here, before any run is written, when it cannot fit
        log(f"placement: {placement(space, x.gpus_per_worker, x.device_memory).summary}")
    _check_ray_address(x.backend, x.address)
    with open_store(db, workdir) as store:
        run = create_run(store, space, text, name=o.name, engine=o.engine,
                         lag=lag, max_attempts=o.max_attempts, deadline_s=o.deadline_s,
                         strategy_workers=in_flight,
                         engine_options=dict(o.engine_options) if o.engine_options is not None else None,
                         deadline_slack_s=o.deadline_slack_s, snapshot_every=o.snapshot_every,
                         reference_sources=o.reference_sources)
        log(f"run {run.name} ({run.id}) in {store.url}")
        return execute(store, run, x, log=log, progress=progress)


def resume(run: str, exec_options: ExecOptions | None = None, *, db: str | None = None,
           workdir: str | Path | None = None, log: Callable[[str], None] = print,
           progress: Callable[[Driver], None] | None = None, **keywords: Any) -> RunOutcome:
    """Continue a crashed or stopped run: nothing lost, nothing repeated. ``exec_options`` (see
    :class:`ExecOptions`; default: one worker on a local Ray) may differ from the run's start;
    they are checked (see :func:`check_exec_options`) before the archive is opened.

    Deprecated, accepted for one more release: ExecOptions' fields as keyword arguments
    (``api.resume(run, workers=2, backend="local")``), mapped onto the object."""
    from evomerge.runner.service import execute

    (by_exec,) = _split_keywords("resume", keywords, (_EXEC_KEYWORDS,))
    exec_options = _or_keywords("resume", "exec_options", exec_options, ExecOptions, by_exec)
    _check_ray_address(exec_options.backend, exec_options.address)
    with open_store(db, workdir) as store:
        info = store.get_run(run)
        return execute(store, info, exec_options, log=log, progress=progress)
