"""The archive: runs, candidates, objective values, per-item scores, strategy snapshots.

Promises kept here (docs/reliability.md):
1. No lost candidates: ``add_candidates`` commits PENDING rows before it returns; the driver
   dispatches only afterwards. ``requeue_running``/``requeue_stale`` put unfinished work back.
2. Exactly-once recording: (run_id, idx) is the primary key; ``complete`` is a compare-and-set
   from RUNNING with the caller's attempt number, so a duplicate or late result (a retried Ray
   task, a worker declared dead) changes nothing and returns False; finished rows are never
   updated again.
4. One driver per run: the lease (owner, epoch, expiry) lives on the run row. Every driver write
   first checks, in the same transaction, that the run's owner and epoch are the caller's
   (SQLite: the transaction is BEGIN IMMEDIATE, so checks and writes are serialized; PostgreSQL:
   the run row is locked FOR UPDATE). A takeover bumps the epoch, so a superseded driver's next
   write raises StaleLeaseError.
5. No code execution from inputs: snapshot arrays are read only as a pickle-free ``.npz``
   (:func:`read_npz`); a snapshot that is not one is skipped with a warning, never loaded.
8. Schema safety: see :mod:`evomerge.store.schema`.
9. Finite numbers only: a non-finite objective or fitness makes the candidate INVALID with
   NULL fitness and no objective rows; ``best`` and ``pareto`` read COMPLETE rows only.

An archive the environment makes unusable (unreachable, read-only, locked, corrupt, full) raises
:class:`~evomerge.store.errors.ArchiveError` from any method: one line with the fix, never the
SQL or its parameters.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, String, and_, bindparam, delete, func, insert, select, update

from evomerge.errors import ConfigError, CorruptArtifactError, EvomergeError, LeaseHeldError, StaleLeaseError
from evomerge.result import TERMINAL, EvalResult, Fidelity, Status
from evomerge.store.models import Candidate, ItemScores, ObjectiveValue, Run, Snapshot, SourceScore
from evomerge.store.records import (
    MAX_INDEX,
    CandidateRow,
    Lease,
    NewCandidate,
    RunInfo,
    candidate_row,
    normalize_result,
    pack_scores,
    unpack_scores,
)
from evomerge.store.schema import check_schema, default_url, make_engine

_log = logging.getLogger("evomerge.store")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SNAPSHOTS_KEPT = 3


# ``Store.complete``'s statement, built once: the driver's hot path (building an UPDATE .. RETURNING
# of every column per call costs more than running it)
_COMPLETE = update(Candidate).where(
    Candidate.run_id == bindparam("run_id_"), Candidate.idx == bindparam("idx_"),
    Candidate.status == Status.RUNNING.value, Candidate.attempts == bindparam("attempt_")).values(
    status=bindparam("status_"), fitness=bindparam("fitness_"), error=bindparam("error_"),
    seconds=bindparam("seconds_"), finished_at=bindparam("finished_at_"), tokens=bindparam("tokens_"),
    fidelity=bindparam("fidelity_"), items_scored=bindparam("items_scored_"), stop_reason=bindparam("stop_reason_"),
    worker=func.coalesce(bindparam("worker_", type_=String), Candidate.worker)).returning(*Candidate.__table__.c)


class Store:
    """The SQL archive (SQLite by default, PostgreSQL by URL). Thread-safe per instance."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self.engine = make_engine(url)
        self.is_pg = self.engine.dialect.name == "postgresql"
        try:
            check_schema(self.engine, url)
        except BaseException:
            self.engine.dispose()
            raise

    @classmethod
    def open(cls, url: str | None = None, *, workdir: Path | None = None) -> Store:
        return cls(url or default_url(workdir))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        unit = getattr(self._local, "unit", None)
        if unit is not None:  # inside ``unit()``: join its transaction
            yield unit[0]
            return
        with self._write() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE)."""
        with self.engine.connect() as conn:
            conn.execution_options(immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def unit(self, lease: Lease) -> Iterator[Store]:
        """One transaction, fenced once, for several driver writes (results, new candidates,
        claims): all of them commit together or not at all. Per thread."""
        if getattr(self._local, "unit", None) is not None:
            raise RuntimeError("units do not nest")
        with self._write() as conn:
            self._fence(conn, lease)
            self._local.unit = (conn, lease)
            try:
                yield self
            finally:
                self._local.unit = None

    def _fence(self, conn: Connection, lease: Lease) -> None:
        unit = getattr(self._local, "unit", None)
        if unit is not None and unit[1] == lease:
            return  # fenced when the unit began, and the run row is locked / the database reserved

        q = select(Run.lease_owner, Run.lease_epoch).where(Run.id == lease.run_id)
        if self.is_pg:
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise ConfigError(f"run {lease.run_id} does not exist")
        if row.lease_owner != lease.owner or row.lease_epoch != lease.epoch:
            raise StaleLeaseError(
                f"run {lease.run_id}: this driver's lease (epoch {lease.epoch}) was taken over by "
                f"{row.lease_owner} (epoch {row.lease_epoch}); its writes are refused",
                hint="another driver continues the run; follow it with `evomerge runs`")

    # ------------------------------------------------------------------ runs
    def create_run(self, *, name: str, space_yaml: str, space_hash: str, config: dict[str, Any], seed: int,
                   budget: int, objectives: list[dict[str, Any]]) -> RunInfo:
        if not RUN_NAME.match(name or ""):
            raise ConfigError(f"run name {name!r} is not allowed",
                              hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        now = time.time()
        run_id = "run-" + uuid.uuid4().hex[:12]
        with self._tx() as conn:
            if conn.execute(select(Run.id).where(Run.name == name)).first():
                raise ConfigError(f"a run named {name!r} already exists",
                                  hint=f"continue it with `evomerge resume {name}`, or pick another --name")
            conn.execute(insert(Run).values(id=run_id, name=name, space_yaml=space_yaml, space_hash=space_hash,
                                            config=config, seed=seed, budget=budget, objectives=objectives,
                                            status="created", created_at=now, updated_at=now, lease_epoch=0))
        return self.get_run(run_id)

    def _run_info(self, conn: Connection, r: Any) -> RunInfo:
        counts = dict(conn.execute(select(Candidate.status, func.count()).where(Candidate.run_id == r.id)
                                   .group_by(Candidate.status)).all())
        return RunInfo(r.id, r.name, r.seed, r.budget, r.status, r.space_yaml, r.space_hash, r.config,
                       r.objectives, r.created_at, {k: int(v) for k, v in counts.items()}, r.lease_owner,
                       r.lease_expires_at)

    def get_run(self, ref: str) -> RunInfo:
        with self.engine.connect() as conn:
            r = conn.execute(select(Run).where((Run.id == ref) | (Run.name == ref))).first()
            if r is None:
                raise ConfigError(f"no run {ref!r} in {self._shown_url()}",
                                  hint="`evomerge runs` lists the runs (check --db)")
            return self._run_info(conn, r)

    def list_runs(self) -> list[RunInfo]:
        with self.engine.connect() as conn:
            return [self._run_info(conn, r) for r in conn.execute(select(Run).order_by(Run.created_at)).all()]

    def _shown_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # ------------------------------------------------------------------ lease
    def acquire_lease(self, run_id: str, owner: str, ttl_s: float, *, force: bool = False) -> Lease:
        """Take the run: free, expired, already ours, or ``force`` (its owner is known dead)."""
        now = time.time()
        with self._tx() as conn:
            q = select(Run.lease_owner, Run.lease_epoch, Run.lease_expires_at).where(Run.id == run_id)
            row = conn.execute(q.with_for_update() if self.is_pg else q).first()
            if row is None:
                raise ConfigError(f"run {run_id} does not exist")
            held = row.lease_owner and row.lease_owner != owner and (row.lease_expires_at or 0) > now
            if held and not force:
                left = (row.lease_expires_at or now) - now
                raise LeaseHeldError(
                    f"run {run_id} is driven by {row.lease_owner} (lease valid for {left:.0f} more s)",
                    hint="stop that driver, or wait for its lease to expire and resume again")
            epoch = (row.lease_epoch or 0) + 1
            conn.execute(update(Run).where(Run.id == run_id).values(
                lease_owner=owner, lease_epoch=epoch, lease_expires_at=now + ttl_s, updated_at=now))
        return Lease(run_id, owner, epoch, now + ttl_s)

    def lease_holder(self, run_id: str) -> tuple[str | None, float | None]:
        with self.engine.connect() as conn:
            r = conn.execute(select(Run.lease_owner, Run.lease_expires_at).where(Run.id == run_id)).first()
            return (r.lease_owner, r.lease_expires_at) if r else (None, None)

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        now = time.time()
        with self._tx() as conn:
            self._fence(conn, lease)
            conn.execute(update(Run).where(Run.id == lease.run_id).values(lease_expires_at=now + ttl_s))
        return Lease(lease.run_id, lease.owner, lease.epoch, now + ttl_s)

    def release_lease(self, lease: Lease) -> None:
        with self._tx() as conn:
            self._fence(conn, lease)
            conn.execute(update(Run).where(Run.id == lease.run_id).values(lease_expires_at=0.0))

    def set_run_status(self, lease: Lease, status: str) -> None:
        with self._tx() as conn:
            self._fence(conn, lease)
            conn.execute(update(Run).where(Run.id == lease.run_id).values(status=status, updated_at=time.time()))

    # ------------------------------------------------------------------ candidates
    def add_candidates(self, lease: Lease, cands: Sequence[NewCandidate]) -> None:
        if not cands:
            return
        with self._tx() as conn:
            self._fence(conn, lease)
            idxs = [c.index for c in cands]
            existing = {r.idx: r for r in conn.execute(
                select(Candidate.idx, Candidate.recipe_id, Candidate.genome)
                .where(Candidate.run_id == lease.run_id, Candidate.idx.in_(idxs))).all()}
            rows = []
            for c in cands:
                old = existing.get(c.index)
                if old is not None:
                    if old.recipe_id != c.recipe_id or list(old.genome) != list(c.genome):
                        raise EvomergeError(f"run {lease.run_id}: candidate {c.index} exists with another recipe",
                                            hint="the run's strategy state diverged; start a new run")
                    continue
                rows.append({"run_id": lease.run_id, "idx": c.index, "generation": c.generation,
                             "recipe_json": c.recipe_json, "recipe_id": c.recipe_id, "genome": list(c.genome),
                             "parents": list(c.parents), "status": Status.PENDING.value, "attempts": 0, "tokens": 0,
                             "race_ref": c.race_ref})
            if rows:
                conn.execute(insert(Candidate), rows)

    def claim(self, lease: Lease, index: int, worker: str) -> int:
        now = time.time()
        with self._tx() as conn:
            self._fence(conn, lease)
            got = conn.execute(update(Candidate).where(
                Candidate.run_id == lease.run_id, Candidate.idx == index, Candidate.status == Status.PENDING.value)
                .values(status=Status.RUNNING.value, attempts=Candidate.attempts + 1, worker=worker, started_at=now,
                        heartbeat_at=now).returning(Candidate.attempts)).scalar()
            if got is None:
                raise EvomergeError(f"run {lease.run_id}: candidate {index} is not PENDING; it cannot be claimed")
            return int(got)

    def heartbeat(self, run_id: str, index: int, attempt: int) -> bool:
        with self._tx() as conn:
            res = conn.execute(update(Candidate).where(
                Candidate.run_id == run_id, Candidate.idx == index, Candidate.status == Status.RUNNING.value,
                Candidate.attempts == attempt).values(heartbeat_at=time.time()))
            return res.rowcount == 1

    def complete(self, lease: Lease, index: int, attempt: int, result: EvalResult, *,
                 fitness: float | None) -> CandidateRow | None:
        """Record ``result`` (with the driver's scalar ``fitness``) for the candidate's RUNNING
        ``attempt`` and return the row as committed (normalized, promise 9); None, and nothing
        written, when that attempt is not the candidate's current one (promise 2)."""
        r = normalize_result(result, fitness)
        values = {"run_id_": lease.run_id, "idx_": index, "attempt_": attempt, "status_": r.status.value,
                  "fitness_": r.fitness, "error_": r.error, "seconds_": result.seconds, "finished_at_": time.time(),
                  "tokens_": int(result.tokens), "fidelity_": r.fidelity.value, "items_scored_": int(result.items),
                  "stop_reason_": result.stop_reason, "worker_": result.worker or None}
        with self._tx() as conn:
            self._fence(conn, lease)
            got = conn.execute(_COMPLETE, values).first()
            if got is None:
                return None  # duplicate or stale attempt: the first committed result stands
            self._write_results(conn, lease.run_id, index, r.objectives, r.item_scores, r.intervals)
        return self._committed(got, r.objectives, r.item_scores, r.intervals)

    @staticmethod
    def _committed(c: Any, objectives: dict[str, float] | None, item_scores: dict[str, list[float]],
                   intervals: dict[str, tuple[float, float]] | None = None) -> CandidateRow:
        """The row just written, as a later read returns it: item scores at their stored precision
        (float32), so a strategy told this row and one told the row read back at resume agree."""
        row = candidate_row(c)
        row.objectives = dict(objectives) if objectives else None
        row.item_scores = {k: unpack_scores(pack_scores(v)) for k, v in item_scores.items()}
        row.intervals = {k: (float(lo), float(hi)) for k, (lo, hi) in (intervals or {}).items()} if objectives else {}
        return row

    def _write_results(self, conn: Connection, run_id: str, index: int, objectives: dict[str, float] | None,
                       item_scores: dict[str, list[float]],
                       intervals: dict[str, tuple[float, float]] | None = None) -> None:
        if objectives:
            iv = intervals or {}
            conn.execute(insert(ObjectiveValue), [
                {"run_id": run_id, "idx": index, "name": k, "value": float(v),
                 "low": float(iv[k][0]) if k in iv else None, "high": float(iv[k][1]) if k in iv else None}
                for k, v in objectives.items()])
        if item_scores:
            conn.execute(insert(ItemScores), [{"run_id": run_id, "idx": index, "task": k, "data": pack_scores(v)}
                                              for k, v in item_scores.items()])

    # ------------------------------------------------------------------ the sources' own scores
    def record_source(self, lease: Lease, name: str, role: str, result: EvalResult, *,
                      fitness: float | None) -> bool:
        """Record a source model's own score on the run's objectives (once: a second result for
        the same source changes nothing and returns False). Non-finite values are refused as for
        candidates (promise 9): the row keeps the status INVALID and no objectives."""
        r = normalize_result(result, fitness)
        with self._tx() as conn:
            self._fence(conn, lease)
            if conn.execute(select(SourceScore.name).where(SourceScore.run_id == lease.run_id,
                                                           SourceScore.name == name)).first():
                return False
            conn.execute(insert(SourceScore).values(
                run_id=lease.run_id, name=name, role=role, status=r.status.value, objectives=r.objectives,
                fitness=r.fitness, error=r.error, seconds=result.seconds, created_at=time.time()))
        return True

    def source_scores(self, run_id: str) -> list[dict[str, Any]]:
        """The run's recorded source scores (name, role, status, objectives, fitness, error, seconds)."""
        with self.engine.connect() as conn:
            return [{"name": s.name, "role": s.role, "status": s.status, "objectives": s.objectives,
                     "fitness": s.fitness, "error": s.error, "seconds": s.seconds}
                    for s in conn.execute(select(SourceScore).where(SourceScore.run_id == run_id)
                                          .order_by(SourceScore.created_at)).all()]

    def complete_cached(self, lease: Lease, index: int, source_index: int) -> CandidateRow | None:
        """A PENDING duplicate of a finished recipe takes a copy of that result; returns the row
        as committed (None, and nothing written, when ``index`` is not PENDING)."""
        with self._tx() as conn:
            self._fence(conn, lease)
            src = conn.execute(select(Candidate).where(Candidate.run_id == lease.run_id,
                                                       Candidate.idx == source_index)).first()
            if src is None or src.status not in TERMINAL:
                raise EvomergeError(f"candidate {source_index} is not finished; {index} cannot copy its result")
            got = conn.execute(update(Candidate).where(
                Candidate.run_id == lease.run_id, Candidate.idx == index, Candidate.status == Status.PENDING.value)
                .values(status=src.status, fitness=src.fitness, error=src.error, seconds=0.0,
                        finished_at=time.time(), cached_from=source_index, tokens=0, fidelity=src.fidelity,
                        items_scored=src.items_scored, stop_reason=src.stop_reason)
                .returning(*Candidate.__table__.c)).first()
            if got is None:
                return None
            obj_rows = conn.execute(select(ObjectiveValue).where(
                ObjectiveValue.run_id == lease.run_id, ObjectiveValue.idx == source_index)).all()
            objs = {r.name: r.value for r in obj_rows}
            intervals = {r.name: (r.low, r.high) for r in obj_rows if r.low is not None and r.high is not None}
            scores = {r.task: unpack_scores(r.data) for r in conn.execute(select(ItemScores).where(
                ItemScores.run_id == lease.run_id, ItemScores.idx == source_index)).all()}
            self._write_results(conn, lease.run_id, index, objs or None, scores, intervals)
        return self._committed(got, objs if src.status == Status.COMPLETE else None, scores, intervals)

    def fail_attempt(self, lease: Lease, index: int, attempt: int, error: str, max_attempts: int) -> CandidateRow | None:
        """A lost ``attempt``: the candidate goes back to PENDING, or FAILED after ``max_attempts``;
        returns the row as committed (None, and nothing written, when that attempt is not the
        candidate's current RUNNING one)."""
        new = Status.FAILED if attempt >= max_attempts else Status.PENDING
        values: dict[str, Any] = {"status": new.value, "error": error}
        if new == Status.FAILED:
            values["finished_at"] = time.time()
        with self._tx() as conn:
            self._fence(conn, lease)
            got = conn.execute(update(Candidate).where(
                Candidate.run_id == lease.run_id, Candidate.idx == index, Candidate.status == Status.RUNNING.value,
                Candidate.attempts == attempt).values(**values).returning(*Candidate.__table__.c)).first()
        return None if got is None else self._committed(got, None, {})

    def requeue_stale(self, lease: Lease, older_than_s: float) -> list[int]:
        return self._requeue(lease, time.time() - older_than_s)

    def requeue_running(self, lease: Lease) -> list[int]:
        return self._requeue(lease, None)

    def _requeue(self, lease: Lease, before: float | None) -> list[int]:
        with self._tx() as conn:
            self._fence(conn, lease)
            cond = and_(Candidate.run_id == lease.run_id, Candidate.status == Status.RUNNING.value)
            if before is not None:
                cond = and_(cond, Candidate.heartbeat_at < before)
            idxs = [r.idx for r in conn.execute(select(Candidate.idx).where(cond)).all()]
            if idxs:
                conn.execute(update(Candidate).where(Candidate.run_id == lease.run_id, Candidate.idx.in_(idxs),
                                                     Candidate.status == Status.RUNNING.value).values(status=Status.PENDING.value))
            return sorted(idxs)

    # ------------------------------------------------------------------ reads
    def _objectives(self, conn: Connection, run_id: str, idxs: Sequence[int] | None = None
                    ) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, tuple[float, float]]]]:
        """(index -> objective values, index -> intervals of the estimated ones)."""
        q = select(ObjectiveValue.idx, ObjectiveValue.name, ObjectiveValue.value, ObjectiveValue.low,
                   ObjectiveValue.high).where(ObjectiveValue.run_id == run_id)
        if idxs is not None:
            q = q.where(ObjectiveValue.idx.in_(list(idxs)))
        out: dict[int, dict[str, float]] = {}
        intervals: dict[int, dict[str, tuple[float, float]]] = {}
        for i, n, v, lo, hi in conn.execute(q).all():
            out.setdefault(i, {})[n] = v
            if lo is not None and hi is not None:
                intervals.setdefault(i, {})[n] = (lo, hi)
        return out, intervals

    def _scores(self, conn: Connection, run_id: str, idxs: Sequence[int] | None = None) -> dict[int, dict[str, list[float]]]:
        q = select(ItemScores.idx, ItemScores.task, ItemScores.data).where(ItemScores.run_id == run_id)
        if idxs is not None:
            q = q.where(ItemScores.idx.in_(list(idxs)))
        out: dict[int, dict[str, list[float]]] = {}
        for i, t, d in conn.execute(q).all():
            out.setdefault(i, {})[t] = unpack_scores(d)
        return out

    def _decorate(self, conn: Connection, run_id: str, rows: list[CandidateRow], with_scores: bool,
                  all_rows: bool = False) -> list[CandidateRow]:
        idxs = None if all_rows else [r.index for r in rows]
        objs, intervals = self._objectives(conn, run_id, idxs)
        scores = self._scores(conn, run_id, idxs) if with_scores else {}
        for r in rows:
            complete = r.status == Status.COMPLETE
            r.objectives = objs.get(r.index) if complete else None
            r.intervals = intervals.get(r.index, {}) if complete else {}
            r.item_scores = scores.get(r.index, {})
        return rows

    def candidates(self, run_id: str, *, status: str | None = None, with_scores: bool = False) -> list[CandidateRow]:
        with self.engine.connect() as conn:
            q = select(Candidate).where(Candidate.run_id == run_id)
            if status is not None:
                q = q.where(Candidate.status == status)
            rows = [candidate_row(c) for c in conn.execute(q.order_by(Candidate.idx)).all()]
            return self._decorate(conn, run_id, rows, with_scores, all_rows=status is None)

    def candidate(self, run_id: str, index: int) -> CandidateRow:
        if not 0 <= index <= MAX_INDEX:  # no row can have it (and the database integer would overflow)
            raise ConfigError(f"run {run_id} has no candidate {index}",
                              hint=f"indices run from 0 to the run's budget - 1 (at most {MAX_INDEX}); "
                                   "`evomerge best RUN -k 10` lists candidates")
        with self.engine.connect() as conn:
            c = conn.execute(select(Candidate).where(Candidate.run_id == run_id, Candidate.idx == index)).first()
            if c is None:
                raise ConfigError(f"run {run_id} has no candidate {index}",
                                  hint="`evomerge best RUN -k 10` lists candidates")
            return self._decorate(conn, run_id, [candidate_row(c)], True)[0]

    def _complete(self, run_id: str, fidelity: str | None) -> Any:
        """COMPLETE, not copies, and of ``fidelity`` when given (``exact``: scored on every item)."""
        ok = and_(Candidate.run_id == run_id, Candidate.status == Status.COMPLETE.value, Candidate.cached_from.is_(None))
        return ok if fidelity is None else and_(ok, Candidate.fidelity == Fidelity(fidelity).value)

    def best(self, run_id: str, *, objective: str | None = None, k: int = 1,
             fidelity: str | None = None) -> list[CandidateRow]:
        with self.engine.connect() as conn:
            ok = self._complete(run_id, fidelity)
            if objective is None:
                q = select(Candidate).where(ok, Candidate.fitness.is_not(None)).order_by(
                    Candidate.fitness.desc(), Candidate.idx).limit(k)
            else:
                run = conn.execute(select(Run.objectives).where(Run.id == run_id)).scalar_one()
                direction = next((o.get("direction", "maximize") for o in run if o["name"] == objective), "maximize")
                order = ObjectiveValue.value.desc() if direction == "maximize" else ObjectiveValue.value.asc()
                q = (select(Candidate).join(ObjectiveValue, and_(ObjectiveValue.run_id == Candidate.run_id,
                                                                ObjectiveValue.idx == Candidate.idx))
                     .where(ok, ObjectiveValue.name == objective).order_by(order, Candidate.idx).limit(k))
            rows = [candidate_row(c) for c in conn.execute(q).all()]
            return self._decorate(conn, run_id, rows, False)

    def pareto(self, run_id: str, *, fidelity: str | None = None) -> list[CandidateRow]:
        from evomerge.pareto import pareto_front

        with self.engine.connect() as conn:
            run = conn.execute(select(Run.objectives).where(Run.id == run_id)).scalar_one()
            names = [o["name"] for o in run]
            directions = [o.get("direction", "maximize") for o in run]
            ok_idx = select(Candidate.idx).where(self._complete(run_id, fidelity))
            data = conn.execute(select(ObjectiveValue.idx, ObjectiveValue.name, ObjectiveValue.value).where(
                ObjectiveValue.run_id == run_id, ObjectiveValue.idx.in_(ok_idx))).all()
            if not data:
                return []
            idx = np.array([d[0] for d in data])
            col = {n: j for j, n in enumerate(names)}
            uniq, pos = np.unique(idx, return_inverse=True)
            values = np.full((len(uniq), len(names)), np.nan)
            values[pos, [col.get(d[1], 0) for d in data]] = [d[2] for d in data]
            front = [int(uniq[i]) for i in pareto_front(values, directions)]
            rows = [candidate_row(c) for c in conn.execute(select(Candidate).where(
                Candidate.run_id == run_id, Candidate.idx.in_(front)).order_by(Candidate.idx)).all()]
            return self._decorate(conn, run_id, rows, False)

    # ------------------------------------------------------------------ snapshots
    def save_snapshot(self, lease: Lease, told: int, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        with self._tx() as conn:
            self._fence(conn, lease)
            seq = (conn.execute(select(func.max(Snapshot.seq)).where(Snapshot.run_id == lease.run_id)).scalar() or 0) + 1
            conn.execute(insert(Snapshot).values(run_id=lease.run_id, seq=seq, told=told, state=state,
                                                 arrays=buf.getvalue(), created_at=time.time()))
            conn.execute(delete(Snapshot).where(Snapshot.run_id == lease.run_id, Snapshot.seq <= seq - SNAPSHOTS_KEPT))

    def latest_snapshot(self, run_id: str, *, warn: Callable[[str], None] | None = None
                        ) -> tuple[int, dict[str, Any], dict[str, np.ndarray]] | None:
        """The newest readable strategy snapshot (told, state, arrays), or None.

        A snapshot's arrays must be an ``.npz`` (a zip of ``.npy`` files) holding no object
        arrays: anything else, a pickle above all, is never handed to a loader that could
        unpickle it. Such a snapshot (or one whose state is not a JSON object) is skipped with a
        warning through ``warn`` (default: the ``evomerge.store`` logger) and the next older one
        is tried. Snapshots only cross-check the replay (promise 3), so a resume loses nothing."""
        with self.engine.connect() as conn:
            snaps = conn.execute(select(Snapshot.seq, Snapshot.told, Snapshot.state, Snapshot.arrays)
                                 .where(Snapshot.run_id == run_id).order_by(Snapshot.seq.desc())).all()
        for s in snaps:
            try:
                if not isinstance(s.state, dict):
                    raise CorruptArtifactError(f"its state is a {type(s.state).__name__}, not a JSON object")
                return s.told, s.state, read_npz(s.arrays)
            except CorruptArtifactError as err:
                msg = (f"run {run_id}: strategy snapshot {s.seq} (at {s.told} tells) is skipped, never loaded: "
                       f"{err.message}")
                (warn or _log.warning)(msg)
        return None


NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header; an empty zip's end record


def read_npz(blob: Any) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` blob, with no path to unpickling: the bytes must start as a zip
    (a pickle or a bare ``.npy`` is refused before any loader sees it) and are read with
    ``allow_pickle=False`` (an object array is refused). Raises CorruptArtifactError."""
    data = bytes(blob) if isinstance(blob, bytes | bytearray | memoryview) else None
    if data is None or data[:4] not in NPZ_MAGIC:
        what = "a pickle" if data is not None and data[:1] == b"\x80" else "not an .npz archive"
        raise CorruptArtifactError(f"its arrays are {what}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise CorruptArtifactError(f"its arrays do not load as a pickle-free .npz ({err})") from None
