"""Uniform random search over the box: the baseline every benchmark compares against.

Candidate ``i`` draws from ``SeedSequence([seed, i])``, so asks are identical however the run
is interrupted, and candidate 0 is the space's initial point (a known recipe).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.strategies.base import Evaluated, Genome, Replayable


class RandomSearch(Replayable):
    name = "random"

    def __init__(self, dim: int, x0: np.ndarray | Sequence[float], *, seed: int = 0) -> None:
        self.dim, self.x0, self.seed = dim, np.asarray(x0, dtype=float), seed
        self.asked = 0
        self._init_record()

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "x0": self.x0.tolist(), "seed": self.seed}

    def _ask(self, n: int) -> list[Genome]:
        out = []
        for _ in range(n):
            i = self.asked
            x = self.x0.copy() if i == 0 else np.random.default_rng(np.random.SeedSequence([self.seed, i])).random(self.dim)
            out.append(Genome(i, x, generation=i))
            self.asked += 1
        return out

    def _tell(self, results: Sequence[Evaluated]) -> None:
        pass  # random search does not learn
