"""The strategy seam: ask for genomes, tell their fitness; state is JSON, never pickle.

Fitness is maximized. A failed or invalid candidate is told as ``None`` and every strategy
turns it into a penalty worse than any real fitness (never NaN; RELIABILITY.md promise 9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Genome:
    index: int  # candidate index within the run (0, 1, 2, ...)
    x: np.ndarray  # point of [0, 1]^d
    generation: int
    parents: tuple[int, ...] = ()


@dataclass(frozen=True)
class Evaluated:
    genome: Genome
    fitness: float | None  # None: failed / invalid / timeout
    item_scores: dict[str, list[float]] = field(default_factory=dict)


class Strategy(Protocol):
    name: str

    def ask(self, n: int) -> list[Genome]: ...

    def tell(self, results: Sequence[Evaluated]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...


def penalty(known: Sequence[float | None]) -> float:
    """A fitness below every finite one seen so far (at least 1 below, never NaN)."""
    finite = [f for f in known if f is not None and np.isfinite(f)]
    return (min(finite) - 1.0) if finite else -1.0
