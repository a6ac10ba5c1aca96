"""What the archive stores and returns: leases, new candidates, results, rows, run summaries,
and the normalization every result goes through (docs/reliability.md promise 9)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_INDEX = 2**31 - 1  # candidate indices are 32-bit signed integers in the archive
TERMINAL = ("COMPLETE", "INVALID", "TIMEOUT", "FAILED")
STATUS_OF = {"ok": "COMPLETE", "invalid": "INVALID", "timeout": "TIMEOUT", "failed": "FAILED"}


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


@dataclass(frozen=True)
class CandidateResult:
    status: str  # ok | invalid | timeout | failed
    objectives: dict[str, float] | None
    fitness: float | None
    item_scores: dict[str, list[float]]
    seconds: float
    error: str | None = None
    tokens: int = 0


@dataclass(kw_only=True)
class CandidateRow:
    run_id: str
    index: int
    generation: int
    recipe_json: str
    recipe_id: str
    genome: list[float]
    parents: tuple[int, ...]
    status: str
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
    objectives: dict[str, float] | None = None
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
                        recipe_id=c.recipe_id, genome=list(c.genome), parents=tuple(c.parents or ()), status=c.status,
                        attempts=c.attempts, worker=c.worker, heartbeat_at=c.heartbeat_at, started_at=c.started_at,
                        finished_at=c.finished_at, seconds=c.seconds, error=c.error, fitness=c.fitness,
                        cached_from=c.cached_from, tokens=c.tokens or 0)


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def pack_scores(scores: Sequence[float]) -> bytes:
    return np.asarray(scores, dtype="<f4").tobytes()


def unpack_scores(data: bytes) -> list[float]:
    return np.frombuffer(data, dtype="<f4").astype(float).tolist()


def normalize_result(result: CandidateResult) -> tuple[str, dict[str, float] | None, float | None, str | None]:
    """(status, objectives, fitness, error) as stored: a non-finite number makes an ``ok``
    result INVALID with NULLs (promise 9); only COMPLETE rows keep objectives and fitness."""
    status = STATUS_OF.get(result.status)
    if status is None:
        raise ValueError(f"unknown result status {result.status!r}")
    objectives, fitness, error = result.objectives, result.fitness, result.error
    if status == "COMPLETE" and (not _finite(fitness) or objectives is None
                                 or not all(_finite(v) for v in objectives.values())):
        status, error = "INVALID", error or "non-finite fitness or objective"
    if status != "COMPLETE":
        objectives, fitness = None, None
    return status, objectives, fitness, error
