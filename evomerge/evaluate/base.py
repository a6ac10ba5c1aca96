"""The evaluator protocol and its result: objectives, per-item scores, status and cost.

Statuses: ``ok``; ``invalid`` (a non-finite objective or merged weight: objectives are None and
the strategy gets a penalty, docs/reliability.md promise 9); ``timeout`` (past the deadline);
``failed`` (an error while evaluating, with its message).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from evomerge.errors import EvalTimeout, MergeError
from evomerge.evaluate.tasks import Engine, Task, score_task
from evomerge.recipe import Recipe

Status = Literal["ok", "invalid", "timeout", "failed"]


@dataclass
class EvalResult:
    status: Status
    objectives: dict[str, float] | None  # task name -> mean item score (None unless ok)
    item_scores: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # materialize, swap, evaluate
    items: int = 0
    error: str | None = None
    tokens: int = 0  # prompt + generated tokens the engine processed


class Evaluator(Protocol):
    engine_name: str

    def load_sources(self, sources: dict[str, str]) -> None: ...

    def evaluate(self, recipe: Recipe, tasks: Sequence[Task], *, deadline_s: float | None = None,
                 seed: int = 0) -> EvalResult: ...


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
    objectives: dict[str, float]  # task name -> mean item score
    item_scores: dict[str, list[float]]
    items: int
    tokens: int  # prompt + generated tokens, from the engine's counter (0 if it keeps none)


def run_tasks(engine: Engine, tasks: Sequence[Task], deadline: Deadline) -> TaskScores:
    """Score every task, checking the deadline between tasks."""
    start = getattr(engine, "tokens", 0)
    objectives: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    for task in tasks:
        deadline.check(f"task {task.name}")
        scores = score_task(task, engine)
        per_item[task.name] = scores
        objectives[task.name] = sum(scores) / len(scores)
    deadline.check("the last task")
    return TaskScores(objectives, per_item, sum(len(v) for v in per_item.values()),
                      getattr(engine, "tokens", 0) - start)


def guarded(fn, timings: dict[str, float]) -> EvalResult:  # type: ignore[no-untyped-def]
    """Run ``fn() -> TaskScores`` and map failures to statuses."""
    try:
        r = fn()
    except MergeError as err:
        return EvalResult("invalid", None, seconds=timings, error=err.message)
    except EvalTimeout as err:
        return EvalResult("timeout", None, seconds=timings, error=err.message)
    if not all(math.isfinite(v) for v in r.objectives.values()):
        return EvalResult("invalid", None, r.item_scores, timings, r.items, error="non-finite objective",
                          tokens=r.tokens)
    return EvalResult("ok", r.objectives, r.item_scores, timings, r.items, tokens=r.tokens)
