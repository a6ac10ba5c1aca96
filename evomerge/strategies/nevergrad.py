"""Any nevergrad optimizer by name (Rapin & Teytaud 2018, "Nevergrad - A gradient-free
optimization platform"), over the box [0, 1]^d.

Asynchronous: ask and tell in any order (nevergrad keeps each candidate's parameter object).
Seeded through the parametrization's random state. Failed candidates get a penalty worse than
any real fitness. Name optimizers explicitly in tests: NGOpt's portfolio can leave a scipy
thread that hangs at exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.strategies.base import Evaluated, Genome, penalty


class Nevergrad:
    name = "nevergrad"

    def __init__(self, dim: int, x0: np.ndarray, *, optimizer: str = "NGOpt", budget: int = 100,
                 num_workers: int = 1, seed: int = 0) -> None:
        import nevergrad as ng

        if optimizer not in ng.optimizers.registry:
            known = ", ".join(sorted(k for k in ng.optimizers.registry if not k.startswith("_"))[:40])
            raise ConfigError(f"unknown nevergrad optimizer {optimizer!r}",
                              hint=f"use one of nevergrad's registry names, e.g. NGOpt, TwoPointsDE, PSO, CMA ({known}, ...)")
        param = ng.p.Array(init=np.clip(np.asarray(x0, dtype=float), 0.0, 1.0)).set_bounds(0.0, 1.0)
        param.random_state = np.random.RandomState(seed)
        self.opt = ng.optimizers.registry[optimizer](parametrization=param, budget=budget, num_workers=num_workers)
        self.optimizer, self.seed = optimizer, seed
        self.asked = 0
        self._candidates: dict[int, Any] = {}
        self.history: list[tuple[int, float | None]] = []

    def ask(self, n: int) -> list[Genome]:
        out = []
        for _ in range(n):
            cand = self.opt.ask()
            self._candidates[self.asked] = cand
            out.append(Genome(self.asked, np.asarray(cand.value, dtype=float), generation=self.asked))
            self.asked += 1
        return out

    def tell(self, results: Sequence[Evaluated]) -> None:
        for r in results:
            self.history.append((r.genome.index, r.fitness))
        pen = penalty([f for _, f in self.history])
        for r in results:
            f = r.fitness if r.fitness is not None and np.isfinite(r.fitness) else pen
            self.opt.tell(self._candidates.pop(r.genome.index), -float(f))  # nevergrad minimizes

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "optimizer": self.optimizer, "seed": self.seed, "asked": self.asked,
                "history": self.history}
