"""The evaluator protocol: a recipe and tasks in, an :class:`~evomerge.result.EvalResult` out
(status COMPLETE, INVALID for a non-finite objective or merged weight, docs/reliability.md
promise 9, or TIMEOUT past the deadline; an exception is the worker's FAILED).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from evomerge.errors import EvalTimeout, MergeError
from evomerge.evaluate.estimate import SubsetPlan, run_subset
from evomerge.evaluate.lmeval import LMEvalTask, live_lm, score_lmeval
from evomerge.evaluate.racing import Race, run_race
from evomerge.evaluate.tasks import Engine, Task, score_task
from evomerge.recipe import Recipe
from evomerge.result import EvalResult, Fidelity, Status


class Evaluator(Protocol):
    engine_name: str

    def load_sources(self, sources: dict[str, str]) -> None: ...

    def evaluate(self, recipe: Recipe, tasks: Sequence[Task], *, deadline_s: float | None = None,
                 seed: int = 0, plan: ItemPlan | None = None) -> EvalResult: ...


class Deadline:
    """Raises :class:`EvalTimeout` from ``check`` once ``seconds`` have passed."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.seconds = seconds

    def check(self, where: str) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise EvalTimeout(f"evaluation passed its {self.seconds:.1f} s deadline during {where}",
                              hint="raise the deadline or use fewer / shorter fitness items")


@dataclass
class TaskScores:
    objectives: dict[str, float]  # task name -> mean item score (over the items scored)
    item_scores: dict[str, list[float]]  # NaN for an item racing left unscored
    items: int  # items scored
    tokens: int  # prompt + generated tokens, from the engine's counter (0 if it keeps none)
    fidelity: Fidelity = Fidelity.EXACT
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    stop_reason: str | None = None


ItemPlan = Race | SubsetPlan  # how few items a candidate is scored on (None: every item)
Scorer = Callable[[Task, Sequence[int]], list[float]]  # (task, item indices) -> those items' scores


def engine_scorer(engine: Engine) -> Scorer:
    """Scores items through a model engine (:func:`~evomerge.evaluate.tasks.score_task`)."""
    def score(task: Task, indices: Sequence[int]) -> list[float]:
        if isinstance(task, LMEvalTask):
            return score_lmeval(task, live_lm(engine, task), indices)
        if len(indices) == len(task.items):
            return score_task(task, engine)
        return score_task(replace(task, items=tuple(task.items[i] for i in indices)), engine)

    return score


def run_tasks(engine: Engine, tasks: Sequence[Task], deadline: Deadline, *, plan: ItemPlan | None = None,
              score: Scorer | None = None) -> TaskScores:
    """Score every task (``score``, default: through ``engine``), checking the deadline between
    tasks; with a ``plan``, race the candidate (a :class:`~evomerge.evaluate.racing.Race`) or
    score it on a subset and estimate the rest (a :class:`~evomerge.evaluate.estimate.SubsetPlan`)."""
    score = score or engine_scorer(engine)
    start = getattr(engine, "tokens", 0)
    names, sizes = [t.name for t in tasks], [len(t.items) for t in tasks]

    def by_index(k: int, idx: np.ndarray) -> list[float]:
        return score(tasks[k], [int(i) for i in idx])

    if isinstance(plan, Race):
        out = run_race(plan, names, sizes, by_index, deadline.check)
        objectives = {t: float(np.nanmean(v)) for t, v in out.item_scores.items()}
        return TaskScores(objectives, out.item_scores, out.scored, getattr(engine, "tokens", 0) - start,
                          Fidelity.RACED if out.raced_out else Fidelity.EXACT, out.intervals, out.stop_reason)
    if isinstance(plan, SubsetPlan):
        sub = run_subset(plan, names, sizes, by_index, deadline.check)
        return TaskScores(sub.objectives, sub.item_scores, sub.scored, getattr(engine, "tokens", 0) - start,
                          Fidelity.EXACT if sub.promoted else Fidelity.SUBSET, sub.intervals, sub.stop_reason)
    objectives: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    for task in tasks:
        deadline.check(f"task {task.name}")
        scores = score(task, range(len(task.items)))
        per_item[task.name] = scores
        objectives[task.name] = sum(scores) / len(scores)
    deadline.check("the last task")
    return TaskScores(objectives, per_item, sum(len(v) for v in per_item.values()),
                      getattr(engine, "tokens", 0) - start)


def guarded(fn: Callable[[], TaskScores], phases: dict[str, float]) -> EvalResult:
    """Run ``fn`` and map failures to statuses; ``phases`` is the timing dict ``fn`` fills."""
    t0 = time.perf_counter()
    try:
        r = fn()
    except MergeError as err:
        return EvalResult(status=Status.INVALID, seconds=time.perf_counter() - t0, phases=phases, error=err.message)
    except EvalTimeout as err:
        return EvalResult(status=Status.TIMEOUT, seconds=time.perf_counter() - t0, phases=phases, error=err.message)
    finite = all(math.isfinite(v) for v in r.objectives.values())
    return EvalResult(status=Status.COMPLETE if finite else Status.INVALID, objectives=r.objectives if finite else None,
                      item_scores=r.item_scores, seconds=time.perf_counter() - t0, phases=phases, items=r.items,
                      error=None if finite else "non-finite objective", tokens=r.tokens, fidelity=r.fidelity,
                      intervals=r.intervals, stop_reason=r.stop_reason)
