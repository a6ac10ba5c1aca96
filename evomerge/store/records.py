"""What the archive stores and returns: leases, new candidates, rows, run summaries, and the
normalization every result goes through on its way in (docs/reliability.md promise 9)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evomerge.result import EvalResult, Fidelity, Status

MAX_INDEX = 2**31 - 1  # candidate indices are 32-bit signed integers in the archive


@dataclass(frozen=True)
class Lease:
    run_id: str
    owner: str
    epoch: int
    expires_at: float


@dataclass(frozen=True)
class NewCandidate:
    index: int
    generation: int
    recipe_json: str
    recipe_id: str
    genome: list[float]
    parents: tuple[int, ...] = ()
    race_ref: int | None = None  # the candidate it races against (None: scored on every item)


@dataclass(kw_only=True)
class CandidateRow:
    run_id: str
    index: int
    generation: int
    recipe_json: str
    recipe_id: str
    genome: list[float]
    parents: tuple[int, ...]
    status: Status
    attempts: int
    worker: str | None
    heartbeat_at: float | None
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    error: str | None
    fitness: float | None
    cached_from: int | None
    tokens: int
    fidelity: Fidelity = Fidelity.EXACT
    items_scored: int | None = None
    stop_reason: str | None = None
    race_ref: int | None = None
    objectives: dict[str, float] | None = None
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # raced: per objective
    item_scores: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class RunInfo:
    id: str
    name: str
    seed: int
    budget: int
    status: str
    space_yaml: str
    space_hash: str
    config: dict[str, Any]
    objectives: list[dict[str, Any]]
    created_at: float
    counts: dict[str, int]
    lease_owner: str | None = None
    lease_expires_at: float | None = None


def candidate_row(c: Any) -> CandidateRow:
    """A CandidateRow from a ``candidates`` table row (objectives and scores filled by the caller)."""
    return CandidateRow(run_id=c.run_id, index=c.idx, generation=c.generation, recipe_json=c.recipe_json,
                        recipe_id=c.recipe_id, genome=list(c.genome), parents=tuple(c.parents or ()), status=Status(c.status),
                        attempts=c.attempts, worker=c.worker, heartbeat_at=c.heartbeat_at, started_at=c.started_at,
                        finished_at=c.finished_at, seconds=c.seconds, error=c.error, fitness=c.fitness,
                        cached_from=c.cached_from, tokens=c.tokens or 0, fidelity=Fidelity(c.fidelity or "exact"),
                        items_scored=c.items_scored, stop_reason=c.stop_reason, race_ref=c.race_ref)


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def pack_scores(scores: Sequence[float]) -> bytes:
    return np.asarray(scores, dtype="<f4").tobytes()


def unpack_scores(data: bytes) -> list[float]:
    return np.frombuffer(data, dtype="<f4").astype(float).tolist()


@dataclass(frozen=True)
class Normalized:
    """A result as the archive keeps it."""

    status: Status
    objectives: dict[str, float] | None
    fitness: float | None
    error: str | None
    item_scores: dict[str, list[float]]
    fidelity: Fidelity = Fidelity.EXACT
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


def normalize_result(result: EvalResult, fitness: float | None) -> Normalized:
    """``result`` with the driver's ``fitness`` as stored: a non-finite number makes a COMPLETE
    result INVALID (promise 9); only COMPLETE rows keep objectives, fitness and item scores."""
    status = Status(result.status)
    if not status.terminal:
        raise ValueError(f"a result cannot have status {status}")
    objectives, error = result.objectives, result.error
    if status == Status.COMPLETE and (not _finite(fitness) or objectives is None
                                      or not all(_finite(v) for v in objectives.values())):
        status, error = Status.INVALID, error or "non-finite fitness or objective"
    if status != Status.COMPLETE:
        return Normalized(status, None, None, error, {})
    return Normalized(status, objectives, fitness, error, result.item_scores, Fidelity(result.fidelity),
                      dict(result.intervals))
