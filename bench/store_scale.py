"""Archive figures at 10^5 and 10^6 candidates, SQLite and PostgreSQL side by side.

    python -m bench.store_scale [--sizes 100000,1000000] [--backends sqlite,postgres]

For each size: the archive is filled (PENDING rows through ``add_candidates`` in batches of
1000, then results written in bulk: fitness, 3 objective values, ~400-byte recipe JSON), then
measured: the driver's transactional path per candidate (claim + complete with objectives and
50 per-item scores, on 2000 extra candidates), ``best`` (k=10, by fitness and by an objective)
and ``pareto`` latency (median of 5), and the database size. PostgreSQL is a throwaway local
cluster (tests/pg.py; fsync off, as a benchmark box).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

OBJ = [{"name": f"task{k}", "direction": "maximize", "weight": 1.0} for k in range(3)]
RECIPE = json.dumps({"merge_method": "dare_ties", "base_model": "/models/base", "models": [
    {"model": f"/models/expert_{e}", "parameters": {"weight": [0.812345, 1.023456], "density": [0.5, 0.7]}}
    for e in range(3)], "parameters": {"lambda": 1.0}}, sort_keys=True)


def fill(store, n: int) -> tuple[str, float]:
    from sqlalchemy import insert, update

    from evomerge.store import NewCandidate
    from evomerge.store.models import Candidate, ObjectiveValue

    run = store.create_run(name=f"n{n}", space_yaml="x", space_hash="h", config={}, seed=0, budget=n + 2000, objectives=OBJ)
    lease = store.acquire_lease(run.id, "bench", 3600)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        store.add_candidates(lease, [NewCandidate(i, i // 16, RECIPE, f"r-{i:016x}", rng.random(6).round(6).tolist(), (max(0, i - 1),))
                                     for i in range(start, min(n, start + 1000))])
    add_rate = n / (time.perf_counter() - t0)
    vals = rng.random((n, 3))
    with store.engine.begin() as conn:  # results in bulk (a finished run's worth)
        for start in range(0, n, 20000):
            stop = min(n, start + 20000)
            conn.execute(insert(ObjectiveValue), [{"run_id": run.id, "idx": i, "name": f"task{k}", "value": float(vals[i, k])}
                                                  for i in range(start, stop) for k in range(3)])
        conn.execute(update(Candidate).where(Candidate.run_id == run.id).values(status="COMPLETE", attempts=1))
        # fitness = sum of the objectives, computed in SQL
        from sqlalchemy import func, select

        sub = (select(func.sum(ObjectiveValue.value)).where(ObjectiveValue.run_id == Candidate.run_id,
                                                            ObjectiveValue.idx == Candidate.idx).scalar_subquery())
        conn.execute(update(Candidate).where(Candidate.run_id == run.id).values(fitness=sub))
    if store.is_pg:  # fresh statistics, as autovacuum would have gathered on a long-lived archive
        from sqlalchemy import text

        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    return run.id, add_rate


def driver_path(store, run_id: str, n0: int, m: int = 2000) -> float:
    from evomerge.result import EvalResult, Status
    from evomerge.store import NewCandidate

    lease = store.acquire_lease(run_id, "bench", 3600)  # the same owner: a restarted driver
    store.add_candidates(lease, [NewCandidate(n0 + i, 0, RECIPE, f"r-x{i}", [0.5] * 6) for i in range(m)])
    scores = {f"task{k}": [1.0, 0.0] * 25 for k in range(3)}
    t0 = time.perf_counter()
    for i in range(m):
        a = store.claim(lease, n0 + i, "w")
        store.complete(lease, n0 + i, a, EvalResult(status=Status.COMPLETE, objectives={f"task{k}": 0.1 for k in range(3)},
                                                    item_scores=scores, seconds=1.0), fitness=0.3)
    return m / (time.perf_counter() - t0)


def timed(fn, reps: int = 5) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def size_of(store, url: str) -> int:
    if url.startswith("sqlite"):
        p = Path(url.split("sqlite:///", 1)[1])
        return sum(f.stat().st_size for f in p.parent.glob(p.name + "*"))
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return int(conn.execute(text("select pg_database_size(current_database())")).scalar())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--backends", default="sqlite,postgres")
    args = ap.parse_args()
    from evomerge.store import Store

    rows = []
    cluster = None
    with tempfile.TemporaryDirectory() as d:
        for backend in args.backends.split(","):
            for n in [int(s) for s in args.sizes.split(",")]:
                if backend == "sqlite":
                    url = f"sqlite:///{Path(d) / f'bench-{n}.db'}"
                else:
                    from tests.pg import Cluster, new_database

                    cluster = cluster or Cluster()
                    url = new_database(cluster.url())
                store = Store.open(url)
                t0 = time.perf_counter()
                run_id, add_rate = fill(store, n)
                fill_s = time.perf_counter() - t0
                drv = driver_path(store, run_id, n)
                best = timed(lambda s=store, r=run_id: s.best(r, k=10))
                best_obj = timed(lambda s=store, r=run_id: s.best(r, objective="task1", k=10))
                par = timed(lambda s=store, r=run_id: s.pareto(r), reps=3)
                front = len(store.pareto(run_id))
                mb = size_of(store, url) / 2**20
                rows.append((backend, n, add_rate, drv, best * 1000, best_obj * 1000, par * 1000, front, mb, fill_s))
                print(f"{backend} {n}: done", flush=True)
                store.close()
        if cluster is not None:
            cluster.stop()
    print(f"\nArchive at scale ({os.cpu_count()} cores; 3 objectives per candidate; latencies are medians)\n")
    print("| backend | candidates | add PENDING /s (batches of 1000) | driver path /s (claim + complete) "
          "| best k=10 ms | best by objective ms | pareto ms (front size) | size MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for b, n, add, drv, bst, bo, par, front, mb, _ in rows:
        print(f"| {b} | {n:,} | {add:,.0f} | {drv:,.0f} | {bst:.1f} | {bo:.1f} | {par:,.0f} ({front}) | {mb:,.0f} |")


if __name__ == "__main__":
    main()
