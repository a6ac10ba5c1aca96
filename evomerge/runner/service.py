"""Start or resume a run: open the store, take the lease, build strategy and backend, drive.

A run stores everything it needs to continue in its row: the resolved search space, the
objective names, the engine and the pacing (``lag``), so ``evomerge resume RUN`` needs nothing
but the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from evomerge.errors import ConfigError, EvomergeError, StaleLeaseError
from evomerge.runner.driver import Driver, DriverOptions
from evomerge.runner.options import ExecOptions
from evomerge.space.schema import (
    MERGE_DTYPE_DEFAULT,
    RESTARTS_DEFAULT,
    SETTING_OWNERS,
    SearchSpace,
    describe_validation_error,
)
from evomerge.store import Lease, RunInfo, Store

if TYPE_CHECKING:
    from evomerge.runner.backend import Backend
    from evomerge.runner.worker import WorkerSpec


@dataclass
class RunOutcome:
    run: RunInfo
    told: int
    best: tuple[float, int] | None
    seconds: float
    stopped_by: int | None = None  # the signal number that stopped the run early, if one did


def lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` (host:pid:tag) is a process of this host that no longer exists."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def take_lease(store: Store, run_id: str, ttl_s: float, log: Callable[[str], None]) -> Lease:
    """The run's lease; a lease held by a dead driver of this host is taken over at once (its
    epoch is bumped, so anything it might still write is refused), otherwise LeaseHeldError."""
    from evomerge.errors import LeaseHeldError

    try:
        return store.acquire_lease(run_id, lease_owner(), ttl_s)
    except LeaseHeldError:
        holder, _ = store.lease_holder(run_id)
        if not owner_is_dead(holder):
            raise
        log(f"the previous driver ({holder}) is gone; taking over its lease")
        return store.acquire_lease(run_id, lease_owner(), ttl_s, force=True)


# a nevergrad run's stall window (0: none), stored beside its space since session 20: runs created before
# stored a `stall` that nevergrad never applied, so the space's own value cannot tell them apart
NEVERGRAD_STALL_KEY = "nevergrad_stall"


def run_space(config: dict[str, Any]) -> SearchSpace:
    """The search space a run was created with (its stored config). A run created before CMA-ES
    restarts existed has no ``restarts`` in it and goes on without them, as it started; one created
    before the default best-so-far rule (``stall`` stored as null) restarts on pycma's criteria
    only, and a nevergrad run created before its stall rule goes on with one optimizer; an M2N2
    run created before the paper's attraction and archive fill goes on with the old ones; a
    subset run created before promotion races scores a promoted candidate's rest all at once; and
    one created before ``merge_dtype`` merges 16-bit sources in their own dtype."""
    stored = dict(config["space"])
    strategy = dict(stored.get("strategy") or {})
    name = strategy.get("name", "cmaes")
    # runs created before session 19 stored restarts (and stall: 5, later null) for every strategy
    strategy = {k: v for k, v in strategy.items() if name in SETTING_OWNERS.get(k, (name,))}
    if name == "nevergrad":  # its window is the one created with it since session 20 (NEVERGRAD_STALL_KEY); a
        # stall stored before then (5 for every strategy, or a space's value nevergrad ignored) never applied
        strategy["stall"] = config.get(NEVERGRAD_STALL_KEY) or 0
    old = ({"restarts": "none", "stall": 0} if name == "cmaes" else {}) | (
        {"attraction": "raw", "fill": "random", "mutation": 0.0, "exploit": 0.0, "refine": 0.0, "additive": 0.0}
        if name == "m2n2" else {})
    stored["strategy"] = old | {k: v for k, v in strategy.items() if v is not None}
    stored["merge_dtype"] = stored.get("merge_dtype") or "source"  # before 16-bit sources merged in float32
    subset = (stored.get("fitness") or {}).get("subset")
    if subset is not None and "race" not in subset:
        stored["fitness"] = {**stored["fitness"], "subset": {**subset, "race": None}}
    return SearchSpace.model_validate(stored)


def task_names(space: SearchSpace) -> list[str]:
    from evomerge.evaluate.lmeval import LMEvalRef, task_name
    from evomerge.evaluate.tasks import load_task_spec

    return [load_task_spec(o.task)[0].name if o.lm_eval is None else task_name(LMEvalRef(**o.lm_eval.model_dump()))
            for o in space.objectives]


def create_run(store: Store, space: SearchSpace, space_text: str, *, name: str | None, engine: str,
               lag: int, max_attempts: int, deadline_s: float | None, strategy_workers: int,
               engine_options: dict[str, Any] | None = None, deadline_slack_s: float = 30.0,
               snapshot_every: int = 50, reference_sources: bool = False) -> RunInfo:
    """Record a new run (status ``created``) holding everything ``execute`` needs. Callers check
    the space, tasks, sources and strategy first (``api.preflight``); this refuses, before any row
    is written, run options no driver can honour: ``lag``, ``max_attempts``, ``snapshot_every`` or
    ``strategy_workers`` below 1, a ``deadline_s`` that is not a finite number above 0, duplicate
    task names. ``strategy_workers``: the candidates the strategy plans to have in flight, at least
    ``lag`` (the driver asks that far ahead; ``api.search`` passes the larger of the workers and the
    lag; runs created before session 20 stored the workers). ``reference_sources``: the driver also
    scores each source model once, as it is (the dashboard's reference points; not candidates, not
    counted in the budget)."""
    import math

    for option, value in (("lag", lag), ("max_attempts", max_attempts), ("snapshot_every", snapshot_every),
                          ("strategy_workers", strategy_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{option} {value!r} is out of range: it must be a whole number of 1 or more",
                              hint=f"pass {option} of 1 or more")
    if deadline_s is not None and not (isinstance(deadline_s, int | float) and math.isfinite(deadline_s)
                                       and deadline_s > 0):
        raise ConfigError(f"deadline_s {deadline_s!r} is out of range: it must be a finite number above 0",
                          hint="pass a deadline in seconds above 0, or None for no deadline")
    names = task_names(space)
    if len(set(names)) != len(names):
        raise ConfigError(f"two objectives have the same task name ({names})", hint="give each task spec its own name")
    stored = space.model_dump(mode="json")
    if space.strategy.name == "cmaes":  # fixed with the run
        stored["strategy"]["restarts"] = space.strategy.restarts or RESTARTS_DEFAULT
    if space.strategy.name in SETTING_OWNERS["stall"]:  # fixed with the run; stall 0: no best-so-far rule
        stored["strategy"]["stall"] = space.strategy.stall_window(multi_objective=space.multi_objective) or 0
    stored["merge_dtype"] = space.merge_dtype or MERGE_DTYPE_DEFAULT
    if space.strategy.name == "m2n2":
        stored["strategy"].update(space.strategy.m2n2_settings())
    config = {"space": stored, "objective_names": names, "engine": engine, "lag": lag,
              "max_attempts": max_attempts, "deadline_s": deadline_s, "deadline_slack_s": deadline_slack_s,
              "snapshot_every": snapshot_every,
              "strategy_workers": strategy_workers,
              "engine_options": engine_options or {}, "reference_sources": bool(reference_sources)}
    if space.strategy.name == "nevergrad":  # the window it restarts on, marking a run created with the rule
        config[NEVERGRAD_STALL_KEY] = stored["strategy"]["stall"]
    if name is None:
        from evomerge.store.sql import RUN_NAME

        taken = {r.name for r in store.list_runs()}
        k = 1
        while f"{space.name}-s{space.seed}-{k}" in taken:
            k += 1
        name = f"{space.name}-s{space.seed}-{k}"
        if not RUN_NAME.match(name):
            raise ConfigError(f"the default run name {name!r} (<space name>-s<seed>-<n>) is not a valid run name",
                              hint="pass --name (1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                                   "digit), or shorten the space's name")
    objectives = [{"name": n, "direction": o.direction, "weight": o.weight} for n, o in zip(names, space.objectives, strict=True)]
    return store.create_run(name=name, space_yaml=space_text, space_hash=space.space_hash, config=config,
                            seed=space.seed, budget=space.budget, objectives=objectives)


@contextlib.contextmanager
def stop_on_signals(driver: Driver, log: Callable[[str], None]) -> Iterator[dict[str, int]]:
    """While the block runs, SIGTERM and SIGINT ask ``driver`` to stop at its next step (a clean
    stop: results recorded, running candidates requeued, lease released, workers shut down); a
    second signal interrupts at once. The received signal's number is put in the yielded dict.
    Only the main thread can take signals; elsewhere nothing is installed."""
    got: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum: int, _frame: object) -> None:
        if driver.stop_requested:
            raise KeyboardInterrupt
        got["signal"] = signum
        driver.stop_requested = signal.Signals(signum).name
        log(f"{driver.stop_requested} received: stopping after the current step (again to interrupt at once)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield got
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def execute(store: Store, run: RunInfo, opts: ExecOptions, *, log: Callable[[str], None] = print,
            progress: Callable[[Driver], None] | None = None,
            backend_factory: Callable[[WorkerSpec], Backend] | None = None) -> RunOutcome:
    """Drive ``run`` to its budget (fresh or resumed: the same code path). ``backend_factory``
    (a WorkerSpec -> backend) replaces the backend named in ``opts``."""
    from evomerge.evaluate.registry import merges_weights
    from evomerge.runner.strategy import make_strategy
    from evomerge.runner.worker import WorkerSpec, code_fingerprint
    from evomerge.space.codec import check_sources, make_codec

    cfg = run.config
    try:
        space = run_space(cfg)
    except ValidationError as err:  # a run archived under rules this version no longer accepts
        raise ConfigError(f"run {run.name}: its search space is not valid for this version of evomerge: "
                          f"{describe_validation_error(err)}",
                          hint="resume it with the evomerge version that started it, or start a new run") from None
    if space.uses_zoo():
        from evomerge.zoo import ensure_zoo

        ensure_zoo(log=log)
    codec = make_codec(space)
    check_sources(space, codec)  # a misfit source fails here, not in every candidate
    strategy = make_strategy(space, codec, workers=int(cfg["strategy_workers"]))
    lease = take_lease(store, run.id, opts.lease_ttl_s, log)
    t0 = time.monotonic()
    backend: Backend | None = None
    try:
        sources = list(getattr(codec, "sources", [space.base, *space.experts]))
        faults = json.loads(os.environ.get("EVOMERGE_FAULTS", "{}"))  # failure tests only
        spec = WorkerSpec(engine=cfg["engine"], tasks=tuple(o.ref for o in space.objectives), sources=tuple(sources),
                          store_url=store.url, run_id=run.id, heartbeat_s=opts.heartbeat_s,
                          engine_options=engine_options(cfg["engine"], cfg.get("engine_options") or {},
                                                        opts.gpus_per_worker),
                          threads=max(1, int(opts.cpus_per_worker)) if opts.backend == "ray" else None, faults=faults,
                          code=code_fingerprint())
        if merges_weights(cfg["engine"]) and opts.backend == "ray":
            from evomerge.merge import native

            native.module()  # built (once per machine) or loaded here, so workers on this node only load it
        if backend_factory is not None:
            backend = backend_factory(spec)
        elif opts.backend == "local":
            from evomerge.runner.backend import LocalBackend

            backend = LocalBackend(spec)
        elif opts.backend == "ray":
            from evomerge.runner.ray_backend import RayBackend

            backend = RayBackend(spec, opts.workers, address=opts.address, cpus=opts.cpus_per_worker,
                                 gpus=opts.gpus_per_worker, log=log)
        else:
            raise ConfigError(f"unknown backend {opts.backend!r}", hint="use ray (default) or local")
        dopts = DriverOptions(lag=int(cfg["lag"]), max_attempts=int(cfg["max_attempts"]), deadline_s=cfg.get("deadline_s"),
                              slack_s=float(cfg.get("deadline_slack_s", 30.0)), grace_s=opts.grace_s,
                              snapshot_every=max(1, int(cfg.get("snapshot_every", 50))), lease_ttl_s=opts.lease_ttl_s, verbose=opts.verbose,
                              reference_sources=bool(cfg.get("reference_sources", False)))
        driver = Driver(store=store, lease=lease, space=space, codec=codec, strategy=strategy, backend=backend,
                        objective_names=list(cfg["objective_names"]), options=dopts, log=log, on_progress=progress)
        driver.load_existing()
        store.set_run_status(lease, "running")
        try:
            with stop_on_signals(driver, log) as got:
                driver.run()
        except KeyboardInterrupt:
            store.set_run_status(driver.lease, "stopped")
            log(f"stopped; continue with `evomerge resume {run.name}`")
            raise
        except EvomergeError as err:  # e.g. the workers cannot start: nothing is lost, the run resumes
            if not isinstance(err, StaleLeaseError):
                try:
                    store.set_run_status(driver.lease, "stopped")
                    store.release_lease(driver.lease)
                except Exception:  # noqa: BLE001 - the error being raised is the one to report
                    pass
                log(f"stopped: {err.message}; once fixed, continue with `evomerge resume {run.name}`")
            raise
        store.set_run_status(driver.lease, "finished" if driver.told >= space.budget else "stopped")
        store.release_lease(driver.lease)
        if got:
            log(f"stopped by {driver.stop_requested} after {driver.told} of {space.budget} candidates; "
                f"continue with `evomerge resume {run.name}`")
        return RunOutcome(store.get_run(run.id), driver.told, driver.best, time.monotonic() - t0,
                          stopped_by=got.get("signal"))
    finally:
        if backend is not None:
            backend.shutdown()


def engine_options(engine: str, options: dict[str, Any], gpus_per_worker: float) -> dict[str, Any]:
    """A run's engine options as a worker gets them: a vLLM worker given two or more GPUs runs one
    engine tensor-parallel over them (each rank merging its own part of every tensor), unless the
    run's options say how."""
    if engine == "vllm" and gpus_per_worker >= 2 and "tensor_parallel" not in options:
        return {**options, "tensor_parallel": int(gpus_per_worker)}
    return dict(options)


def default_lag(workers: int) -> int:
    return max(2, 2 * workers)


def space_text(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8")
