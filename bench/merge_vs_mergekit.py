"""Merge materialization against mergekit and against the machine's copy bandwidth.

    python -m bench.merge_vs_mergekit [--size 100m] [--methods ties,dare_ties] [--repeats 3]
                                      [--venv ~/.cache/evomerge/bench-venv/mergekit-0.1.5]

Sources: the ``100m`` scaled zoo size (evomerge/zoo_scaled.py: 97.6M parameters, 390 MB per
model in float32), base + 2 experts. mergekit is installed from PyPI into its own virtual
environment (made on first use, torch pinned to the same CPU build) and run on the very same
mergekit YAML. Rows, each the median of ``--repeats`` runs in fresh processes with the sources
in the page cache:

- command wall time: ``mergekit-yaml`` vs ``evomerge merge`` (start-up, imports and writing
  the model directory included: what a user waits for);
- merge call: the merge alone inside a warm process (mergekit's ``run_merge`` vs evomerge's
  ``merge_to_dir``), and evomerge's search path (resident sources merged into preallocated
  live weights, no disk: what every candidate of a search pays), with the C++ kernel (the
  default) and with the torch.compile kernels (``EVOMERGE_NATIVE=0``), plus what the first and
  second candidates of a worker cost;
- a plain torch copy of the same bytes (read the three sources, write them): the memory
  bandwidth the merge is held against, timed in a process of its own and, for the search
  path, also interleaved with the candidates in the search-path process (one copy after each
  candidate; medians), so both see the same conditions. Bytes moved by a merge = 3 sources
  read + 1 written.

Equality: TIES is deterministic, so the outputs are compared entry by entry; DARE draws random
masks (mergekit from torch's global RNG, evomerge from per-tensor seeded generators), so its
outputs are compared in distribution: the kept fraction and the norm of the merged task vector.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.mergekit_venv import default_venv, ensure_mergekit

REPO = Path(__file__).resolve().parents[1]

# Recipes given in mergekit's own YAML; both tools read the same file.
PARAMS = {
    "ties": [{"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3}],
    "dare_ties": [{"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3}],
    "task_arithmetic": [{"weight": 1.0}, {"weight": 0.7}],
}
GLOBAL = {"ties": {"normalize": True, "lambda": 1.0}, "dare_ties": {"normalize": False, "lambda": 1.0},
          "task_arithmetic": {"lambda": 1.0}}


def write_config(path: Path, zoo: Path, method: str) -> None:
    import yaml

    cfg = {"merge_method": method, "base_model": str(zoo / "base"),
           "models": [{"model": str(zoo / f"expert_{i}"), "parameters": p} for i, p in enumerate(PARAMS[method])],
           "parameters": GLOBAL[method], "dtype": "float32"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


# A merge inside a warm process: imports done first, then only the merge call is timed.
MERGEKIT_CALL = r"""
import sys, time, yaml, torch
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
cfg = MergeConfiguration.model_validate(yaml.safe_load(open(sys.argv[1])))
t0 = time.perf_counter()
run_merge(cfg, sys.argv[2], options=MergeOptions(random_seed=0, quiet=True, write_model_card=False))
print(time.perf_counter() - t0)
"""
EVOMERGE_CALL = r"""
import sys, time, torch
from pathlib import Path
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import load_recipe
rec = load_recipe(sys.argv[1])
t0 = time.perf_counter()
merge_to_dir(rec, sys.argv[2], seed=0, overwrite=True)
print(time.perf_counter() - t0)
"""
# The search path: sources resident, each candidate merged into preallocated live weights.
# Prints the first candidate (kernel build or compile, first cuts), the second (TIES/breadcrumbs
# build their rank indexes there) and the steady state (median of the rest). Each steady
# candidate is followed by a plain copy of the three resident sources in the same process (read
# 3 + write 3), so the merge and the bandwidth it is held against see the same conditions: on
# this VM the copy swings by a third between processes (33-51 GB/s), far more than within one.
EVOMERGE_LIVE = r"""
import json, statistics, sys, time, torch
from evomerge.evaluate.resident import ResidentSources
from evomerge.merge.materialize import merge_into
from evomerge.merge.plan import plan_merge
from evomerge.recipe import load_recipe
rec = load_recipe(sys.argv[1])
resident = ResidentSources()
plan = plan_merge(rec, resident.for_recipe(rec.source_names()))
live = {m.name: torch.empty(m.shape, dtype=m.dtype) for m in plan.metas}
sources = [t for src in plan.sources.values() for t in (src.read(n) for n in src.tensor_names)]
copies = [torch.empty_like(t) for t in sources]
times, copy_times = [], []
for i in range(max(4, int(sys.argv[2]))):
    t0 = time.perf_counter()
    merge_into(plan, live, seed=i)
    times.append(time.perf_counter() - t0)
    if i >= 2:
        t0 = time.perf_counter()
        for c, t in zip(copies, sources):
            c.copy_(t)
        copy_times.append(time.perf_counter() - t0)
print(json.dumps({"first": times[0], "second": times[1], "steady": statistics.median(times[2:]),
                  "copy": statistics.median(copy_times)}))
"""
COPY = r"""
import sys, time, torch
from evomerge.evaluate.resident import ResidentModel
srcs = [ResidentModel(p) for p in sys.argv[2:]]
tensors = [m.read(n) for m in srcs for n in m.tensor_names]
outs = [torch.empty_like(t) for t in tensors]
times = []
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter()
    for o, t in zip(outs, tensors):
        o.copy_(t)
    times.append(time.perf_counter() - t0)
times.sort()
print(times[len(times) // 2])  # the median: single copies of 1 GB vary by +-30% here
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def last_float(out: str) -> float:
    return float(out.strip().splitlines()[-1])


def compare(mk_dir: Path, em_dir: Path, base_dir: Path) -> dict[str, float]:
    import torch
    from safetensors.torch import load_file

    def load(d: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    mk, em, base = load(mk_dir), load(em_dir), load(base_dir)
    if set(mk) != set(em):
        raise SystemExit(f"tensor names differ: only mergekit {sorted(set(mk) - set(em))[:5]}, "
                         f"only evomerge {sorted(set(em) - set(mk))[:5]}")
    max_abs = 0.0
    differ = total = 0
    num = 0.0
    kept_mk = kept_em = 0
    norm_mk = norm_em = 0.0
    for name in mk:
        a, b, bb = mk[name].float(), em[name].float(), base[name].float()
        diff = (a - b).abs()
        max_abs = max(max_abs, float(diff.max()))
        differ += int((diff > 1e-6).sum())
        total += a.numel()
        num += float((diff**2).sum())
        kept_mk += int((a != bb).sum())
        kept_em += int((b != bb).sum())
        norm_mk += float(((a - bb) ** 2).sum())
        norm_em += float(((b - bb) ** 2).sum())
    return {"tensors": len(mk), "max_abs": max_abs, "differ": differ, "total": total,
            "rel_l2": (num / norm_mk) ** 0.5 if norm_mk else 0.0,
            "kept_mk": kept_mk / total, "kept_em": kept_em / total,
            "delta_norm_ratio": (norm_em / norm_mk) ** 0.5 if norm_mk else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="100m")
    ap.add_argument("--methods", default="ties,dare_ties,task_arithmetic")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--venv", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evomerge.zoo_scaled import ensure_scaled_zoo

    venv = ensure_mergekit(args.venv or default_venv())
    zoo = ensure_scaled_zoo(args.size, experts=2, log=print)
    info = json.loads((zoo / "zoo.json").read_text())
    model_bytes = info["bytes_per_model"]
    moved = 4 * model_bytes  # 3 sources read + 1 merged model written
    srcs = [str(zoo / "base"), str(zoo / "expert_0"), str(zoo / "expert_1")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    mk_py, mk_cli = str(venv / "bin" / "python"), str(venv / "bin" / "mergekit-yaml")
    em_cli = str(Path(sys.executable).parent / "evomerge")
    print(f"sources: {args.size} scaled zoo, base + 2 experts, {info['parameters'] / 1e6:.1f}M parameters, "
          f"{model_bytes / 1e6:.0f} MB each (float32); {args.repeats} repeats, medians", flush=True)
    for s in srcs:  # into the page cache for every tool alike
        for f in Path(s).glob("*.safetensors"):
            f.read_bytes()
    copy_s = last_float(timed([sys.executable, "-c", COPY, "9", *srcs], env)[1])
    copy_gbs = 2 * 3 * model_bytes / copy_s / 1e9
    rows: list[tuple[str, str, float, float | None]] = []  # (method, path, seconds, copy in the same process)
    equal: dict[str, dict[str, float]] = {}
    first: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="evomerge-bench-mk-") as tmp:
        t = Path(tmp)
        for method in args.methods.split(","):
            cfg = t / f"{method}.yml"
            write_config(cfg, zoo, method)
            got: dict[str, list[float]] = {k: [] for k in ("mk_cli", "em_cli", "mk_call", "em_call")}
            for r in range(args.repeats):
                got["mk_cli"].append(timed([mk_cli, str(cfg), str(t / "mk"), "--random-seed", "0", "--quiet",
                                            "--no-write-model-card"], env)[0])
                got["em_cli"].append(timed([em_cli, "merge", str(cfg), "--out", str(t / "em"), "--overwrite"], env)[0])
                got["mk_call"].append(last_float(timed([mk_py, "-c", MERGEKIT_CALL, str(cfg), str(t / "mk2")], env)[1]))
                got["em_call"].append(last_float(timed([sys.executable, "-c", EVOMERGE_CALL, str(cfg),
                                                        str(t / "em2")], env)[1]))
                print(f"  {method} repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in got.items()),
                      flush=True)
            candidates = str(max(12, args.repeats + 3))
            live = json.loads(timed([sys.executable, "-c", EVOMERGE_LIVE, str(cfg), candidates], env)[1]
                              .strip().splitlines()[-1])
            live_torch = json.loads(timed([sys.executable, "-c", EVOMERGE_LIVE, str(cfg), candidates],
                                          {**env, "EVOMERGE_NATIVE": "0"})[1].strip().splitlines()[-1])
            first[method] = {"native": live, "torch.compile": live_torch}
            med = {k: statistics.median(v) for k, v in got.items()}
            rows += [(method, "mergekit-yaml (command)", med["mk_cli"], None),
                     (method, "evomerge merge (command)", med["em_cli"], None),
                     (method, "mergekit run_merge (merge call)", med["mk_call"], None),
                     (method, "evomerge merge_to_dir (merge call)", med["em_call"], None),
                     (method, "evomerge search path (resident -> live weights)", live["steady"], live["copy"]),
                     (method, "evomerge search path, torch.compile kernels (EVOMERGE_NATIVE=0)", live_torch["steady"],
                      live_torch["copy"])]
            equal[method] = compare(t / "mk", t / "em", zoo / "base")
    print(f"\nMerge materialization, {args.size} scaled zoo ({info['parameters'] / 1e6:.1f}M parameters x 3 sources, "
          f"float32); bytes moved per merge {moved / 1e9:.2f} GB (3 read + 1 written)\n")
    print("| merge | tool and path | seconds | GB/s moved | mergekit time / this | % of copy bandwidth "
          "(copy process / same process) |")
    print("|---|---|---:|---:|---:|---:|")
    for method, name, sec, same in rows:
        ref = next(s for m, n, s, _ in rows if m == method and n.startswith("mergekit") and
                   ("command" in n) == ("command" in name))
        speedup = f"{ref / sec:.1f}x" if not name.startswith("mergekit") else ""
        gbs = moved / sec / 1e9
        pct = f"{100 * gbs / copy_gbs:.0f}%"
        if same is not None:  # the copy interleaved with this row's candidates
            pct += f" / {100 * gbs / (2 * 3 * model_bytes / same / 1e9):.0f}% (copy {2 * 3 * model_bytes / same / 1e9:.1f} GB/s)"
        print(f"| {method} | {name} | {sec:.3f} | {gbs:.2f} | {speedup} | {pct} |")
    print(f"| - | torch copy of the same sources (read 3 + write 3), own process | {copy_s:.3f} | {copy_gbs:.2f} | | 100% |")
    print("\nSearch path per candidate, seconds: the first (C++ kernel load or torch.compile, sampled rank cuts), "
          "the second (rank indexes built) and the steady state:\n")
    print("| merge | kernels | first candidate | second | steady |")
    print("|---|---|---:|---:|---:|")
    for method, by in first.items():
        for kind, t in by.items():
            print(f"| {method} | {kind} | {t['first']:.2f} | {t['second']:.2f} | {t['steady']:.3f} |")
    print("\nOutputs, mergekit vs evomerge (same YAML):\n")
    print("| merge | tensors | max abs diff | entries differing > 1e-6 (of all) | rel. L2 diff of merged task vector "
          "| entries changed from base (mergekit / evomerge) | merged task vector norm, evomerge / mergekit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, e in equal.items():
        print(f"| {method} | {e['tensors']} | {e['max_abs']:.2e} | {e['differ']:,} of {e['total']:,} | {e['rel_l2']:.2e} "
              f"| {100 * e['kept_mk']:.2f}% / {100 * e['kept_em']:.2f}% | {e['delta_norm_ratio']:.4f} |")


if __name__ == "__main__":
    main()
