"""Evaluation slots as Ray actors: one :class:`CandidateWorker` per slot, sources resident.

``ray.init()`` starts a local Ray unless ``address`` (or ``RAY_ADDRESS``) names a cluster. Each
actor asks for ``cpus`` CPUs and ``gpus`` GPUs. A slot whose process dies (killed, out of memory,
node lost) comes back from ``poll`` as a lost outcome and is replaced by a fresh actor; ``kill``
ends an actor that overran its hard deadline. Outcomes are JSON-able dicts: candidates travel as
recipe JSON, never as weights.
"""

from __future__ import annotations

import os
import time
from typing import Any

from evomerge.errors import EvomergeError
from evomerge.runner.backend import Job, Outcome
from evomerge.runner.worker import WORKER_ENV, CandidateWorker, WorkerSpec


class RayBackend:
    def __init__(self, spec: WorkerSpec, slots: int, *, address: str | None = None, cpus: float = 1.0,
                 gpus: float = 0.0, object_store_mb: int = 256, log=print) -> None:  # type: ignore[no-untyped-def]
        import ray

        self.ray = ray
        self.spec, self.slots, self.log = spec, slots, log
        self.owns_ray = not ray.is_initialized()  # started here: shut down with the run
        if self.owns_ray:
            env = dict(WORKER_ENV)
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False,
                                      "log_to_driver": False, "configure_logging": False}
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, **kwargs)
            else:  # a local cluster sized for this run
                ray.init(num_cpus=max(os.cpu_count() or 1, int(slots * cpus + 0.999)),
                         object_store_memory=object_store_mb * 2**20, **kwargs)
        self._actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(CandidateWorker)
        self.idle: list[Any] = [self._new_actor() for _ in range(slots)]
        self.busy: dict[Any, tuple[Job, Any, float]] = {}  # object ref -> (job, actor, submit time)
        self.lost_in_a_row = 0

    def _new_actor(self):  # type: ignore[no-untyped-def]
        return self._actor_cls.remote(self.spec, defer_errors=True)

    def free_slots(self) -> int:
        return len(self.idle)

    def submit(self, job: Job) -> None:
        actor = self.idle.pop()
        ref = actor.evaluate.remote(job.index, job.attempt, job.recipe_json, job.seed, job.deadline_s)
        self.busy[ref] = (job, actor, time.monotonic())

    def running(self) -> dict[int, tuple[Job, float]]:
        return {job.index: (job, t) for job, _, t in self.busy.values()}

    def poll(self, timeout: float) -> list[Outcome]:
        if not self.busy:
            time.sleep(min(timeout, 0.01))
            return []
        ready, _ = self.ray.wait(list(self.busy), num_returns=len(self.busy), timeout=timeout)
        out = []
        for ref in ready:
            job, actor, _ = self.busy.pop(ref)
            try:
                res = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as err:  # the process died: replace the slot
                self._replace(actor)
                self.lost_in_a_row += 1
                out.append(Outcome(job, None, error=f"worker lost: {_first_line(err)}"))
                if self.lost_in_a_row > max(3, 2 * self.slots):
                    raise EvomergeError(
                        f"{self.lost_in_a_row} evaluation workers died in a row, the last with: {_first_line(err)}",
                        hint="the worker cannot start or keeps crashing: check the sources, memory and the "
                             "Ray worker logs (/tmp/ray/session_latest/logs)") from None
                continue
            except self.ray.exceptions.RayTaskError as err:
                self.idle.append(actor)
                out.append(Outcome(job, {"status": "failed", "objectives": None, "item_scores": {},
                                         "seconds": 0.0, "error": _first_line(err), "tokens": 0}))
                continue
            if res.get("status") == "startup_error":  # the same on every worker: stop, with the fix
                self.idle.append(actor)
                raise _startup_error(res)
            self.lost_in_a_row = 0
            self.idle.append(actor)
            out.append(Outcome(job, res, worker=res.get("worker")))
        return out

    def _replace(self, actor) -> None:  # type: ignore[no-untyped-def]
        """Kill a lost or overdue actor and start a fresh one in its slot."""
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - it is already gone
            pass
        self.idle.append(self._new_actor())

    def kill(self, index: int) -> None:
        for ref, (job, actor, _) in list(self.busy.items()):
            if job.index == index:
                del self.busy[ref]
                self._replace(actor)

    def shutdown(self) -> None:
        # idle workers release their evaluator first (a vLLM engine's core process would
        # otherwise outlive the actor); busy ones are killed
        closing = [a.close.remote() for a in self.idle]
        try:
            self.ray.wait(closing, num_returns=len(closing), timeout=60)
        except Exception:  # noqa: BLE001 - a dead actor cannot close; it is killed below
            pass
        for actor in self.idle + [a for _, a, _ in self.busy.values()]:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.idle, self.busy = [], {}
        if self.owns_ray:
            self.ray.shutdown()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:300] if text else type(err).__name__


def _startup_error(res: dict[str, Any]) -> EvomergeError:
    """The error a worker met while starting, as the driver's own (same class, message and fix)."""
    from evomerge import errors

    cls = getattr(errors, str(res.get("error_type")), None)
    if not (isinstance(cls, type) and issubclass(cls, EvomergeError)):
        cls = EvomergeError
    return cls(f"evaluation worker {res.get('worker')} could not start: {res.get('error')}", hint=res.get("hint"))
