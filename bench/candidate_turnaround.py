"""Per-candidate time split on the zoo: materialize, get the weights into the engine, evaluate.

    python -m bench.candidate_turnaround [--candidates 5] [--no-vllm]

Rows: transformers and vLLM with evomerge's in-place path (resident sources, weights written
into the live model / swapped into a running engine) beside the peers' path (write the merge to
disk, then load it: from_pretrained, or a new vLLM engine per candidate). Every row scores the
same random per-layer task-arithmetic candidates on the three zoo skills (600 items).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SKILLS = ["add", "caesar", "length"]
FITNESS = Path(__file__).resolve().parents[1] / "fitness"


def candidates(zoo: Path, n: int, seed: int = 0):
    from evomerge.recipe import recipe_from_dict

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = rng.uniform(0, 1.5, size=(3, 2)).round(3)
        out.append(recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(zoo / "base"),
                                     "models": [{"model": str(zoo / f"expert_{s}"), "parameters": {"weight": w[i].tolist()}}
                                                for i, s in enumerate(SKILLS)]}))
    return out


def run_in_place(evaluator, recipes, tasks) -> list[dict[str, float]]:
    rows = []
    for r in recipes:
        res = evaluator.evaluate(r, tasks)
        assert res.status == "COMPLETE", res.error
        s = dict(res.phases)
        rows.append({"materialize": s.get("materialize", 0.0), "load": s.get("swap", 0.0), "evaluate": s["evaluate"],
                     "mean": sum(res.objectives.values()) / len(res.objectives)})
    return rows


def run_disk(recipes, tasks, workdir: Path, load) -> list[dict[str, float]]:
    """The peers' path: write each merge to disk, ``load(dir) -> (engine, close)``, evaluate."""
    from evomerge.evaluate.base import Deadline, run_tasks
    from evomerge.merge.materialize import merge_to_dir

    rows = []
    for i, r in enumerate(recipes):
        out = workdir / f"candidate-{i}"
        t0 = time.perf_counter()
        merge_to_dir(r, out, overwrite=True)
        t1 = time.perf_counter()
        engine, close = load(out)
        t2 = time.perf_counter()
        objectives = run_tasks(engine, tasks, Deadline(None)).objectives
        t3 = time.perf_counter()
        close()
        rows.append({"materialize": t1 - t0, "load": t2 - t1, "evaluate": t3 - t2,
                     "mean": sum(objectives.values()) / len(objectives)})
    return rows


def load_hf(out: Path):  # type: ignore[no-untyped-def]
    from evomerge.evaluate.hf import HFEngine
    from evomerge.hfmodel import load_hf_model, load_hf_tokenizer

    return HFEngine(load_hf_model(out), load_hf_tokenizer(out)), lambda: None


def load_new_vllm_engine(out: Path):  # type: ignore[no-untyped-def]
    from vllm import LLM

    from evomerge.evaluate.vllm import VLLMEngine, shutdown_llm

    llm = LLM(model=str(out), dtype="float32", enforce_eager=True, seed=0)
    return VLLMEngine(llm, llm.get_tokenizer()), lambda: shutdown_llm(llm)


def summarize(name: str, rows: list[dict[str, float]]) -> str:
    med = {k: statistics.median(r[k] for r in rows) for k in ("materialize", "load", "evaluate")}
    overhead = med["materialize"] + med["load"]
    total = overhead + med["evaluate"]
    return (f"{name:<44}{len(rows):>4}{med['materialize']:>12.3f}{med['load']:>12.3f}{med['evaluate']:>11.2f}"
            f"{total:>10.2f}{100 * overhead / med['evaluate']:>11.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=5)
    ap.add_argument("--disk-vllm-candidates", type=int, default=2, help="new-engine-per-candidate is slow")
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args()

    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.evaluate.tasks import load_task
    from evomerge.zoo import ensure_zoo

    zoo = ensure_zoo(log=None)
    tasks = [load_task(FITNESS / f"zoo_{s}.yaml") for s in SKILLS]
    recipes = candidates(zoo, args.candidates)
    lines = []
    hf = HFEvaluator()
    hf.evaluate(recipes[0], tasks)  # warm-up: resident sources + model built once per worker
    lines.append(summarize("transformers, in place (evomerge)", run_in_place(hf, recipes, tasks)))
    with tempfile.TemporaryDirectory(prefix="evomerge-bench-") as tmp:
        lines.append(summarize("transformers, write to disk + from_pretrained", run_disk(recipes, tasks, Path(tmp), load_hf)))
        engine_start = None
        if not args.no_vllm:
            from evomerge.evaluate.vllm import VLLMEvaluator

            v = VLLMEvaluator()
            v.evaluate(recipes[0], tasks)  # engine start + warm-up
            engine_start = v.start_seconds
            lines.append(summarize("vLLM, swap in place (evomerge)", run_in_place(v, recipes, tasks)))
            v.close()
            lines.append(summarize("vLLM, write to disk + new engine",
                                   run_disk(recipes[: args.disk_vllm_candidates], tasks, Path(tmp), load_new_vllm_engine)))
    print(f"\nzoo {zoo.name}: {len(recipes)} candidates x {sum(len(t.items) for t in tasks)} items "
          "(medians, seconds per candidate)")
    print(f"{'path':<44}{'n':>4}{'materialize':>12}{'load/swap':>12}{'evaluate':>11}{'total':>10}{'overhead':>12}")
    for line in lines:
        print(line)
    if engine_start is not None:
        print(f"vLLM engine start (once per worker on the in-place path): {engine_start:.1f} s")


if __name__ == "__main__":
    main()
