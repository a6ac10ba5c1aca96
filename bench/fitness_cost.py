"""Fitness at a fraction of the cost (issue 16): item evaluations, wall time and final quality of
full evaluation, racing and item subsets (random, anchor, IRT), per strategy, over seeds.

    python -m bench.fitness_cost [--problem zoo|zoo1000] [--strategies cmaes,m2n2] [--seeds 0,1,2]
                                 [--budget 100] [--methods full,racing,random,anchor,irt] [--size 50]
                                 [--warmup 20] [--promote 5] [--audit 20] [--out F] [--full-from F]

Problems: ``zoo``, the demo space (per-layer task arithmetic over the zoo's three experts, the
three skills' 200 dev items each); ``zoo1000``, the same space scored on 1000 dev items per skill
(generated like the zoo's, ``evomerge.zoo.skill_items``), so subsets have room. Held-out: the
skills' 200 test items, scored exactly for each run's final best.

Per method and strategy, mean over seeds of:
- items: item evaluations spent by the run (every candidate, every task);
- items to 95% / seconds to 95%: evaluations and evaluation seconds (the candidates' own timings,
  summed in candidate order) until the first exactly scored candidate reaches 95% of the full
  evaluation's best fitness (same strategy and seed), or "-" if none did;
- seconds: the run's wall time (transformers engine, in place, this machine);
- best / held-out: the final best exact candidate's dev fitness (mean over the skills) and its
  held-out accuracy;
- full @ items: the held-out accuracy of the full run's best among the candidates it had scored
  when it had spent as many items as this method's whole run (equal item budget);
- rank errors: over ``--audit`` estimated or raced-out candidates per run, re-scored on every item
  here (not counted as the run's cost), the share of pairs (of those and the exact ones) whose
  order by the run's fitness differs from their order by the true fitness.

``--out`` appends each run's figures as a JSON line as it ends (full runs with their records, item
scores left out); ``--full-from`` reads full runs back from such a file instead of running them
again (full evaluation does not depend on the cheap-fitness settings), so the derived columns of
a later invocation compare against the same full runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKILLS = ("add", "caesar", "length")
CONFIGS = {
    "full": "",
    "racing": "fitness: {racing: {chunk: 20, error: 0.05, test: t, reference: strategy}}\n",
    "random": "fitness: {subset: {method: random, size: SIZE, warmup: WARMUP, refit: 10, promote: PROMOTE}}\n",
    "anchor": "fitness: {subset: {method: anchor, size: SIZE, warmup: WARMUP, refit: 10, promote: PROMOTE}}\n",
    "irt": "fitness: {subset: {method: irt, size: SIZE, warmup: WARMUP, refit: 10, promote: PROMOTE}}\n",
}
STRATEGIES = {"cmaes": "{name: cmaes}", "m2n2": "{name: m2n2, archive_size: 20}", "random": "{name: random}"}


def task_specs(root: Path, problem: str) -> list[Path]:
    """The fitness task specs: the zoo's own, or 1000-item dev sets written under ``root``."""
    if problem == "zoo":
        return [REPO / "fitness" / f"zoo_{s}.yaml" for s in SKILLS]
    from evomerge.zoo import skill_items

    specs = []
    for s in SKILLS:
        for split, n in (("dev", 1000), ("test", 200)):
            lines = [json.dumps({"question": q, "answer": a}) for q, a in skill_items(s, n, split=split)]
            (root / f"{s}.{split}.jsonl").write_text("\n".join(lines) + "\n")
        spec = (REPO / "fitness" / f"zoo_{s}.yaml").read_text()
        spec = spec.replace(f"data/zoo_{s}.dev.jsonl", str(root / f"{s}.dev.jsonl"))
        spec = spec.replace(f"data/zoo_{s}.test.jsonl", str(root / f"{s}.test.jsonl"))
        (root / f"zoo_{s}.yaml").write_text(spec)
        specs.append(root / f"zoo_{s}.yaml")
    return specs


def space_text(specs: list[Path], strategy: str, seed: int, budget: int, fitness: str) -> str:
    objectives = "".join(f"  - {{task: {p}}}\n" for p in specs)
    return (f"name: cost\nkind: ps\nbase: zoo://base\nexperts: [zoo://expert_add, zoo://expert_caesar, "
            f"zoo://expert_length]\nmerge_method: task_arithmetic\nlayer_groups: 0\n"
            f"vary:\n  weight: {{low: 0.0, high: 1.5, init: 1.0}}\nobjectives:\n{objectives}"
            f"strategy: {STRATEGIES[strategy]}\nbudget: {budget}\nseed: {seed}\n{fitness}")


def rank_errors(pairs: list[tuple[float, float]]) -> float:
    """The share of pairs ordered differently by (reported, true) fitness."""
    wrong = total = 0
    for (r1, t1), (r2, t2) in itertools.combinations(pairs, 2):
        if t1 == t2:
            continue
        total += 1
        wrong += (r1 - r2) * (t1 - t2) < 0
    return wrong / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="zoo", choices=["zoo", "zoo1000"])
    ap.add_argument("--strategies", default="cmaes,m2n2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--methods", default="full,racing,random,anchor,irt")
    ap.add_argument("--size", type=int, default=50, help="subset items per task")
    ap.add_argument("--warmup", type=int, default=20, help="exact candidates before the first subset fit")
    ap.add_argument("--promote", type=int, default=5, help="subsets: the top-k an estimate must enter to be promoted")
    ap.add_argument("--full-from", default=None, help="read full runs (strategy, seed) from this --out file")
    ap.add_argument("--audit", type=int, default=20, help="estimated candidates re-scored per run for rank errors")
    ap.add_argument("--out", default=None, help="also append every run's figures as JSON lines here")
    ap.add_argument("--table", default=None, help="run nothing: print the table of these --out files (comma-separated)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.evaluate.tasks import load_task
    from evomerge.recipe import recipe_from_dict
    from evomerge.runner.local import run_search
    from evomerge.space.schema import load_space
    from evomerge.zoo import ensure_zoo

    ensure_zoo(log=print)
    tmp = Path(tempfile.mkdtemp(prefix="evomerge-cost-"))
    specs = task_specs(tmp, args.problem)
    tasks = [load_task(p) for p in specs]
    heldout = [load_task(p, split="heldout") for p in specs]
    k = len(tasks)
    evaluator = HFEvaluator()
    methods = args.methods.split(",")
    results: dict[tuple[str, str], list[dict]] = {}
    full_runs: dict[tuple[str, int], list[dict]] = {}
    for name in (args.table or args.full_from or "").split(","):
        for line in (Path(name).read_text().splitlines() if name else []):
            row = json.loads(line)
            if row["budget"] != args.budget or row["problem"] != args.problem or not row.get("records"):
                continue
            if row["method"] == "full":
                full_runs[(row["strategy"], row["seed"])] = row["records"]
            if row["method"] == "full" or args.table:
                results.setdefault((row["strategy"], row.get("label", row["method"])), []).append(row)
    for strat in ([] if args.table else args.strategies.split(",")):
        for method in methods:
            for seed in (int(s) for s in args.seeds.split(",")):
                if method == "full" and (strat, seed) in full_runs:
                    continue
                path = tmp / f"{strat}-{method}-{seed}.yaml"
                fitness = (CONFIGS[method].replace("SIZE", str(args.size)).replace("WARMUP", str(args.warmup))
                           .replace("PROMOTE", str(args.promote)))
                path.write_text(space_text(specs, strat, seed, args.budget, fitness))
                t0 = time.perf_counter()
                res = run_search(load_space(path), evaluator=evaluator, log=lambda _m: None)
                wall = time.perf_counter() - t0
                recs = res.records
                items = sum(r["items_scored"] or 0 for r in recs)
                exact = [r for r in recs if r["fitness"] is not None and r["fidelity"] == "exact"]
                best = max(exact, key=lambda r: r["fitness"])
                test = evaluator.evaluate(recipe_from_dict(best["recipe"]), heldout).objectives
                subset = method in ("random", "anchor", "irt")
                label = f"{method} (top {args.promote}, {args.size}/task, warm-up {args.warmup})" if subset else method
                row = {"problem": args.problem, "budget": args.budget, "strategy": strat, "method": method,
                       "label": label, "seed": seed, "items": items, "seconds": wall,
                       "best": best["fitness"] / k, "heldout": sum(test.values()) / k, "records": recs}
                if method == "full":
                    full_runs[(strat, seed)] = recs
                else:
                    cheap = [r for r in recs if r["fitness"] is not None and r["fidelity"] != "exact"][:args.audit]
                    pairs = [(r["fitness"], r["fitness"]) for r in exact]
                    for r in cheap:
                        truth = evaluator.evaluate(recipe_from_dict(r["recipe"]), tasks).objectives
                        pairs.append((r["fitness"], sum(truth.values())))
                    row["rank_errors"] = rank_errors(pairs) if cheap else 0.0
                results.setdefault((strat, label), []).append(row)
                if args.out:  # each run as it ends (records without item scores), so a cut-short bench
                    with open(args.out, "a") as f:  # keeps what it measured and --table can print it
                        kept = {**row, "records": [{k2: v for k2, v in r.items() if k2 != "item_scores"}
                                                   for r in recs]}
                        f.write(json.dumps(kept) + "\n")
                print(f"{strat} {method} seed {seed}: {items} items, {wall:.0f} s, best {row['best']:.3f}, "
                      f"held-out {row['heldout']:.3f}", flush=True)
    # items to 95% of the full run's best, and the full run's held-out at equal item budget
    for (strat, _method), rows in results.items():
        for row in rows:
            full = full_runs.get((strat, row["seed"]))
            if full is None:
                continue
            target = 0.95 * max(r["fitness"] for r in full if r["fitness"] is not None)
            spent, secs, row["to95"], row["s95"] = 0, 0.0, None, None
            for r in row["records"]:
                spent += r["items_scored"] or 0
                secs += r["seconds"] or 0.0
                if r["fitness"] is not None and r["fidelity"] == "exact" and r["fitness"] >= target:
                    row["to95"], row["s95"] = spent, secs
                    break
            spent, at = 0, None
            for r in full:
                spent += r["items_scored"] or 0
                if spent > row["items"]:
                    break
                if r["fitness"] is not None and (at is None or r["fitness"] > at["fitness"]):
                    at = r
            if at is not None:
                test = evaluator.evaluate(recipe_from_dict(at["recipe"]), heldout).objectives
                row["full_at_items"] = sum(test.values()) / k

    def ms(v: list[float], fmt: str = ".3f") -> str:
        v = [x for x in v if x is not None]
        if not v:
            return "-"
        return f"{statistics.mean(v):{fmt}} +- {statistics.stdev(v):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"

    print(f"\nProblem {args.problem}: {k} skills, {len(tasks[0].items)} dev items each, budget {args.budget}, "
          f"seeds {args.seeds}, subset size {args.size}, warm-up {args.warmup}; mean +- std over seeds.\n")
    print("| strategy | method | seeds | items | vs full | items to 95% | s to 95% | seconds | best (dev) | held-out | "
          "full @ items | rank errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (strat, method), rows in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1] != "full", kv[0][1])):
        full_items = statistics.mean(r["items"] for r in results[(strat, "full")]) if (strat, "full") in results \
            else None
        mean_items = statistics.mean(r["items"] for r in rows)
        ratio = f"{full_items / mean_items:.1f}x fewer" if full_items and method != "full" else "-"
        seeds = ",".join(str(r["seed"]) for r in rows)
        print(f"| {strat} | {method} | {seeds} | {mean_items:.0f} | {ratio} | {ms([r.get('to95') for r in rows], '.0f')} | "
              f"{ms([r.get('s95') for r in rows], '.0f')} | {ms([r['seconds'] for r in rows], '.0f')} | {ms([r['best'] for r in rows])} | "
              f"{ms([r['heldout'] for r in rows])} | {ms([r.get('full_at_items') for r in rows])} | "
              f"{ms([r.get('rank_errors') for r in rows])} |", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
