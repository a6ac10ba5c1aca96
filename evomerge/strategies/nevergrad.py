"""Any nevergrad optimizer by name (Rapin & Teytaud 2018, "Nevergrad - A gradient-free
optimization platform"), over the box [0, 1]^d.

Asynchronous: ask and tell in any order (nevergrad keeps each candidate's parameter object).
Seeded through the parametrization's random state. Failed candidates get a penalty worse than
any real fitness. With ``multi_objective`` the optimizer is told the objective vector (all
maximized, so nevergrad gets their negatives) and runs its multi-objective mode (hypervolume
based; nevergrad's docs, "Multiobjective minimization"). Name optimizers explicitly in tests:
NGOpt's portfolio can leave a scipy thread that hangs at exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.strategies.base import Evaluated, Genome, Replayable, penalty


class Nevergrad(Replayable):
    name = "nevergrad"

    def __init__(self, dim: int, x0: np.ndarray | Sequence[float], *, optimizer: str = "NGOpt", budget: int = 100,
                 num_workers: int = 1, seed: int = 0, multi_objective: bool = False) -> None:
        import nevergrad as ng

        if optimizer not in ng.optimizers.registry:
            known = ", ".join(sorted(k for k in ng.optimizers.registry if not k.startswith("_"))[:40])
            raise ConfigError(f"unknown nevergrad optimizer {optimizer!r}",
                              hint=f"use one of nevergrad's registry names, e.g. NGOpt, TwoPointsDE, PSO, CMA ({known}, ...)")
        self.x0 = np.clip(np.asarray(x0, dtype=float), 0.0, 1.0)
        param = ng.p.Array(init=self.x0).set_bounds(0.0, 1.0)
        param.random_state = np.random.RandomState(seed)
        self.opt = ng.optimizers.registry[optimizer](parametrization=param, budget=budget, num_workers=num_workers)
        self.dim, self.optimizer, self.seed, self.budget = dim, optimizer, seed, budget
        self.num_workers, self.multi_objective = num_workers, multi_objective
        self.asked = 0
        self._candidates: dict[int, Any] = {}
        self._fitness_seen: list[float | None] = []
        self._objective_floor: np.ndarray | None = None
        self._init_record()

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "x0": self.x0.tolist(), "optimizer": self.optimizer, "budget": self.budget,
                "num_workers": self.num_workers, "seed": self.seed, "multi_objective": self.multi_objective}

    def _ask(self, n: int) -> list[Genome]:
        out = []
        for _ in range(n):
            cand = self.opt.ask()
            self._candidates[self.asked] = cand
            out.append(Genome(self.asked, np.asarray(cand.value, dtype=float), generation=self.asked))
            self.asked += 1
        return out

    def _loss(self, r: Evaluated) -> float | list[float]:
        if not self.multi_objective:
            f = r.fitness if r.fitness is not None and np.isfinite(r.fitness) else penalty(self._fitness_seen)
            return -float(f)  # nevergrad minimizes
        if r.objectives is not None and r.fitness is not None and all(np.isfinite(r.objectives)):
            v = np.asarray(r.objectives, dtype=float)
            self._objective_floor = v.copy() if self._objective_floor is None else np.minimum(self._objective_floor, v)
            return (-v).tolist()
        floor = self._objective_floor if self._objective_floor is not None else np.zeros(0)
        return (-(floor - 1.0)).tolist()  # a point dominated by every real one (_tell keeps floor set)

    def _tell(self, results: Sequence[Evaluated]) -> None:
        for r in results:
            self._fitness_seen.append(r.fitness)
        # in multi-objective mode successes first, so failures have a floor to sit under
        ordered = sorted(results, key=lambda r: r.fitness is None) if self.multi_objective else results
        for r in ordered:
            if self.multi_objective and r.fitness is None and self._objective_floor is None:
                self._candidates.pop(r.genome.index)  # nothing to compare against yet: drop it
                continue
            self.opt.tell(self._candidates.pop(r.genome.index), self._loss(r))
