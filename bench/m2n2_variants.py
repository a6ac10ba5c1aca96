"""M2N2 variants, fast: the strategy's ask/tell loop in process over the bare merge (issue 21).

    python -m bench.m2n2_variants [--problem zoo|qwen2] [--seeds 0,1,2] [--budget 200]
                                  --variants m2n2,m2n2:alpha=0.5,de:F=0.5:floor=0.02 [--out F]
    python -m bench.m2n2_variants --table F1,F2

Each run asks evomerge's M2N2 (or a variant of it) one child at a time, as a one-worker search
does, and scores each genome with bench.strategy_comparison's bare merge (per-layer task
arithmetic written into one live transformers model, greedy exact match on the same 200 dev
items per skill): no service, no archive, about twice as fast as ``bench.strategy_comparison``.
The same seed gives the same candidates and scores as the search does (checked: ``m2n2`` seed 0
on the zoo reproduces the strategy table's curve and held-out accuracy exactly). Rows: the best
dev fitness after N evaluations and the held-out accuracy of each run's best
(bench.strategy_comparison's table).

Variants (``name:key=value:...``; the keys ``alpha``, ``archive_size``, ``mutation``, ``exploit``,
``refine``, ``additive``, ``mate`` (uniform, fitness) and ``split_point`` (0) set M2N2's own settings, e.g. ``m2n2:exploit=0`` is the default before it existed):
- ``m2n2``: M2N2 as a new evomerge run builds it (M2N2_DEFAULTS: normalized attraction, the
  archive seeded with the start and the experts, mutation 0.1, exploit 0.5; since session 18
  refine 0.5 and additive 0.5, so records labelled ``m2n2`` or ``m2n2:...`` before it are
  ``m2n2:refine=0:additive=0...`` now). Every other variant starts from the settings of sessions
  14-17 (refine 0, additive 0: VARIANT_BASE), so its recorded labels still ask what they asked.
- ``de:F=..:floor=..``: the child moves by F times the difference of two other random members
  (differential evolution's mutation, Storn & Price 1997) plus N(0, floor^2).
- ``spread:c=..:floor=..``: Gaussian mutation per gene with std max(floor, c x the archive's std
  of that gene) (shrinks as the archive converges).
- ``anneal:m0=..:m1=..``: Gaussian mutation whose std falls geometrically from m0 to m1 over the
  budget.
- ``blx:a=..:m=..``: the crossover's mixing weight drawn from U(-a, 1 + a) (BLX-alpha, Eshelman &
  Schaffer 1993: children may leave the segment between their parents) plus mutation std m.
- ``pbest:p=..``: parent 1 is the member with the best mean score with probability p (else as
  M2N2 draws it): what became M2N2's ``exploit`` (``pbest:p=0.5`` asks what ``m2n2`` asks).
- ``immigrant:every=..``: every ``every``-th child is a uniform random point instead.
- ``stall:K=..`` (with ``refine``): M2N2 as configured, except that ``refine`` pauses while the
  best mean score has not improved over the last K children told (the (1+1)-ES steps around a
  best member stuck near a corner of the box then give way to crossover until a better best is
  found; a stall rule on the refinement only, nothing restarts).
- ``centroid:k=..`` (with ``refine``): a refine child steps from the mean genome of the k members
  with the best mean scores instead of from the best one (CMA-ES's recombination of its mu best,
  Hansen 2016, "The CMA Evolution Strategy: A Tutorial", eq. 9: an average of good points is less
  exposed to one member's luck on the dev items).
- ``fifth`` (with ``refine``): the refine step's std adapts by Rechenberg's 1/5 success rule
  (Rechenberg 1973; Auger & Hansen 2011's form: times exp(1/3) on a success, exp(-1/12) on a
  failure, so it holds still at one success in five), starting at ``mutation``, within [0.005, 0.5];
  a success is a refine child whose mean score beats the best member's when it was asked.
- ``debest:F=..:floor=..`` (with ``refine``): a refine child is the best member plus F times the
  difference of two other random members plus N(0, floor^2) (differential evolution's
  "DE/best/1" mutation, Storn & Price 1997: the archive's own spread sets the step's size and
  direction, as CMA-ES's covariance does).
- ``around:n=..:s=..``: M2N2 as configured, its archive seeded with n more points drawn from
  N(start, s^2) per gene (clipped to the box) after the start and the experts alone, as CMA-ES's
  first generation samples around the start recipe (the good merges of both problems lie near
  task arithmetic; the start alone scores low and leaves the archive early).
- ``add:p=..`` (with ``refine`` or without): M2N2 as configured, except that with probability p a
  crossover draws its two mixing weights independently (a x1 + b x2 before the split, b x1 + a x2
  from it; a, b ~ U(0, 1)): what became M2N2's ``additive`` (``add:p=0.5:refine=0.5`` asks what
  ``m2n2:refine=0.5:additive=0.5`` asks); ``warm=1``: no refine child until the archive holds
  ``archive_size`` members (the first children are all crossovers, which leave the experts-alone
  plateau faster than steps around its best member).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.strategy_comparison import ITEMS, BareMerge, bare_decode, print_table, read_records
from evomerge.space.schema import M2N2_DEFAULTS
from evomerge.strategies.base import Evaluated
from evomerge.strategies.m2n2 import (
    M2N2,
    _best,
    _pick,
    crossover,
    item_row,
    mate_weights,
    shared_fitness,
)

LOW, HIGH, INIT = 0.0, 1.5, 1.0  # both problems' weight bounds and start (bench.strategy_comparison)
# every variant but ``m2n2`` starts from M2N2's settings as they were when the variants were
# measured (sessions 14-18): a new default must not change what a recorded label asks
VARIANT_BASE = {**M2N2_DEFAULTS, "refine": 0.0, "additive": 0.0}


class Variant(M2N2):
    """M2N2 with one breeding rule changed (``kind``); the settings are attributes."""

    kind = "m2n2"
    budget = 200
    F, floor, c, m0, m1, a, m, p, every, K, n, s = 0.5, 0.02, 0.5, 0.3, 0.03, 0.25, 0.05, 0.25, 5, 40, 8, 0.25
    k = 5
    warm = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.best_mean, self.improved_at = -1.0, 0  # stall: the best mean score told, told_count when it rose
        self.step = self.mutation  # fifth: the refine step's std
        self.refine_bar: dict[int, float] = {}  # fifth: each refine child's bar (the best mean score when asked)

    def _tell(self, results: list[Evaluated]) -> None:  # type: ignore[override]
        if self.kind == "fifth":
            for r in results:
                bar = self.refine_bar.pop(r.genome.index, None)
                if bar is not None and r.item_scores:
                    won = float(item_row(r.item_scores).mean()) > bar
                    self.step = float(np.clip(self.step * np.exp(1 / 3 if won else -1 / 12), 0.005, 0.5))
        super()._tell(results)
        if self.kind == "stall" and self.members:
            best = max(float(m[2].mean()) for m in self.members)
            if best > self.best_mean:
                self.best_mean, self.improved_at = best, self.told_count

    def _crossover_child(self, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """A child bred as M2N2 breeds one with refine off (no refine draw)."""
        refine, self.refine = self.refine, 0.0
        try:
            return super()._breed(rng)
        finally:
            self.refine = refine

    def _breed(self, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        if self.kind == "stall":
            stalled = self.told_count - self.improved_at >= int(self.K)
            return self._crossover_child(rng) if stalled else super()._breed(rng)
        if self.kind in ("m2n2", "around"):
            return super()._breed(rng)
        if self.kind == "add":  # M2N2's own additive crossover (share p, set in make); warm: no refine until the archive is full
            warming = self.warm and len(self.members) < self.archive_size
            return self._crossover_child(rng) if warming else super()._breed(rng)
        if self.kind in ("centroid", "fifth", "debest"):
            scores = np.stack([m[2] for m in self.members])
            if self.refine and rng.random() < self.refine:
                best = _best(scores)
                if self.kind == "centroid":
                    top = np.argsort(-scores.mean(axis=1), kind="stable")[: int(self.k)]
                    base = np.mean([self.members[t][1] for t in top], axis=0)
                    std = self.mutation
                elif self.kind == "debest":
                    others = [i for i in range(len(self.members)) if i != best]
                    i, j = rng.choice(others, 2, replace=False) if len(others) >= 2 else (best, best)
                    base = self.members[best][1] + self.F * (self.members[i][1] - self.members[j][1])
                    std = self.floor
                else:
                    self.refine_bar[self.asked] = float(scores[best].mean())
                    base, std = self.members[best][1], self.step
                return np.clip(base + rng.normal(0.0, std, self.dim), 0.0, 1.0), best, best
            return self._crossover_child(rng)  # the refine draw above was this child's
        scores = np.stack([m[2] for m in self.members])
        if self.kind == "immigrant" and self.asked % int(self.every) == 0:
            return rng.random(self.dim), 0, 1
        p1 = _pick(rng, shared_fitness(scores, self.alpha))
        if self.kind == "pbest" and rng.random() < self.p:
            p1 = _best(scores)
        p2 = _pick(rng, mate_weights(scores, p1, self.mate, self.alpha, normalized=True), exclude=p1)
        split, w = int(rng.integers(0, self.dim)), float(rng.random())
        x1, x2 = self.members[p1][1], self.members[p2][1]
        if self.kind == "blx":
            w = -self.a + w * (1 + 2 * self.a)
            x = np.concatenate([w * x1[:split] + (1 - w) * x2[:split], (1 - w) * x1[split:] + w * x2[split:]])
            return np.clip(x + rng.normal(0.0, self.m, self.dim), 0.0, 1.0), p1, p2
        x = crossover(x1, x2, split, w)
        members = np.stack([m[1] for m in self.members])
        if self.kind == "de":
            i, j = rng.choice(len(members), 2, replace=False)
            x = x + self.F * (members[i] - members[j]) + rng.normal(0.0, self.floor, self.dim)
        elif self.kind == "spread":
            x = x + rng.normal(0.0, 1.0, self.dim) * np.maximum(self.floor, self.c * members.std(axis=0))
        elif self.kind == "anneal":
            x = x + rng.normal(0.0, self.m0 * (self.m1 / self.m0) ** min(1.0, self.asked / self.budget), self.dim)
        else:  # pbest, immigrant: M2N2's own mutation
            x = x + rng.normal(0.0, self.mutation, self.dim)
        return np.clip(x, 0.0, 1.0), p1, p2


def make(label: str, dim: int, seeds: list[np.ndarray], seed: int, budget: int) -> M2N2:
    kind, *pairs = label.split(":")
    text = dict(pair.split("=", 1) for pair in pairs)
    own: dict[str, Any] = {}
    if "mate" in text:  # the ablation without attraction: mate=uniform or mate=fitness
        own["mate"] = text.pop("mate")
    if "split_point" in text:  # split_point=0: the ablation without the split point
        own["split_point"] = bool(int(text.pop("split_point")))
    settings = {k: float(v) for k, v in text.items()}
    own |= {k: settings.pop(k) for k in ("alpha", "mutation", "archive_size", "exploit", "refine", "additive")
            if k in settings}
    if "archive_size" in own:
        own["archive_size"] = int(own["archive_size"])
    if kind == "around":  # the extra seeds are drawn before the strategy exists: its config holds them
        draw = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
        n, spread = int(settings.pop("n", Variant.n)), float(settings.pop("s", Variant.s))
        seeds = [*seeds, *(np.clip(seeds[0] + draw.normal(0.0, spread, dim), 0.0, 1.0) for _ in range(n))]
    strategy = Variant(dim, seeds, seed=seed, **{**(M2N2_DEFAULTS if kind == "m2n2" else VARIANT_BASE), **own})
    strategy.kind, strategy.budget = kind, budget
    for key, value in settings.items():
        if not hasattr(Variant, key):
            raise SystemExit(f"unknown setting {key!r} in {label!r}")
        setattr(strategy, key, value)
    if kind == "add":
        strategy.additive = float(strategy.p)
    if kind not in ("m2n2", "de", "spread", "anneal", "blx", "pbest", "immigrant", "stall", "centroid", "fifth",
                    "debest", "around", "add"):
        raise SystemExit(f"unknown variant {kind!r}")
    return strategy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", choices=["zoo", "qwen2"], default="zoo")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--variants", default="m2n2")
    ap.add_argument("--out", default=None, help="append each run as a JSON line (bench.strategy_comparison's records)")
    ap.add_argument("--table", default=None, help="run nothing: print the table of these --out files")
    ap.add_argument("--checkpoints", default="25,50,100,200")
    args = ap.parse_args()
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    if args.table:
        print_table([r for f in args.table.split(",") for r in read_records(Path(f))], checkpoints)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evomerge.zoo import QWEN2_SPEC, ZooSpec, ensure_zoo, skill_items

    spec = QWEN2_SPEC if args.problem == "qwen2" else ZooSpec()
    zoo = ensure_zoo(spec=spec, log=print)
    merge = BareMerge(str(zoo / "base"), [str(zoo / f"expert_{s}") for s in spec.experts])
    layers, experts = merge.layers, merge.experts
    dim = layers * experts
    dev = {s: skill_items(s, ITEMS, split="dev") for s in spec.experts}
    test = {s: skill_items(s, ITEMS, split="test") for s in spec.experts}
    start = np.full(dim, (INIT - LOW) / (HIGH - LOW))
    alone = []  # each expert alone (weight 1, the others 0), as the PS codec's expert_genomes
    for e in range(experts):
        g = np.zeros(dim)
        g[e::experts] = (1.0 - LOW) / (HIGH - LOW)
        alone.append(g)

    def scores(x: np.ndarray, items: dict[str, list[tuple[str, str]]]) -> dict[str, list[float]]:
        merge.load(bare_decode(x, layers, experts, LOW, HIGH))
        return {s: merge.correct(v) for s, v in items.items()}

    done = set()
    if args.out and Path(args.out).is_file():
        done = {(r["label"], r["seed"]) for r in read_records(Path(args.out)) if r["problem"] == args.problem}
    records: list[dict[str, Any]] = []
    for label in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if (label, seed) in done:
                continue
            t0 = time.perf_counter()
            strategy = make(label, dim, [start, *alone], seed, args.budget)
            best, best_x, curve = -1.0, None, []
            while len(curve) < args.budget:
                (genome,) = strategy.ask(1)
                s = scores(genome.x, dev)
                fitness = float(np.mean([np.mean(v) for v in s.values()]))
                if fitness > best:
                    best, best_x = fitness, np.asarray(genome.x)
                curve.append(best)
                strategy.tell([Evaluated(genome=genome, fitness=fitness, item_scores=s)])
            held = float(np.mean([np.mean(v) for v in scores(best_x, test).values()]))
            record = {"problem": args.problem, "kind": "run", "label": label, "seed": seed, "curve": curve,
                      "heldout": held, "seconds": time.perf_counter() - t0}
            records.append(record)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
            print(f"{label} seed {seed}: " + ", ".join(f"N={c} {curve[c - 1]:.3f}" for c in checkpoints if c <= len(curve))
                  + f", held-out {held:.3f} ({record['seconds']:.0f} s)", flush=True)
    print()
    print_table(records, checkpoints)


if __name__ == "__main__":
    main()
