"""Driver overhead per candidate with a no-op evaluator, at 1, 2, 8 and 32 Ray workers.

    python -m bench.driver_overhead [--workers 1,2,8,32] [--candidates 400] [--strategy random]

The synthetic evaluator scores a recipe from its numbers (microseconds), so everything measured
is the service's own cost: ask, decode, persist PENDING (SQLite, WAL), claim, dispatch to a Ray
actor, receive, commit exactly once, tell, snapshot. Columns: wall time per candidate, the
driver's own busy time per candidate (its loop minus waiting for results), and the driver
process's CPU time per candidate. Target: driver busy time under 5 ms per candidate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def space_file(tmp: Path, strategy: str, budget: int) -> Path:
    from evomerge.zoo import default_zoo_dir, ensure_zoo

    ensure_zoo(log=print)
    zoo = default_zoo_dir()
    strat = {"random": "{name: random}", "cmaes": "{name: cmaes, popsize: 16}",
             "m2n2": "{name: m2n2, archive_size: 20}"}[strategy]
    p = tmp / "space.yaml"
    p.write_text(f"name: overhead\nbase: {zoo / 'base'}\nexperts: [{zoo / 'expert_add'}, {zoo / 'expert_caesar'}, "
                 f"{zoo / 'expert_length'}]\nmerge_method: task_arithmetic\nvary: {{weight: {{low: 0, high: 1.5}}}}\n"
                 f"objectives: [{{task: {REPO / 'fitness/zoo_add.yaml'}}}, {{task: {REPO / 'fitness/zoo_caesar.yaml'}}}]\n"
                 f"strategy: {strat}\nbudget: {budget}\nseed: 0\n")
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,8,32")
    ap.add_argument("--candidates", type=int, default=400)
    ap.add_argument("--strategy", default="random")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from evomerge import api

    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        space = space_file(tmp, args.strategy, args.candidates)
        ray.init(num_cpus=64, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        for w in [int(x) for x in args.workers.split(",")]:
            holder = {}

            def progress(d, holder=holder):  # type: ignore[no-untyped-def]
                holder["driver"] = d

            db = f"sqlite:///{tmp / f'w{w}.db'}"
            cpu0, t0 = time.process_time(), time.perf_counter()
            out = api.search(space, db=db, engine="synthetic", backend="ray", workers=w, cpus_per_worker=0.01,
                             name=f"w{w}", log=lambda _m: None, progress=progress)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            drv = holder["driver"]
            n = out.told
            rows.append((w, n, wall, 1000 * wall / n, 1000 * drv.stats.driver_s / n, 1000 * cpu / n))
            print(f"workers {w}: {n} candidates in {wall:.1f} s", flush=True)
        ray.shutdown()
    print(f"\nDriver overhead per candidate, no-op (synthetic) evaluator, strategy {args.strategy}, SQLite archive, "
          f"local Ray on {os.cpu_count()} cores (wall includes starting the actors).\n")
    print("| workers | candidates | wall s | wall ms/candidate | driver busy ms/candidate | driver CPU ms/candidate |")
    print("|---|---|---|---|---|---|")
    for w, n, wall, wpc, busy, cpu in rows:
        print(f"| {w} | {n} | {wall:.1f} | {wpc:.2f} | {busy:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
