"""Merging 16-bit tensors as mergekit 0.1.5 does: the same torch operations in the same dtype.

mergekit gathers its inputs in the config's ``dtype`` (or as stored) and merges in that dtype:
every subtraction, product and sum is rounded to float16 or bfloat16 as it goes. evomerge's fused
kernels compute in float32, which for 16-bit inputs is more accurate and not mergekit's model.
For float16 and bfloat16 inputs the deterministic ops come here (linear) or to
:mod:`evomerge.merge.gta` (the task-arithmetic family) instead, so a merge equals mergekit's bit
for bit; float32 (and float64) merges stay on the fused kernels.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

NARROW = (torch.float16, torch.bfloat16)

_FLOAT32 = contextvars.ContextVar("evomerge_float32_arithmetic", default=False)


def is_narrow(t: Tensor) -> bool:
    """Whether ``t`` takes mergekit's 16-bit arithmetic: a 16-bit tensor, unless the merge was
    asked for float32 arithmetic (``float32_arithmetic``)."""
    return t.dtype in NARROW and not _FLOAT32.get()


@contextlib.contextmanager
def float32_arithmetic() -> Iterator[None]:
    """Within the block, 16-bit inputs of the fused-kernel ops are merged in float32: the kernels
    widen each block of entries as they read it (exactly: every 16-bit value is a float32 value),
    so the result is the merge of the inputs converted to float32, without converting them (a
    recipe's ``dtype: float32`` over 16-bit sources: merge arithmetic in float32 per block)."""
    token = _FLOAT32.set(True)
    try:
        yield
    finally:
        _FLOAT32.reset(token)


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
