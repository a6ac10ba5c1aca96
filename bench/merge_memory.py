"""Peak memory and speed of materializing a merge: evomerge's tensor-by-tensor streaming
against the load-everything approach (every source's full state dict in memory, then save).

    python -m bench.merge_memory [--hidden 768 --layers 8 --vocab 8192 --experts 2 --method ties]

Builds random Llama checkpoints of the chosen size in a temporary directory (the offline zoo's
architecture, scaled up), then runs each approach in a fresh subprocess whose resident set size
is sampled every 2 ms; the table shows the peak above the RSS after imports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r"""
import json, os, sys, threading, time
from pathlib import Path
import torch

PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
mode, workdir, method, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
from evomerge.recipe import recipe_from_dict
from evomerge.merge.materialize import merge_to_dir
from evomerge.merge.registry import get_op
from safetensors.torch import load_file, save_file
params = {"density": 0.5} if method in ("ties", "dare_ties") else {}
recipe = recipe_from_dict({"merge_method": method, "base_model": str(workdir / "base"),
    "models": [{"model": str(workdir / f"e{i}"), "parameters": params} for i in range(n)]})
torch.zeros(1) + 1
before = rss()
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.perf_counter()
out = workdir / f"out-{mode}"
if mode == "stream":
    merge_to_dir(recipe, out, overwrite=True)
else:
    base = load_file(str(workdir / "base" / "model.safetensors"))
    experts = [load_file(str(workdir / f"e{i}" / "model.safetensors")) for i in range(n)]
    op = get_op(method)
    merged = {k: op([e[k] for e in experts], base=base[k], params={k2: [v] * n for k2, v in params.items()},
                    generator=torch.Generator().manual_seed(0)) for k in base}
    out.mkdir(exist_ok=True)
    save_file(merged, str(out / "model.safetensors"))
dt = time.perf_counter() - t0
stop.set()
sampler.join()
print(json.dumps({"seconds": dt, "peak_delta_mib": (peak[0] - before) / 2**20}))
"""


def build_sources(workdir: Path, hidden: int, layers: int, vocab: int, n: int) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                      vocab_size=vocab, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(workdir / "base")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i in range(n):
        gen = torch.Generator().manual_seed(i + 1)
        d = workdir / f"e{i}"
        d.mkdir()
        (d / "config.json").write_text((workdir / "base" / "config.json").read_text())
        save_file({k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()},
                  str(d / "model.safetensors"), metadata={"format": "pt"})
    largest = max(v.numel() * v.element_size() for v in state.values())
    total = sum(v.numel() * v.element_size() for v in state.values())
    return {"params": sum(v.numel() for v in state.values()), "model_mib": total / 2**20, "largest_tensor_mib": largest / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--method", default="ties")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="evomerge-bench-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        info = build_sources(workdir, args.hidden, args.layers, args.vocab, args.experts)
        print(f"sources: base + {args.experts} experts, {info['params'] / 1e6:.1f}M params, "
              f"{info['model_mib']:.0f} MiB each (float32), largest tensor {info['largest_tensor_mib']:.1f} MiB "
              f"(built in {time.perf_counter() - t0:.0f} s)")
        rows = []
        for mode in ("stream", "load-all"):
            proc = subprocess.run([sys.executable, "-c", WORKER, mode, str(workdir), args.method, str(args.experts)],
                                  capture_output=True, text=True, cwd=repo, check=True)
            rows.append((mode, json.loads(proc.stdout.strip().splitlines()[-1])))
    n_src = args.experts + 1
    print(f"\nmerge_method={args.method}, {n_src} sources")
    print(f"{'approach':<24}{'peak RSS added (MiB)':>22}{'x largest tensor':>18}{'x one model':>13}{'seconds':>10}{'MiB/s read':>12}")
    for mode, r in rows:
        name = "evomerge (streaming)" if mode == "stream" else "load all, then save"
        print(f"{name:<24}{r['peak_delta_mib']:>22.0f}{r['peak_delta_mib'] / info['largest_tensor_mib']:>18.1f}"
              f"{r['peak_delta_mib'] / info['model_mib']:>13.2f}{r['seconds']:>10.2f}"
              f"{n_src * info['model_mib'] / r['seconds']:>12.0f}")


if __name__ == "__main__":
    main()
