"""Source memory per worker and per node, private reads against mapped sources (issue 20).

    python -m bench.source_memory [--workers 2] [--candidates 5] [--experts 3]

SmolLM2-135M-Instruct (bench/smollm2.py, float32, 538 MB) as the base and up to 3 experts
(bench/merge_smollm2.py's ``dense`` experts: seeded noise on every tensor but the embeddings;
their content does not matter for memory: each file is as large as the base's). For each mode, ``--workers`` worker
processes (spawned, as Ray starts its workers: separate address spaces on one node) each hold the
sources resident (evomerge.evaluate.resident) and write ``--candidates`` task-arithmetic
candidates into one live transformers model (HFEvaluator.write_weights, the search path's merge).

Per mode: each worker's resident set (RSS: shared pages counted in every process that maps them)
and proportional set (PSS: a shared page counted once, split among the processes sharing it) after
its candidates, the node's total PSS (what the node really holds for the workers), and the merge
seconds per candidate after the first (median over workers and candidates). The page cache is
dropped before each mode (``echo 1 > /proc/sys/vm/drop_caches`` when permitted) so the first
mapping reads from disk as a fresh node would.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path


def memory() -> tuple[int, int]:
    """(RSS, PSS) of this process in bytes, from /proc/self/smaps_rollup."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields["Rss"], fields["Pss"]


def worker(mapped: bool, base: str, expert_dirs: list[str], candidates: int, go, out) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.evaluate.resident import ResidentSources
    from evomerge.recipe import recipe_from_dict

    torch.set_num_threads(1)
    ev = HFEvaluator()
    ev.resident = ResidentSources(mapped=mapped)
    rng = np.random.default_rng(os.getpid())
    go.wait()  # both workers start together, as a node's workers do
    t0 = time.perf_counter()
    ev.load_sources({"base": base, **{f"e{i}": e for i, e in enumerate(expert_dirs)}})
    load = time.perf_counter() - t0
    seconds = []
    for _ in range(candidates):
        recipe = recipe_from_dict({"merge_method": "task_arithmetic", "base_model": base,
                                   "models": [{"model": e, "parameters": {"weight": float(w)}}
                                              for e, w in zip(expert_dirs, rng.uniform(0, 1, len(expert_dirs)),
                                                              strict=True)]})
        t0 = time.perf_counter()
        ev.build_seconds = 0.0
        ev.write_weights(recipe)
        seconds.append(time.perf_counter() - t0 - ev.build_seconds)
    rss, pss = memory()
    out.put({"pid": os.getpid(), "load": load, "merge": seconds[1:], "rss": rss, "pss": pss})
    go.wait()  # hold the mappings until every worker has measured


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=5)
    ap.add_argument("--experts", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.merge_smollm2 import expert_dirs as dense_experts
    from bench.smollm2 import ensure_smollm2

    base = ensure_smollm2()
    expert_dirs = dense_experts(base, "dense")[:args.experts]
    size = sum(f.stat().st_size for d in [base, *expert_dirs] for f in d.glob("*.safetensors"))
    ctx = mp.get_context("spawn")
    rows = {}
    for mode in ("private", "mapped"):
        dropped = drop_caches()
        go, out = ctx.Barrier(args.workers), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(mode == "mapped", str(base), [str(e) for e in expert_dirs],
                                                  args.candidates, go, out)) for _ in range(args.workers)]
        for p in procs:
            p.start()
        got = [out.get(timeout=1800) for _ in procs]
        for p in procs:
            p.join(timeout=600)
        rows[mode] = got
        print(f"{mode}: page cache dropped first: {dropped}; " + ", ".join(
            f"worker {g['pid']}: load {g['load']:.2f} s, RSS {g['rss'] / 2**30:.2f} GiB, PSS {g['pss'] / 2**30:.2f} GiB"
            for g in got), flush=True)
    gib = 2 ** 30
    print(f"\nSmolLM2-135M fp32, base + {args.experts} experts ({size / gib:.2f} GiB of safetensors), "
          f"{args.workers} workers, {args.candidates} task-arithmetic candidates each (merge into a live model).\n")
    print("| sources | RSS per worker (GiB) | PSS per worker (GiB) | node: PSS of all workers (GiB) | "
          "load (s) | merge per candidate (s, median) |")
    print("|---|---|---|---|---|---|")
    for mode, got in rows.items():
        merge = statistics.median(s for g in got for s in g["merge"])

        def each(key: str, scale: float = gib, got=got) -> str:
            return " / ".join(f"{g[key] / scale:.2f}" for g in got)

        print(f"| {mode} | {each('rss')} | {each('pss')} | {sum(g['pss'] for g in got) / gib:.2f} | "
              f"{each('load', 1.0)} | {merge:.3f} |", flush=True)


if __name__ == "__main__":
    main()
