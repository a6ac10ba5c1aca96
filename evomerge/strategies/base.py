"""The strategy seam: ask for genomes, tell their fitness; state is JSON plus arrays, never pickle.

Fitness is maximized. A failed or invalid candidate is told as ``None`` and every strategy
turns it into a penalty worse than any real fitness (never NaN; docs/reliability.md promise 9).

State and replay. Every strategy is deterministic given its seed and the order of its ask and
tell calls. :class:`Replayable` records that order (ask counts, told indices with fitness,
objective vectors and per-item scores); ``state_dict`` returns it with the constructor's
config, and ``from_state`` rebuilds the strategy in any process by constructing it afresh and
replaying the events. Asks are regenerated during replay and checked against the recorded
genomes, so a rebuilt strategy provably sits where the original did (promise 3: replay wins).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from evomerge.errors import EvomergeError


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
    objectives: tuple[float, ...] | None = None  # maximize-oriented vector, for multi-objective mode


class Strategy(Protocol):
    name: str

    def ask(self, n: int) -> list[Genome]: ...

    def tell(self, results: Sequence[Evaluated]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...


class ReplayMismatch(EvomergeError):
    """Replaying a strategy's history did not reproduce the recorded genomes."""


def penalty(known: Sequence[float | None]) -> float:
    """A fitness below every finite one seen so far (at least 1 below, never NaN)."""
    finite = [f for f in known if f is not None and np.isfinite(f)]
    return (min(finite) - 1.0) if finite else -1.0


def finite_or_none(f: float | None) -> float | None:
    return float(f) if f is not None and np.isfinite(f) else None


def stack_scores(per_candidate: dict[int, dict[str, list[float]]]) -> dict[str, np.ndarray]:
    """Per-item scores as arrays: ``items.<task>`` (one row per candidate that has scores for
    the task) and ``items_index.<task>`` (those candidates' indices)."""
    by_task: dict[str, list[tuple[int, list[float]]]] = {}
    for i in sorted(per_candidate):
        for task, scores in per_candidate[i].items():
            by_task.setdefault(task, []).append((i, scores))
    out: dict[str, np.ndarray] = {}
    for task, rows in by_task.items():
        out[f"items_index.{task}"] = np.asarray([i for i, _ in rows], dtype=np.int64)
        out[f"items.{task}"] = np.asarray([r for _, r in rows], dtype=np.float64)
    return out


def unstack_scores(arrays: dict[str, np.ndarray]) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = {}
    for key, idx in arrays.items():
        if key.startswith("items_index."):
            task = key[len("items_index."):]
            out[task] = {int(i): row.tolist() for i, row in zip(idx, arrays[f"items.{task}"], strict=True)}
    return out


class Replayable:
    """Mixin: records the ask/tell sequence so the strategy can be rebuilt by replay.

    Subclasses implement ``_ask(n)``, ``_tell(results)`` and ``config()`` (JSON constructor
    keyword arguments that rebuild an identical fresh strategy).
    """

    name: ClassVar[str]

    def _init_record(self) -> None:
        self.events: list[list[Any]] = []  # ["ask", n, [indices]] | ["tell", [index, ...]]
        self.genomes: dict[int, Genome] = {}
        self.told: dict[int, Evaluated] = {}

    # -- public seam ---------------------------------------------------------------------------
    def ask(self, n: int) -> list[Genome]:
        out = self._ask(n)
        self.events.append(["ask", n, [g.index for g in out]])
        for g in out:
            self.genomes[g.index] = g
        return out

    def tell(self, results: Sequence[Evaluated]) -> None:
        results = list(results)
        self.events.append(["tell", [r.genome.index for r in results]])
        for r in results:
            self.told[r.genome.index] = r
        self._tell(results)

    @property
    def history(self) -> list[tuple[int, float | None]]:
        return [(i, self.told[i].fitness) for ev in self.events if ev[0] == "tell" for i in ev[1]]

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON scalars only: config, events, and each told candidate's fitness and objectives.
        Per-item scores and genomes go to :meth:`state_arrays`."""
        told = {str(i): {"fitness": r.fitness, "objectives": list(r.objectives) if r.objectives else None,
                         "tasks": sorted(r.item_scores)} for i, r in self.told.items()}
        # a JSON round trip: a deep copy (later asks must not change a saved state) that also
        # proves the state is plain JSON
        return json.loads(json.dumps({"name": self.name, "config": self.config(), "events": self.events,
                                      "told": told}))

    def state_arrays(self, *, scores: bool = True) -> dict[str, np.ndarray]:
        """Genomes as one matrix (``genomes`` with row indices ``genome_index``) and, with
        ``scores``, per-item scores per task (``items.<task>`` with ``items_index.<task>``)."""
        idx = sorted(self.genomes)
        arrays = {"genome_index": np.asarray(idx, dtype=np.int64),
                  "genomes": np.asarray([self.genomes[i].x for i in idx], dtype=np.float64).reshape(len(idx), -1)}
        if scores:
            arrays |= stack_scores({i: r.item_scores for i, r in self.told.items()})
        return arrays

    @classmethod
    def from_state(cls, state: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> Replayable:
        """A fresh strategy from ``config``, with the recorded events replayed."""
        if state.get("name") != cls.name:
            raise ReplayMismatch(f"state is for strategy {state.get('name')!r}, not {cls.name!r}")
        arrays = arrays or {}
        genomes = {int(i): row for i, row in zip(arrays.get("genome_index", []), arrays.get("genomes", []), strict=True)}
        items = unstack_scores(arrays)
        fresh = cls(**cls.config_from_json(state["config"]))
        told = state["told"]
        for ev in state["events"]:
            if ev[0] == "ask":
                got = fresh.ask(int(ev[1]))
                if [g.index for g in got] != list(ev[2]):
                    raise ReplayMismatch(f"replay asked {[g.index for g in got]}, recorded {ev[2]}")
                for g in got:
                    want = genomes.get(g.index)
                    if want is not None and not np.array_equal(want, g.x):
                        raise ReplayMismatch(f"replay of candidate {g.index} gave another genome",
                                             hint="the strategy library changed or the state is corrupt")
            else:
                results = []
                for i in ev[1]:
                    t = told[str(i)]
                    scores = {task: items[task][int(i)] for task in t["tasks"]}
                    obj = tuple(t["objectives"]) if t["objectives"] is not None else None
                    results.append(Evaluated(fresh.genomes[int(i)], t["fitness"], scores, obj))
                fresh.tell(results)
        return fresh

    @classmethod
    def config_from_json(cls, config: dict[str, Any]) -> dict[str, Any]:
        return dict(config)

    def selection_rank(self) -> int:
        """The rank (1 = best) among the candidates told so far that a new candidate must reach
        to change what this strategy does next: racing's reference (evomerge.evaluate.racing).
        The incumbent unless a strategy says otherwise."""
        return 1

    # -- to implement --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _ask(self, n: int) -> list[Genome]:
        raise NotImplementedError

    def _tell(self, results: Sequence[Evaluated]) -> None:
        raise NotImplementedError
