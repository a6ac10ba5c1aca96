"""Best fitness after N evaluations, per strategy, on the zoo (issue: search strategies).

    python -m bench.strategy_comparison [--space search_spaces/demo.yaml] [--seeds 0,1,2]
                                        [--checkpoints 25,50,100,200] [--strategies cmaes,nevergrad,m2n2,random]

Every strategy searches the same space (default: per-layer task arithmetic over the zoo's three
experts, 6 genes) with the same evaluator (transformers, in place, 200 dev items per skill).
Rows: mean +- standard deviation over seeds of the best dev fitness (mean accuracy over the
three skills) seen after N evaluations, and the held-out accuracy of each run's final best.
Beside them: every expert alone and the fixed recipes (task arithmetic with weight 1 and
lambda 1, TIES with weight 1 and density 0.5), scored on the same items.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fixed_baselines(zoo: Path, evaluator, tasks, heldout) -> dict[str, tuple[float, float]]:
    from evomerge.recipe import recipe_from_dict

    experts = ["add", "caesar", "length"]

    def rec(method: str, params: dict, extra: dict | None = None):
        return recipe_from_dict({"merge_method": method, "base_model": str(zoo / "base"),
                                 "models": [{"model": str(zoo / f"expert_{e}"), "parameters": params} for e in experts],
                                 "parameters": extra or {}})

    out = {}
    recipes = {f"expert {e} alone": recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(zoo / "base"),
                                                      "models": [{"model": str(zoo / f"expert_{e}"), "parameters": {"weight": 1.0}}]})
               for e in experts}
    recipes["task arithmetic (w 1, lambda 1)"] = rec("task_arithmetic", {"weight": 1.0}, {"lambda": 1.0})
    recipes["TIES (w 1, density 0.5)"] = rec("ties", {"weight": 1.0, "density": 0.5}, {"lambda": 1.0})
    for name, r in recipes.items():
        dev = evaluator.evaluate(r, tasks).objectives
        test = evaluator.evaluate(r, heldout).objectives
        out[name] = (sum(dev.values()) / len(dev), sum(test.values()) / len(test))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(REPO / "search_spaces" / "demo.yaml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--checkpoints", default="25,50,100,200")
    ap.add_argument("--strategies", default="cmaes,nevergrad,m2n2,random")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.evaluate.tasks import load_task
    from evomerge.recipe import recipe_from_dict
    from evomerge.runner.local import run_search
    from evomerge.space.schema import load_space
    from evomerge.zoo import default_zoo_dir, ensure_zoo

    ensure_zoo(log=print)
    zoo = default_zoo_dir()
    seeds = [int(s) for s in args.seeds.split(",")]
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    budget = max(checkpoints)
    base_space = load_space(args.space)
    tasks = [load_task(o.task) for o in base_space.objectives]
    heldout = [load_task(o.task, split="heldout") for o in base_space.objectives]
    k = len(tasks)
    evaluator = HFEvaluator()
    settings = {"cmaes": {"name": "cmaes"}, "nevergrad": {"name": "nevergrad", "optimizer": "NGOpt"},
                "m2n2": {"name": "m2n2", "archive_size": 20, "alpha": 1.0}, "random": {"name": "random"}}
    rows: dict[str, dict[int, list[float]]] = {}
    final_test: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for strat in args.strategies.split(","):
        rows[strat] = {c: [] for c in checkpoints}
        final_test[strat] = []
        t0 = time.perf_counter()
        for seed in seeds:
            spec = base_space.strategy.model_copy(update=settings[strat])
            space = base_space.model_copy(update={"strategy": spec, "seed": seed, "budget": budget})
            res = run_search(space, evaluator=evaluator, log=lambda _m: None)
            best_so_far, best = float("-inf"), None
            for i, r in enumerate(res.records, start=1):
                if r["fitness"] is not None and r["fitness"] > best_so_far:
                    best_so_far, best = r["fitness"], r
                if i in rows[strat]:
                    rows[strat][i].append(best_so_far / k)
            assert best is not None
            test = evaluator.evaluate(recipe_from_dict(best["recipe"]), heldout).objectives
            final_test[strat].append(sum(test.values()) / k)
            print(f"{strat} seed {seed}: best dev {best_so_far / k:.3f} (candidate {best['index']}), "
                  f"held-out {final_test[strat][-1]:.3f}", flush=True)
        seconds[strat] = (time.perf_counter() - t0) / len(seeds)
    baselines = fixed_baselines(zoo, evaluator, tasks, heldout)

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.3f} +- {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    print(f"\nBest dev fitness (mean accuracy over {k} skills, 200 items each) after N evaluations; "
          f"{len(seeds)} seeds, mean +- std. Space: {Path(args.space).name}.\n")
    head = "| strategy | " + " | ".join(f"N={c}" for c in checkpoints) + " | held-out (final best) | s/run |"
    print(head)
    print("|" + "---|" * (len(checkpoints) + 3))
    for strat, by_n in rows.items():
        print(f"| {strat} | " + " | ".join(ms(by_n[c]) for c in checkpoints)
              + f" | {ms(final_test[strat])} | {seconds[strat]:.0f} |")
    for name, (dev, test) in baselines.items():
        print(f"| {name} | " + " | ".join(f"{dev:.3f}" for _ in checkpoints) + f" | {test:.3f} | - |")
    os._exit(0)  # nevergrad's NGOpt can leave a scipy thread that blocks interpreter exit


if __name__ == "__main__":
    main()
