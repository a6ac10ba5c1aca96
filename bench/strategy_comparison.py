"""Best fitness after N evaluations, per strategy, on the zoo (issue: search strategies).

    python -m bench.strategy_comparison [--problem zoo|qwen2] [--space search_spaces/demo.yaml]
                                        [--seeds 0,1,2] [--checkpoints 25,50,100,200]
                                        [--strategies cmaes,nevergrad,m2n2,random[,bare]]
                                        [--m2n2-ablation] [--out F] [--table F1,F2,...]

Every strategy searches the same space with the same evaluator (transformers, in place, 200 dev
items per skill). Rows: mean +- standard deviation over seeds of the best dev fitness (mean
accuracy over the skills) seen after N evaluations, and the held-out accuracy of each run's
final best. Beside them: every expert alone and the fixed recipes (task arithmetic with weight 1
and lambda 1, TIES with weight 1 and density 0.5), scored on the same items.

Problems:
- ``zoo`` (default): the space ``--space`` (default: per-layer task arithmetic over the default
  zoo's three experts, 6 genes), as before this option existed.
- ``qwen2``: the second zoo (evomerge.zoo.QWEN2_SPEC: 4 Qwen2 layers with tied embeddings,
  experts on sub, count and sort; built on first use), searched with the same kind of space:
  per-layer task-arithmetic weights in [0, 1.5], start 1.0 (12 genes). The bench writes that
  space, with absolute model paths, and its three fitness tasks (200 dev and 200 held-out items
  per skill from evomerge.zoo.skill_items) into a temporary directory.

``bare`` (a pseudo-strategy for ``--strategies``) is CMA-ES written here with pycma, torch and
transformers only: the same genome decoded as evomerge decodes it, merged with plain torch and
scored by greedy exact match on the same items, so the framework's own cost (or gain) in
quality shows beside its ``cmaes`` row. A sanity line first scores one genome both ways.

``--m2n2-mutation`` adds M2N2 with Gaussian mutation of each child (std 0.05 and 0.1 of the box,
the reference code's from-scratch setting; the paper fuses trained models without it).
``--m2n2-ablation`` adds M2N2 without each of its mechanisms (Abrantes et al. 2025, "Competition
and Attraction Improve Model Fusion"): competition (alpha 0), attraction (parent 2 drawn
uniformly, and drawn by fitness as the paper's reference code ablates it) and the split point.

``--out F`` appends one JSON line per run as it ends (the label, seed, best dev fitness after
every evaluation, the held-out accuracy of the final best, seconds) and one with the fixed rows
(runs already in F are not run again: a stopped invocation goes on where it stopped),
so the runs of one table can be spread over processes (one per core); ``--table F1,F2,...`` runs
nothing and prints the table of those files' lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ITEMS = 200  # dev and held-out items per skill
MAX_NEW_TOKENS = 10  # the zoo tasks' generation length (fitness/zoo_*.yaml and the qwen2 tasks written here)
M2N2 = {"name": "m2n2", "archive_size": 20, "alpha": 1.0}
SETTINGS: dict[str, dict[str, Any]] = {
    "cmaes": {"name": "cmaes"}, "nevergrad": {"name": "nevergrad", "optimizer": "NGOpt"}, "m2n2": M2N2,
    "random": {"name": "random"}}
ABLATIONS: dict[str, dict[str, Any]] = {
    "m2n2 no competition (alpha 0)": {**M2N2, "alpha": 0.0},
    "m2n2 no attraction (mate uniform)": {**M2N2, "mate": "uniform"},
    "m2n2 no attraction (mate by fitness)": {**M2N2, "mate": "fitness"},
    "m2n2 no split point": {**M2N2, "split_point": False},
}
MUTATIONS: dict[str, dict[str, Any]] = {  # M2N2 with Gaussian mutation of each child (box units)
    f"m2n2 mutation {m}": {**M2N2, "mutation": m} for m in (0.05, 0.1)}


@dataclass(frozen=True)
class Problem:
    name: str
    zoo: Path  # the zoo directory (base, expert_<skill>)
    skills: tuple[str, ...]  # the experts' skills, in the space's expert order
    space: Path  # the search space file


def zoo_problem(space: str) -> Problem:
    from evomerge.zoo import ZooSpec, default_zoo_dir, ensure_zoo

    ensure_zoo(log=print)
    return Problem("zoo", default_zoo_dir(), ZooSpec().experts, Path(space))


def qwen2_problem(workdir: Path) -> Problem:
    """The Qwen2 zoo, and a per-layer task-arithmetic space over its experts written into
    ``workdir`` with absolute model paths (``zoo://`` names only the default zoo)."""
    from evomerge.zoo import QWEN2_SPEC, ensure_zoo, skill_items

    zoo = ensure_zoo(spec=QWEN2_SPEC, log=print)
    skills = QWEN2_SPEC.experts
    for skill in skills:
        for split in ("dev", "test"):
            lines = [json.dumps({"question": q, "answer": a}) for q, a in skill_items(skill, ITEMS, split=split)]
            (workdir / f"qwen2_{skill}.{split}.jsonl").write_text("\n".join(lines) + "\n")
        (workdir / f"qwen2_{skill}.yaml").write_text(
            f"# Qwen2 zoo skill '{skill}': greedy exact match (bench/strategy_comparison.py)\n"
            f"name: qwen2_{skill}\nkind: generate\ndata: qwen2_{skill}.dev.jsonl\nheldout: qwen2_{skill}.test.jsonl\n"
            f"prompt: \"{{question}}\"\ntarget: answer\nextract: strip\nmax_new_tokens: {MAX_NEW_TOKENS}\n")
    experts = ", ".join(json.dumps(str(zoo / f"expert_{s}")) for s in skills)
    objectives = "".join(f"  - {{task: qwen2_{s}.yaml}}\n" for s in skills)
    space = workdir / "qwen2_layerwise.yaml"
    space.write_text(
        "# Per-layer task arithmetic over the Qwen2 zoo's experts (written by bench/strategy_comparison.py)\n"
        f"name: qwen2_layerwise\nkind: ps\nbase: {json.dumps(str(zoo / 'base'))}\nexperts: [{experts}]\n"
        "merge_method: task_arithmetic\nlayer_groups: 0\nvary:\n  weight: {low: 0.0, high: 1.5, init: 1.0}\n"
        f"objectives:\n{objectives}strategy: {{name: cmaes, sigma: 0.25}}\nbudget: 200\nseed: 0\n")
    return Problem("qwen2", zoo, skills, space)


def fixed_baselines(problem: Problem, evaluator, tasks, heldout) -> dict[str, tuple[float, float]]:
    from evomerge.recipe import recipe_from_dict

    zoo, experts = problem.zoo, problem.skills

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


# ----------------------------------------------------------------------------- the bare loop
# CMA-ES over the space's genome with pycma, torch, transformers and numpy only: nothing below
# imports evomerge. Its inputs are plain values: model paths, the weight bounds and start, and
# the (prompt, answer) items, which main() takes from evomerge.zoo.skill_items (the same items
# the space's tasks hold; main() checks that) so both sides score the same questions.

_LAYER = re.compile(r"\.layers\.(\d+)\.")


class BareMerge:
    """Per-layer task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic"):
    layer l of the merge is B + sum_e w[l, e] (E_e - B); tensors outside the layer stack
    (embeddings, final norm, an untied LM head) take layer 0's weights, as mergekit's reading of a
    per-layer list places them at its first value. Written into one live model per candidate and
    scored by batched greedy generation (left padding), exact match after stripping."""

    def __init__(self, base: str, experts: list[str], *, batch_size: int = 64) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        base_sd = load_file(str(Path(base) / "model.safetensors"))
        expert_sds = [load_file(str(Path(e) / "model.safetensors")) for e in experts]
        self.base = {k: v.float() for k, v in base_sd.items()}
        self.deltas = [{k: sd[k].float() - b for k, b in self.base.items()} for sd in expert_sds]
        self.model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
        self.layers = int(self.model.config.num_hidden_layers)
        self.experts = len(experts)
        self.batch_size = batch_size
        self.params = dict(self.model.named_parameters())  # a tied LM head is the embedding: listed once
        missing = set(self.params) - set(self.base)
        if missing:
            raise ValueError(f"parameters not in the base's safetensors: {sorted(missing)}")

    def load(self, weights) -> None:
        """Write the merge with ``weights[l][e]`` (layer l, expert e) into the live model."""
        torch = self.torch
        with torch.no_grad():
            for name, p in self.params.items():
                m = _LAYER.search(name)
                row = weights[int(m.group(1)) if m else 0]
                acc = torch.zeros_like(self.base[name])
                for e, d in enumerate(self.deltas):
                    if row[e] != 0:
                        acc += row[e] * d[name]
                p.copy_(self.base[name] + acc)

    def accuracy(self, items: list[tuple[str, str]]) -> float:
        return sum(self.correct(items)) / len(items)

    def correct(self, items: list[tuple[str, str]]) -> list[float]:
        """1.0 for each item the live model answers exactly (after stripping), else 0.0."""
        torch = self.torch
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        right: list[float] = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch_size):
                chunk = items[i : i + self.batch_size]
                enc = [self.tok(q)["input_ids"] for q, _ in chunk]
                width = max(len(e) for e in enc)
                ids = torch.full((len(enc), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for j, e in enumerate(enc):
                    ids[j, width - len(e):] = torch.tensor(e)
                    mask[j, width - len(e):] = 1
                gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS,
                                          do_sample=False, pad_token_id=pad, eos_token_id=self.tok.eos_token_id)
                for row, (_, answer) in zip(gen[:, width:].tolist(), chunk, strict=True):
                    right.append(float(self.tok.decode(row, skip_special_tokens=True).strip() == answer.strip()))
        return right


def bare_decode(x, layers: int, experts: int, low: float, high: float):
    """The genome as evomerge's PS codec orders it (layer by layer, expert by expert within a
    layer), each gene mapped linearly from [0, 1] onto [low, high] and rounded to 6 digits (as
    evomerge rounds recipe values)."""
    import numpy as np

    v = low + np.clip(np.asarray(x, dtype=float), 0.0, 1.0) * (high - low)
    return [[round(float(v[layer * experts + e]), 6) for e in range(experts)] for layer in range(layers)]


def bare_fitness(merge: BareMerge, x, low: float, high: float, items: dict[str, list[tuple[str, str]]]) -> float:
    """Mean exact-match accuracy over the skills of the genome ``x``'s merge."""
    merge.load(bare_decode(x, merge.layers, merge.experts, low, high))
    return sum(merge.accuracy(v) for v in items.values()) / len(items)


def bare_cmaes(merge: BareMerge, *, low: float, high: float, init: float, sigma: float, budget: int, seed: int,
               dev: dict[str, list[tuple[str, str]]], test: dict[str, list[tuple[str, str]]]
               ) -> tuple[list[float], float]:
    """CMA-ES (Hansen 2016, "The CMA Evolution Strategy: A Tutorial") through pycma with its
    defaults (population 4 + floor(3 ln d), Table 1), bounds [0, 1], start at ``init``
    on every gene and step ``sigma`` in box units; generations until ``budget`` evaluations are
    spent (pycma's termination criteria are not consulted, and no restarts). Returns the best dev
    fitness after each evaluation and the held-out fitness of the final best."""
    import warnings

    import cma
    import numpy as np

    dim = merge.layers * merge.experts
    x0 = [(init - low) / (high - low)] * dim
    es = cma.CMAEvolutionStrategy(x0, sigma, {"bounds": [0.0, 1.0], "seed": seed + 1, "verbose": -9})
    best, best_x, curve = -np.inf, None, []
    while len(curve) < budget:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pycma's flat-fitness notices
            xs = es.ask()
        fits = []
        for x in xs[: budget - len(curve)]:
            f = bare_fitness(merge, x, low, high, dev)
            fits.append(f)
            if f > best:
                best, best_x = f, np.asarray(x)
            curve.append(best)
        if len(fits) == len(xs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                es.tell(xs, [-f for f in fits])
    return curve, bare_fitness(merge, best_x, low, high, test)


# ----------------------------------------------------------------------------- the table


def bare_inputs(space) -> dict[str, float]:
    """The bounds and start the bare loop decodes with, from the space; only a per-layer
    task-arithmetic weight space (the demo's form) is decoded by it."""
    if (space.kind != "ps" or space.merge_method != "task_arithmetic" or set(space.vary) != {"weight"}
            or space.layer_groups != 0 or space.per_module or space.non_layer
            or any(k != "lambda" or v != 1.0 for k, v in space.fixed.items())):
        raise SystemExit("bare: decodes per-layer task-arithmetic weights only (kind ps, vary: {weight}, "
                         "layer_groups: 0, no per_module or non_layer); pick such a space or leave bare out")
    w = space.vary["weight"]
    return {"low": w.low, "high": w.high, "init": w.init if w.init is not None else (w.low + w.high) / 2,
            "sigma": space.strategy.sigma}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", choices=["zoo", "qwen2"], default="zoo")
    ap.add_argument("--space", default=None, help="zoo problem only (default: search_spaces/demo.yaml)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--checkpoints", default="25,50,100,200")
    ap.add_argument("--strategies", default="cmaes,nevergrad,m2n2,random",
                    help="any of cmaes, nevergrad, m2n2, random and bare (the bare pycma loop)")
    ap.add_argument("--m2n2-ablation", action="store_true",
                    help="add M2N2 without competition, without attraction and without the split point")
    ap.add_argument("--m2n2-mutation", action="store_true", help="add M2N2 with mutation 0.05 and 0.1")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=JSON",
                    help='another row: a strategy setting, e.g. \'m2n2 fill random={"name": "m2n2", "fill": "random"}\'')
    ap.add_argument("--ablation-only", action="store_true",
                    help="with --m2n2-ablation / --m2n2-mutation / --extra: only those rows")
    ap.add_argument("--no-fixed", action="store_true", help="leave the fixed rows (experts, recipes) out")
    ap.add_argument("--out", default=None, help="also append every run's figures as JSON lines here")
    ap.add_argument("--table", default=None, help="run nothing: print the table of these --out files (comma-separated)")
    ap.add_argument("--relabel", action="append", default=[], metavar="OLD=NEW",
                    help="with --table: show runs labelled OLD as NEW (e.g. rows measured before a default changed)")
    args = ap.parse_args()
    if args.table:
        names = dict(r.split("=", 1) for r in args.relabel)
        lines = [r for f in args.table.split(",") for r in read_records(Path(f))]
        print_table([r | {"label": names.get(r["label"], r["label"])} for r in lines],
                    [int(c) for c in args.checkpoints.split(",")])
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    strategies = args.strategies.split(",")
    unknown = set(strategies) - {*SETTINGS, "bare"}
    if unknown:
        ap.error(f"unknown strategies {sorted(unknown)}")
    if args.problem == "qwen2" and args.space:
        ap.error("--space is for the zoo problem; the qwen2 problem writes its own space")

    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.evaluate.tasks import load_task
    from evomerge.recipe import recipe_from_dict
    from evomerge.runner.local import run_search
    from evomerge.space.schema import load_space

    workdir = Path(tempfile.mkdtemp(prefix="evomerge-bench-"))
    try:
        if args.problem == "qwen2":
            problem = qwen2_problem(workdir)
        else:
            problem = zoo_problem(args.space or str(REPO / "search_spaces" / "demo.yaml"))
        seeds = [int(s) for s in args.seeds.split(",")]
        checkpoints = [int(c) for c in args.checkpoints.split(",")]
        budget = max(checkpoints)
        base_space = load_space(problem.space)
        tasks = [load_task(o.task) for o in base_space.objectives]
        heldout = [load_task(o.task, split="heldout") for o in base_space.objectives]
        k = len(tasks)
        evaluator = HFEvaluator()
        runs = [] if args.ablation_only else [(s, SETTINGS[s]) for s in strategies if s != "bare"]
        if args.m2n2_ablation:
            runs += list(ABLATIONS.items())
        if args.m2n2_mutation:
            runs += list(MUTATIONS.items())
        runs += [(label, json.loads(setting)) for label, setting in (e.split("=", 1) for e in args.extra)]
        records: list[dict[str, Any]] = []

        def keep(record: dict[str, Any]) -> None:
            record = {"problem": problem.name, **record}
            records.append(record)
            if args.out:
                with open(args.out, "a") as f:  # kept as it ends, so --table can combine processes
                    f.write(json.dumps(record) + "\n")

        done = set()
        if args.out and Path(args.out).is_file():  # a rerun with the same --out goes on where one stopped
            done = {(r["label"], r["seed"]) for r in read_records(Path(args.out))
                    if r["kind"] == "run" and r["problem"] == problem.name}
        for label, setting in runs:
            for seed in seeds:
                if (label, seed) in done:
                    continue
                t0 = time.perf_counter()
                spec = base_space.strategy.model_copy(update=setting)
                space = base_space.model_copy(update={"strategy": spec, "seed": seed, "budget": budget})
                res = run_search(space, evaluator=evaluator, log=lambda _m: None)
                best_so_far, best, curve = float("-inf"), None, []
                for r in res.records:
                    if r["fitness"] is not None and r["fitness"] > best_so_far:
                        best_so_far, best = r["fitness"], r
                    curve.append(best_so_far / k)
                assert best is not None
                test = evaluator.evaluate(recipe_from_dict(best["recipe"]), heldout).objectives
                keep({"kind": "run", "label": label, "seed": seed, "curve": curve, "best_index": best["index"],
                      "heldout": sum(test.values()) / k, "seconds": time.perf_counter() - t0})
                print(f"{label} seed {seed}: best dev {curve[-1]:.3f} (candidate {best['index']}), "
                      f"held-out {records[-1]['heldout']:.3f}", flush=True)
        bare_seeds = [s for s in seeds if ("bare", s) not in done]
        if "bare" in strategies and bare_seeds:
            for record in run_bare(problem, base_space, tasks, heldout, evaluator, bare_seeds, budget):
                keep(record)
        if not args.no_fixed:
            for label, (dev, test) in fixed_baselines(problem, evaluator, tasks, heldout).items():
                keep({"kind": "fixed", "label": label, "dev": dev, "heldout": test})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(records, checkpoints)
    os._exit(0)  # nevergrad's NGOpt can leave a scipy thread that blocks interpreter exit


def read_records(path: Path) -> list[dict[str, Any]]:
    """The runs and fixed rows an ``--out`` file holds (one JSON object per line)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_table(records: list[dict[str, Any]], checkpoints: list[int]) -> None:
    """The strategy table of ``records`` (runs and fixed rows of one problem), then the issue-21
    checks: each strategy's mean held-out against the bare loop's, every CMA-ES seed against the
    best fixed recipe (held-out), M2N2 against random search at every N (mean best dev fitness)."""
    problems = {r["problem"] for r in records}
    if len(problems) != 1:
        raise SystemExit(f"--table: one problem per table, these lines hold {sorted(problems)}")
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "run":
            runs.setdefault(r["label"], []).append(r)
    fixed = {r["label"]: r for r in records if r["kind"] == "fixed"}

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.3f} +- {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    def at(runs_: list[dict[str, Any]], c: int) -> list[float]:
        return [r["curve"][min(c, len(r["curve"])) - 1] for r in runs_]

    print(f"Problem {problems.pop()}: best dev fitness (mean accuracy over the skills) after N evaluations, "
          "mean +- std over seeds; held-out accuracy of each run's final best.\n")
    print("| strategy | seeds | " + " | ".join(f"N={c}" for c in checkpoints) + " | held-out (final best) | s/run |")
    print("|" + "---|" + "---:|" * (len(checkpoints) + 3))
    for label, rs in runs.items():
        print(f"| {label} | {len(rs)} | " + " | ".join(ms(at(rs, c)) for c in checkpoints)
              + f" | {ms([r['heldout'] for r in rs])} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    for label, r in fixed.items():
        print(f"| {label} | - | " + " | ".join(f"{r['dev']:.3f}" for _ in checkpoints) + f" | {r['heldout']:.3f} | - |")
    if not fixed or "bare" not in runs:
        return
    alone = {n: r for n, r in fixed.items() if n.startswith("expert ")}
    recipes = {n: r for n, r in fixed.items() if not n.startswith("expert ")}
    print()
    for what, group in (("best expert", alone), ("best fixed recipe", recipes)):
        top = max(group, key=lambda n: group[n]["heldout"])
        print(f"{what} (held-out): {top}, dev {group[top]['dev']:.3f}, held-out {group[top]['heldout']:.3f}")
    bare = statistics.mean(r["heldout"] for r in runs["bare"])
    best_fixed = max(r["heldout"] for r in recipes.values())
    for label, rs in runs.items():
        if label in SETTINGS:
            mean = statistics.mean(r["heldout"] for r in rs)
            print(f"{label}: mean held-out {mean:.3f} {'>=' if mean >= bare else '<'} bare loop {bare:.3f}")
    for label in ("cmaes", "m2n2"):
        low = min((r["heldout"] for r in runs.get(label, [])), default=None)
        if low is not None:
            print(f"{label}: lowest seed held-out {low:.3f} {'>=' if low >= best_fixed else '<'} "
                  f"best fixed recipe {best_fixed:.3f}")
    if "m2n2" in runs and "random" in runs:
        wins = [statistics.mean(at(runs["m2n2"], c)) > statistics.mean(at(runs["random"], c)) for c in checkpoints]
        print("m2n2 above random at N = " + ", ".join(f"{c}: {'yes' if w else 'no'}" for c, w in zip(checkpoints, wins, strict=True)))


def run_bare(problem: Problem, space, tasks, heldout, evaluator, seeds: list[int], budget: int) -> list[dict[str, Any]]:
    """The ``bare`` runs, one record per seed, after a sanity line: two genomes scored by the bare
    merge and by evomerge's evaluator must agree."""
    import numpy as np

    from evomerge.space.codec import PSCodec
    from evomerge.zoo import skill_items

    inputs = bare_inputs(space)
    dev = {s: skill_items(s, ITEMS, split="dev") for s in problem.skills}
    test = {s: skill_items(s, ITEMS, split="test") for s in problem.skills}
    for items, loaded in ((dev, tasks), (test, heldout)):  # the same questions the space's tasks hold
        for (skill, mine), task in zip(items.items(), loaded, strict=True):
            theirs = [(it["question"], str(it["answer"])) for it in task.items]
            if theirs != mine:
                raise SystemExit(f"bare: the items of {skill} differ from those of task {task.spec.name}")
    merge = BareMerge(space.base, list(space.experts))
    codec = PSCodec(space)
    if codec.dim != merge.layers * merge.experts:
        raise SystemExit(f"bare: the space has {codec.dim} genes, the bare decoding {merge.layers * merge.experts}")
    x = codec.initial()
    for probe in (x, np.linspace(0.1, 0.9, codec.dim)):  # the start, and a genome with a weight per layer
        ours = evaluator.evaluate(codec.decode(probe), tasks).objectives
        bare = bare_fitness(merge, probe, inputs["low"], inputs["high"], dev)
        print(f"sanity: genome {np.round(probe, 3).tolist()}: dev accuracy bare {bare:.4f}, "
              f"evomerge {sum(ours.values()) / len(ours):.4f}", flush=True)
    out = []
    for seed in seeds:
        t0 = time.perf_counter()
        curve, held = bare_cmaes(merge, low=inputs["low"], high=inputs["high"], init=inputs["init"],
                                 sigma=inputs["sigma"], budget=budget, seed=seed, dev=dev, test=test)
        out.append({"kind": "run", "label": "bare", "seed": seed, "curve": curve, "heldout": held,
                    "seconds": time.perf_counter() - t0})
        print(f"bare seed {seed}: best dev {curve[-1]:.3f}, held-out {held:.3f}", flush=True)
    return out

if __name__ == "__main__":
    main()
