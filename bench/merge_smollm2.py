"""``evomerge merge`` against ``mergekit-yaml`` on a real model: SmolLM2-135M-Instruct (issue 20).

    python -m bench.merge_smollm2 [--kinds dense,untouched,dare] [--methods task_arithmetic,ties,dare_ties]
                                  [--dtypes float32,bfloat16] [--arithmetic source,float32] [--repeats 1]

Base: SmolLM2-135M-Instruct (bench/smollm2.py), in float32 (538 MB) or bfloat16. Three experts per
kind, written once under the cache, each the base plus seeded Gaussian noise (std 1e-3) on:

- ``dense``: every tensor but the (tied) embeddings, as a full fine-tune with frozen embeddings;
- ``untouched``: the MLP tensors only (attention, norms and embeddings equal the base: all-zero
  task vectors for about half of the model), as a fine-tune of some modules;
- ``dare``: every tensor but the embeddings, 90% of each task vector's entries zeroed at random,
  as experts already pruned with DARE.

Each tool merges the same mergekit YAML (base + 3 experts; TIES and DARE-TIES density 0.5 and
weights 1.0 / 0.7 / 0.5, normalize; task arithmetic weights the same) into a fresh directory,
with no ``dtype`` (``--arithmetic source``: each tool merges in the sources' dtype, evomerge with
mergekit's own 16-bit operation sequence for bfloat16) or with ``dtype: float32, out_dtype:
bfloat16`` (``float32``: what an evomerge search over bfloat16 sources writes; both tools merge
in float32 and round once): the command's wall time
(start-up, imports and writing included: what a user waits for), the median of ``--repeats``,
with the sources in the page cache. TIES and task arithmetic are deterministic: the outputs are
compared entry by entry (max abs difference); DARE draws its masks differently in each tool, so
only the kept share of the merged task vector is compared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.mergekit_venv import default_venv, ensure_mergekit
from bench.smollm2 import ensure_smollm2

KINDS = ("dense", "untouched", "dare")
WEIGHTS = (1.0, 0.7, 0.5)


def expert_dirs(base: Path, kind: str, log=print) -> list[Path]:
    """Three experts of ``kind`` next to ``base`` in the cache (written once)."""
    import torch
    from safetensors.torch import save_file

    from evomerge.merge.io import ModelDir

    out = []
    for i in range(3):
        d = base.parent / f"{base.name}-{kind}{i}"
        if not (d / "model.safetensors").is_file():
            log(f"writing {d}")
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("*.safetensors"))
            gen = torch.Generator().manual_seed(1000 * KINDS.index(kind) + i)
            tensors = {}
            with ModelDir(base) as src:
                for name in src.tensor_names:
                    t = src.read(name)
                    touched = "embed" not in name and (kind != "untouched" or ".mlp." in name)
                    if touched:
                        noise = torch.randn(t.shape, generator=gen) * 1e-3
                        if kind == "dare":
                            noise *= torch.rand(t.shape, generator=gen) < 0.1
                        t = (t.float() + noise).to(t.dtype)
                    tensors[name] = t.contiguous()
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            os.replace(tmp, d)
        out.append(d)
    return out


def write_config(path: Path, base: Path, experts: list[Path], method: str, arithmetic: str = "source",
                 stored: str = "float32") -> None:
    """The mergekit YAML; ``arithmetic: float32`` adds ``dtype: float32, out_dtype: <stored>``."""
    import yaml

    models = []
    for e, w in zip(experts, WEIGHTS, strict=True):
        params = {"weight": w} | ({"density": 0.5} if method != "task_arithmetic" else {})
        models.append({"model": str(e), "parameters": params})
    glob = {"normalize": True} if method == "ties" else {}
    cfg = {"merge_method": method, "base_model": str(base), "models": models, "parameters": glob}
    if arithmetic == "float32":
        cfg |= {"dtype": "float32", "out_dtype": stored}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def compare(a_dir: Path, b_dir: Path, base_dir: Path) -> tuple[float, float, float]:
    """(max abs difference, kept share of a's task vector, of b's)."""
    import torch

    from evomerge.merge.io import ModelDir

    worst, kept_a, kept_b, total = 0.0, 0, 0, 0
    with ModelDir(a_dir) as a, ModelDir(b_dir) as b, ModelDir(base_dir) as base:
        for name in a.tensor_names:
            x, y, z = a.read(name).float(), b.read(name).float(), base.read(name).float()
            worst = max(worst, float((x - y).abs().max()))
            kept_a += int(torch.count_nonzero(x != z))
            kept_b += int(torch.count_nonzero(y != z))
            total += x.numel()
    return worst, kept_a / total, kept_b / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--methods", default="task_arithmetic,ties,dare_ties")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--arithmetic", default="source",
                    help="source (no dtype: merged in the sources' dtype) and/or float32 (dtype: float32, out_dtype: "
                         "the sources' dtype: what an evomerge search over 16-bit sources writes), comma-separated")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--venv", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    venv = ensure_mergekit(args.venv or default_venv())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    mk_cli, em_cli = str(venv / "bin" / "mergekit-yaml"), str(Path(sys.executable).parent / "evomerge")
    rows = []
    with tempfile.TemporaryDirectory(prefix="evomerge-smollm2-") as tmp_name:
        tmp = Path(tmp_name)
        for dtype in args.dtypes.split(","):
            base = ensure_smollm2(dtype)
            for kind in args.kinds.split(","):
                experts = expert_dirs(base, kind)
                for method, arithmetic in ((m, a) for m in args.methods.split(",")
                                           for a in args.arithmetic.split(",")):
                    if arithmetic == "float32" and dtype == "float32":
                        continue  # the same merge as "source"
                    cfg = tmp / f"{dtype}-{kind}-{method}-{arithmetic}.yaml"
                    write_config(cfg, base, experts, method, arithmetic, dtype)
                    mk_out, em_out = tmp / "mk", tmp / "em"
                    mk, em = [], []
                    for _ in range(args.repeats):
                        shutil.rmtree(mk_out, ignore_errors=True)
                        mk.append(timed([mk_cli, str(cfg), str(mk_out), "--random-seed", "0", "--quiet",
                                         "--no-write-model-card"], env))
                        shutil.rmtree(em_out, ignore_errors=True)
                        em.append(timed([em_cli, "merge", str(cfg), "--out", str(em_out)], env))
                    worst, kept_mk, kept_em = compare(mk_out, em_out, base)
                    row = (dtype, arithmetic, kind, method, statistics.median(mk), statistics.median(em), worst,
                           kept_mk, kept_em)
                    rows.append(row)
                    print(f"{dtype} ({arithmetic} arithmetic) {kind} {method}: mergekit {row[4]:.1f} s, evomerge {row[5]:.1f} s "
                          f"({row[4] / row[5]:.1f}x), max |diff| {worst:.2e}, kept {kept_mk:.3f} / {kept_em:.3f}",
                          flush=True)
    print(f"\nSmolLM2-135M-Instruct, base + 3 experts, command wall time (median of {args.repeats}).\n")
    print("| sources | arithmetic | experts | method | mergekit-yaml (s) | evomerge merge (s) | speed-up | "
          "max abs diff | task vector kept (mergekit / evomerge) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype, arithmetic, kind, method, mk, em, worst, kmk, kem in rows:
        print(f"| {dtype} | {arithmetic} | {kind} | {method} | {mk:.1f} | {em:.1f} | {mk / em:.1f}x | {worst:.1e} | "
              f"{kmk:.3f} / {kem:.3f} |", flush=True)


if __name__ == "__main__":
    main()
