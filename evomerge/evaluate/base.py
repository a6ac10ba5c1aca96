"""The evaluator protocol and its result: objectives, per-item scores, status and cost.

Statuses: ``ok``; ``invalid`` (a non-finite objective or merged weight: objectives are None and
the strategy gets a penalty, RELIABILITY.md promise 9); ``timeout`` (past the deadline);
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


def run_tasks(engine: Engine, tasks: Sequence[Task], deadline: Deadline) -> tuple[dict[str, float], dict[str, list[float]], int]:
    """Score every task; sets ``engine.last_tokens`` from the engine's token counter, if any."""
    start = getattr(engine, "tokens", 0)
    objectives: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    n = 0
    for task in tasks:
        deadline.check(f"task {task.name}")
        scores = score_task(task, engine)
        per_item[task.name] = scores
        objectives[task.name] = sum(scores) / len(scores)
        n += len(scores)
    deadline.check("the last task")
    if hasattr(engine, "tokens"):
        engine.last_tokens = engine.tokens - start  # type: ignore[attr-defined]
    return objectives, per_item, n


def guarded(fn, timings: dict[str, float], engine_of=lambda: None) -> EvalResult:  # type: ignore[no-untyped-def]
    """Run ``fn() -> (objectives, per_item, n)`` and map failures to statuses; the token cost
    is ``engine_of().last_tokens`` as set by :func:`run_tasks`."""
    try:
        objectives, per_item, n = fn()
    except MergeError as err:
        return EvalResult("invalid", None, seconds=timings, error=err.message)
    except EvalTimeout as err:
        return EvalResult("timeout", None, seconds=timings, error=err.message)
    tokens = getattr(engine_of(), "last_tokens", 0)
    if not all(math.isfinite(v) for v in objectives.values()):
        return EvalResult("invalid", None, per_item, timings, n, error="non-finite objective", tokens=tokens)
    return EvalResult("ok", objectives, per_item, timings, n, tokens=tokens)
