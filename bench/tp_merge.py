"""Merge work per tensor-parallel rank on a real model: SmolLM2-135M-Instruct (issue 20).

    python -m bench.tp_merge [--tp 3] [--methods task_arithmetic,ties,dare_ties] [--repeats 5]

Under tensor parallelism each vLLM rank merges only its own part of every tensor
(evomerge/evaluate/vllm_shards.py: q/k/v and gate/up rows, o/down columns, shared key/value
heads, the padded vocabulary's rows; norms whole). This measures what that saves, in this
process, with the search path a vLLM worker runs (``ResidentSources``, ``plan_merge``,
``merge_into`` into staging buffers that are reused across candidates): base + 3 dense experts
(bench/merge_smollm2.py), float32, every rank of each degree in turn on the same CPU threads. No
vLLM engine is started, so a degree the machine's CPUs could not host is measured too (SmolLM2:
9 query heads, 3 key/value heads, MLP 1536: TP 3 is the one degree above 1 that divides them
all; TP 1, the whole merge, is always measured first). Per degree: the median over ``--repeats``
of each rank's merge (after one warm-up merge that builds the rank indexes), the slowest rank
(what a TP step waits for), the share of entries merged per rank and the speed-up of the slowest
rank over the whole merge (the ideal is the degree).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tp", default="3")
    ap.add_argument("--methods", default="task_arithmetic,ties,dare_ties")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from bench.merge_smollm2 import WEIGHTS, expert_dirs
    from bench.smollm2 import ensure_smollm2
    from evomerge.evaluate.resident import ResidentSources
    from evomerge.evaluate.vllm_shards import rank_parts
    from evomerge.merge.materialize import merge_into
    from evomerge.merge.plan import plan_merge
    from evomerge.recipe import recipe_from_dict

    base = ensure_smollm2()
    experts = expert_dirs(base, "dense")
    resident = ResidentSources()
    degrees = [int(t) for t in args.tp.split(",")]
    print(f"SmolLM2-135M float32, base + 3 dense experts, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} per rank\n")
    print("| method | TP | whole merge (s) | per rank, mean (s) | slowest rank (s) | entries merged per rank | "
          "speed-up of the slowest rank | ideal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        models = [{"model": str(e), "parameters": {"weight": w, **({} if method == "task_arithmetic" else {"density": 0.5})}}
                  for e, w in zip(experts, WEIGHTS, strict=True)]
        recipe = recipe_from_dict({"merge_method": method, "base_model": str(base), "models": models})
        plan = plan_merge(recipe, resident.for_recipe(recipe.source_names()))
        buffers = {m.name: torch.empty(m.shape, dtype=m.dtype) for m in plan.metas}
        total = sum(math.prod(m.shape) for m in plan.metas)
        whole = None
        for tp in sorted(set(degrees) | {1}):
            per_rank, shares = [], []
            for rank in range(tp):
                parts = rank_parts(plan.config, ((m.name, tuple(m.shape)) for m in plan.metas), rank, tp)
                merge_into(plan, buffers, seed=0, parts=parts)  # warm-up: rank indexes, pages
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    merge_into(plan, buffers, seed=0, parts=parts)
                    times.append(time.perf_counter() - t0)
                per_rank.append(statistics.median(times))
                unmerged = sum(buffers[n].numel() - buffers[n].narrow(p.dim, p.start, p.length).numel()
                               for n, p in parts.items())
                shares.append((total - unmerged) / total)
            whole = per_rank[0] if tp == 1 else whole  # TP 1 comes first: the whole merge
            slowest = max(per_rank)
            print(f"| {method} | {tp} | {whole:.3f} | {statistics.mean(per_rank):.3f} | {slowest:.3f} | "
                  f"{min(shares):.3f}-{max(shares):.3f} | {whole / slowest:.2f}x | {tp}x |", flush=True)


if __name__ == "__main__":
    main()
