"""What a 7B and a 70B search cost on H100 / H200 nodes, from figures measured here (issue 20).

    python -m bench.scaling [--items 600] [--prompt 256] [--generate 64] [--from F] [--save F]

Measured on this machine (the real search path, SmolLM2-135M-Instruct, bench/smollm2.py):
- ``copy``: torch copying 3 x 256 MB float32 tensors (GB/s moved, read + write);
- ``matmul``: float32 2048 x 2048 matrix products (GFLOP/s);
- ``merge``: evomerge's in-place TIES merge of base + 3 experts into the live model
  (HFEvaluator's ``materialize`` phase, median of 3 candidates): GB/s over (sources + 1) x the
  model's bytes, and that as a fraction of ``copy``;
- ``evaluate``: evomerge's transformers engine generating ``EVAL_NEW`` tokens for 64 prompts:
  tokens/s (prompt + generated, the engine's own counter) and 2 x parameters x tokens / s as a
  fraction of ``matmul``.

Projected (the module's DEVICES and MODELS, each figure printed with the ratio it used): a
device runs a measured operation at the same fraction of its own peak as this machine runs it at
of its measured peak (merge: of memory bandwidth; evaluation: of matmul throughput, with a
decode floor of one weight read per generated token per batch of sequences the KV budget
holds). Per candidate: merge (sources on the GPU when evomerge.runner.placement says they fit,
else streamed over the host link), a swap (one more pass over the candidate's bytes) and the
evaluation of ``--items`` items of ``--prompt`` + ``--generate`` tokens; candidates per GPU-hour
= 3600 / (seconds per candidate x GPUs per worker). ``--save`` keeps the measured figures as JSON,
``--from`` projects from such a file without measuring (for instance on the first GPU machine,
after measuring there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
GIB = 1024**3
EVAL_NEW = 32  # tokens generated per prompt in the evaluate measurement
EVAL_PROMPTS = 64


@dataclass(frozen=True)
class Device:
    name: str
    memory: int  # bytes per GPU
    bandwidth: float  # bytes/s, HBM
    flops: float  # dense bf16 FLOP/s (no sparsity)
    host_link: float  # bytes/s, host to device (PCIe Gen5 x16)


# NVIDIA's datasheets (H100 SXM5, H200 SXM): HBM bandwidth, dense BF16 Tensor Core throughput;
# PCIe Gen5 x16: 64 GB/s each way nominal.
DEVICES = [
    Device("H100 SXM 80GB", 80 * GB, 3.35e12, 989e12, 64e9),
    Device("H200 SXM 141GB", 141 * GB, 4.8e12, 989e12, 64e9),
]


@dataclass(frozen=True)
class Shape:
    name: str
    params: float  # parameters (bf16: 2 bytes each)
    layers: int
    kv_heads: int
    head_dim: int
    largest: int  # entries of the largest tensor (the embedding)


# Public configs: Llama-3.1-8B-like 7B class (32 layers, 8 KV heads of 128, vocab 128256 x 4096)
# and Llama-3.1-70B (80 layers, 8 KV heads of 128, vocab 128256 x 8192).
MODELS = [
    Shape("8B (Llama-3.1-8B shape)", 8.03e9, 32, 8, 128, 128256 * 4096),
    Shape("70B (Llama-3.1-70B shape)", 70.6e9, 80, 8, 128, 128256 * 8192),
]
SOURCES = 4  # base + 3 experts
DTYPE_BYTES = 2  # bf16 checkpoints


def measure(log=print) -> dict[str, float]:
    """This machine's figures (module docstring)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from bench.merge_smollm2 import expert_dirs
    from bench.smollm2 import ensure_smollm2
    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.evaluate.tasks import Task, TaskSpec
    from evomerge.merge.io import ModelDir
    from evomerge.recipe import recipe_from_dict

    out: dict[str, float] = {"threads": torch.get_num_threads()}
    src = [torch.randn(64 * 2**20) for _ in range(3)]
    dst = [torch.empty_like(t) for t in src]
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
        times.append(time.perf_counter() - t0)
    out["copy_gbps"] = 2 * sum(t.numel() * 4 for t in src) / min(times) / GB
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    out["matmul_gflops"] = 2 * 2048**3 / min(times) / 1e9
    del src, dst
    log(f"copy {out['copy_gbps']:.1f} GB/s, matmul {out['matmul_gflops']:.1f} GFLOP/s ({out['threads']} threads)")

    base = ensure_smollm2()
    experts = expert_dirs(base, "dense", log=log)
    with ModelDir(base) as md:
        model_bytes = sum(md.meta(n).nbytes for n in md.tensor_names)
        params = sum(math.prod(md.meta(n).shape) for n in md.tensor_names)
    ev = HFEvaluator()
    spec = TaskSpec(name="scaling_generate", kind="generate", data="-", prompt="{question}", max_new_tokens=EVAL_NEW)
    words = ["river", "garden", "planet", "winter", "castle", "market", "forest", "bridge"]
    task = Task(spec, tuple({"question": f"Write a few sentences about a {words[i % 8]} number {i}.", "answer": "-"}
                            for i in range(EVAL_PROMPTS)))
    merges, evals, tokens = [], [], []
    for i in range(4):
        w = [0.3 + 0.1 * ((i + k) % 4) for k in range(3)]
        recipe = recipe_from_dict({"merge_method": "ties", "base_model": str(base), "models": [
            {"model": str(e), "parameters": {"weight": wk, "density": 0.5}} for e, wk in zip(experts, w, strict=True)]})
        res = ev.evaluate(recipe, [task])
        assert res.status == "COMPLETE", res.error
        if i:  # the first builds the model and the rank indexes
            merges.append(res.phases["materialize"])
            evals.append(res.phases["evaluate"])
            tokens.append(res.tokens)
    merge_s = statistics.median(merges)
    out |= {"model_bytes": model_bytes, "params": params, "merge_s": merge_s,
            "merge_gbps": (SOURCES + 1) * model_bytes / merge_s / GB,
            "eval_tokens_per_s": statistics.median(t / s for t, s in zip(tokens, evals, strict=True))}
    out["merge_fraction"] = out["merge_gbps"] / out["copy_gbps"]
    out["eval_gflops"] = 2 * params * out["eval_tokens_per_s"] / 1e9
    out["eval_fraction"] = out["eval_gflops"] / out["matmul_gflops"]
    log(f"SmolLM2 ({params / 1e6:.0f}M, {model_bytes / GB:.2f} GB float32): TIES merge of base + 3 experts "
        f"{merge_s:.3f} s = {out['merge_gbps']:.1f} GB/s ({out['merge_fraction']:.0%} of copy); evaluation "
        f"{out['eval_tokens_per_s']:.0f} tokens/s = {out['eval_gflops']:.1f} GFLOP/s ({out['eval_fraction']:.0%} of matmul)")
    return out


def project(m: dict[str, float], *, items: int, prompt: int, generate: int) -> list[str]:
    """Markdown rows: per model, device and GPUs per worker, the memory plan and the seconds."""
    from evomerge.errors import ConfigError
    from evomerge.runner.placement import SourceSizes, plan

    rows = []
    for shape in MODELS:
        model_bytes = shape.params * DTYPE_BYTES
        sizes = SourceSizes(sources=int(SOURCES * model_bytes), candidate=int(model_bytes), largest=shape.largest,
                            count=SOURCES)
        kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * DTYPE_BYTES
        for dev in DEVICES:
            for tp in (1, 2, 4, 8):
                try:
                    p = plan(sizes, gpus_per_worker=tp, device_bytes=dev.memory)
                except ConfigError:
                    rows.append(f"| {shape.name} | {dev.name} | {tp} | does not fit | | | | | |")
                    continue
                bw = dev.bandwidth * m["merge_fraction"]
                if p.sources_on == "device":  # read every source shard, write the candidate's
                    merge = (SOURCES + 1) * model_bytes / tp / bw
                else:  # every source's shard crosses the host link once per candidate
                    merge = max(SOURCES * model_bytes / tp / dev.host_link, (SOURCES + 1) * model_bytes / tp / bw)
                swap = model_bytes / tp / bw
                kv_budget = dev.memory - p.per_rank_device + int(0.10 * dev.memory)  # left after the plan, + its KV
                per_seq = kv_per_token / tp * (prompt + generate)
                in_flight = max(1, min(items, int(kv_budget // per_seq)))
                rounds = math.ceil(items / in_flight)
                compute = 2 * shape.params * items * (prompt + generate) / tp / (dev.flops * m["eval_fraction"])
                decode_floor = rounds * generate * model_bytes / tp / bw
                evaluate = max(compute, decode_floor)
                total = merge + swap + evaluate
                per_hour = 3600 / total / tp
                rows.append(f"| {shape.name} | {dev.name} | {tp} | {p.sources_on}, {p.per_rank_device / GIB:.0f} GiB/GPU "
                            f"| {merge:.2f} | {swap:.2f} | {evaluate:.1f} ({in_flight} in flight) | {total:.1f} "
                            f"| {per_hour:.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=600, help="items per candidate (e.g. 3 tasks x 200)")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens per item")
    ap.add_argument("--generate", type=int, default=64, help="generated tokens per item")
    ap.add_argument("--from", dest="source", default=None, help="project from these saved figures (JSON)")
    ap.add_argument("--save", default=None, help="save the measured figures here (JSON)")
    args = ap.parse_args()
    m = json.loads(Path(args.source).read_text()) if args.source else measure()
    if args.save:
        Path(args.save).write_text(json.dumps(m, indent=1))
    print(f"\nMeasured here: copy {m['copy_gbps']:.1f} GB/s, matmul {m['matmul_gflops']:.1f} GFLOP/s; search-path merge "
          f"{m['merge_gbps']:.1f} GB/s ({m['merge_fraction']:.0%} of copy), evaluation {m['eval_tokens_per_s']:.0f} "
          f"tokens/s = {m['eval_gflops']:.1f} GFLOP/s ({m['eval_fraction']:.0%} of matmul).")
    print(f"Per candidate: base + 3 experts in bf16, {args.items} items x ({args.prompt} prompt + {args.generate} "
          "generated) tokens. Device figures: " + "; ".join(
              f"{d.name} {d.bandwidth / 1e12:.2f} TB/s, {d.flops / 1e12:.0f} TFLOP/s bf16, host link "
              f"{d.host_link / GB:.0f} GB/s" for d in DEVICES) + ".\n")
    print("| model | device | GPUs per worker (TP) | sources, memory | merge (s) | swap (s) | evaluate (s) "
          "| per candidate (s) | candidates per GPU-hour |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in project(m, items=args.items, prompt=args.prompt, generate=args.generate):
        print(r)
    os._exit(0)


if __name__ == "__main__":
    main()
