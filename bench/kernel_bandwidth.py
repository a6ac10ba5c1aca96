"""The C++ merge kernel alone against a plain copy of the same bytes, on one and two threads.

    python -m bench.kernel_bandwidth [--entries 50000000] [--repeats 7]

One float32 tensor per source (base + 2 experts, ``--entries`` each, 200 MB at the default), so
no per-tensor Python, rank cuts or dispatch are in the figure: just the per-entry formula
(``kernels._body``) streaming through memory. Rows: task arithmetic, TIES (two-expert election
with fixed thresholds), DARE-TIES (hash masks), and torch copying the three sources into three
outputs (read 3 + write 3), each on 1 and 2 threads, interleaved round by round so all rows see
the same conditions; fastest and median of ``--repeats`` rounds. Bytes moved by a merge = 3
read + 1 written; by the copy = 3 read + 3 written.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=50_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    from evomerge.merge import kernels, native

    mod = native.module()
    if mod is None:
        raise SystemExit(f"the C++ kernel is unavailable: {native.broken}")
    n = args.entries
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=g) * 0.02
    experts = [base + torch.randn(n, generator=g) * 0.003 for _ in range(2)]
    out = torch.empty(n)
    copies = [torch.empty(n) for _ in range(3)]
    every, none_ = kernels.ALL_TIES, 1 << 32
    B, LOW, RAND, CONS, NORM = (kernels.NATIVE_BASE, kernels.NATIVE_LOW, kernels.NATIVE_RANDOM,
                                kernels.NATIVE_CONSENSUS, kernels.NATIVE_NORMALIZE)
    merges = {
        "task_arithmetic": ([1.0, 1.0, -1.0, math.inf, 0.7, 0.7, -1.0, math.inf], [every, every, none_, 0, 0] * 2, B),
        "ties": ([1.0, 1.0, 0.002, math.inf, 0.7, 0.7, 0.003, math.inf], [every, every, none_, 0, 0] * 2,
                 B | LOW | CONS | NORM),
        "dare_ties": ([2.0, 1.0, -1.0, math.inf, 1.4, 0.7, -1.0, math.inf], [every, every, 1 << 31, 12345, 0] * 2,
                      B | RAND | CONS),
    }
    rows = [(name, t) for t in (1, 2) for name in [*merges, "copy"]]
    times: dict[tuple[str, int], list[float]] = {r: [] for r in rows}
    for _ in range(args.repeats):
        for name, t in rows:
            t0 = time.perf_counter()
            if name == "copy":
                torch.set_num_threads(t)
                for c, s in zip(copies, [base, *experts], strict=True):
                    c.copy_(s)
            else:
                fp, ip, flags = merges[name]
                mod.merge(out, base, experts, fp, ip, 1.0, 1.0, flags, t, [])
            times[(name, t)].append(time.perf_counter() - t0)
    torch.set_num_threads(2)
    print(f"\nKernel alone: {n / 1e6:.0f}M float32 entries per source (base + 2 experts), {args.repeats} rounds\n")
    print("| threads | row | fastest ms | median ms | GB/s moved (fastest) | % of copy, same threads |")
    print("|---:|---|---:|---:|---:|---:|")
    for name, t in rows:
        moved = (6 if name == "copy" else 4) * 4 * n
        best, med = min(times[(name, t)]), statistics.median(times[(name, t)])
        copy_gbs = 6 * 4 * n / min(times[("copy", t)]) / 1e9
        print(f"| {t} | {name} | {best * 1e3:.1f} | {med * 1e3:.1f} | {moved / best / 1e9:.1f} | "
              f"{100 * moved / best / 1e9 / copy_gbs:.0f}% |")


if __name__ == "__main__":
    main()
