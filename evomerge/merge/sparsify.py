"""Task-vector sparsification and TIES sign consensus.

Each sparsifier takes one float32 task vector that the caller owns (it is modified in place
and returned), so a merge holds one task vector per expert and few temporaries. Selection by
magnitude uses ``torch.kthvalue`` thresholds (linear time, no full sort of a 50M-entry tensor)
and keeps exactly the requested number of entries: among entries of equal magnitude at the
threshold, the one with the lower flat index counts as larger. Ties among zero entries are
left unresolved, since keeping or dropping a zero gives the same values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def top_mask(mag: Tensor, k: int) -> Tensor:
    """Bool mask (flat) of the ``k`` largest entries of the flat, non-negative ``mag``."""
    numel = mag.numel()
    if k <= 0:
        return torch.zeros(numel, dtype=torch.bool, device=mag.device)
    if k >= numel:
        return torch.ones(numel, dtype=torch.bool, device=mag.device)
    threshold = torch.kthvalue(mag, numel - k + 1).values
    mask = mag > threshold
    need = k - int(torch.count_nonzero(mask))
    if need > 0 and bool(threshold > 0):
        tied = (mag == threshold).nonzero().squeeze(1)[:need]
        mask[tied] = True
    return mask


def magnitude_topk(d: Tensor, density: float) -> Tensor:
    """TIES trim (Yadav et al. 2023, sec. 3, step 1 "Trim"): keep the k = max(1, int(density *
    numel)) entries of largest |d| and zero the rest; density >= 1 keeps everything."""
    numel = d.numel()
    k = max(1, int(density * numel))
    if k >= numel:
        return d
    keep = top_mask(d.abs().flatten(), k)
    return d.masked_fill_(~keep.view_as(d), 0.0)


# torch.rand draws float32 multiples of 2**-24: a smaller keep probability cannot be drawn, and
# rescaling by its inverse would blow the few survivors up, so such densities drop everything.
MIN_DARE_DENSITY = 2.0**-24


def dare(d: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE drop-and-rescale (Yu et al. 2024, "Language Models are Super Mario", sec. 3:
    d' = m * d / (1 - p), m ~ Bernoulli(1 - p), with 1 - p = density). A density below
    ``MIN_DARE_DENSITY`` (0 included) drops every entry and returns a zero task vector (no
    division by zero); density 1 keeps everything and draws nothing."""
    if density < MIN_DARE_DENSITY:
        return d.zero_()
    if density >= 1.0:
        return d
    drop = torch.rand(d.shape, generator=generator, device=d.device) >= density
    return d.masked_fill_(drop, 0.0).div_(density)


def breadcrumbs(d: Tensor, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs mask (Davari & Belilovsky 2024, sec. 3): rank |d| ascending, drop the
    largest ``gamma`` fraction (outliers) and the smallest entries, keeping the int(density *
    numel) entries just below the outliers. As in mergekit, density takes precedence: when
    density + gamma > 1 fewer outliers are dropped, and density >= 1 keeps everything."""
    if density >= 1.0:
        return d
    numel = d.numel()
    n_keep = int(density * numel)
    n_top = min(int(gamma * numel), numel - n_keep)
    mag = d.abs().flatten()
    keep = top_mask(mag, n_keep + n_top)
    if n_top > 0:
        keep &= ~top_mask(mag, n_top)
    return d.masked_fill_(~keep.view_as(d), 0.0)


def ties_consensus(weighted: Sequence[Tensor], weights: Sequence[float], *, normalize: bool) -> Tensor:
    """TIES elect + disjoint merge (Yadav et al. 2023, sec. 3, steps 2-3) over the weighted task
    vectors w_i d_i: the elected sign is the sign of their sum (a zero sum counts as +); entries
    that are zero or disagree with it are dropped; with ``normalize`` the sum is divided by the
    sum of w_i over the agreeing experts (a zero divisor becomes 1).

    The inputs are consumed (modified in place). Computed as elected * sum_i max(0, elected *
    w_i d_i): the agreeing entries share one sign, so this equals the signed sum exactly."""
    elected = weighted[0].clone()
    for t in weighted[1:]:
        elected.add_(t)
    elected.ge_(0).mul_(2).sub_(1)  # +1 where the sum is >= 0, else -1 (in place, no new buffer)
    merged: Tensor | None = None
    divisor: Tensor | None = None
    for t, w in zip(weighted, weights, strict=True):
        agreeing = t.mul_(elected).clamp_(min=0)  # |w_i d_i| where it agrees, else 0
        merged = agreeing if merged is None else merged.add_(agreeing)
        if normalize:
            indicator = agreeing.sign() if agreeing is merged else agreeing.sign_()  # merged: keep it
            divisor = indicator.mul_(w) if divisor is None else divisor.add_(indicator, alpha=w)
    assert merged is not None
    merged.mul_(elected)
    if divisor is not None:
        merged.div_(divisor.masked_fill_(divisor == 0, 1.0))
    return merged
