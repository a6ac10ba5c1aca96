"""The dashboard's reads of the archive, on an engine that cannot write.

Every query is bounded by the archive's indexes: a run's candidates by their primary key
(run_id, idx), by ``ix_candidates_status`` or ``ix_candidates_fitness``; objective values by
their primary key or ``ix_objectives_name_value``. Nothing here loads a whole run's recipes,
scores or genomes: pages of rows, the best few recipes, two candidates' item scores. The one
whole-run read is the run page's points (index, status, fitness, objectives, fidelity, times;
a few numbers per candidate), sent once and then incrementally (:meth:`ReadOnlyArchive.points`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from evomerge.errors import ConfigError, SchemaError
from evomerge.result import TERMINAL, Status
from evomerge.store.models import Candidate, ItemScores, ObjectiveValue, Run, SourceScore
from evomerge.store.records import MAX_INDEX, unpack_scores
from evomerge.store.schema import make_engine, schema_state, shown_url

PAGE_MAX = 500  # candidates per table page
POINTS_CHUNK = 20000  # finished candidates per incremental points call
SAMPLE_MAX = 5000  # candidates in a first-paint sample
TOP_MAX = 100  # candidates averaged in a heatmap
ERROR_CHARS = 2000  # an error text is cut to this many characters on the page
RATE_WINDOW = 50  # the last finished candidates the throughput is measured over
_TERMINAL = [s.value for s in TERMINAL]
_FAILED = ("FAILED", "INVALID", "TIMEOUT")
SORT_COLUMNS = {"index": Candidate.idx, "fitness": Candidate.fitness, "generation": Candidate.generation,
                "seconds": Candidate.seconds}


def _fetch(conn: Connection, stmt: Any) -> list[tuple]:
    """The rows of a bulk read as plain tuples from the database driver's own cursor (SQLAlchemy's
    row objects cost more than the query at 10^5 rows). The statement's values (a run id from the
    archive, integers) are rendered as SQL literals by the dialect's own quoting."""
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cur = conn.connection.cursor()
    try:
        cur.execute(sql)
        return [tuple(row) for row in cur.fetchall()]
    finally:
        cur.close()


def _rounded(values: list[float | None]) -> list[float | None]:
    """Six decimals: what a plot or a table can show, at half the JSON of full precision."""
    return [None if v is None else round(v, 6) for v in values]


class ReadOnlyArchive:
    """An archive opened for reading only (SQLite ``mode=ro``, PostgreSQL read-only sessions);
    refuses a database that is not an evomerge archive at this evomerge's schema version."""

    def __init__(self, url: str) -> None:
        self.url, self.shown = url, shown_url(url)
        self.engine = make_engine(url, read_only=True)
        rev, head = schema_state(self.engine, url)
        if rev is None:
            self.engine.dispose()
            raise ConfigError(f"{self.shown} holds no evomerge archive", hint="point --db at the archive a search "
                              "writes (default sqlite:///./evomerge.db)")
        if rev != head:
            self.engine.dispose()
            raise SchemaError(f"{self.shown} is at schema version {rev}; this evomerge reads {head}",
                              hint="back it up, then run `evomerge db upgrade --db URL` (the dashboard never writes)")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():  # one snapshot per request
            yield conn

    # ------------------------------------------------------------------ runs
    def _run(self, conn: Connection, ref: str) -> Any:
        r = conn.execute(select(Run).where(or_(Run.id == ref, Run.name == ref))).first()
        if r is None:
            raise KeyError(ref)
        return r

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first: status, strategy, engine, progress, best fitness, times."""
        with self._conn() as conn:
            return [self._run_dict(conn, r) for r in conn.execute(select(Run).order_by(Run.created_at.desc())).all()]

    def _run_dict(self, conn: Connection, r: Any) -> dict[str, Any]:
        """A run's row with its progress: counts by status (one pass over ``ix_candidates_status``),
        the best fitness (the top of ``ix_candidates_fitness``; only COMPLETE rows have one), the
        last finish time, the rate and ETA (both from the newest candidates by index)."""
        space = (r.config or {}).get("space", {})
        counts: dict[str, int] = {}
        fidelity: dict[str, int] = {}
        cached = 0
        for status, fid, is_copy, n in conn.execute(  # one pass over ix_candidates_progress
                select(Candidate.status, Candidate.fidelity, Candidate.cached_from.is_not(None), func.count())
                .where(Candidate.run_id == r.id)
                .group_by(Candidate.status, Candidate.fidelity, Candidate.cached_from.is_not(None))).all():
            counts[status] = counts.get(status, 0) + int(n)
            cached += int(n) if is_copy else 0
            if status == Status.COMPLETE.value:
                fidelity[fid] = fidelity.get(fid, 0) + int(n)
        best = conn.execute(select(Candidate.fitness).where(Candidate.run_id == r.id, Candidate.fitness.is_not(None))
                            .order_by(Candidate.fitness.desc()).limit(1)).scalar()
        recent = self._recent_finishes(conn, r.id)
        done = sum(counts.get(s, 0) for s in _TERMINAL)
        return {"id": r.id, "name": r.name, "status": r.status, "kind": space.get("kind"),
                "strategy": (space.get("strategy") or {}).get("name"), "engine": (r.config or {}).get("engine"),
                "budget": r.budget, "seed": r.seed, "done": done, "counts": counts, "cached": cached,
                "failed": sum(counts.get(s, 0) for s in _FAILED), "best": best,
                "created_at": r.created_at, "updated_at": max([r.updated_at or 0.0, *recent]),
                "objectives": r.objectives, "fidelity": fidelity, **self._rate(recent, r.budget - done)}

    def _recent_finishes(self, conn: Connection, run_id: str) -> list[float]:
        """The finish times of the run's newest candidates by index (the primary key's range; a
        run's candidates finish roughly in index order), oldest first, at most ``RATE_WINDOW``."""
        times = [t for (t,) in conn.execute(select(Candidate.finished_at).where(Candidate.run_id == run_id)
                                            .order_by(Candidate.idx.desc()).limit(4 * RATE_WINDOW)).all()
                 if t is not None]
        return sorted(times)[-RATE_WINDOW:]

    def run(self, ref: str) -> dict[str, Any]:
        """One run: its row, counts, throughput and ETA, errors by text, the space's varied names."""
        with self._conn() as conn:
            r = self._run(conn, ref)
            d = self._run_dict(conn, r)
            space = (r.config or {}).get("space", {})
            d["vary"] = sorted((space.get("vary") or {}).keys())
            d["space_yaml"] = r.space_yaml
            d["lease_owner"] = r.lease_owner
            errors = conn.execute(
                select(Candidate.status, Candidate.error, func.count(), func.min(Candidate.idx))
                .where(Candidate.run_id == r.id, Candidate.status.in_(_FAILED))
                .group_by(Candidate.status, Candidate.error).order_by(func.count().desc()).limit(20)).all()
            d["errors"] = [{"status": s, "error": (e or "")[:ERROR_CHARS], "count": int(n), "first": int(i)}
                           for s, e, n, i in errors]
            d["sources"] = [{"name": x.name, "role": x.role, "status": x.status, "objectives": x.objectives,
                             "fitness": x.fitness, "error": (x.error or "")[:ERROR_CHARS] or None}
                            for x in conn.execute(select(SourceScore).where(SourceScore.run_id == r.id)
                                                  .order_by(SourceScore.created_at)).all()]
            return d

    @staticmethod
    def _rate(times: list[float], left: int) -> dict[str, Any]:
        """Candidates per second over the newest finishes and the ETA of what is left at that
        rate (the CLI's progress line divides the same way)."""
        if len(times) < 2 or times[-1] <= times[0]:
            return {"rate": None, "eta_s": None}
        rate = (len(times) - 1) / (times[-1] - times[0])
        return {"rate": rate, "eta_s": left / rate if left > 0 else 0.0}

    # ------------------------------------------------------------------ points (live)
    def points(self, ref: str, after: int = 0, limit: int = POINTS_CHUNK, sample: int | None = None) -> dict[str, Any]:
        """The finished candidates as columns (index, status, fitness, fidelity, each objective).

        Incremental: those with index >= ``after``, at most ``limit`` (a range of the primary
        key), and ``next``, the cursor for the next call: the lowest index not finished yet, or
        past the last row sent (candidates finish out of order, so rows at or past it may come
        twice; the page keys them by index). ``sample=N``: instead, about N finished candidates
        spread evenly over the run's indices (primary-key lookups), for a first paint of a large
        run before the chunks arrive; ``next`` is then ``after`` unchanged."""
        if not 0 <= after <= MAX_INDEX:
            raise ValueError("after is out of range")
        limit = max(1, min(int(limit), POINTS_CHUNK))
        with self._conn() as conn:
            r = self._run(conn, ref)
            names = [o["name"] for o in r.objectives]
            top = conn.execute(select(func.max(Candidate.idx)).where(Candidate.run_id == r.id)).scalar()
            terminal = Candidate.status.in_(_TERMINAL)
            base = select(Candidate.idx, Candidate.status, Candidate.fitness, Candidate.fidelity)
            if sample is not None:
                n = max(1, min(int(sample), SAMPLE_MAX))
                span = (top or 0) + 1
                want = sorted({i * span // n for i in range(n)})
                rows = _fetch(conn, base.where(Candidate.run_id == r.id, Candidate.idx.in_(want), terminal)
                              .order_by(Candidate.idx))
                cursor = after
            else:
                rows = _fetch(conn, base.where(Candidate.run_id == r.id, Candidate.idx >= after, terminal)
                              .order_by(Candidate.idx).limit(limit))
                pending = conn.execute(select(func.min(Candidate.idx)).where(
                    Candidate.run_id == r.id, Candidate.idx >= after,
                    Candidate.status.in_([Status.PENDING.value, Status.RUNNING.value]))).scalar()
                past = rows[-1][0] + 1 if len(rows) == limit else (top + 1 if top is not None else after)
                cursor = max(after, past if pending is None else min(pending, past))
            idx = [int(x[0]) for x in rows]
            values: dict[str, dict[int, float]] = {n: {} for n in names}
            if idx:
                q = select(ObjectiveValue.idx, ObjectiveValue.name, ObjectiveValue.value).where(
                    ObjectiveValue.run_id == r.id)
                q = q.where(ObjectiveValue.idx.in_(idx)) if sample is not None else q.where(
                    ObjectiveValue.idx >= idx[0], ObjectiveValue.idx <= idx[-1])
                for i, n, v in _fetch(conn, q):
                    if n in values:
                        values[n][i] = v
            return {"next": int(cursor), "last": None if top is None else int(top), "index": idx,
                    "status": [x[1] for x in rows], "fitness": _rounded([x[2] for x in rows]),
                    "fidelity": [x[3] for x in rows],
                    "objectives": {n: _rounded([values[n].get(i) for i in idx]) for n in names}}

    # ------------------------------------------------------------------ the table
    def candidates(self, ref: str, *, sort: str = "index", desc: bool = False, status: str | None = None,
                   fidelity: str | None = None, objective: str | None = None, low: float | None = None,
                   high: float | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """One page of a run's candidates: sorted by index, fitness, generation, seconds or an
        objective (``sort="objective:NAME"``); filtered by status, fidelity and an objective's range."""
        limit = max(1, min(int(limit), PAGE_MAX))
        offset = max(0, min(int(offset), MAX_INDEX))
        with self._conn() as conn:
            r = self._run(conn, ref)
            names = [o["name"] for o in r.objectives]
            cond = [Candidate.run_id == r.id]
            if status:
                if status not in {s.value for s in Status}:
                    raise ValueError(f"status {status!r} is not one of {[s.value for s in Status]}")
                cond.append(Candidate.status == status)
            if fidelity:
                cond.append(Candidate.fidelity == fidelity)
            q = select(Candidate.idx, Candidate.generation, Candidate.status, Candidate.fitness, Candidate.fidelity,
                       Candidate.items_scored, Candidate.seconds, Candidate.worker, Candidate.cached_from,
                       Candidate.attempts, Candidate.error, Candidate.parents)
            obj_sort = sort.removeprefix("objective:") if sort.startswith("objective:") else None
            join_name = objective if (low is not None or high is not None) else obj_sort
            if join_name is not None:
                if join_name not in names:
                    raise ValueError(f"run {r.name} has no objective {join_name!r}")
                q = q.join(ObjectiveValue, and_(ObjectiveValue.run_id == Candidate.run_id,
                                                ObjectiveValue.idx == Candidate.idx, ObjectiveValue.name == join_name))
                if low is not None:
                    cond.append(ObjectiveValue.value >= low)
                if high is not None:
                    cond.append(ObjectiveValue.value <= high)
            if obj_sort is not None and obj_sort != join_name:
                raise ValueError("sort by the objective the range filters, or by a column")
            if obj_sort is not None:
                key = ObjectiveValue.value
            elif sort in SORT_COLUMNS:
                key = SORT_COLUMNS[sort]
                if sort in ("fitness", "seconds"):  # rows that have one (so the fitness index orders them)
                    cond.append(key.is_not(None))
            else:
                raise ValueError(f"sort {sort!r} is not one of {list(SORT_COLUMNS)} or objective:NAME")
            q = q.where(*cond)
            if join_name is not None and len(cond) == 1 and low is None and high is None:
                # every row of the join is one of the objective's values: count those (a covering index)
                total = conn.execute(select(func.count()).where(ObjectiveValue.run_id == r.id,
                                                                ObjectiveValue.name == join_name)).scalar()
            elif join_name is None:
                total = conn.execute(select(func.count()).where(*cond)).scalar()
            else:
                total = conn.execute(select(func.count()).select_from(q.subquery())).scalar()
            order = key.desc() if desc else key.asc()
            page = conn.execute(q.order_by(order, Candidate.idx).offset(offset).limit(limit)).all()
            idx = [int(x.idx) for x in page]
            objs: dict[int, dict[str, float]] = {}
            if idx:
                for i, n, v in conn.execute(select(ObjectiveValue.idx, ObjectiveValue.name, ObjectiveValue.value)
                                            .where(ObjectiveValue.run_id == r.id, ObjectiveValue.idx.in_(idx))).all():
                    objs.setdefault(i, {})[n] = v
            rows = [{"index": int(x.idx), "generation": x.generation, "status": x.status, "fitness": x.fitness,
                     "fidelity": x.fidelity, "items_scored": x.items_scored, "seconds": x.seconds,
                     "worker": x.worker, "cached_from": x.cached_from, "attempts": x.attempts,
                     "error": (x.error or "")[:200] or None, "parents": list(x.parents or ()),
                     "objectives": objs.get(int(x.idx), {})} for x in page]
            return {"total": int(total or 0), "offset": offset, "limit": limit, "objectives": names, "rows": rows}

    # ------------------------------------------------------------------ one candidate
    def candidate(self, ref: str, index: int) -> dict[str, Any]:
        """A candidate's row, objectives with intervals, recipe (canonical and as mergekit YAML),
        parents and children, the run it belongs to."""
        from evomerge.recipe import stored_recipe

        if not 0 <= index <= MAX_INDEX:
            raise KeyError(index)
        with self._conn() as conn:
            r = self._run(conn, ref)
            c = conn.execute(select(Candidate).where(Candidate.run_id == r.id, Candidate.idx == index)).first()
            if c is None:
                raise KeyError(index)
            objs = {n: {"value": v, "low": lo, "high": hi} for n, v, lo, hi in conn.execute(
                select(ObjectiveValue.name, ObjectiveValue.value, ObjectiveValue.low, ObjectiveValue.high)
                .where(ObjectiveValue.run_id == r.id, ObjectiveValue.idx == index)).all()}
            recipe = json.loads(c.recipe_json)
            try:
                mergekit_yaml = stored_recipe(recipe).to_yaml()
            except Exception as err:  # an archive written by another version: show why, not a 500
                mergekit_yaml = f"# this recipe does not read as a mergekit config here: {err}"
            children = self._children(conn, r.id, index)
            return {"run": r.name, "run_id": r.id, "index": int(c.idx), "generation": c.generation,
                    "status": c.status, "fitness": c.fitness, "fidelity": c.fidelity, "items_scored": c.items_scored,
                    "stop_reason": c.stop_reason, "race_ref": c.race_ref, "attempts": c.attempts, "worker": c.worker,
                    "started_at": c.started_at, "finished_at": c.finished_at, "seconds": c.seconds,
                    "error": (c.error or "")[:ERROR_CHARS] or None, "cached_from": c.cached_from,
                    "recipe_id": c.recipe_id, "recipe": recipe, "mergekit_yaml": mergekit_yaml,
                    "objectives": objs, "objective_order": [o["name"] for o in r.objectives],
                    "parents": list(c.parents or ()), "children": children,
                    "export": f"evomerge export {r.name}:{int(c.idx)} --out ./{r.name}-{int(c.idx)} --db {self.shown}"}

    def _children(self, conn: Connection, run_id: str, index: int) -> list[int]:
        """The candidates that name ``index`` as a parent: the parent lists' JSON text is matched
        in SQL first (one pass over the run's newer rows), then read exactly."""
        from sqlalchemy import String, cast

        out = []
        for i, parents in conn.execute(select(Candidate.idx, Candidate.parents).where(
                Candidate.run_id == run_id, Candidate.idx > index,
                cast(Candidate.parents, String).like(f"%{int(index)}%"))).all():
            if parents and index in parents:
                out.append(int(i))
        return out

    # ------------------------------------------------------------------ recipes of the best
    def top(self, ref: str, k: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the run's space, the ``k`` best COMPLETE originals' index, fitness and recipe)."""
        k = max(1, min(int(k), TOP_MAX))
        with self._conn() as conn:
            r = self._run(conn, ref)
            rows = conn.execute(select(Candidate.idx, Candidate.fitness, Candidate.recipe_json).where(
                Candidate.run_id == r.id, Candidate.status == Status.COMPLETE.value,
                Candidate.cached_from.is_(None), Candidate.fitness.is_not(None))
                .order_by(Candidate.fitness.desc(), Candidate.idx).limit(k)).all()
            return ((r.config or {}).get("space", {}),
                    [{"index": int(i), "fitness": f, "recipe": json.loads(j)} for i, f, j in rows])

    # ------------------------------------------------------------------ lineage
    def lineage(self, ref: str, k: int = 20, depth: int = 4) -> dict[str, Any]:
        """For runs whose candidates name parents (M2N2): the ``k`` best and their ancestors up to
        ``depth`` levels as nodes and edges. For the others (CMA-ES, random): per generation the
        count and the minimum, median and maximum fitness (the bands)."""
        k = max(1, min(int(k), TOP_MAX))
        with self._conn() as conn:
            r = self._run(conn, ref)
            top = [int(i) for (i,) in conn.execute(select(Candidate.idx).where(
                Candidate.run_id == r.id, Candidate.status == Status.COMPLETE.value, Candidate.fitness.is_not(None))
                .order_by(Candidate.fitness.desc(), Candidate.idx).limit(k)).all()]
            nodes: dict[int, Any] = {}
            frontier = top
            for _level in range(depth + 1):
                want = [i for i in frontier if i not in nodes]
                if not want:
                    break
                got = conn.execute(select(Candidate.idx, Candidate.generation, Candidate.fitness, Candidate.parents,
                                          Candidate.status).where(Candidate.run_id == r.id,
                                                                  Candidate.idx.in_(want))).all()
                for i, g, f, p, s in got:
                    nodes[int(i)] = {"index": int(i), "generation": g, "fitness": f, "status": s,
                                     "parents": [int(x) for x in (p or ())], "top": int(i) in top}
                frontier = [p for i in want if i in nodes for p in nodes[i]["parents"]]
            if any(n["parents"] for n in nodes.values()):
                edges = [[p, n["index"]] for n in nodes.values() for p in n["parents"] if p in nodes]
                return {"kind": "graph", "nodes": sorted(nodes.values(), key=lambda n: n["index"]), "edges": edges}
            bands = []
            by_gen: dict[int, list[float]] = {}
            for g, f in conn.execute(select(Candidate.generation, Candidate.fitness).where(
                    Candidate.run_id == r.id, Candidate.status == Status.COMPLETE.value,
                    Candidate.fitness.is_not(None))).all():
                by_gen.setdefault(int(g), []).append(float(f))
            for g in sorted(by_gen):
                v = by_gen[g]
                bands.append({"generation": g, "count": len(v), "min": min(v), "median": statistics.median(v),
                              "max": max(v)})
            return {"kind": "generations", "bands": bands}

    # ------------------------------------------------------------------ items
    def items(self, ref: str, a: int, b: int) -> dict[str, Any]:
        """Two candidates' per-item scores per task (NaN for an item a cheap fitness skipped is
        sent as None), and per task how many items both, only A, only B and neither got right
        (a score >= 0.5 counts as right)."""
        with self._conn() as conn:
            r = self._run(conn, ref)
            got: dict[int, dict[str, list[float]]] = {a: {}, b: {}}
            for i, t, data in conn.execute(select(ItemScores.idx, ItemScores.task, ItemScores.data).where(
                    ItemScores.run_id == r.id, ItemScores.idx.in_([a, b]))).all():
                got[int(i)][t] = unpack_scores(data)
            tasks = []
            for t in sorted(set(got[a]) | set(got[b])):
                sa, sb = got[a].get(t, []), got[b].get(t, [])
                n = max(len(sa), len(sb))
                clean = [[None if j >= len(s) or s[j] != s[j] else s[j] for j in range(n)] for s in (sa, sb)]
                both = only_a = only_b = neither = 0
                for x, y in zip(*clean, strict=True):
                    if x is None or y is None:
                        continue
                    ra, rb = x >= 0.5, y >= 0.5
                    both += ra and rb
                    only_a += ra and not rb
                    only_b += rb and not ra
                    neither += not (ra or rb)
                tasks.append({"task": t, "a": clean[0], "b": clean[1], "both": both, "only_a": only_a,
                              "only_b": only_b, "neither": neither})
            return {"a": a, "b": b, "tasks": tasks}
