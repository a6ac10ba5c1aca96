"""CMA-ES through pycma (Hansen 2016, "The CMA Evolution Strategy: A Tutorial"), in the box [0, 1]^d.

Generation-batched: one generation is ``popsize`` asks and pycma is told when all of them are
back (out-of-order tells are buffered). Starts at the space's initial recipe (for example task
arithmetic with every weight 1) with ``sigma`` in box units; ``inject`` puts known recipes (the
start point itself, each expert alone) into the first generation (pycma's ``inject``). Failed candidates get a penalty
worse than any real fitness. pycma's internal state is not serialized: ``from_state`` rebuilds
it by replaying the recorded tells, which reproduces the same asks because pycma is seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.strategies.base import Evaluated, Genome, Replayable, penalty


class CMAES(Replayable):
    name = "cmaes"

    def __init__(self, dim: int, x0: np.ndarray | Sequence[float], *, seed: int = 0, sigma: float = 0.25,
                 popsize: int | None = None, options: dict[str, Any] | None = None,
                 inject: Sequence[Sequence[float]] | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cma
        self.dim, self.seed, self.sigma = dim, seed, sigma
        self.x0 = np.asarray(x0, dtype=float)
        self.options = dict(options or {})
        # pycma seeds and draws from numpy's global RNG by default; give it a private one so two
        # strategies in one process (a run and its rebuilt copy) do not disturb each other
        self._rng = np.random.RandomState(seed + 1)
        opts = {"seed": seed + 1, "bounds": [0.0, 1.0], "verbose": -9,  # pycma treats seed 0 as "random"
                "randn": lambda *shape: self._rng.standard_normal(shape)}
        if popsize:
            opts["popsize"] = popsize
        opts.update(self.options)
        self.es = cma.CMAEvolutionStrategy(self.x0.tolist(), sigma, opts)
        self.popsize = int(self.es.popsize)
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
        self._init_record()

    def selection_rank(self) -> int:
        """mu = popsize // 2: the candidates a generation's update weights positively (Hansen 2016,
        "The CMA Evolution Strategy: A Tutorial", eq. 49 with the default weights)."""
        return max(1, self.popsize // 2)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "x0": self.x0.tolist(), "seed": self.seed, "sigma": self.sigma,
                "popsize": self.popsize, "options": self.options, "inject": self.inject}

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
