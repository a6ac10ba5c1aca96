"""Any nevergrad optimizer by name (Rapin & Teytaud 2018, "Nevergrad - A gradient-free
optimization platform"), over the box [0, 1]^d.

Asynchronous: ask and tell in any order (nevergrad keeps each candidate's parameter object).
Seeded through the parametrization's random state. Failed candidates get a penalty worse than
any real fitness. With ``multi_objective`` the optimizer is told the objective vector (all
maximized, so nevergrad gets their negatives) and runs its multi-objective mode (hypervolume
based; nevergrad's docs, "Multiobjective minimization"). Name optimizers explicitly in tests:
NGOpt's portfolio can leave a scipy thread that hangs at exit.

Stall restarts (``stall``, single-objective only). NGOpt picks its optimizer from the dimension,
budget and evaluations in flight: for the benchmark genomes COBYLA (Powell 1994, "A direct search
optimization method that models the objective and constraint functions by linear
interpolation") with one in flight, MetaModel (CMA-ES with a quadratic surrogate) with eight.
Either can stop finding better points on a plateau of coarse accuracies without its own
criteria ending it (docs/benchmarks.md, session 20: a zoo run whose asks stayed 0.3-0.8 box
units from its best, none better, from candidate 28 to 200). With ``stall`` K, when the current
optimizer's best has not improved for K evaluations told to it, a fresh optimizer of the same
name (NGOpt may pick another algorithm for the smaller budget) takes the budget not yet asked
from a uniform point of the box (restart r draws it from ``default_rng([seed, r])``, its random
state from ``RandomState([seed, r])``): a restart from a new basin, as random-restart local
search does. The decision depends only on the told fitness, so replaying the ask/tell record rebuilds it.
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
                 num_workers: int = 1, seed: int = 0, multi_objective: bool = False,
                 stall: int | None = None) -> None:
        import nevergrad as ng

        if optimizer not in ng.optimizers.registry:
            known = ", ".join(sorted(k for k in ng.optimizers.registry if not k.startswith("_"))[:40])
            raise ConfigError(f"unknown nevergrad optimizer {optimizer!r}",
                              hint=f"use one of nevergrad's registry names, e.g. NGOpt, TwoPointsDE, PSO, CMA ({known}, ...)")
        if stall is not None and stall < 1:
            raise ConfigError(f"nevergrad stall {stall!r} is out of range: it counts evaluations, 1 or more",
                              hint="set stall to a positive number of evaluations, or None for no stall rule")
        if stall is not None and multi_objective:
            raise ConfigError("nevergrad stall judges a single fitness; in multi-objective mode there is no best to stall on",
                              hint="leave stall out (None) with multi_objective")
        self.x0 = np.clip(np.asarray(x0, dtype=float), 0.0, 1.0)
        self.dim, self.optimizer, self.seed, self.budget = dim, optimizer, seed, budget
        self.num_workers, self.multi_objective, self.stall = num_workers, multi_objective, stall
        self.asked = 0
        self.restarts = 0  # fresh optimizers started by the stall rule
        self.opt = self._optimizer(self.x0, np.random.RandomState(seed), budget)
        self._opt_best, self._opt_flat = float("-inf"), 0  # the current optimizer's best, evaluations since
        self._candidates: dict[int, tuple[Any, Any]] = {}  # index -> (its optimizer, its candidate)
        self._fitness_seen: list[float | None] = []
        self._objective_floor: np.ndarray | None = None
        self._init_record()

    def _optimizer(self, init: np.ndarray, random_state: np.random.RandomState, budget: int) -> Any:
        import nevergrad as ng

        param = ng.p.Array(init=init).set_bounds(0.0, 1.0)
        param.random_state = random_state
        return ng.optimizers.registry[self.optimizer](parametrization=param, budget=budget, num_workers=self.num_workers)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "x0": self.x0.tolist(), "optimizer": self.optimizer, "budget": self.budget,
                "num_workers": self.num_workers, "seed": self.seed, "multi_objective": self.multi_objective,
                "stall": self.stall}

    def _restart(self) -> None:
        """A fresh optimizer with the budget not yet asked, from restart r's uniform point of the box."""
        self.restarts += 1
        r = self.restarts
        init = np.random.default_rng([self.seed, r]).uniform(0.0, 1.0, self.dim)
        self.opt = self._optimizer(init, np.random.RandomState([self.seed, r]), self.budget - self.asked)
        self._opt_best, self._opt_flat = float("-inf"), 0

    def _ask(self, n: int) -> list[Genome]:
        out = []
        for _ in range(n):
            cand = self.opt.ask()
            self._candidates[self.asked] = (self.opt, cand)
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
            opt, cand = self._candidates.pop(r.genome.index)
            loss = self._loss(r)
            opt.tell(cand, loss)
            if opt is self.opt and not self.multi_objective:
                self._judge(-float(loss))  # type: ignore[arg-type]  # single-objective: a scalar

    def _judge(self, fitness: float) -> None:
        """The stall rule: count the current optimizer's evaluations since its best improved; a
        fresh one only while budget is left to ask (so its budget is at least 1)."""
        if fitness > self._opt_best:
            self._opt_best, self._opt_flat = fitness, 0
            return
        self._opt_flat += 1
        if self.stall is not None and self._opt_flat >= self.stall and self.asked < self.budget:
            self._restart()
