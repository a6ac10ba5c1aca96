"""A candidate's status and what its evaluation produced: one shape from the evaluator, through a
worker and the driver, to the archive (which returns the row it committed, ``CandidateRow``).

Statuses, as the archive stores them: ``PENDING`` (asked, persisted, not yet running);
``RUNNING`` (claimed by a worker); and the terminal four: ``COMPLETE`` (objectives and per-item
scores); ``INVALID`` (a non-finite objective or merged weight: no objectives, the strategy gets a
penalty, docs/reliability.md promise 9); ``TIMEOUT`` (past the deadline); ``FAILED`` (an error
while evaluating, with its message, or every attempt's worker lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    INVALID = "INVALID"
    TIMEOUT = "TIMEOUT"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETE, Status.INVALID, Status.TIMEOUT, Status.FAILED})


class Fidelity(StrEnum):
    """How a COMPLETE candidate's objectives were measured: on every item (``exact``), on the
    items it was scored on before racing stopped it (``raced``: means with intervals), or on an
    item subset whose scores estimate the full set (``subset``: estimates with intervals)."""

    EXACT = "exact"
    RACED = "raced"
    SUBSET = "subset"


@dataclass(kw_only=True)
class EvalResult:
    """One evaluation of one candidate. ``objectives`` (task name -> mean item score) is None
    unless COMPLETE; ``item_scores`` (task name -> each item's score) may be kept for an INVALID
    result too (the archive drops them); ``seconds`` is the wall time of the whole evaluation,
    ``phases`` its parts (materialize, swap, evaluate); ``tokens`` counts prompt + generated
    tokens the engine processed; ``worker`` names the process that ran it. A raced-out candidate
    (:mod:`evomerge.evaluate.racing`) has ``fidelity`` RACED, NaN for its unscored items,
    ``intervals`` (task -> (low, high)) around its objectives and the test's ``stop_reason``."""

    status: Status
    objectives: dict[str, float] | None = None
    item_scores: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    items: int = 0
    error: str | None = None
    tokens: int = 0
    worker: str | None = None
    fidelity: Fidelity = Fidelity.EXACT
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    stop_reason: str | None = None
