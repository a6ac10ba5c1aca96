"""Where candidates run: the backend seam, and the in-process backend.

A backend owns evaluation slots. The driver ``submit``s a claimed candidate to a free slot and
``poll``s for outcomes: a result, or the loss of the slot's process (the driver then records a
failed attempt and retries). ``kill`` ends a slot that overran its hard deadline and replaces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from evomerge.evaluate.base import ItemPlan
from evomerge.result import EvalResult
from evomerge.runner.worker import CandidateWorker, WorkerSpec

if TYPE_CHECKING:
    from evomerge.evaluate.base import Evaluator


@dataclass(frozen=True)
class Job:
    index: int
    attempt: int
    recipe_json: str
    seed: int
    deadline_s: float | None
    plan: ItemPlan | None = None  # how few items: a race (evaluate/racing.py) or a subset (evaluate/estimate.py)


@dataclass(frozen=True)
class Outcome:
    job: Job
    result: EvalResult | None  # None when the slot was lost
    error: str | None = None  # why the slot was lost


class Backend(Protocol):
    def free_slots(self) -> int: ...

    def submit(self, job: Job) -> None: ...

    def poll(self, timeout: float) -> list[Outcome]: ...

    def running(self) -> dict[int, tuple[Job, float]]: ...  # index -> (job, submit time)

    def kill(self, index: int) -> None: ...

    def shutdown(self) -> None: ...


class LocalBackend:
    """One slot in the driver's own process: the candidate runs inside ``poll``. No hard
    deadline (``kill`` cannot interrupt a running evaluation); the evaluator's cooperative
    deadline still applies."""

    def __init__(self, spec: WorkerSpec, *, evaluator: Evaluator | None = None) -> None:
        self.worker = CandidateWorker(spec, evaluator=evaluator)
        self.queue: list[tuple[Job, float]] = []

    def free_slots(self) -> int:
        return 0 if self.queue else 1

    def submit(self, job: Job) -> None:
        self.queue.append((job, time.monotonic()))

    def running(self) -> dict[int, tuple[Job, float]]:
        return {j.index: (j, t) for j, t in self.queue}

    def poll(self, timeout: float) -> list[Outcome]:
        if not self.queue:
            time.sleep(min(timeout, 0.01))
            return []
        job, _ = self.queue.pop(0)
        res = self.worker.evaluate(job.index, job.attempt, job.recipe_json, job.seed, job.deadline_s, job.plan)
        return [Outcome(job, res)]

    def kill(self, index: int) -> None:
        self.queue = [(j, t) for j, t in self.queue if j.index != index]

    def shutdown(self) -> None:
        if self.worker.owns_evaluator:
            self.worker.close()
