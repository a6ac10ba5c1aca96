"""The archive's tables (SQLAlchemy 2 typed ORM). Times are Unix seconds (float) from the
writer's clock; per-item scores are little-endian float32 bytes; strategy snapshot arrays are
an ``.npz`` read back with ``allow_pickle=False``. Nothing stored is ever unpickled or executed
(docs/reliability.md promise 5)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    space_yaml: Mapped[str] = mapped_column(Text)
    space_hash: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    budget: Mapped[int] = mapped_column(Integer)
    objectives: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_epoch: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Candidate(Base):
    __tablename__ = "candidates"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    recipe_json: Mapped[str] = mapped_column(Text)
    recipe_id: Mapped[str] = mapped_column(String(40))
    genome: Mapped[list[float]] = mapped_column(JSON)
    parents: Mapped[list[int]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    fitness: Mapped[float | None] = mapped_column(Float, nullable=True)
    cached_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    fidelity: Mapped[str] = mapped_column(String(8), default="exact", server_default="exact")  # exact | raced
    items_scored: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    race_ref: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the candidate it raced against

    __table_args__ = (
        Index("ix_candidates_status", "run_id", "status"),
        Index("ix_candidates_fitness", "run_id", "fitness"),
        # covering for the dashboard's progress counts (r0004)
        Index("ix_candidates_progress", "run_id", "status", "fidelity", "cached_from"),
    )


class ObjectiveValue(Base):
    __tablename__ = "objectives"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    low: Mapped[float | None] = mapped_column(Float, nullable=True)  # an estimate's interval (raced)
    high: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_objectives_name_value", "run_id", "name", "value"),)


class ItemScores(Base):
    __tablename__ = "item_scores"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(128), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian


class SourceScore(Base):
    """A source model of a run (its base or an expert) scored once on the run's objectives, as it
    is: the reference points the dashboard shows beside the merges (r0004)."""

    __tablename__ = "source_scores"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(1024), primary_key=True)  # the model reference, as the space names it
    role: Mapped[str] = mapped_column(String(8))  # base | expert
    status: Mapped[str] = mapped_column(String(10))
    objectives: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    fitness: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class Snapshot(Base):
    __tablename__ = "snapshots"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    told: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    arrays: Mapped[bytes] = mapped_column(LargeBinary)  # .npz, loaded with allow_pickle=False
    created_at: Mapped[float] = mapped_column(Float)
