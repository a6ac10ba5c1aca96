"""Evaluation throughput on the zoo: items and tokens per second, transformers (batched, in
place) against vLLM (one engine, in place), on the same candidate and items.

    python -m bench.eval_throughput [--no-vllm] [--repeats 3]

Rows: transformers at batch sizes 1, 16 and 64, and vLLM; for each task kind of the zoo
(greedy generation: the three skills' held-out items, 600; multiple choice by log-likelihood;
continuation log-likelihood). The candidate is the per-layer task-arithmetic merge; every engine
has it in place before timing starts (materialization is bench.candidate_turnaround's subject).
Medians over repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

FITNESS = Path(__file__).resolve().parents[1] / "fitness"
SKILLS = ["add", "caesar", "length"]


def kinds():
    from evomerge.evaluate.tasks import load_task

    return {
        "generate (3 x 200 items)": [load_task(FITNESS / f"zoo_{s}.yaml", split="heldout") for s in SKILLS],
        "choice (log-likelihood)": [load_task(FITNESS / "zoo_caesar_choice.yaml")],
        "loglik (continuation)": [load_task(FITNESS / "zoo_caesar_loglik.yaml")],
    }


def measure(evaluator, recipe, tasks, repeats: int) -> tuple[float, float, int]:
    """(items/s, tokens/s, items): medians of the evaluate phase over repeats (first call warms up)."""
    evaluator.evaluate(recipe, tasks)
    secs, toks, items = [], [], 0
    for _ in range(repeats):
        res = evaluator.evaluate(recipe, tasks)
        assert res.status == "COMPLETE", res.error
        secs.append(res.phases["evaluate"])
        toks.append(res.tokens)
        items = res.items
    s = statistics.median(secs)
    return items / s, statistics.median(toks) / s, items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evomerge.demo import fixed_recipes
    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.zoo import default_zoo_dir, ensure_zoo

    ensure_zoo(log=print)
    zoo = default_zoo_dir()
    recipe = fixed_recipes(SKILLS)["per_layer_task_arithmetic"].resolved(zoo)
    task_kinds = kinds()
    rows = []
    for batch in (1, 16, 64):
        ev = HFEvaluator(batch_size=batch)
        for kind, tasks in task_kinds.items():
            ips, tps, n = measure(ev, recipe, tasks, args.repeats)
            rows.append((f"transformers, batch {batch}", kind, n, ips, tps))
            print(f"transformers batch {batch}, {kind}: {ips:.0f} items/s", flush=True)
    if not args.no_vllm:
        from evomerge.evaluate.vllm import VLLMEvaluator

        t0 = time.perf_counter()
        ev = VLLMEvaluator()
        try:
            ev.evaluate(recipe, task_kinds["loglik (continuation)"])  # starts the engine
            start = time.perf_counter() - t0
            for kind, tasks in task_kinds.items():
                ips, tps, n = measure(ev, recipe, tasks, args.repeats)
                rows.append(("vLLM (one engine, in place)", kind, n, ips, tps))
                print(f"vLLM, {kind}: {ips:.0f} items/s", flush=True)
        finally:
            ev.close()
        print(f"vLLM engine start (once per worker): {start:.1f} s")
    print(f"\nEvaluation throughput on the zoo ({os.cpu_count()} CPU cores, torch threads {__import__('torch').get_num_threads()};"
          f" medians of {args.repeats})\n")
    print("| engine | task kind | items | items/s | tokens/s |")
    print("|---|---|---:|---:|---:|")
    for engine, kind, n, ips, tps in rows:
        print(f"| {engine} | {kind} | {n} | {ips:,.0f} | {tps:,.0f} |")


if __name__ == "__main__":
    main()
