"""Task-vector sparsification and sign consensus.

Each sparsifier takes one float32 task vector that the caller owns (it is modified in place
and returned), so a merge holds one task vector per expert and few temporaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def magnitude_topk(d: Tensor, density: float) -> Tensor:
    """Keep the k = max(1, int(density * numel)) largest |d| entries, zero the rest
    (TIES trim step, Yadav et al. 2023, sec. 3 "Trim"). Entries tied in magnitude with the
    k-th largest are all kept."""
    numel = d.numel()
    k = max(1, int(density * numel))
    if k >= numel:
        return d
    mag = d.abs().flatten()
    threshold = torch.kthvalue(mag, numel - k + 1).values
    return d.masked_fill_((mag < threshold).view_as(d), 0.0)


def dare(d: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """Drop each entry with probability 1 - density and rescale survivors by 1 / density
    (DARE, Yu et al. 2024, eq. 2: d' = m * d / (1 - p), m ~ Bernoulli(1 - p))."""
    if density <= 0.0:
        return d.zero_()  # everything dropped: a zero task vector, no division by zero
    if density >= 1.0:
        return d
    drop = torch.rand(d.shape, generator=generator) >= density
    return d.masked_fill_(drop, 0.0).div_(density)


def breadcrumbs(d: Tensor, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs mask (Davari & Belilovsky 2024, sec. 3): rank |d| ascending, drop the
    top ``gamma`` fraction (outliers) and keep the ``density`` fraction just below them."""
    numel = d.numel()
    stop = numel - int(gamma * numel)
    start = max(0, stop - int(density * numel))
    if start == 0 and stop == numel:
        return d
    order = torch.argsort(d.abs().flatten(), stable=True)
    keep = torch.zeros(numel, dtype=torch.bool)
    keep[order[start:stop]] = True
    return d.masked_fill_(~keep.view_as(d), 0.0)


def ties_consensus(weighted: Sequence[Tensor], weights: Sequence[float], *, normalize: bool) -> Tensor:
    """TIES elect + disjoint merge (Yadav et al. 2023, sec. 3) over weighted task vectors
    w_i d_i: the elected sign is the sign of their sum (zero counts as +); entries that disagree
    with it (or are zero) are dropped; with ``normalize`` the sum is divided by the sum of w_i
    over the agreeing experts (a zero divisor becomes 1)."""
    total = weighted[0].clone()
    for t in weighted[1:]:
        total.add_(t)
    positive = total >= 0
    merged = total.zero_()
    divisor = torch.zeros_like(merged) if normalize else None
    for t, w in zip(weighted, weights, strict=True):
        agree = torch.where(positive, t > 0, t < 0)
        merged.add_(t.masked_fill_(~agree, 0.0))
        if divisor is not None:
            divisor.add_(agree, alpha=w)
    if divisor is not None:
        merged.div_(divisor.masked_fill_(divisor == 0, 1.0))
    return merged
