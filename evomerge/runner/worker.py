"""One evaluation slot: loads an evaluator and the fitness tasks once, then scores candidates.

Runs inside a Ray actor (:mod:`evomerge.runner.ray_backend`) or in the driver's process
(:class:`evomerge.runner.backend.LocalBackend`). Only the recipe's canonical JSON comes in and an
:class:`~evomerge.result.EvalResult` goes out; :meth:`CandidateWorker.ready` answers with a plain
dict, as it must be readable by a driver that runs other evomerge code (the refusal below). While a candidate runs, a thread records a heartbeat in the
store so the driver can tell a stuck worker from a slow one (docs/reliability.md, "silent
workers"). Start-up (imports, sources, the engine, the C++ kernel) is not a candidate's time:
a backend dispatches to a worker only after :meth:`CandidateWorker.ready` answered, so a start
of any length never counts as silence.

A worker refuses to start when it runs other evomerge code than the driver
(``WorkerSpec.code``: a fingerprint of the package's source files), e.g. an installed release
in the driver and a source checkout in the workers.

``WorkerSpec.faults`` (from the driver's ``EVOMERGE_FAULTS``, JSON) injects faults for the
failure tests, keyed by candidate index and active on the first attempt only: ``crash_on`` (the process exits mid-evaluation),
``freeze_on`` (heartbeats stop and the result comes ``freeze_s`` seconds late), ``sleep_on``
(index -> seconds of extra work), ``nan_on`` (a NaN objective), ``startup_error`` (a message:
the worker raises it as a ConfigError while starting, as a misspelt setting on its node would),
``startup_delay_s`` (seconds the worker's start takes longer, as a GPU engine's start does),
``startup_crash`` (the process exits while starting, as one that runs out of memory loading
the sources does).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.errors import ConfigError, EvomergeError
from evomerge.evaluate.base import ItemPlan
from evomerge.evaluate.registry import make_evaluator, merges_weights
from evomerge.result import EvalResult, Status

if TYPE_CHECKING:
    from evomerge.evaluate.base import Evaluator
    from evomerge.store import Store

WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class WorkerSpec:
    engine: str  # a name in evomerge.evaluate.registry.ENGINES (hf | vllm | synthetic)
    tasks: tuple[str, ...]  # task spec paths (search split)
    sources: tuple[str, ...]  # model directories loaded once
    store_url: str | None = None  # for heartbeats
    run_id: str | None = None
    heartbeat_s: float = 5.0
    engine_options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # torch threads per worker (default: torch's own choice)
    faults: dict[str, Any] = field(default_factory=dict)
    code: str | None = None  # the driver's code_fingerprint(); a worker with other code refuses to start


@cache
def code_fingerprint() -> str:
    """SHA-256 prefix over this evomerge package's source files (relative path and content):
    what a driver and its workers must agree on, wherever each has the package installed."""
    import evomerge

    root = Path(evomerge.__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".cpp") and p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def package_root() -> str:
    """The directory that holds this evomerge package (what a worker's PYTHONPATH must lead with)."""
    import evomerge

    return str(Path(evomerge.__file__).resolve().parent.parent)


class CandidateWorker:
    def __init__(self, spec: WorkerSpec, *, evaluator: Evaluator | None = None, defer_errors: bool = False) -> None:
        """``evaluator``: an evaluator already set up (in-process use); default: the spec's engine.
        ``defer_errors``: an :class:`EvomergeError` while starting (a bad source, a misspelt
        environment setting) is kept and returned by every call as a ``startup_error`` outcome
        instead of raised, so a remote driver gets the message and its fix rather than a dead
        actor (Ray workers)."""
        self.spec = spec
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.startup_error: dict[str, Any] | None = None
        self.faults = dict(spec.faults)
        self._store: Store | None = None
        self.evaluator: Evaluator | None = None
        self.owns_evaluator = evaluator is None
        try:
            self._start(spec, evaluator)
        except EvomergeError as err:
            if not defer_errors:
                raise
            self.startup_error = {"status": "startup_error", "error_type": type(err).__name__, "error": err.message,
                                  "hint": err.hint, "worker": self.name}

    def _start(self, spec: WorkerSpec, evaluator: Evaluator | None) -> None:
        for k, v in WORKER_ENV.items():
            os.environ.setdefault(k, v)
        if spec.code is not None and spec.code != code_fingerprint():
            raise ConfigError(
                f"this worker runs other evomerge code ({package_root()}, fingerprint {code_fingerprint()}) "
                f"than the driver (fingerprint {spec.code})",
                hint="install the same evomerge on every node (or start the driver from the same checkout "
                     "its workers import)")
        delay = float(self.faults.get("startup_delay_s") or 0.0)
        if delay > 0:
            time.sleep(delay)
        if self.faults.get("startup_crash"):
            os._exit(13)
        from evomerge.evaluate.tasks import load_task

        if spec.threads and merges_weights(spec.engine):
            import torch

            torch.set_num_threads(spec.threads)
        self.tasks = [load_task(t) for t in spec.tasks]
        self.evaluator = evaluator if evaluator is not None else make_evaluator(spec.engine, spec.engine_options)
        self.evaluator.load_sources({s: s for s in spec.sources})
        if merges_weights(spec.engine):
            from evomerge.merge import kernels, native, rank_index

            native.module()  # build (first worker on a node, ~30 s) or load the C++ kernel before any deadline runs
            kernels.use_compiled(0)  # a misspelt EVOMERGE_COMPILE or EVOMERGE_RANK_INDEX_MEMORY fails here, not
            rank_index.budget()  # on the first or second candidate
        if self.faults.get("startup_error"):
            raise ConfigError(str(self.faults["startup_error"]), hint="(an injected fault: unset EVOMERGE_FAULTS)")

    def ping(self) -> str:
        return self.name

    def ready(self) -> dict[str, Any]:
        """Answered once ``__init__`` has finished: the worker's name, or its start-up error."""
        if self.startup_error is not None:
            return dict(self.startup_error)
        return {"status": "ready", "worker": self.name}

    def close(self) -> None:
        """Release the evaluator (a vLLM engine's core process, for one)."""
        if self.evaluator is None:
            return
        close = getattr(self.evaluator, "close", None)
        if close is not None:
            close()

    def _heartbeats(self, index: int, attempt: int, stop: threading.Event) -> None:
        if not (self.spec.store_url and self.spec.run_id):
            return
        from evomerge.store import Store

        if self._store is None:
            self._store = Store.open(self.spec.store_url)
        while not stop.wait(self.spec.heartbeat_s):
            try:
                if not self._store.heartbeat(self.spec.run_id, index, attempt):
                    return  # the attempt was requeued or finished: nothing left to keep alive
            except Exception:  # noqa: BLE001 - a missed heartbeat is what the grace period is for
                pass

    def _fault(self, kind: str, index: int, attempt: int) -> Any:
        if attempt != 1:
            return None
        f = self.faults.get(kind)
        if isinstance(f, dict):
            return f.get(str(index))
        return True if f and index in f else None

    def evaluate(self, index: int, attempt: int, recipe_json: str, seed: int,
                 deadline_s: float | None = None, plan: ItemPlan | None = None) -> EvalResult:
        """Score one candidate (``plan``: a race or an item subset, or None for every item)."""
        from evomerge.recipe import stored_recipe

        if self.startup_error is not None:  # backends dispatch only to a worker that answered ready
            return EvalResult(status=Status.FAILED, error=f"the worker could not start: {self.startup_error['error']}",
                              worker=self.name)

        t0 = time.perf_counter()
        stop = threading.Event()
        frozen = self._fault("freeze_on", index, attempt)
        beat = None
        if not frozen:
            beat = threading.Thread(target=self._heartbeats, args=(index, attempt, stop), daemon=True)
            beat.start()
        try:
            if self._fault("crash_on", index, attempt):
                os._exit(13)  # the process dies mid-evaluation, as a killed or OOM worker does
            if frozen:
                time.sleep(float(self.faults.get("freeze_s", 30.0)))
            extra = self._fault("sleep_on", index, attempt)
            if extra:
                time.sleep(float(extra))
            try:
                recipe = stored_recipe(json.loads(recipe_json), source=f"candidate {index}")
                res = self.evaluator.evaluate(recipe, self.tasks, deadline_s=deadline_s, seed=seed,
                                              plan=plan)
            except Exception as err:  # noqa: BLE001 - one failed candidate must not kill the run
                return EvalResult(status=Status.FAILED, seconds=time.perf_counter() - t0,
                                  error=f"{type(err).__name__}: {err}", worker=self.name)
            if res.objectives is not None and self._fault("nan_on", index, attempt):
                res.objectives = {k: float("nan") for k in res.objectives}
            res.seconds, res.worker = time.perf_counter() - t0, self.name
            return res
        finally:
            stop.set()
