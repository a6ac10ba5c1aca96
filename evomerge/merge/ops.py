"""Merge operators: pure tensor functions with mergekit's parameter names and semantics.

Notation (ALGORITHMS.md): base B, experts E_i, task vectors d_i = E_i - B, weights w_i.
Every op upcasts to float32, returns the inputs' shape and dtype, and never mutates its
inputs. Stochastic ops (DARE) draw only from the ``torch.Generator`` they are given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

from evomerge.errors import ConfigError
from evomerge.merge import sparsify


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an op, with mergekit's name, default and bounds."""

    name: str
    default: float | bool | None
    low: float | None
    high: float | None
    per_source: bool
    kind: Literal["float", "bool"] = "float"
    doc: str = ""


@dataclass(frozen=True)
class OpSpec:
    name: str
    params: tuple[ParamSpec, ...]
    requires_base: bool
    min_experts: int
    max_experts: int | None
    stochastic: bool
    paper: str


class MergeOp(Protocol):
    spec: ClassVar[OpSpec]

    def __call__(
        self,
        experts: Sequence[Tensor],
        *,
        base: Tensor | None,
        params: Mapping[str, Any],
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


WEIGHT = ParamSpec("weight", 1.0, None, None, True, doc="scale of this model's contribution")
DENSITY = ParamSpec("density", 1.0, 0.0, 1.0, True, doc="fraction of task-vector entries kept")
GAMMA = ParamSpec("gamma", 0.01, 0.0, 1.0, True, doc="fraction of largest-magnitude entries dropped")
LAMBDA = ParamSpec("lambda", 1.0, None, None, False, doc="final scale of the merged task vector")


def _normalize(default: bool) -> ParamSpec:
    return ParamSpec("normalize", default, None, None, False, "bool", "divide by the sum of weights")


def resolve_params(spec: OpSpec, params: Mapping[str, Any], n_experts: int) -> dict[str, Any]:
    """Fill defaults, broadcast per-source scalars, and check names, lengths and bounds."""
    known = {p.name: p for p in spec.params}
    unknown = set(params) - set(known)
    if unknown:
        raise ConfigError(
            f"{spec.name}: unknown parameter(s) {sorted(unknown)}",
            hint=f"{spec.name} takes {sorted(known) or 'no parameters'}",
        )
    out: dict[str, Any] = {}
    for p in spec.params:
        value = params.get(p.name, p.default)
        if p.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{spec.name}: {p.name} must be true or false, got {value!r}")
            out[p.name] = value
            continue
        values = list(value) if isinstance(value, list | tuple) else None
        if p.per_source:
            if values is None:
                values = [value] * n_experts
            if len(values) != n_experts:
                raise ConfigError(
                    f"{spec.name}: {p.name} has {len(values)} values for {n_experts} models",
                    hint="give one value per model",
                )
        elif values is not None:
            raise ConfigError(f"{spec.name}: {p.name} is one global value, got a list {value!r}")
        checked = [_check_number(spec, p, v) for v in (values if values is not None else [value])]
        out[p.name] = checked if p.per_source else checked[0]
    return out


def _check_number(spec: OpSpec, p: ParamSpec, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{spec.name}: {p.name} must be a number, got {v!r}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"{spec.name}: {p.name} must be finite, got {v}")
    if (p.low is not None and v < p.low) or (p.high is not None and v > p.high):
        raise ConfigError(
            f"{spec.name}: {p.name}={v} is outside [{p.low}, {p.high}]",
            hint=f"choose {p.name} within [{p.low}, {p.high}]",
        )
    return v


def _check_inputs(spec: OpSpec, experts: Sequence[Tensor], base: Tensor | None) -> None:
    n = len(experts)
    if n < spec.min_experts or (spec.max_experts is not None and n > spec.max_experts):
        raise ConfigError(f"{spec.name}: needs {spec.min_experts}..{spec.max_experts or 'any'} models, got {n}")
    if spec.requires_base and base is None:
        raise ConfigError(f"{spec.name}: needs a base model", hint="set `base_model:` in the recipe")
    shape = experts[0].shape
    for t in [*experts, *([base] if base is not None else [])]:
        if t.shape != shape:
            raise ConfigError(f"{spec.name}: tensor shapes differ: {tuple(shape)} vs {tuple(t.shape)}")


def _weighted_sum(tensors: Sequence[Tensor], weights: Sequence[float], *, minus: Tensor | None = None) -> Tensor:
    """sum_i w_i (T_i - minus) in float32, accumulated in place: one temporary at a time."""
    acc: Tensor | None = None
    for t, w in zip(tensors, weights, strict=True):
        if minus is not None:
            term = t.float() - minus  # a fresh tensor
            acc = term.mul_(w) if acc is None else acc.add_(term, alpha=w)
        else:
            acc = t.float() * w if acc is None else acc.add_(t.float(), alpha=w)  # never mutates inputs
    assert acc is not None
    return acc


def _normalized(acc: Tensor, weights: Sequence[float], normalize: bool) -> Tensor:
    if normalize:
        denom = float(sum(weights))
        acc.div_(denom if denom != 0 else 1.0)
    return acc


class _Op:
    spec: ClassVar[OpSpec]

    def __call__(self, experts, *, base, params, generator=None):  # type: ignore[no-untyped-def]
        _check_inputs(self.spec, experts, base)
        p = resolve_params(self.spec, params, len(experts))
        if self.spec.stochastic and generator is None:
            raise ConfigError(f"{self.spec.name}: a seeded torch.Generator is required (random op)")
        out = self.compute(experts, base, p, generator)
        return out.to(experts[0].dtype)

    def compute(self, experts, base, p, generator) -> Tensor:  # type: ignore[no-untyped-def]
        raise NotImplementedError


class Linear(_Op):
    """Weighted average sum_i w_i E_i / sum_i w_i (Wortsman et al. 2022, model soups, eq. 1)."""

    spec = OpSpec("linear", (WEIGHT, _normalize(True)), False, 1, None, False,
                  "Wortsman et al. 2022, Model soups")

    def compute(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        return _normalized(_weighted_sum(experts, p["weight"]), p["weight"], p["normalize"])


class TaskArithmetic(_Op):
    """B + lambda * sum_i w_i d_i (Ilharco et al. 2023, "Editing Models with Task Arithmetic", eq. 1)."""

    spec = OpSpec("task_arithmetic", (WEIGHT, LAMBDA, _normalize(False)), True, 1, None, False,
                  "Ilharco et al. 2023, Editing Models with Task Arithmetic")

    def compute(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        b = base.float()
        merged = _normalized(_weighted_sum(experts, p["weight"], minus=b), p["weight"], p["normalize"])
        return merged.mul_(p["lambda"]).add_(b)


class _Sparsified(_Op):
    """Shared path: sparsify each d_i, weight it, then sum or TIES-consensus, scale, add to B."""

    consensus: ClassVar[bool]

    def sparsify(self, d: Tensor, i: int, p: dict[str, Any], generator) -> Tensor:  # type: ignore[no-untyped-def]
        """Sparsify task vector ``d`` of expert ``i`` (``d`` is a fresh tensor: may be modified)."""
        raise NotImplementedError

    def compute(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        b = base.float()
        weights = p["weight"]
        weighted = [self.sparsify(e.float() - b, i, p, generator).mul_(w)
                    for i, (e, w) in enumerate(zip(experts, weights, strict=True))]
        if self.consensus:
            merged = sparsify.ties_consensus(weighted, weights, normalize=p["normalize"])
        else:
            merged = weighted[0]
            for t in weighted[1:]:
                merged.add_(t)
            merged = _normalized(merged, weights, p["normalize"])
        return merged.mul_(p["lambda"]).add_(b)


class Ties(_Sparsified):
    """TIES-Merging: trim to top-k |d_i|, elect sign, disjoint mean (Yadav et al. 2023, sec. 3)."""

    consensus = True
    spec = OpSpec("ties", (WEIGHT, DENSITY, LAMBDA, _normalize(True)), True, 1, None, False,
                  "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models")

    def sparsify(self, d, i, p, generator):  # type: ignore[no-untyped-def]
        return sparsify.magnitude_topk(d, p["density"][i])


class DareTies(_Sparsified):
    """DARE drop-and-rescale, then TIES consensus (Yu et al. 2024, "Language Models are Super Mario", eq. 2)."""

    consensus = True
    spec = OpSpec("dare_ties", (WEIGHT, DENSITY, LAMBDA, _normalize(True)), True, 1, None, True,
                  "Yu et al. 2024, Language Models are Super Mario (DARE)")

    def sparsify(self, d, i, p, generator):  # type: ignore[no-untyped-def]
        return sparsify.dare(d, p["density"][i], generator)


class DareLinear(DareTies):
    """DARE drop-and-rescale, then a weighted sum of task vectors (Yu et al. 2024, eq. 2)."""

    consensus = False
    spec = OpSpec("dare_linear", (WEIGHT, DENSITY, LAMBDA, _normalize(False)), True, 1, None, True,
                  "Yu et al. 2024, Language Models are Super Mario (DARE)")


class Breadcrumbs(_Sparsified):
    """Model Breadcrumbs: drop the top-gamma outliers and the smallest entries, keep `density`
    (Davari & Belilovsky 2024, sec. 3), then a weighted task-vector sum."""

    consensus = False
    spec = OpSpec("breadcrumbs", (WEIGHT, DENSITY, GAMMA, LAMBDA, _normalize(False)), True, 1, None, False,
                  "Davari & Belilovsky 2024, Model Breadcrumbs")

    def sparsify(self, d, i, p, generator):  # type: ignore[no-untyped-def]
        return sparsify.breadcrumbs(d, p["density"][i], p["gamma"][i])


class BreadcrumbsTies(Breadcrumbs):
    """Model Breadcrumbs masks with TIES sign consensus (Davari & Belilovsky 2024; Yadav et al. 2023)."""

    consensus = True
    spec = OpSpec("breadcrumbs_ties", (WEIGHT, DENSITY, GAMMA, LAMBDA, _normalize(True)), True, 1, None, False,
                  "Davari & Belilovsky 2024, Model Breadcrumbs; Yadav et al. 2023, TIES")


class Slerp(_Op):
    """Spherical linear interpolation from B (t=0) to the expert (t=1) (Shoemake 1985, eq. on p. 248):
    slerp(t) = sin((1-t)theta)/sin(theta) v0 + sin(t theta)/sin(theta) v1, on flattened tensors; nearly
    colinear directions (|cos theta| > 0.9995) fall back to linear interpolation."""

    spec = OpSpec("slerp", (ParamSpec("t", 0.5, 0.0, 1.0, False, doc="weight of the expert"),), True, 1, 1,
                  False, "Shoemake 1985, Animating rotation with quaternion curves")

    def compute(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        t = p["t"]
        if t == 0.0:
            return base.float()
        if t == 1.0:
            return experts[0].float()
        v0, v1 = base.float().flatten(), experts[0].float().flatten()
        n0, n1 = v0.norm(), v1.norm()
        n0 = n0 if n0 > 1e-8 else torch.ones_like(n0)
        n1 = n1 if n1 > 1e-8 else torch.ones_like(n1)
        dot = float(torch.clamp((v0 / n0) @ (v1 / n1), -1.0, 1.0))
        if abs(dot) > 0.9995:
            out = (1 - t) * v0 + t * v1
        else:
            theta = torch.arccos(torch.tensor(dot, dtype=torch.float64))
            s = torch.sin(theta)
            a = float(torch.sin((1 - t) * theta) / s)
            b = float(torch.sin(t * theta) / s)
            out = a * v0 + b * v1
        return out.view_as(base)


class Passthrough(_Op):
    """Copies one model's tensor, optionally scaled (mergekit passthrough; layer stacking)."""

    spec = OpSpec("passthrough", (ParamSpec("scale", 1.0, None, None, False, doc="multiplier"),), False, 1, 1,
                  False, "mergekit passthrough (Goddard et al. 2024, Arcee's MergeKit)")

    def __call__(self, experts, *, base, params, generator=None):  # type: ignore[no-untyped-def]
        _check_inputs(self.spec, experts, None)
        p = resolve_params(self.spec, params, 1)
        if p["scale"] == 1.0:
            return experts[0].clone()
        return (experts[0].float() * p["scale"]).to(experts[0].dtype)
