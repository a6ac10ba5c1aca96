"""Merges defined by angles between models, as mergekit 0.1.5 computes them (plain torch in the
inputs' dtype, the same operations in the same order, so the results are mergekit's bit for bit).

- :func:`nuslerp`: spherical interpolation of two tensors, flattened or row by row, optionally
  of their task vectors (mergekit's "NuSLERP").
- :func:`multislerp`: barycentric interpolation of any number of tensors on a hypersphere in one
  tangent-space step (after Buss & Fillmore 2001, "Spherical averages and applications to
  spherical splines and interpolation"; mergekit's "Multi-SLERP").
- :func:`model_stock`: Model Stock (Jang et al. 2024, "Model Stock: All we need is just a few
  fine-tuned models"): t = N cos(theta) / (1 + (N - 1) cos(theta)) from the mean angle between
  the N task vectors, out = t * mean(E) + (1 - t) * B.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from evomerge.errors import ConfigError


def _unit(x: Tensor, eps: float = 1e-7) -> Tensor:
    return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=eps)


def slerp_rows(t: float, v0: Tensor, v1: Tensor, *, row_wise: bool, flatten: bool, eps: float = 1e-8) -> Tensor:
    """sin((1-t) theta)/sin(theta) v0 + sin(t theta)/sin(theta) v1 along the last axis (all entries
    when ``flatten``, columns when ``row_wise``: mergekit transposes axis 0 to the end); where
    1 - cos^2(theta) <= eps^2 the vectors are colinear and it is (1-t) v0 + t v1."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    cos_theta = torch.sum(_unit(v0) * _unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos_theta.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos_theta))
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp(experts: Sequence[Tensor], base: Tensor | None, weights: Sequence[float], *, row_wise: bool,
            flatten: bool) -> Tensor:
    """Two experts with weights w0, w1 at t = w1 / (w0 + w1) (0.5 when the sum is below 1e-6);
    with a base, the task vectors are interpolated and added to it."""
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    if base is not None:
        return base + slerp_rows(t, experts[0] - base, experts[1] - base, row_wise=row_wise, flatten=flatten)
    return slerp_rows(t, experts[0], experts[1], row_wise=row_wise, flatten=flatten)


def multislerp(experts: Sequence[Tensor], base: Tensor | None, weights: Sequence[float], *, normalize: bool,
               eps: float) -> Tensor:
    """Project the (task-vector, with a base) tensors onto the unit sphere, take their weighted
    mean direction m, average their tangent vectors at m with the weights, map back with the
    exponential map and scale by the weighted mean norm. Two tensors whose weighted unit sum
    vanishes, or any number that are all zero (a tensor no expert changed), combine linearly
    (mergekit fails on the latter); other inputs whose weighted unit sum vanishes are refused
    (the mean direction is undefined)."""
    if len(experts) == 1:
        return experts[0]
    stacked = torch.stack(list(experts), dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    if normalize:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    # a zero input is a zero unit vector (in float16 eps rounds to 0 and mergekit divides 0 by 0)
    units = torch.where(norms == 0, flat, flat / (norms + eps))
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if float(mean_norm) < eps:  # judged in float: in float16 eps rounds to 0
        if stacked.shape[0] != 2 and bool((norms != 0).any()):
            raise ConfigError("multislerp: the weighted sum of the unit inputs is zero (antipodal inputs whose "
                              "weights cancel)", hint="change the weights so they do not balance out")
        out = (stacked[0] * w[0] + stacked[1] * w[1]).view(stacked.shape[1:])
        return out + base if base is not None else out
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    length = torch.norm(tangent) + eps
    # sin(x)/x -> 1 as x -> 0: in float16 eps rounds to 0 and mergekit divides 0 by 0
    out = mean * torch.cos(length) + tangent * torch.where(length > 0, torch.sin(length) / length, 1)
    out = (out * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])
    return out + base if base is not None else out


def model_stock(experts: Sequence[Tensor], base: Tensor, *, filter_wise: bool) -> Tensor:
    """cos(theta) is the mean pairwise cosine of the task vectors (norm products clamped at 1e-6,
    each cosine to [-1, 1]), per row with ``filter_wise``, else over the whole tensor; where
    1 + (N - 1) cos(theta) is below 1e-6 in magnitude, t = 0 (the base)."""
    shape = base.shape
    w0, ws = base, list(experts)
    if filter_wise:
        if w0.dim() < 2:
            w0, ws = w0.reshape(1, -1), [w.reshape(1, -1) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norm_product = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norm_product.clamp(min=1e-6)).clamp(-1, 1))
    cos_theta = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), (n * cos_theta) / safe)
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)
