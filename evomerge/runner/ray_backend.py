"""Evaluation slots as Ray actors: one :class:`CandidateWorker` per slot, sources resident.

``ray.init()`` starts a local Ray unless ``address`` (or ``RAY_ADDRESS``) names a cluster; an
address that does not answer is refused within seconds. Each actor asks for ``cpus`` CPUs and
``gpus`` GPUs. A new actor is *starting* until its ``ready()`` call answers (imports, sources,
engine and kernel loaded: seconds here, minutes for a GPU engine on a large model); only ready
actors get candidates, so a slow start never counts against a candidate's heartbeat grace
period, and an actor that dies or fails while starting is not charged to any candidate. A slot
whose process dies while evaluating (killed, out of memory, node lost) comes back from ``poll``
as a lost outcome and is replaced by a fresh actor; ``kill`` ends an actor that overran its hard
deadline. Outcomes are JSON-able dicts: candidates travel as recipe JSON, never as weights.

Workers run at the driver's CPU priority (:func:`worker_env`): Ray would start them at nice 15,
below every ordinary process, so one busy neighbour on the node starved a search's evaluations
and stretched their starts to minutes.

Workers import the driver's evomerge (:mod:`evomerge.runner.bootstrap`: Ray would put the
driver's working directory first on their path), and a worker whose code differs anyway
(another node, another install) refuses to start (``WorkerSpec.code``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from evomerge.errors import ConfigError, EvomergeError
from evomerge.result import EvalResult, Status
from evomerge.runner import bootstrap
from evomerge.runner.backend import Job, Outcome
from evomerge.runner.worker import WORKER_ENV, WorkerSpec, package_root

STARTUP_REPORT_S = 60.0  # how often to say that workers are still starting


class RayBackend:
    def __init__(self, spec: WorkerSpec, slots: int, *, address: str | None = None, cpus: float = 1.0,
                 gpus: float = 0.0, object_store_mb: int = 256, log=print) -> None:  # type: ignore[no-untyped-def]
        if slots < 1:
            raise ConfigError(f"{slots} evaluation workers: a search needs at least one",
                              hint="pass --workers 1 or more")
        import ray

        self.ray = ray
        self.spec, self.slots, self.log = spec, slots, log
        self.owns_ray = not ray.is_initialized()  # started here: shut down with the run
        if self.owns_ray:
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": worker_env()}, "include_dashboard": False,
                                      "log_to_driver": False, "configure_logging": False}
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                check_reachable(address)
                ray.init(address=address, **kwargs)
            else:  # a local cluster sized for this run
                ray.init(num_cpus=max(os.cpu_count() or 1, int(slots * cpus + 0.999)),
                         object_store_memory=object_store_mb * 2**20, **kwargs)
        self._warn_if_no_node_fits(cpus, gpus)
        ray.cloudpickle.register_pickle_by_value(bootstrap)  # the shell travels by value, see bootstrap
        self._actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(bootstrap.WorkerShell)
        self._spec = dataclasses.asdict(spec)
        self._root = package_root()
        self.starting: dict[Any, tuple[Any, float]] = {}  # ready() ref -> (actor, start time)
        self.idle: list[Any] = []
        self.busy: dict[Any, tuple[Job, Any, float]] = {}  # evaluate() ref -> (job, actor, submit time)
        self.lost_in_a_row = 0
        self._last_report = time.monotonic()
        for _ in range(slots):
            self._start_actor()

    def _start_actor(self) -> None:
        actor = self._actor_cls.remote(self._root, self._spec, True)
        self.starting[actor.ready.remote()] = (actor, time.monotonic())

    def _warn_if_no_node_fits(self, cpus: float, gpus: float) -> None:
        """Say so when no live node has the resources one worker asks for (Ray would wait for one
        silently: right with an autoscaler, a hang without)."""
        try:
            nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        except Exception:  # noqa: BLE001 - the check is advice only
            return
        if nodes and not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
            have = ", ".join(f"{r.get('CPU', 0):g} CPU / {r.get('GPU', 0):g} GPU" for r in nodes)
            self.log(f"warning: no node of the Ray cluster has {cpus:g} CPU and {gpus:g} GPU for one worker "
                     f"(nodes: {have}); the workers wait until such a node joins. Check --cpus-per-worker "
                     "and --gpus-per-worker")

    def free_slots(self) -> int:
        return len(self.idle)

    def submit(self, job: Job) -> None:
        actor = self.idle.pop()
        ref = actor.evaluate.remote(job.index, job.attempt, job.recipe_json, job.seed, job.deadline_s, job.plan)
        self.busy[ref] = (job, actor, time.monotonic())

    def running(self) -> dict[int, tuple[Job, float]]:
        return {job.index: (job, t) for job, _, t in self.busy.values()}

    def poll(self, timeout: float) -> list[Outcome]:
        waiting = list(self.busy) + list(self.starting)
        if not waiting:
            time.sleep(min(timeout, 0.01))
            return []
        ready, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=timeout)
        out = []
        for ref in ready:
            if ref in self.starting:
                self._started(ref)
                continue
            job, actor, _ = self.busy.pop(ref)
            try:
                res = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as err:  # the process died: replace the slot
                self._replace(actor)
                self._lost(err)
                out.append(Outcome(job, None, error=f"worker lost: {_first_line(err)}"))
                continue
            except self.ray.exceptions.RayTaskError as err:
                self.idle.append(actor)
                out.append(Outcome(job, EvalResult(status=Status.FAILED, error=_first_line(err))))
                continue
            self.lost_in_a_row = 0
            self.idle.append(actor)
            out.append(Outcome(job, res))
        self._report_starting()
        return out

    def _started(self, ref: Any) -> None:
        """A ready() answer: the actor joins the idle slots, or its start-up error stops the run."""
        actor, _ = self.starting.pop(ref)
        try:
            res = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:  # died while starting: no candidate is charged
            self._kill(actor)
            self._lost(err)
            self.log(f"an evaluation worker died while starting ({_first_line(err)}); starting another")
            self._start_actor()
            return
        if res.get("status") == "startup_error":
            self.idle.append(actor)  # shut down with the others
            raise _startup_error(res)
        self.idle.append(actor)

    def _lost(self, err: BaseException) -> None:
        self.lost_in_a_row += 1
        if self.lost_in_a_row > max(3, 2 * self.slots):
            raise EvomergeError(
                f"{self.lost_in_a_row} evaluation workers died in a row, the last with: {_first_line(err)}",
                hint="the worker cannot start or keeps crashing: check the sources, memory and the "
                     "Ray worker logs (/tmp/ray/session_latest/logs)") from None

    def _report_starting(self) -> None:
        now = time.monotonic()
        if not self.starting or now - self._last_report < STARTUP_REPORT_S:
            return
        self._last_report = now
        longest = max(now - t for _, t in self.starting.values())
        self.log(f"{len(self.starting)} evaluation worker(s) still starting ({longest:.0f} s so far; loading "
                 f"sources and the engine); {len(self.idle) + len(self.busy)} ready")

    def _kill(self, actor) -> None:  # type: ignore[no-untyped-def]
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - it is already gone
            pass

    def _replace(self, actor) -> None:  # type: ignore[no-untyped-def]
        """Kill a lost or overdue actor and start a fresh one in its slot."""
        self._kill(actor)
        self._start_actor()

    def kill(self, index: int) -> None:
        for ref, (job, actor, _) in list(self.busy.items()):
            if job.index == index:
                del self.busy[ref]
                self._replace(actor)

    def shutdown(self) -> None:
        # idle workers release their evaluator first (a vLLM engine's core process would
        # otherwise outlive the actor); busy and starting ones are killed
        closing = [a.close.remote() for a in self.idle]
        try:
            self.ray.wait(closing, num_returns=len(closing), timeout=60)
        except Exception:  # noqa: BLE001 - a dead actor cannot close; it is killed below
            pass
        for actor in self.idle + [a for _, a, _ in self.busy.values()] + [a for a, _ in self.starting.values()]:
            self._kill(actor)
        self.idle, self.busy, self.starting = [], {}, {}
        if self.owns_ray:
            self.ray.shutdown()


def worker_env() -> dict[str, str]:
    """The environment of a Ray this backend starts: :data:`WORKER_ENV`, and no added niceness for
    the workers (Ray's ``worker_niceness`` is an increment over the node's, 15 by default): they
    run at the priority the driver was started with, so ``nice -n 10 evomerge search`` still
    yields to the user's other work. An explicit ``RAY_worker_niceness`` wins."""
    return {**WORKER_ENV, "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0")}


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a Ray address whose host and port do not accept a connection within ``timeout_s``
    (``ray.init`` would retry for minutes without a word). ``auto`` and ``local`` pass."""
    if address in ("auto", "local") or "://" not in address and ":" not in address:
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ConfigError(f"Ray address {address!r} has no host:port",
                          hint="write HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:10001, or omit it for a local Ray")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        raise ConfigError(f"no Ray cluster answers at {address} ({err.strerror or err})",
                          hint="start one there (`ray start --head`), correct --address / RAY_ADDRESS, "
                               "or omit both for a local Ray") from None


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
