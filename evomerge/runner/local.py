"""The in-process search loop: ask, decode, evaluate (transformers, in place), tell.

Each candidate is written as a JSON line (index, generation, recipe, recipe id, status,
objectives, fitness, per-item scores, seconds) to ``runs/<space>-<seed>.jsonl``. Identical
recipes within a run are evaluated once. The Ray driver and the SQL archive replace this file
in the service (see the open issue).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.evaluate.base import EvalResult
from evomerge.evaluate.tasks import load_task
from evomerge.space.codec import make_codec
from evomerge.space.schema import SearchSpace
from evomerge.strategies.base import Evaluated
from evomerge.strategies.registry import make_strategy


def scalar_fitness(space: SearchSpace, objectives: dict[str, float] | None, names: list[str]) -> float | None:
    """Weighted sum of objectives (minimized ones enter negated); None if not evaluated."""
    if objectives is None:
        return None
    total = 0.0
    for obj, name in zip(space.objectives, names, strict=True):
        sign = 1.0 if obj.direction == "maximize" else -1.0
        total += sign * obj.weight * objectives[name]
    return total


def objective_vector(space: SearchSpace, objectives: dict[str, float] | None, names: list[str]) -> tuple[float, ...] | None:
    """The objectives oriented so that larger is better (minimized ones negated)."""
    if objectives is None:
        return None
    return tuple((1.0 if o.direction == "maximize" else -1.0) * objectives[n]
                 for o, n in zip(space.objectives, names, strict=True))


@dataclass
class SearchResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    objective_names: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)

    def pareto(self) -> list[dict[str, Any]]:
        """The non-dominated candidates over all objectives (failed ones never enter)."""
        import numpy as np

        from evomerge.pareto import pareto_front

        ok = [r for r in self.records if r["objectives"] is not None and not r["cached"]]
        if not ok:
            return []
        values = np.array([[r["objectives"][n] for n in self.objective_names] for r in ok])
        return [ok[i] for i in pareto_front(values, self.directions)]

    def best(self) -> dict[str, Any] | None:
        ok = [r for r in self.records if r["fitness"] is not None]
        return max(ok, key=lambda r: r["fitness"]) if ok else None


def run_search(space: SearchSpace, *, evaluator: Any = None, out: Path | None = None,
               log: Callable[[str], None] = print, batch: int | None = None) -> SearchResult:
    if evaluator is None:
        from evomerge.evaluate.hf import HFEvaluator

        evaluator = HFEvaluator()
    codec = make_codec(space)
    strategy = make_strategy(space, codec)
    tasks = [load_task(o.task) for o in space.objectives]
    names = [t.name for t in tasks]
    result = SearchResult(objective_names=names, directions=[o.direction for o in space.objectives])
    cache: dict[str, EvalResult] = {}
    fh = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(out, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    t_start = time.perf_counter()
    try:
        while len(result.records) < space.budget:
            genomes = strategy.ask(min(batch or space.budget, space.budget - len(result.records)))
            if not genomes:  # e.g. M2N2 with fewer than two successful members
                log(f"stopping after {len(result.records)} candidates: the strategy has nothing to ask "
                    "(too few candidates succeeded; see the errors in the run log)")
                break
            told = []
            for g in genomes:
                recipe = codec.decode(g.x)
                cached = recipe.recipe_id in cache
                res = cache[recipe.recipe_id] if cached else evaluator.evaluate(recipe, tasks, seed=space.seed)
                cache[recipe.recipe_id] = res
                fitness = scalar_fitness(space, res.objectives, names)
                told.append(Evaluated(g, fitness, res.item_scores, objective_vector(space, res.objectives, names)))
                rec = {"index": g.index, "generation": g.generation, "recipe_id": recipe.recipe_id,
                       "recipe": json.loads(recipe.canonical_json()), "genome": [round(float(v), 6) for v in g.x],
                       "status": res.status, "objectives": res.objectives, "fitness": fitness,
                       "error": res.error, "cached": cached, "seconds": res.seconds, "item_scores": res.item_scores}
                result.records.append(rec)
                if fh:
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
            strategy.tell(told)
            best = result.best()
            done = len(result.records)
            rate = done / (time.perf_counter() - t_start)
            log(f"[{done}/{space.budget}] generation {genomes[-1].generation}: best fitness "
                f"{best['fitness'] if best else float('nan'):.4f}, {rate:.2f} candidates/s")
    finally:
        if fh:
            fh.close()
    return result
