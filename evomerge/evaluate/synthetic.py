"""A synthetic evaluator: scores a recipe from its numbers alone, without touching weights.

For the plumbing (driver overhead benchmarks, failure-injection tests, dry runs of a search
space): item j of task k is solved when a fixed uniform draw u_kj (from the task name) is below
s_k = exp(-||v - t_k||^2 / d), where v are the recipe's numeric parameters in canonical order
and t_k a target drawn from the task name. Deterministic, item-structured (M2N2 has per-item
scores to compete for), and as fast as reading the recipe: ``--engine synthetic``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.evaluate.base import Deadline, ItemPlan, run_tasks
from evomerge.evaluate.tasks import Task
from evomerge.recipe import Recipe
from evomerge.result import EvalResult, Status


def recipe_numbers(recipe: Recipe) -> np.ndarray:
    """Every number of the merge in the recipe's canonical form, in a stable order (bools and the
    recipe format, which is not a merge parameter, excluded)."""
    out: list[float] = []

    def walk(v: Any) -> None:
        if isinstance(v, bool):
            return
        if isinstance(v, int | float):
            out.append(float(v))
        elif isinstance(v, dict):
            for k in sorted(v):
                walk(v[k])
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    walk({k: v for k, v in recipe.canonical_dict().items() if k != "recipe_format"})
    return np.asarray(out, dtype=float)


def _rng(*parts: str) -> np.random.Generator:
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class SyntheticEvaluator:
    engine_name = "synthetic"

    def __init__(self, *, seconds: float = 0.0) -> None:
        self.seconds = seconds  # simulated evaluation time per candidate

    def load_sources(self, sources: dict[str, str]) -> None:
        pass  # the recipe's numbers are all it reads

    def evaluate(self, recipe: Recipe, tasks: Sequence[Task], *, deadline_s: float | None = None,
                 seed: int = 0, plan: ItemPlan | None = None) -> EvalResult:
        """Score ``recipe`` (on ``plan``'s items when given); ``deadline_s`` is not enforced
        (the evaluator contract lists this gap)."""
        t0 = time.perf_counter()
        if self.seconds:
            time.sleep(self.seconds)
        v = recipe_numbers(recipe)
        solved = {}
        for task in tasks:
            target = _rng("target", task.name).uniform(0.0, 1.5, size=v.size)
            solved[task.name] = math.exp(-float(np.sum((v - target) ** 2)) / max(1, v.size) * 4.0)

        def score(task: Task, indices: Sequence[int]) -> list[float]:
            u = _rng("items", task.name).random(len(task.items))
            return (u[list(indices)] < solved[task.name]).astype(float).tolist()

        r = run_tasks(_NoEngine(), tasks, Deadline(None), plan=plan, score=score)
        took = time.perf_counter() - t0
        return EvalResult(status=Status.COMPLETE, objectives=r.objectives, item_scores=r.item_scores, seconds=took,
                          phases={"evaluate": took}, items=r.items, fidelity=r.fidelity, intervals=r.intervals,
                          stop_reason=r.stop_reason)


class _NoEngine:
    """No model: the synthetic scorer reads the recipe's numbers."""

    tokens = 0
