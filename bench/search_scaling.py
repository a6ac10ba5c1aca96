"""How a search's wall time grows with the number of source models and with depth.

    python -m bench.search_scaling [--sources 2,4,8] [--layers 2,8,32] [--budget 24] [--workers 2]
                                   [--items 100] [--method dare_ties]

Each configuration is a scaled zoo (evomerge/zoo_scaled.py: hidden 128, the tiny zoo's width,
untrained) with a base and ``sources - 1`` experts and ``layers`` layers, searched with the
EvoMerge parameter-space recipe (DARE-TIES, a weight and a density per expert and layer: 2 x
experts x layers genes) by random search on the service path (driver, Ray actors, SQLite
archive, transformers in place), scoring ``--items`` generation items of the zoo's add skill.
The untrained models answer nonsense, but they cost what trained ones would. Columns: genes,
the run's wall time and per-candidate time, and (in-process, medians of 5 candidates) the
split into materialization and evaluation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def space_yaml(tmp: Path, zoo: Path, experts: int, method: str, budget: int, items: int) -> Path:
    task = tmp / "task.yaml"
    task.write_text(f"name: zoo_add\nkind: generate\ndata: {REPO / 'fitness/data/zoo_add.dev.jsonl'}\n"
                    f"prompt: \"{{question}}\"\ntarget: answer\nextract: strip\nmax_new_tokens: 6\nlimit: {items}\n")
    vary = "weight: {low: 0.0, high: 1.5, init: 1.0}"
    if method in ("ties", "dare_ties", "dare_linear"):
        vary += ", density: {low: 0.1, high: 1.0, init: 0.8}"
    names = ", ".join(str(zoo / f"expert_{i}") for i in range(experts))
    p = tmp / f"space-{zoo.name}.yaml"
    p.write_text(f"name: scaling\nkind: ps\nbase: {zoo / 'base'}\nexperts: [{names}]\nmerge_method: {method}\n"
                 f"layer_groups: 0\nvary: {{{vary}}}\nobjectives: [{{task: {task}}}]\n"
                 f"strategy: {{name: random}}\nbudget: {budget}\nseed: 0\n")
    return p


def split_times(space: Path, n: int = 5) -> tuple[float, float]:
    """Median materialize and evaluate seconds of ``n`` random candidates, in this process (one
    warm-up candidate first: the engine is built then)."""
    import numpy as np

    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.evaluate.tasks import load_task
    from evomerge.space.codec import make_codec
    from evomerge.space.schema import load_space

    sp = load_space(space)
    codec = make_codec(sp)
    tasks = [load_task(o.task) for o in sp.objectives]
    ev = HFEvaluator()
    rng = np.random.default_rng(1)
    mats, evals = [], []
    for _ in range(n + 1):
        res = ev.evaluate(codec.decode(rng.uniform(0, 1, size=codec.dim)), tasks)
        assert res.status == "COMPLETE", res.error
        mats.append(res.phases["materialize"])
        evals.append(res.phases["evaluate"])
    return statistics.median(mats[1:]), statistics.median(evals[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="2,4,8")
    ap.add_argument("--layers", default="2,8,32")
    ap.add_argument("--fixed-layers", type=int, default=4, help="depth while the number of sources varies")
    ap.add_argument("--fixed-sources", type=int, default=4, help="sources while the depth varies")
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--method", default="dare_ties")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evomerge import api
    from evomerge.zoo_scaled import ScaledShape, build_scaled_zoo

    configs = [(s, args.fixed_layers) for s in map(int, args.sources.split(","))]
    configs += [(args.fixed_sources, L) for L in map(int, args.layers.split(",")) if (args.fixed_sources, L) not in configs]
    rows = []
    with tempfile.TemporaryDirectory(prefix="evomerge-bench-scaling-") as d:
        tmp = Path(d)
        db = f"sqlite:///{tmp / 'bench.db'}"
        for sources, layers in configs:
            shape = ScaledShape(128, 384, layers, 4, 4, 64)
            zoo = tmp / f"zoo-s{sources}-l{layers}"
            info = build_scaled_zoo(zoo, shape, experts=sources - 1, log=None)
            space = space_yaml(tmp, zoo, sources - 1, args.method, args.budget, args.items)
            mat, ev = split_times(space)
            name = f"s{sources}-l{layers}"
            t0 = time.perf_counter()
            api.search(space, db=db, name=name, workers=args.workers, log=lambda _m: None)
            wall = time.perf_counter() - t0
            with api.open_store(db) as store:
                cands = store.candidates(store.get_run(name).id)
            # steady state: completions per second after each worker's first candidate (engine
            # build and first-call warm-up excluded), from the archive's finish times
            firsts = {}
            for c in sorted((c for c in cands if c.finished_at), key=lambda c: c.finished_at):
                firsts.setdefault(c.worker, c.finished_at)
            t_warm = max(firsts.values())
            later = sorted(c.finished_at for c in cands if c.finished_at and c.finished_at > t_warm)
            steady = (later[-1] - t_warm) / len(later) if later else float("nan")
            genes = len(cands[0].genome)
            rows.append((sources, layers, info["parameters"], genes, wall, steady, mat, ev))
            print(f"{name}: {wall:.1f} s", flush=True)
    print(f"\nSearch scaling: {args.method} per layer, random search, {args.budget} candidates, {args.workers} Ray "
          f"workers, {args.items} generation items per candidate (hidden 128, untrained scaled zoo)\n")
    print("| sources | layers | params per model | genes | run wall s (start-up included) | s / candidate "
          "(steady state) | materialize s (median) | evaluate s (median) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, L, params, genes, wall, per, mat, ev in rows:
        print(f"| {s} | {L} | {params / 1e6:.2f}M | {genes} | {wall:.1f} | {per:.3f} | {mat:.4f} | {ev:.3f} |")
    os._exit(0)


if __name__ == "__main__":
    main()
