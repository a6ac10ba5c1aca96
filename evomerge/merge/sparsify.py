"""Task-vector sparsification and sign consensus, vectorized over a stack of experts.

Inputs are float32 stacks of task vectors, shape (n_experts, *tensor_shape), with one density
(and gamma) per expert.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def magnitude_topk(d: Tensor, densities: Sequence[float]) -> Tensor:
    """Keep the k = max(1, int(density * numel)) largest |d_i| entries of each expert
    (TIES trim step, Yadav et al. 2023, sec. 3 "Trim")."""
    out = torch.zeros_like(d)
    numel = d[0].numel()
    for i, density in enumerate(densities):
        flat = d[i].flatten()
        k = max(1, int(density * numel))
        if k >= numel:
            out[i] = d[i]
            continue
        idx = torch.topk(flat.abs(), k, sorted=False).indices
        kept = torch.zeros_like(flat)
        kept[idx] = flat[idx]
        out[i] = kept.view_as(d[i])
    return out


def dare(d: Tensor, densities: Sequence[float], generator: torch.Generator) -> Tensor:
    """Drop each entry with probability 1 - density and rescale survivors by 1 / density
    (DARE, Yu et al. 2024, eq. 2: d' = m * d / (1 - p), m ~ Bernoulli(1 - p))."""
    out = torch.zeros_like(d)
    for i, density in enumerate(densities):
        if density <= 0.0:
            continue  # everything dropped: a zero task vector, no division by zero
        if density >= 1.0:
            out[i] = d[i]
            continue
        keep = torch.rand(d[i].shape, generator=generator) < density
        out[i] = torch.where(keep, d[i] / density, torch.zeros((), dtype=d.dtype))
    return out


def breadcrumbs(d: Tensor, densities: Sequence[float], gammas: Sequence[float]) -> Tensor:
    """Model Breadcrumbs mask (Davari & Belilovsky 2024, sec. 3): rank |d_i| ascending, drop the
    top ``gamma`` fraction (outliers) and keep the ``density`` fraction just below them."""
    out = torch.zeros_like(d)
    numel = d[0].numel()
    for i, (density, gamma) in enumerate(zip(densities, gammas, strict=True)):
        flat = d[i].flatten()
        n_top = int(gamma * numel)
        n_keep = int(density * numel)
        stop = numel - n_top
        start = max(0, stop - n_keep)
        if stop <= start:
            continue
        order = torch.argsort(flat.abs(), stable=True)
        idx = order[start:stop]
        kept = torch.zeros_like(flat)
        kept[idx] = flat[idx]
        out[i] = kept.view_as(d[i])
    return out


def ties_consensus(weighted: Tensor, weights: Tensor, *, normalize: bool) -> Tensor:
    """TIES elect + disjoint merge (Yadav et al. 2023, sec. 3): the elected sign is the sign of
    sum_i w_i d_i (zero counts as +); entries disagreeing with it are dropped; with ``normalize``
    the sum is divided by the sum of w_i over the agreeing experts (a zero divisor becomes 1)."""
    total = weighted.sum(0)
    elected = torch.where(total >= 0, 1.0, -1.0)
    agree = torch.sign(weighted) == elected
    merged = (weighted * agree).sum(0)
    if normalize:
        divisor = (weights * agree).sum(0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        merged = merged / divisor
    return merged
