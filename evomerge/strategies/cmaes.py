"""CMA-ES through pycma (Hansen 2016, "The CMA Evolution Strategy: A Tutorial"), in the box [0, 1]^d.

Generation-batched: one generation is ``popsize`` asks and pycma is told when all of them are
back (out-of-order tells are buffered). Starts at the space's initial recipe with ``sigma`` in
box units. Failed candidates get a penalty worse than any real fitness. pycma state is not
serialized; the strategy is rebuilt by replaying the committed tells (``from_history``), which
reproduces the same asks because pycma is seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.strategies.base import Evaluated, Genome, penalty


class CMAES:
    name = "cmaes"

    def __init__(self, dim: int, x0: np.ndarray, *, seed: int = 0, sigma: float = 0.25,
                 popsize: int | None = None, options: dict[str, Any] | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cma
        self.dim, self.seed, self.sigma = dim, seed, sigma
        opts = {"seed": seed + 1, "bounds": [0.0, 1.0], "verbose": -9}  # pycma treats seed 0 as "random"
        if popsize:
            opts["popsize"] = popsize
        opts.update(options or {})
        self.es = cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float).tolist(), sigma, opts)
        self.popsize = int(self.es.popsize)
        self.asked = 0
        self.generation = 0
        self._pending: list[Genome] = []  # asked genomes of the current generation
        self._queue: list[Genome] = []  # current generation's genomes not yet handed out
        self._results: dict[int, float | None] = {}
        self.history: list[tuple[int, float | None]] = []

    def ask(self, n: int) -> list[Genome]:
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

    def tell(self, results: Sequence[Evaluated]) -> None:
        for r in results:
            self._results[r.genome.index] = r.fitness
            self.history.append((r.genome.index, r.fitness))
        if self._pending and all(g.index in self._results for g in self._pending):
            fits = [self._results[g.index] for g in self._pending]
            pen = penalty([f for _, f in self.history])
            losses = [-(pen if f is None or not np.isfinite(f) else f) for f in fits]
            self.es.tell([g.x for g in self._pending], losses)
            self._pending, self._results = [], {}
            self.generation += 1

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "sigma": self.sigma, "popsize": self.popsize,
                "asked": self.asked, "generation": self.generation, "history": self.history}
