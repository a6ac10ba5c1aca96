"""Merging 16-bit tensors as mergekit 0.1.5 does: the same torch operations in the same dtype.

mergekit gathers its inputs in the config's ``dtype`` (or as stored) and runs the task-arithmetic
family (Ilharco et al. 2023; TIES, Yadav et al. 2023; Breadcrumbs, Davari & Belilovsky 2024)
in that dtype: every subtraction, product and sum is rounded to float16 or bfloat16 as it goes,
and a TIES mask depends on those rounded values. evomerge's fused kernels compute in float32,
which for 16-bit inputs is more accurate and not mergekit's model. For float16 and bfloat16
inputs the deterministic ops of the family come here instead, so a merge equals mergekit's bit
for bit; float32 (and float64) merges stay on the fused kernels.

The sequence, per tensor (mergekit's ``GeneralizedTaskArithmeticMerge.merge_group``):
d_i = E_i - B; sparsified (``magnitude``: the top k = max(1, int(density * n)) of |d_i| by a
descending argsort of its float32 magnitudes; ``magnitude_outliers``: the band below the top
int(gamma * n)); weights rounded to the dtype; d_i *= w_i; with consensus the mask keeps the
entries whose sign equals sign(sum_i d_i) (0 counts as +) and the divisor is sum_i w_i over
them (0 -> 1), else the divisor is sum_i w_i (|.| < 1e-8 -> 1, judged in float32: the one
departure from mergekit, whose 16-bit comparison misses a zero sum and writes NaN); the sum is divided by it when
normalizing, multiplied by lambda when lambda != 1, and added to B.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

NARROW = (torch.float16, torch.bfloat16)


def is_narrow(t: Tensor) -> bool:
    return t.dtype in NARROW


def _magnitude(delta: Tensor, density: float) -> Tensor:
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
    return delta * mask.reshape_as(delta)


def _magnitude_outliers(delta: Tensor, density: float, gamma: float) -> Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    order = torch.sort(delta.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=delta.dtype)
    mask[order[n_bot:n_bot + target]] = 1
    return delta * mask.reshape_as(delta)


def task_arithmetic_family(experts: Sequence[Tensor], base: Tensor, p: dict[str, Any], *,
                           sparsify: Literal["none", "magnitude", "magnitude_outliers"],
                           consensus: bool) -> Tensor:
    """mergekit's merge of the family in ``base.dtype`` (see the module docstring)."""
    deltas = base.new_empty((len(experts), *base.shape))
    for i, e in enumerate(experts):
        d = e - base
        if sparsify == "magnitude":
            d = _magnitude(d, p["density"][i])
        elif sparsify == "magnitude_outliers":
            d = _magnitude_outliers(d, p["density"][i], p["gamma"][i])
        deltas[i] = d
    weights = torch.tensor(list(p["weight"]), dtype=deltas.dtype)
    while deltas.dim() > weights.dim():
        weights.unsqueeze_(-1)
    deltas.mul_(weights)
    if consensus:
        majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
        mask = deltas.sign() == majority
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)  # 0-d safe
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        # compared in float32: in 16 bits 1e-8 rounds to 0 and mergekit divides by a zero sum (NaN);
        # evomerge divides by 1 there, as its float32 path does
        divisor = torch.where(divisor.float().abs() < 1e-8, torch.ones_like(divisor), divisor)
    if p["normalize"]:
        mixed /= divisor
    if p["lambda"] != 1:
        mixed *= p["lambda"]
    return (base + mixed).to(base.dtype)


def linear(experts: Sequence[Tensor], p: dict[str, Any]) -> Tensor:
    """mergekit's linear merge: float32 accumulation of w_i * E_i in model order, divided by
    sum_i w_i (float32) when normalizing, rounded to the inputs' dtype. One departure: a weight
    sum below 1e-8 in magnitude divides by 1, as evomerge's float32 path does (mergekit divides by
    it and writes inf or NaN weights)."""
    first = experts[0]
    weight = torch.tensor(list(p["weight"]), dtype=torch.float32)
    result = torch.zeros_like(first, dtype=torch.float32)
    for e, w in zip(experts, weight.unbind(0), strict=True):
        result.addcmul_(e, w)
    if p["normalize"]:
        total = weight.sum()
        result.div_(total if total.abs() >= 1e-8 else torch.ones((), dtype=torch.float32))
    return result.to(first.dtype)
