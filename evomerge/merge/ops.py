"""Merge operators: pure tensor functions with mergekit's parameter names and semantics.

Notation (ALGORITHMS.md): base B, experts E_i, task vectors d_i = E_i - B, weights w_i.
Every op upcasts to float32, returns the inputs' shape and dtype, and never mutates its
inputs. Stochastic ops (DARE) draw only from the ``torch.Generator`` they are given.
"""

from __future__ import annotations

import math
import numbers
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
    """What an op takes: its parameters, whether it needs a base, how many experts, and whether
    it is random (then it needs a ``torch.Generator``); ``paper`` is the citation."""

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
    """Fill defaults, broadcast a scalar given for a per-source parameter to every expert, and
    check names, lengths, types and bounds (ConfigError naming the parameter and the fix).

    Returns per-source parameters as lists of ``n_experts`` floats, global ones as scalars.
    Per-source values may be any sequence (list, tuple, numpy array, 1-d tensor)."""
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
                raise ConfigError(f"{spec.name}: {p.name} must be true or false, got {value!r}",
                                  hint=f"set {p.name}: true or {p.name}: false")
            out[p.name] = value
            continue
        values = _as_list(value)
        if p.per_source:
            if values is None:
                values = [value] * n_experts
            if len(values) != n_experts:
                raise ConfigError(
                    f"{spec.name}: {p.name} has {len(values)} values for {n_experts} models",
                    hint=f"give {p.name} one value per model ({n_experts}), or one number for all",
                )
        elif values is not None:
            raise ConfigError(f"{spec.name}: {p.name} is one global value, got a list {value!r}",
                              hint=f"give {p.name} a single number")
        checked = [_check_number(spec, p, v) for v in (values if values is not None else [value])]
        out[p.name] = checked if p.per_source else checked[0]
    return out


def _as_list(value: Any) -> list[Any] | None:
    """The elements of a sequence value (numpy arrays and tensors included), None for a scalar."""
    if isinstance(value, str | bytes):
        return None
    if hasattr(value, "tolist"):  # numpy arrays/scalars, tensors
        listed = value.tolist()
        return listed if isinstance(listed, list) else None
    if isinstance(value, Sequence):
        return list(value)
    return None


def _check_number(spec: OpSpec, p: ParamSpec, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ConfigError(f"{spec.name}: {p.name} must be a number, got {v!r}", hint=f"give {p.name} a number")
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(f"{spec.name}: {p.name} must be finite, got {v}", hint=f"give {p.name} a finite number")
    if (p.low is not None and v < p.low) or (p.high is not None and v > p.high):
        low = "-inf" if p.low is None else p.low
        high = "inf" if p.high is None else p.high
        raise ConfigError(
            f"{spec.name}: {p.name}={v} is outside [{low}, {high}]",
            hint=f"choose {p.name} within [{low}, {high}]",
        )
    return v


def _check_inputs(spec: OpSpec, experts: Sequence[Tensor], base: Tensor | None) -> None:
    n = len(experts)
    if n < spec.min_experts or (spec.max_experts is not None and n > spec.max_experts):
        raise ConfigError(f"{spec.name}: needs {spec.min_experts}..{spec.max_experts or 'any'} models, got {n}",
                          hint=f"give {spec.name} between {spec.min_experts} and {spec.max_experts or 'any'} models")
    if spec.requires_base and base is None:
        raise ConfigError(f"{spec.name}: needs a base model", hint="set `base_model:` in the recipe")
    inputs = [*experts, *([base] if base is not None else [])]
    for t in inputs:
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ConfigError(f"{spec.name}: inputs must be floating-point tensors, got {type(t).__name__}"
                              f"{'' if not isinstance(t, Tensor) else ' of ' + str(t.dtype)}")
    shape = experts[0].shape
    for t in inputs:
        if t.shape != shape:
            raise ConfigError(f"{spec.name}: tensor shapes differ: {tuple(shape)} vs {tuple(t.shape)}",
                              hint="merge only models of the same architecture and size")


def _weighted_sum(tensors: Sequence[Tensor], weights: Sequence[float], *, minus: Tensor | None = None) -> Tensor:
    """sum_i w_i (T_i - minus) in float32, accumulated in place: one temporary at a time.
    Terms of weight 0 are skipped, so a one-hot sum is exactly the chosen tensor."""
    acc: Tensor | None = None
    for t, w in zip(tensors, weights, strict=True):
        if w == 0:
            continue
        term = t.float() - minus if minus is not None else t.float() * w  # fresh: inputs stay untouched
        if minus is not None:
            acc = term.mul_(w) if acc is None else acc.add_(term, alpha=w)
        else:
            acc = term if acc is None else acc.add_(term)
    if acc is None:
        acc = torch.zeros(tensors[0].shape, dtype=torch.float32, device=tensors[0].device)
    return acc


def _normalized(acc: Tensor, weights: Sequence[float], normalize: bool) -> Tensor:
    """Divide by sum_i w_i when ``normalize``; a (near-)zero sum (|sum| < 1e-8) divides by 1."""
    if normalize:
        denom = math.fsum(weights)
        if abs(denom) >= 1e-8 and denom != 1.0:
            acc.div_(denom)
    return acc


class _Op:
    spec: ClassVar[OpSpec]

    def __call__(self, experts, *, base, params, generator=None):  # type: ignore[no-untyped-def]
        _check_inputs(self.spec, experts, base)
        p = resolve_params(self.spec, params, len(experts))
        if self.spec.stochastic and generator is None:
            raise ConfigError(f"{self.spec.name}: a seeded torch.Generator is required (random op)",
                              hint="pass generator=torch.Generator().manual_seed(seed)")
        out = self.compute(experts, base, p, generator).to(experts[0].dtype)
        if any(out.data_ptr() == t.data_ptr() for t in [*experts, *([base] if base is not None else [])]):
            out = out.clone()  # never hand back an input: the caller may modify the result
        return out

    def compute(self, experts, base, p, generator) -> Tensor:  # type: ignore[no-untyped-def]
        raise NotImplementedError


class Linear(_Op):
    """Model soup / weighted average (Wortsman et al. 2022, "Model soups", sec. 2):
    out = sum_i w_i E_i / sum_i w_i with ``normalize`` (default), else sum_i w_i E_i. No base."""

    spec = OpSpec("linear", (WEIGHT, _normalize(True)), False, 1, None, False,
                  "Wortsman et al. 2022, Model soups: averaging weights of multiple fine-tuned models")

    def compute(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        return _normalized(_weighted_sum(experts, p["weight"]), p["weight"], p["normalize"])


class TaskArithmetic(_Op):
    """Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic", sec. 2):
    out = B + lambda * sum_i w_i d_i, d_i = E_i - B (divided by sum_i w_i if ``normalize``)."""

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
        weighted: list[Tensor] = []  # kept only for the consensus, which needs every w_i d_i twice
        merged: Tensor | None = None
        for i, (e, w) in enumerate(zip(experts, weights, strict=True)):
            d = self.sparsify(e.float() - b, i, p, generator).mul_(w)
            if self.consensus:
                weighted.append(d)
            else:
                merged = d if merged is None else merged.add_(d)
        if self.consensus:
            merged = sparsify.ties_consensus(weighted, weights, normalize=p["normalize"])
        else:
            assert merged is not None
            merged = _normalized(merged, weights, p["normalize"])
        return merged.mul_(p["lambda"]).add_(b)


class Ties(_Sparsified):
    """TIES-Merging (Yadav et al. 2023, sec. 3 / Algorithm 1): trim each d_i to its top-k |d_i|
    (k = max(1, int(density * numel))), elect gamma = sign(sum_i w_i d_i) (0 counts as +), and
    out = B + lambda * sum_{i in A} w_i d_i / sum_{i in A} w_i over the agreeing set A (the
    division only with ``normalize``, the default)."""

    consensus = True
    spec = OpSpec("ties", (WEIGHT, DENSITY, LAMBDA, _normalize(True)), True, 1, None, False,
                  "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models")

    def sparsify(self, d, i, p, generator):  # type: ignore[no-untyped-def]
        return sparsify.magnitude_topk(d, p["density"][i])


class DareTies(_Sparsified):
    """DARE + TIES (Yu et al. 2024, "Language Models are Super Mario", sec. 3): d_i' = m_i * d_i /
    density with m_i ~ Bernoulli(density), then the TIES sign election and disjoint merge."""

    consensus = True
    spec = OpSpec("dare_ties", (WEIGHT, DENSITY, LAMBDA, _normalize(True)), True, 1, None, True,
                  "Yu et al. 2024, Language Models are Super Mario (DARE)")

    def sparsify(self, d, i, p, generator):  # type: ignore[no-untyped-def]
        return sparsify.dare(d, p["density"][i], generator)


class DareLinear(DareTies):
    """DARE + task arithmetic (Yu et al. 2024, sec. 3): out = B + lambda * sum_i w_i d_i' with
    d_i' = m_i * d_i / density, m_i ~ Bernoulli(density); E[out] is task arithmetic."""

    consensus = False
    spec = OpSpec("dare_linear", (WEIGHT, DENSITY, LAMBDA, _normalize(False)), True, 1, None, True,
                  "Yu et al. 2024, Language Models are Super Mario (DARE)")


class Breadcrumbs(_Sparsified):
    """Model Breadcrumbs (Davari & Belilovsky 2024, sec. 3): out = B + lambda * sum_i w_i (m_i * d_i),
    where the mask m_i drops the top-gamma fraction of |d_i| and keeps the `density` fraction
    just below it."""

    consensus = False
    spec = OpSpec("breadcrumbs", (WEIGHT, DENSITY, GAMMA, LAMBDA, _normalize(False)), True, 1, None, False,
                  "Davari & Belilovsky 2024, Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks")

    def sparsify(self, d, i, p, generator):  # type: ignore[no-untyped-def]
        return sparsify.breadcrumbs(d, p["density"][i], p["gamma"][i])


class BreadcrumbsTies(Breadcrumbs):
    """Breadcrumbs masks (Davari & Belilovsky 2024, sec. 3) followed by the TIES sign election and
    disjoint merge (Yadav et al. 2023, sec. 3)."""

    consensus = True
    spec = OpSpec("breadcrumbs_ties", (WEIGHT, DENSITY, GAMMA, LAMBDA, _normalize(True)), True, 1, None, False,
                  "Davari & Belilovsky 2024, Model Breadcrumbs; Yadav et al. 2023, TIES-Merging")


def _dot(a: Tensor, b: Tensor, chunk: int = 1 << 20) -> float:
    """<a, b> of flat float32 tensors: pairwise float32 sums per chunk (torch.sum), combined
    exactly with math.fsum. Accurate where one BLAS dot over 50M entries is off by ~1e-3, and
    the extra memory is one chunk."""
    return math.fsum(float(torch.sum(a[s:s + chunk] * b[s:s + chunk])) for s in range(0, a.numel(), chunk))


class Slerp(_Op):
    """Spherical linear interpolation (Shoemake 1985, "Animating rotation with quaternion curves",
    the Slerp formula) from B (t=0) to the one expert (t=1), on the flattened tensors:
    out = sin((1-t) theta)/sin(theta) B + sin(t theta)/sin(theta) E, cos(theta) = <B/|B|, E/|E|>
    (norms below 1e-8 count as 1); when |cos(theta)| > 0.9995, linear interpolation instead."""

    spec = OpSpec("slerp", (ParamSpec("t", 0.5, 0.0, 1.0, False, doc="weight of the expert"),), True, 1, 1,
                  False, "Shoemake 1985, Animating rotation with quaternion curves")

    def compute(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        t = p["t"]
        if t == 0.0:
            return base.float()
        if t == 1.0:
            return experts[0].float()
        v0, v1 = base.float().flatten(), experts[0].float().flatten()
        n0, n1 = math.sqrt(_dot(v0, v0)), math.sqrt(_dot(v1, v1))
        n0, n1 = (n0 if n0 > 1e-8 else 1.0), (n1 if n1 > 1e-8 else 1.0)
        dot = min(1.0, max(-1.0, _dot(v0, v1) / (n0 * n1)))
        if abs(dot) > 0.9995:
            out = torch.lerp(v0, v1, t)
        else:
            theta = math.acos(dot)  # in (0.0316, pi - 0.0316): sin(theta) > 0.03
            s = math.sin(theta)
            out = torch.add(v0 * (math.sin((1 - t) * theta) / s), v1, alpha=math.sin(t * theta) / s)
        return out.view(base.shape)


class Passthrough(_Op):
    """Copies the one model's tensor times ``scale`` (mergekit's passthrough, used for layer
    stacking / frankenmerges; Goddard et al. 2024, "Arcee's MergeKit"). The base is ignored."""

    spec = OpSpec("passthrough", (ParamSpec("scale", 1.0, None, None, False, doc="multiplier"),), False, 1, 1,
                  False, "Goddard et al. 2024, Arcee's MergeKit: A Toolkit for Merging Large Language Models")

    def __call__(self, experts, *, base, params, generator=None):  # type: ignore[no-untyped-def]
        _check_inputs(self.spec, experts, None)
        p = resolve_params(self.spec, params, 1)
        if p["scale"] == 1.0:
            return experts[0].clone()
        return (experts[0].float() * p["scale"]).to(experts[0].dtype)
