"""Merging 16-bit tensors as mergekit 0.1.5 does: the same torch operations in the same dtype.

mergekit gathers its inputs in the config's ``dtype`` (or as stored) and merges in that dtype:
every subtraction, product and sum is rounded to float16 or bfloat16 as it goes. evomerge's fused
kernels compute in float32, which for 16-bit inputs is more accurate and not mergekit's model.
For float16 and bfloat16 inputs the deterministic ops come here (linear) or to
:mod:`evomerge.merge.gta` (the task-arithmetic family) instead, so a merge equals mergekit's bit
for bit; float32 (and float64) merges stay on the fused kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

NARROW = (torch.float16, torch.bfloat16)


def is_narrow(t: Tensor) -> bool:
    return t.dtype in NARROW


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
