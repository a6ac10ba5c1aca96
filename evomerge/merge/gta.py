"""Generalized task arithmetic as mergekit 0.1.5 computes it: plain torch in the inputs' dtype.

The family (Ilharco et al. 2023, task arithmetic; TIES, Yadav et al. 2023; DARE, Yu et al. 2024;
Breadcrumbs, Davari & Belilovsky 2024; DELLA, Deep et al. 2024; SCE, Wan et al. 2024) merges task
vectors d_i = E_i - B. mergekit runs every step in the inputs' dtype, so a 16-bit merge rounds
as it goes and a TIES mask depends on those rounded values. evomerge's fused kernels
(:mod:`evomerge.merge.kernels`) compute the common cases in float32; this module is the same
sequence of torch operations as mergekit, used where a merge must equal mergekit's bit for bit
and the kernels do not apply: 16-bit inputs, an L1 ``rescale`` after a deterministic mask, DELLA's
rank-dependent drop probabilities and SCE.

Per tensor (mergekit's ``GeneralizedTaskArithmeticMerge.merge_group``): d_i sparsified
(:func:`magnitude`, :func:`magnitude_outliers` or :func:`magprune`, each optionally rescaled to
d_i's L1 norm, :func:`l1_rescaled`); weights rounded to the dtype; d_i *= w_i; with consensus the
mask keeps the entries whose sign equals sign(sum_i d_i) (0 counts as +) and the divisor is
sum_i w_i over them (0 -> 1), else the divisor is sum_i w_i (|.| < 1e-8 -> 1, judged in float32:
the one departure from mergekit, whose 16-bit comparison misses a zero sum and writes NaN); the
sum is divided by it when normalizing, multiplied by lambda when lambda != 1, and added to B.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from evomerge.errors import ConfigError

Sparsifier = Literal["none", "magnitude", "magnitude_outliers", "magprune"]

L1_EPS = 1e-7  # mergekit's tolerance below which an L1 norm is not rescaled to


def l1_rescaled(delta: Tensor, mask: Tensor) -> Tensor:
    """delta * mask scaled so its L1 norm is delta's (mergekit's ``rescale``); unscaled when
    either norm is below 1e-7."""
    masked = delta * mask
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < L1_EPS or after < L1_EPS:
        return masked
    return masked * (before / after)


def _masked(delta: Tensor, mask: Tensor, rescale: bool) -> Tensor:
    return l1_rescaled(delta, mask) if rescale else delta * mask


def magnitude(delta: Tensor, density: float, rescale: bool = False) -> Tensor:
    """TIES trim: keep the k = max(1, int(density * n)) largest |d| (a descending argsort of the
    float32 magnitudes)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
    return _masked(delta, mask.reshape_as(delta), rescale)


def magnitude_outliers(delta: Tensor, density: float, gamma: float, rescale: bool = False) -> Tensor:
    """Breadcrumbs band: drop the int(gamma * n) largest |d|, keep the int(density * n) below."""
    if density >= 1:
        return delta
    n = delta.numel()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    order = torch.sort(delta.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=delta.dtype)
    mask[order[n_bot:n_bot + target]] = 1
    return _masked(delta, mask.reshape_as(delta), rescale)


def check_magprune(density: float, epsilon: float) -> None:
    """DELLA needs density +- epsilon inside (0, 1) whenever it drops anything."""
    if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
        raise ConfigError(f"della: density {density:g} +- epsilon {epsilon:g} leaves (0, 1)",
                          hint="choose epsilon below min(density, 1 - density)")


def magprune(delta: Tensor, density: float, epsilon: float, rescale: bool, generator: torch.Generator) -> Tensor:
    """DELLA's MagPrune (Deep et al. 2024, "DELLA-Merging", sec. 3.1) as mergekit 0.1.5 runs it: in
    each row (a 1-d tensor is one row), the entry of magnitude rank r (1 = smallest) of n is kept
    with probability p = density - epsilon + 2 epsilon (r - 1) / (n - 1), then the row-masked tensor
    is rescaled to d's L1 norm (mergekit's ``rescale``; the paper divides each kept entry by its
    p). Works in float32 (bfloat16 for bfloat16 inputs). A one-entry row keeps with probability
    ``density`` (mergekit divides 0 by 0 there and fails)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    check_magprune(density, epsilon)
    shape = delta.shape
    work = torch.bfloat16 if delta.dtype == torch.bfloat16 else torch.float32
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    ranks = torch.argsort(rows.abs(), dim=1, descending=False).argsort(dim=1).to(work) + 1
    low = ranks.min(dim=1, keepdim=True).values
    high = ranks.max(dim=1, keepdim=True).values
    position = torch.nan_to_num(((ranks - low) / (high - low)).clamp(0, 1), nan=0.5)
    probs = (density - epsilon) + position * 2 * epsilon
    mask = torch.bernoulli(probs, generator=generator).to(work)
    return _masked(rows.to(work), mask, rescale).to(delta.dtype).reshape(shape)


def sign_consensus(deltas: Tensor) -> Tensor:
    """TIES election (Yadav et al. 2023, sec. 3): True where sign(d_i) = sign(sum_i d_i), 0 as +."""
    majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    return deltas.sign() == majority


def merge(experts: Sequence[Tensor], base: Tensor, p: dict[str, Any], *, sparsify: Sparsifier, consensus: bool,
          generator: torch.Generator | None = None) -> Tensor:
    """mergekit's merge of the family in ``base.dtype`` (see the module docstring). ``p``: resolved
    parameters (weight, density, gamma, epsilon per model; normalize, lambda, rescale)."""
    rescale = bool(p.get("rescale", False))
    deltas = base.new_empty((len(experts), *base.shape))
    for i, e in enumerate(experts):
        d = e - base
        if sparsify == "magnitude":
            d = magnitude(d, p["density"][i], rescale)
        elif sparsify == "magnitude_outliers":
            d = magnitude_outliers(d, p["density"][i], p["gamma"][i], rescale)
        elif sparsify == "magprune":
            assert generator is not None, "magprune draws from a generator"
            d = magprune(d, p["density"][i], p["epsilon"][i], rescale, generator)
        deltas[i] = d
    weights = torch.tensor(list(p["weight"]), dtype=deltas.dtype)
    while deltas.dim() > weights.dim():
        weights.unsqueeze_(-1)
    deltas.mul_(weights)
    if consensus:
        mask = sign_consensus(deltas)
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


def sce(experts: Sequence[Tensor], base: Tensor, select_topk: float) -> Tensor:
    """SCE (Wan et al. 2024, "FuseChat", sec. 3.3: select, calculate, erase) as mergekit 0.1.5 runs it:
    keep the entries whose variance across the task vectors is in the top ``select_topk`` of the
    nonzero variances; weight each task vector by its mean squared entry over the sum of those;
    erase entries whose sign disagrees with the TIES election; out = B + sum_i w_i m_i d_i /
    max(sum_i w_i m_i, 1e-6)."""
    deltas = torch.stack([e - base for e in experts], dim=0)
    if select_topk < 1:
        deltas = deltas * _variance_mask(deltas, select_topk).unsqueeze(0)
    erase = sign_consensus(deltas)
    energy = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = torch.sum(energy).item()
    weights = torch.ones_like(energy) / energy.shape[0] if abs(total) < 1e-6 else energy / total
    while weights.dim() < deltas.dim():
        weights = weights.unsqueeze(-1)
    kept = weights * erase
    mixed = (deltas * kept).sum(dim=0)
    return base + mixed / torch.sum(kept, dim=0).clamp(min=1e-6)


def _variance_mask(deltas: Tensor, fraction: float) -> Tensor:
    if fraction <= 0:
        return torch.zeros_like(deltas[0])
    var = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)
    mask = torch.zeros_like(var)
    if k == 0:
        return mask
    mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask
