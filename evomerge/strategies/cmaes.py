"""CMA-ES through pycma (Hansen 2016, "The CMA Evolution Strategy: A Tutorial"), in the box [0, 1]^d.

Generation-batched: one generation is ``popsize`` asks and pycma is told when all of them are
back (out-of-order tells are buffered). Starts at the space's initial recipe (for example task
arithmetic with every weight 1) with ``sigma`` in box units; ``inject`` puts known recipes (the
start point itself, each expert alone) into the first generation (pycma's ``inject``). Failed candidates get a penalty
worse than any real fitness. pycma's internal state is not serialized: ``from_state`` rebuilds
it by replaying the recorded tells, which reproduces the same asks because pycma is seeded.

Defaults: pycma's population 4 + floor(3 ln d) for d genes (Hansen 2016, Table 1) and a step
size of 0.25 box units (a quarter of every parameter's range, so the start +- 2 sigma spans
the box). With ``restarts="ipop"`` (the default of new runs) a run that stalls restarts with
twice the population (:meth:`CMAES._maybe_restart`) when pycma's own step-size or covariance
criteria fire or, with ``stall``, when the best has not improved for that many generations (a new
run's window: evomerge.space.schema.STALL_DEFAULTS["cmaes"], 12; runs created before session 13 have 5,
those of sessions 13-18 none).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.strategies.base import Evaluated, Genome, Replayable, penalty

MAX_RESTART_POPSIZE = 4096  # IPOP doubles the population per restart up to this
# pycma termination criteria that do not restart a run: the budget is the driver's, and the
# fitness-value criteria fire on the coarse, often flat accuracies of a few hundred items (the
# stall rule judges the best instead); the rest (step size or covariance degenerate) restart
IGNORED_STOPS = frozenset({"maxiter", "maxfevals", "tolfun", "tolfunhist", "tolflatfitness", "tolfunrel"})


class CMAES(Replayable):
    name = "cmaes"

    def __init__(self, dim: int, x0: np.ndarray | Sequence[float], *, seed: int = 0, sigma: float = 0.25,
                 popsize: int | None = None, options: dict[str, Any] | None = None,
                 inject: Sequence[Sequence[float]] | None = None, restarts: str = "none", stall: int | None = 5) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cma
        self._cma = cma
        self.dim, self.seed, self.sigma = dim, seed, sigma
        self.x0 = np.asarray(x0, dtype=float)
        self.options = dict(options or {})
        self.restarts, self.stall = restarts, stall
        self.restart = 0  # restarts so far (IPOP: each doubles the population)
        self.es = self._new_es(self.x0, popsize, 0)
        self.popsize = int(self.es.popsize)  # the first run's (the config); self.es.popsize is the current one
        # known recipes (the start point, each expert alone) are evaluated in the first generation
        self.inject = [np.clip(np.asarray(v, dtype=float), 0.0, 1.0).tolist() for v in (inject or [])][: self.popsize]
        if self.inject:
            self.es.inject([np.asarray(v) for v in self.inject], force=True)
        self.asked = 0
        self.generation = 0
        self._pending: list[Genome] = []  # asked genomes of the current generation
        self._queue: list[Genome] = []  # current generation's genomes not yet handed out
        self._results: dict[int, float | None] = {}
        self._fitness_seen: list[float | None] = []
        self._run_best = np.inf  # the current run's best loss, and the generation it was reached
        self._run_best_at = 0
        self._init_record()

    def _new_es(self, x0: np.ndarray, popsize: int | None, restart: int) -> Any:
        # pycma seeds and draws from numpy's global RNG by default; give each run a private one so
        # two strategies in one process (a run and its rebuilt copy) do not disturb each other
        rng = np.random.RandomState(self.seed + 1 + 1009 * restart)
        opts = {"seed": self.seed + 1 + 1009 * restart, "bounds": [0.0, 1.0], "verbose": -9,  # seed 0 is "random"
                "randn": lambda *shape: rng.standard_normal(shape)}
        if popsize:
            opts["popsize"] = popsize
        opts.update(self.options)
        return self._cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float).tolist(), self.sigma, opts)

    def _maybe_restart(self, losses: list[float]) -> None:
        """IPOP-CMA-ES (Auger & Hansen 2005, "A Restart CMA Evolution Strategy With Increasing
        Population Size", CEC): when pycma's step-size or covariance criteria fire, or the run's best has
        not improved for ``stall`` generations (``stall`` None: pycma's criteria only), start again
        from a uniformly random point of the box with twice the population and the initial step
        size. A function of the told results and the seed only, so a replay restarts at the same
        generation to the same point."""
        best = min(losses)
        if best < self._run_best:
            self._run_best, self._run_best_at = best, self.generation
        if self.restarts != "ipop":
            return
        stopped = {k: v for k, v in self.es.stop().items() if k not in IGNORED_STOPS}
        if not stopped and (self.stall is None or self.generation - self._run_best_at < self.stall):
            return
        self.restart += 1
        start = np.random.default_rng([self.seed, self.restart]).random(self.dim)
        self.es = self._new_es(start, min(self.popsize * 2 ** self.restart, MAX_RESTART_POPSIZE), self.restart)
        self._run_best, self._run_best_at = np.inf, self.generation

    def selection_rank(self) -> int:
        """mu = popsize // 2 of the current run: the candidates a generation's update weights
        positively (Hansen 2016, "The CMA Evolution Strategy: A Tutorial", eq. 49 with the default
        weights)."""
        return max(1, int(self.es.popsize) // 2)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "x0": self.x0.tolist(), "seed": self.seed, "sigma": self.sigma,
                "popsize": self.popsize, "options": self.options, "inject": self.inject,
                "restarts": self.restarts, "stall": self.stall}

    @property
    def generation_open(self) -> bool:
        """True while the current generation still has genomes to hand out."""
        return bool(self._queue)

    def _ask(self, n: int) -> list[Genome]:
        out: list[Genome] = []
        while len(out) < n:
            if not self._queue:
                if self._pending:  # the generation is out; wait for its results
                    break
                xs = self.es.ask()
                self._queue = [Genome(self.asked + k, np.asarray(x, dtype=float), self.generation)
                               for k, x in enumerate(xs)]
                self._pending = list(self._queue)
                self.asked += len(xs)
            out.append(self._queue.pop(0))
        return out

    def _tell(self, results: Sequence[Evaluated]) -> None:
        for r in results:
            self._results[r.genome.index] = r.fitness
            self._fitness_seen.append(r.fitness)
        if self._pending and all(g.index in self._results for g in self._pending):
            fits = [self._results[g.index] for g in self._pending]
            pen = penalty(self._fitness_seen)
            losses = [-(pen if f is None or not np.isfinite(f) else f) for f in fits]
            self.es.tell([g.x for g in self._pending], losses)
            self._pending, self._results = [], {}
            self.generation += 1
            self._maybe_restart(losses)
