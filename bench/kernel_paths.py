"""Search-path merge time per candidate under each kernel configuration, before vs after.

    python -m bench.kernel_paths [--sizes tiny,100m] [--candidates 8] [--repeats 3]
                                 [--configs "C++ + index"] [--code OTHER_CHECKOUT]

Every candidate of a search merges the resident sources into the evaluator's live weights
(``merge_into``). Rows: the tiny trained zoo (what the demo and the tests search) and the
``100m`` scaled zoo, base + 2 experts, per merge method; columns: the configurations, each run in
a fresh process so first-candidate costs (C++ kernel load or torch.compile, rank-index builds)
show:

- ``torch, no index``: the torch.compile / eager kernels and sampled rank cuts (evomerge before
  the C++ kernel and the rank indexes: ``EVOMERGE_NATIVE=0 EVOMERGE_RANK_INDEX_MEMORY=0``);
- ``torch + index``: the same kernels with rank indexes (``EVOMERGE_NATIVE=0``);
- ``C++ + index``: the default.

Each cell: first candidate / second candidate / steady state (median of the rest), seconds, each
the median over ``--repeats`` processes (a process's steady state varies by up to +-30% here
with where its memory landed). ``--code`` runs the merges of another checkout (a worktree of an
earlier commit) with this script's setup, for before/after tables of one change.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "torch, no index": {"EVOMERGE_NATIVE": "0", "EVOMERGE_RANK_INDEX_MEMORY": "0"},
    "torch + index": {"EVOMERGE_NATIVE": "0"},
    "C++ + index": {},
}
METHODS = {
    "linear": ([{"weight": 1.0}, {"weight": 0.7}], {"normalize": True}),
    "task_arithmetic": ([{"weight": 1.0}, {"weight": 0.7}], {"lambda": 1.0}),
    "dare_ties": ([{"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3}], {"normalize": False}),
    "ties": ([{"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3}], {"normalize": True}),
    "breadcrumbs_ties": ([{"weight": 1.0, "density": 0.5, "gamma": 0.01}, {"weight": 0.7, "density": 0.3, "gamma": 0.01}],
                         {"normalize": True}),
}
LIVE = r"""
import json, statistics, sys, time, torch
from evomerge.evaluate.resident import ResidentSources
from evomerge.merge.materialize import merge_into
from evomerge.merge.plan import plan_merge
from evomerge.recipe import load_recipe
rec = load_recipe(sys.argv[1])
plan = plan_merge(rec, ResidentSources().for_recipe(rec.source_names()))
live = {m.name: torch.empty(m.shape, dtype=m.dtype) for m in plan.metas}
times = []
for i in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    merge_into(plan, live, seed=i)
    times.append(time.perf_counter() - t0)
print(json.dumps([times[0], times[1], statistics.median(times[2:])]))
"""


def sources(size: str) -> tuple[Path, Path, Path]:
    if size == "tiny":
        from evomerge.zoo import ensure_zoo

        zoo = ensure_zoo(log=print)
        return zoo / "base", zoo / "expert_add", zoo / "expert_caesar"
    from evomerge.zoo_scaled import ensure_scaled_zoo

    zoo = ensure_scaled_zoo(size, experts=2, log=print)
    return zoo / "base", zoo / "expert_0", zoo / "expert_1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,100m")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="a comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="the recipes' dtype (16-bit merges take mergekit's arithmetic, evomerge/merge/gta.py)")
    ap.add_argument("--code", type=Path, default=REPO,
                    help="the evomerge checkout the merges run (another commit's worktree: before/after)")
    args = ap.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="evomerge-bench-kp-") as tmp:
        for size in args.sizes.split(","):
            base, e0, e1 = sources(size)
            for method, (params, glob) in METHODS.items():
                cfg = Path(tmp) / f"{size}-{method}.yml"
                cfg.write_text(yaml.safe_dump({
                    "merge_method": method, "base_model": str(base), "dtype": args.dtype, "parameters": glob,
                    "models": [{"model": str(e0), "parameters": params[0]}, {"model": str(e1), "parameters": params[1]}]}))
                cells = []
                for env in configs.values():
                    runs = []
                    for _ in range(args.repeats):
                        out = subprocess.run([sys.executable, "-c", LIVE, str(cfg), str(args.candidates)], cwd=args.code,
                                             capture_output=True, text=True, env={**os.environ, **env})
                        if out.returncode != 0:
                            raise SystemExit(f"{size} {method} failed:\n{out.stderr[-2000:]}")
                        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    cells.append([statistics.median(r[i] for r in runs) for i in range(3)])
                rows.append((size, method, cells))
                print(f"  {size} {method}: " + "; ".join(f"{c[2]:.4f}" for c in cells), flush=True)
    print(f"\nSearch-path merge per candidate (first / second / steady, seconds; {args.candidates} candidates, "
          f"base + 2 experts, {args.dtype}; medians of {args.repeats} processes)\n")
    print(f"code: {args.code}\n")
    print("| zoo | merge | " + " | ".join(configs) + " | steady, first / last config |")
    print("|---|---|" + "---:|" * (len(configs) + 1))
    for size, method, cells in rows:
        fmt = " | ".join(f"{a:.3f} / {b:.3f} / {c:.4f}" for a, b, c in cells)
        print(f"| {size} | {method} | {fmt} | {cells[0][2] / cells[-1][2]:.1f}x |")


if __name__ == "__main__":
    main()
