"""Merge operators: pure tensor functions with mergekit's parameter names and semantics.

Notation (ALGORITHMS.md): base B, experts E_i, task vectors d_i = E_i - B, weights w_i.
Every op upcasts to float32, returns the inputs' shape and dtype, and never mutates its
inputs. Stochastic ops (DARE) draw only from the ``torch.Generator`` they are given.
"""

from __future__ import annotations

import contextvars
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

from evomerge.errors import ConfigError
from evomerge.merge import geometry, gta, kernels, narrow, sparsify


@dataclass(frozen=True, kw_only=True)
class ParamSpec:
    """One parameter of an op, with mergekit's name, default and bounds. ``required``: mergekit
    0.1.5 has no default for it and refuses a config without it (format 2 recipes do too;
    ``default`` still fills it for format 1 recipes, see :mod:`evomerge.recipe`)."""

    name: str
    default: float | bool | None
    low: float | None
    high: float | None
    per_source: bool
    kind: Literal["float", "bool"] = "float"
    doc: str = ""
    required: bool = False


@dataclass(frozen=True, kw_only=True)
class OpSpec:
    """What an op takes: its parameters, whether it needs a base (or uses one when given), how many
    experts, and whether it is random (then it needs a ``torch.Generator``); ``paper`` is the
    citation; ``check`` refuses a combination of resolved parameters (ConfigError)."""

    name: str
    params: tuple[ParamSpec, ...]
    requires_base: bool
    min_experts: int
    max_experts: int | None
    stochastic: bool
    paper: str
    optional_base: bool = False  # uses a base when the recipe names one (task vectors), else the models
    check: Callable[[dict[str, Any]], None] | None = None  # a rule across resolved parameters


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


WEIGHT = ParamSpec(name="weight", default=1.0, low=None, high=None, per_source=True,
                   doc="scale of this model's contribution", required=True)
DENSITY = ParamSpec(name="density", default=1.0, low=0.0, high=1.0, per_source=True,
                    doc="fraction of task-vector entries kept")
GAMMA = ParamSpec(name="gamma", default=0.01, low=0.0, high=1.0, per_source=True,
                  doc="fraction of largest-magnitude entries dropped")
LAMBDA = ParamSpec(name="lambda", default=1.0, low=None, high=None, per_source=False,
                   doc="final scale of the merged task vector")


INT8_MASK = ParamSpec(name="int8_mask", default=False, low=None, high=None, per_source=False, kind="bool",
                      doc="mergekit's memory option for its sign mask; the merged weights are the same either way")


def _normalize(default: bool) -> ParamSpec:
    return ParamSpec(name="normalize", default=default, low=None, high=None, per_source=False, kind="bool",
                     doc="divide by the sum of weights")


def _rescale(default: bool) -> ParamSpec:
    return ParamSpec(name="rescale", default=default, low=None, high=None, per_source=False, kind="bool",
                     doc="scale each sparsified task vector back to its L1 norm (mergekit's rescale)")


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
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and value in (0, 1):
                value = bool(value)  # mergekit reads 0 and 1 as false and true
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
    if spec.check is not None:
        spec.check(out)
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
    if isinstance(v, bool):
        v = float(v)  # mergekit reads true and false as 1 and 0 for a number
    if not isinstance(v, numbers.Real):
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


def _divisor(weights: Sequence[float], normalize: bool, *, float32: bool = False) -> float:
    """sum_i w_i when ``normalize`` (a (near-)zero sum, |sum| < 1e-8, divides by 1), else 1.
    ``float32``: summed as mergekit's linear sums, in float32 over the float32 weights; else
    exactly (``math.fsum``)."""
    if normalize:
        denom = (float(torch.tensor(list(weights), dtype=torch.float32).sum()) if float32
                 else math.fsum(weights))
        if abs(denom) >= 1e-8:
            return denom
    return 1.0


def _splitmix64(x: int) -> int:
    """SplitMix64 finalizer (Steele et al. 2014): independent 64-bit seeds from consecutive ints."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFF_FFFF_FFFF_FFFF
    return x ^ (x >> 31)


class _Rows:
    """Per-expert kernel scalars (see ``kernels``): neutral values keep everything."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []
        self.fp: list[list[float]] = []
        self.ip: list[list[int]] = []
        self.fixups: list[Tensor] = []  # tie entries a rank cut leaves out (see sparsify.RankCut)
        self.part: kernels.Strided | None = _PART.get()  # the part to merge (Op.part_into), None: every entry

    def add(self, tensor: Tensor, *, scale: float, weight: float, low: sparsify.RankCut | None = None,
            high: sparsify.RankCut | None = None, keep: int = 1 << 32, seed: int = 0) -> None:
        low = low or sparsify.RankCut.everything()
        high = high or sparsify.RankCut.nothing()
        self.tensors.append(tensor)
        self.fp.append([scale, weight, low.threshold, high.threshold])
        self.ip.append([low.cut, high.cut, keep, seed & 0xFFFFFFFF, seed >> 32])
        self.fixups += [c.outside_ties for c in (low, high) if c.outside_ties is not None]

    def run(self, out: Tensor, base: Tensor | None, *, consensus: bool = False, normalize: bool = False,
            lam: float = 1.0, divisor: float = 1.0) -> int:
        v, glob = self._variant(out, base, consensus, normalize, lam, divisor)
        if self.part is not None:  # only the part's entries, each by its global rule
            return kernels.run_part(v, out, base, self.tensors, self.fp, self.ip, glob, self.part, self.fixups)
        return kernels.run(v, out, base, self.tensors, self.fp, self.ip, glob, self.fixups)

    def _variant(self, out: Tensor, base: Tensor | None, consensus: bool, normalize: bool, lam: float,
                 divisor: float) -> tuple[kernels.Variant, list[float]]:
        n = len(self.tensors)
        rank_low = any(f[2] != -1.0 for f in self.fp)
        rank_high = any(f[3] != math.inf for f in self.fp)
        random = any(i[2] != 1 << 32 for i in self.ip)
        tie_cuts = any(c != kernels.ALL_TIES for i in self.ip for c in i[:2])
        wide = (self.tensors[0].numel() if self.tensors else out.numel()) > 0xFFFFFFFF  # the whole tensor's
        if random and not wide:
            for row in self.ip:
                row[3], row[4] = kernels.premixed_seed(row[3], row[4]), 0
        v = kernels.Variant(n, base is not None, rank_low, rank_high, random, consensus, normalize, tie_cuts, wide)
        return v, [lam, divisor]


_PART: contextvars.ContextVar[kernels.Strided | None] = contextvars.ContextVar("evomerge_part", default=None)


def shard_indices(shape: Sequence[int], dim: int, rank: int, tp: int) -> Tensor:
    """The flat (row-major) indices of rank ``rank``'s part of a tensor of ``shape`` split evenly
    into ``tp`` parts along ``dim`` (as vLLM's column-parallel layers split dim 0 and its
    row-parallel layers dim 1), in the part's own row-major order."""
    start, length = even_shard(shape[dim], rank, tp)
    check_part(shape, dim, start, length)
    return kernels.strided(shape, dim, start, length).indices()


def even_shard(size: int, rank: int, tp: int) -> tuple[int, int]:
    """(start, length) of rank ``rank``'s part of a dimension of ``size`` split into ``tp`` equal parts."""
    if size % tp:
        raise ConfigError(f"a dimension of {size} does not split into {tp} equal shards",
                          hint="choose a tensor-parallel degree that divides the model's dimensions")
    return rank * (size // tp), size // tp


def check_part(shape: Sequence[int], dim: int, start: int, length: int) -> None:
    """A ConfigError unless ``start:start + length`` lies inside dimension ``dim`` of ``shape``."""
    if not (0 <= dim < len(shape) and 0 <= start and length >= 0 and start + length <= shape[dim]):
        raise ConfigError(f"part {start}:{start + length} of dimension {dim} is outside shape {tuple(shape)}",
                          hint="the part must lie inside the tensor")


class _Op:
    spec: ClassVar[OpSpec]

    def shard_into(self, out: Tensor, experts, *, base, params, dim: int, rank: int, tp: int,  # type: ignore[no-untyped-def]
                   generator=None, resolved=False) -> int | None:
        """Write rank ``rank``'s shard (``tp`` even parts along ``dim``) of the merge into ``out``
        (the shard's shape): each entry computed at its global index with the whole tensors' cuts
        and DARE bits, so the shards of every rank concatenate to the full merge, bit for bit
        (tests/unit/test_shards.py). Kernel ops over float32 inputs compute only the shard's
        entries; other ops and 16-bit inputs merge the whole tensor and keep the shard."""
        start, length = even_shard(experts[0].shape[dim], rank, tp)
        return self.part_into(out, experts, base=base, params=params, dim=dim, start=start, length=length,
                              generator=generator, resolved=resolved)

    def part_into(self, out: Tensor, experts, *, base, params, dim: int, start: int, length: int,  # type: ignore[no-untyped-def]
                  generator=None, resolved=False) -> int | None:
        """Write the slice ``start:start + length`` along ``dim`` of the merge, each entry as the
        full merge computes it (see ``shard_into``: a tensor-parallel rank's part, even or not,
        such as a padded vocabulary's last shard or the key/value heads a rank shares with
        others), into ``out``: contiguous, either of the slice's shape or of the inputs' shape
        (then written in place, the rest of ``out`` left as it is: an engine's staging buffer)."""
        p = self._prepare(experts, base, params, generator, resolved)
        full_shape = tuple(experts[0].shape)
        check_part(full_shape, dim, start, length)
        shape = list(full_shape)
        shape[dim] = length
        if tuple(out.shape) not in (tuple(shape), full_shape) or not out.is_contiguous():
            raise ConfigError(f"{self.spec.name}: part output {tuple(out.shape)} is neither the contiguous "
                              f"{tuple(shape)} nor {full_shape}", hint="allocate the part as torch.empty(shape)")
        target = out if tuple(out.shape) == tuple(shape) else out.narrow(dim, start, length)
        if not (self.fused(p) and not narrow.is_narrow(experts[0])):
            full = torch.empty(full_shape, dtype=out.dtype)
            bad = self.compute_into(full, experts, base, p, generator)
            target.copy_(full.narrow(dim, start, length))
            return bad
        token = _PART.set(kernels.strided(full_shape, dim, start, length))
        try:
            return self.compute_into(out, experts, base, p, generator)
        finally:
            _PART.reset(token)

    def fused(self, p: dict[str, Any]) -> bool:
        """Whether the op computes with the fused kernels (``kernels``) under resolved params
        ``p`` for float32 inputs, entry by entry in float32, so that 16-bit inputs can be read as
        they are (``narrow.float32_arithmetic``) and any part computed alone (``part_into``)."""
        return False

    def _prepare(self, experts, base, params, generator, resolved=False) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        _check_inputs(self.spec, experts, base)
        p = params if resolved else resolve_params(self.spec, params, len(experts))
        if self.spec.stochastic and generator is None:
            raise ConfigError(f"{self.spec.name}: a seeded torch.Generator is required (random op)",
                              hint="pass generator=torch.Generator().manual_seed(seed)")
        return p

    def __call__(self, experts, *, base, params, generator=None):  # type: ignore[no-untyped-def]
        p = self._prepare(experts, base, params, generator)
        out = torch.empty(experts[0].shape, dtype=experts[0].dtype, device=experts[0].device)
        self.compute_into(out, experts, base, p, generator)
        return out

    def into(self, out: Tensor, experts, *, base, params, generator=None, resolved=False) -> int | None:  # type: ignore[no-untyped-def]
        """Write the merge into ``out`` (the inputs' shape, any floating dtype, e.g. a live model
        parameter). Returns 1 if a non-finite value was read or written, 0 if not, None if the op
        did not check (the caller scans ``out``). ``resolved``: ``params`` already came out of
        ``resolve_params`` for these experts (a merge plan's), so they are not checked again."""
        p = self._prepare(experts, base, params, generator, resolved)
        if tuple(out.shape) != tuple(experts[0].shape) or not out.is_floating_point():
            raise ConfigError(f"{self.spec.name}: output {tuple(out.shape)} {out.dtype} does not fit inputs "
                              f"{tuple(experts[0].shape)}", hint="pass a floating-point output of the inputs' shape")
        return self.compute_into(out, experts, base, p, generator)

    def compute_into(self, out, experts, base, p, generator) -> int | None:  # type: ignore[no-untyped-def]
        raise NotImplementedError


class Linear(_Op):
    """Model soup / weighted average (Wortsman et al. 2022, "Model soups", sec. 2):
    out = sum_i w_i E_i / sum_i w_i with ``normalize`` (default), else sum_i w_i E_i. No base.
    Rounded as mergekit 0.1.5 rounds it: the sum accumulates model by model with a fused
    multiply-add (torch's addcmul), the divisor is the float32 sum of the float32 weights."""

    spec = OpSpec(name="linear", params=(WEIGHT, _normalize(True)), requires_base=False, min_experts=1,
                  max_experts=None, stochastic=False,
                  paper="Wortsman et al. 2022, Model soups: averaging weights of multiple fine-tuned models")

    def fused(self, p: dict[str, Any]) -> bool:
        return True

    def compute_into(self, out, experts, base, p, generator):  # type: ignore[no-untyped-def]
        if narrow.is_narrow(experts[0]):  # 16-bit inputs: mergekit's arithmetic, bit for bit
            out.copy_(narrow.linear(experts, p))
            return None
        rows = _Rows()
        for e, w in zip(experts, p["weight"], strict=True):
            if w != 0:  # a one-hot sum is exactly the chosen tensor
                rows.add(e, scale=w, weight=w)
        return rows.run(out, None, divisor=_divisor(p["weight"], p["normalize"], float32=True))


class TaskArithmetic(_Op):
    """Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic", sec. 2):
    out = B + lambda * sum_i w_i d_i, d_i = E_i - B (divided by sum_i w_i if ``normalize``).
    ``rescale`` is accepted as mergekit does and changes nothing (no task vector is sparsified)."""

    spec = OpSpec(name="task_arithmetic",
                  params=(WEIGHT, LAMBDA, _normalize(False), _rescale(False), INT8_MASK), requires_base=True,
                  min_experts=1, max_experts=None, stochastic=False,
                  paper="Ilharco et al. 2023, Editing Models with Task Arithmetic")

    def fused(self, p: dict[str, Any]) -> bool:
        return True

    def compute_into(self, out, experts, base, p, generator):  # type: ignore[no-untyped-def]
        if narrow.is_narrow(base):  # 16-bit inputs: mergekit's arithmetic, bit for bit
            out.copy_(gta.merge(experts, base, p, sparsify="none", consensus=False))
            return None
        rows = _Rows()
        for e, w in zip(experts, p["weight"], strict=True):
            if w != 0:
                rows.add(e, scale=w, weight=w)
        return rows.run(out, base, lam=p["lambda"], divisor=_divisor(p["weight"], p["normalize"]))


class _Sparsified(_Op):
    """Shared path: sparsify each d_i, weight it, then sum or TIES-consensus, scale, add to B.
    All in one fused pass (``kernels``); the sparsifier only sets each expert's keep rule."""

    consensus: ClassVar[bool]
    narrow_sparsify: ClassVar[str | None] = None  # mergekit's sparsifier for 16-bit inputs (None: kernels only)

    def add_expert(self, rows: _Rows, e: Tensor, base: Tensor, i: int, w: float, p: dict[str, Any],
                   seed: int) -> None:
        raise NotImplementedError

    def fused(self, p: dict[str, Any]) -> bool:
        return not (self.narrow_sparsify is not None and p.get("rescale"))  # (mergekit's L1 rescale: gta)

    def compute_into(self, out, experts, base, p, generator):  # type: ignore[no-untyped-def]
        # 16-bit inputs, or an L1 rescale after a deterministic mask: mergekit's arithmetic, bit for bit
        if self.narrow_sparsify is not None and (narrow.is_narrow(base) or p["rescale"]):
            out.copy_(gta.merge(experts, base, p, sparsify=self.narrow_sparsify,  # type: ignore[arg-type]
                                consensus=self.consensus))
            return None
        seed = 0
        if self.spec.stochastic:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        rows = _Rows()
        for i, (e, w) in enumerate(zip(experts, p["weight"], strict=True)):
            if w != 0:  # contributes nothing: neither to the sum, the election nor the divisor
                self.add_expert(rows, e, base, i, w, p, _splitmix64(seed + i))
        if self.consensus:
            return rows.run(out, base, consensus=True, normalize=p["normalize"], lam=p["lambda"])
        return rows.run(out, base, lam=p["lambda"], divisor=_divisor(p["weight"], p["normalize"]))


class _Trimmed:
    narrow_sparsify = "magnitude"

    def add_expert(self, rows, e, base, i, w, p, seed):  # type: ignore[no-untyped-def]
        density = p["density"][i]
        low = None if density >= 1.0 else sparsify.rank_cut(e, base, sparsify.top_k_count(density, e.numel()))
        rows.add(e, scale=w, weight=w, low=low)


class _Dropped:
    """DARE's drop: keep each entry with probability ``density``; with ``rescale`` (the default)
    the kept entries are divided by it (Yu et al. 2024, sec. 3). mergekit instead scales the kept
    task vector back to its L1 norm, a factor that concentrates at 1/density as the tensor grows:
    the two agree in distribution (tests/parity), not bit for bit."""

    def add_expert(self, rows, e, base, i, w, p, seed):  # type: ignore[no-untyped-def]
        density = p["density"][i]
        if density >= 1.0:
            rows.add(e, scale=w, weight=w)
        elif density < sparsify.MIN_DARE_DENSITY:
            rows.add(e, scale=0.0, weight=w, keep=0)
        else:
            keep = min((1 << 32) - 1, max(1, round(density * 2**32)))
            rows.add(e, scale=w * 2**32 / keep if p["rescale"] else w, weight=w, keep=keep, seed=seed)


class _Banded:
    narrow_sparsify = "magnitude_outliers"

    def add_expert(self, rows, e, base, i, w, p, seed):  # type: ignore[no-untyped-def]
        density = p["density"][i]
        if density >= 1.0:
            rows.add(e, scale=w, weight=w)
            return
        k_band, n_top = sparsify.breadcrumb_counts(density, p["gamma"][i], e.numel())
        low = sparsify.rank_cut(e, base, k_band)
        high = sparsify.rank_cut(e, base, n_top) if n_top > 0 else None
        rows.add(e, scale=w, weight=w, low=low, high=high)


class Ties(_Trimmed, _Sparsified):
    """TIES-Merging (Yadav et al. 2023, sec. 3 / Algorithm 1): trim each d_i to its top-k |d_i|
    (k = max(1, int(density * numel))), elect gamma = sign(sum_i w_i d_i) (0 counts as +), and
    out = B + lambda * sum_{i in A} w_i d_i / sum_{i in A} w_i over the agreeing set A (the
    division only with ``normalize``, the default)."""

    consensus = True
    spec = OpSpec(name="ties", params=(WEIGHT, DENSITY, LAMBDA, _normalize(True), _rescale(False), INT8_MASK),
                  requires_base=True, min_experts=1, max_experts=None, stochastic=False,
                  paper="Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models")


class DareTies(_Dropped, _Sparsified):
    """DARE + TIES (Yu et al. 2024, "Language Models are Super Mario", sec. 3): d_i' = m_i * d_i /
    density with m_i ~ Bernoulli(density), then the TIES sign election and disjoint merge. As in
    mergekit, ``normalize`` is off by default (the rescaled task vectors are summed)."""

    consensus = True
    spec = OpSpec(name="dare_ties",
                  params=(WEIGHT, DENSITY, LAMBDA, _normalize(False), _rescale(True), INT8_MASK),
                  requires_base=True, min_experts=1, max_experts=None, stochastic=True,
                  paper="Yu et al. 2024, Language Models are Super Mario (DARE)")


class DareLinear(_Dropped, _Sparsified):
    """DARE + task arithmetic (Yu et al. 2024, sec. 3): out = B + lambda * sum_i w_i d_i' with
    d_i' = m_i * d_i / density, m_i ~ Bernoulli(density); E[out] is task arithmetic."""

    consensus = False
    spec = OpSpec(name="dare_linear",
                  params=(WEIGHT, DENSITY, LAMBDA, _normalize(False), _rescale(True), INT8_MASK),
                  requires_base=True, min_experts=1, max_experts=None, stochastic=True,
                  paper="Yu et al. 2024, Language Models are Super Mario (DARE)")


class Breadcrumbs(_Banded, _Sparsified):
    """Model Breadcrumbs (Davari & Belilovsky 2024, sec. 3): out = B + lambda * sum_i w_i (m_i * d_i),
    where the mask m_i drops the top-gamma fraction of |d_i| and keeps the `density` fraction
    just below it."""

    consensus = False
    spec = OpSpec(name="breadcrumbs",
                  params=(WEIGHT, DENSITY, GAMMA, LAMBDA, _normalize(False), _rescale(False), INT8_MASK),
                  requires_base=True, min_experts=1, max_experts=None, stochastic=False,
                  paper="Davari & Belilovsky 2024, Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks")


class BreadcrumbsTies(_Banded, _Sparsified):
    """Breadcrumbs masks (Davari & Belilovsky 2024, sec. 3) followed by the TIES sign election and
    disjoint merge (Yadav et al. 2023, sec. 3); ``normalize`` off by default, as in mergekit."""

    consensus = True
    spec = OpSpec(name="breadcrumbs_ties",
                  params=(WEIGHT, DENSITY, GAMMA, LAMBDA, _normalize(False), _rescale(False), INT8_MASK),
                  requires_base=True, min_experts=1, max_experts=None, stochastic=False,
                  paper="Davari & Belilovsky 2024, Model Breadcrumbs; Yadav et al. 2023, TIES-Merging")


class Slerp(_Op):
    """Spherical linear interpolation (Shoemake 1985, "Animating rotation with quaternion curves",
    the Slerp formula) from B (t=0) to the one expert (t=1), on the flattened tensors:
    out = sin((1-t) theta)/sin(theta) B + sin(t theta)/sin(theta) E, cos(theta) = <B/|B|, E/|E|>
    (norms below 1e-8 count as 1); when |cos(theta)| > 0.9995, linear interpolation instead."""

    spec = OpSpec(name="slerp",
                  params=(ParamSpec(name="t", default=0.5, low=0.0, high=1.0, per_source=False,
                                    doc="weight of the expert", required=True),),
                  requires_base=True, min_experts=1, max_experts=1, stochastic=False,
                  paper="Shoemake 1985, Animating rotation with quaternion curves")

    def compute_into(self, out, experts, base, p, generator):  # type: ignore[no-untyped-def]
        out.copy_(self._slerp(experts[0], base, p["t"]))
        return None

    # mergekit 0.1.5 sums norms and dot products over chunks of this many entries
    CHUNK = 1 << 20

    @staticmethod
    def _slerp(expert: Tensor, base: Tensor, t: float) -> Tensor:
        """Computed as mergekit 0.1.5 does, so the result is the same bit for bit: float32 (float64
        for float64 inputs), ``t`` rounded to that dtype, each norm the norm of per-chunk norms,
        the dot product of the normalized vectors summed chunk by chunk, clamped to [-1, 1];
        coefficients sin((1-t) theta)/sin(theta) and sin(t theta)/sin(theta), or 1-t and t where
        |dot| > 0.9995. At t = 0 and t = 1 those coefficients are exactly 1 and 0."""
        if t == 0.0:
            return base
        if t == 1.0:
            return expert
        dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
        a, b = base.reshape(1, -1), expert.reshape(1, -1)
        tt = torch.tensor([[t]], dtype=torch.float32).to(dtype)
        step = Slerp.CHUNK
        spans = [(s, s + step) for s in range(0, a.shape[1], step)]

        def norm(v: Tensor) -> Tensor:
            parts = [torch.linalg.vector_norm(v[:, i:j].to(dtype), dim=1, keepdim=True) for i, j in spans]
            n = torch.linalg.vector_norm(torch.stack(parts), dim=0)
            return torch.where(n > 1e-8, n, 1)

        na, nb = norm(a), norm(b)
        dot = torch.stack([((a[:, i:j].to(dtype) / na) * (b[:, i:j].to(dtype) / nb)).sum(dim=1, keepdim=True)
                           for i, j in spans]).sum(dim=0).clamp(-1, 1)
        linear = dot.abs() > 0.9995
        theta = torch.acos(torch.where(linear, 0, dot))
        sin_theta = torch.sin(theta)
        coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
        coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
        out = torch.empty(a.shape, dtype=dtype)
        for i, j in spans:
            out[:, i:j] = coef_a * a[:, i:j].to(dtype) + coef_b * b[:, i:j].to(dtype)
        return out.view(base.shape)


class Passthrough(_Op):
    """Copies the one model's tensor times ``scale`` (mergekit's passthrough, used for layer
    stacking / frankenmerges; Goddard et al. 2024, "Arcee's MergeKit"). The base is ignored."""

    spec = OpSpec(name="passthrough",
                  params=(ParamSpec(name="scale", default=1.0, low=None, high=None, per_source=False,
                                    doc="multiplier"),),
                  requires_base=False, min_experts=1, max_experts=1, stochastic=False,
                  paper="Goddard et al. 2024, Arcee's MergeKit: A Toolkit for Merging Large Language Models")

    def _prepare(self, experts, base, params, generator, resolved=False):  # type: ignore[no-untyped-def]
        _check_inputs(self.spec, experts, None)  # the base is ignored
        return params if resolved else resolve_params(self.spec, params, 1)

    def compute_into(self, out, experts, base, p, generator):  # type: ignore[no-untyped-def]
        if p["scale"] == 1.0:
            out.copy_(experts[0])
        else:
            out.copy_(experts[0].float() * p["scale"])
        return None


EPSILON = ParamSpec(name="epsilon", default=0.15, low=0.0, high=0.5, per_source=True,
                    doc="spread of DELLA's keep probabilities around density")


class _TorchOp(_Op):
    """An op computed with plain torch (mergekit's sequence, :mod:`evomerge.merge.gta` and
    :mod:`evomerge.merge.geometry`) on contiguous inputs, so row-wise reductions see the same
    memory order whatever the inputs' strides."""

    def compute_into(self, out, experts, base, p, generator):  # type: ignore[no-untyped-def]
        dense = [e.contiguous() for e in experts]
        out.copy_(self.merge(dense, base.contiguous() if base is not None else None, p, generator))
        return None

    def merge(self, experts: list[Tensor], base: Tensor | None, p: dict[str, Any],
              generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError


class _Della(_TorchOp):
    """DELLA (Deep et al. 2024, "DELLA-Merging: Reducing Interference in Model Merging through
    Magnitude-Based Sampling", sec. 3): MagPrune drops each task-vector entry with a probability
    that falls with its magnitude rank (:func:`evomerge.merge.gta.magprune`), then the family's
    merge, as mergekit 0.1.5 runs it, in the inputs' dtype."""

    consensus: ClassVar[bool]

    def merge(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        return gta.merge(experts, base, p, sparsify="magprune", consensus=self.consensus, generator=generator)


def _check_della(p: dict[str, Any]) -> None:
    for density, epsilon in zip(p["density"], p["epsilon"], strict=True):
        gta.check_magprune(density, epsilon)


def _della_spec(name: str, normalize: bool) -> OpSpec:
    """mergekit's two DELLA registrations differ in their name and ``normalize`` default only."""
    return OpSpec(name=name,
                  params=(WEIGHT, DENSITY, EPSILON, LAMBDA, _normalize(normalize), _rescale(True), INT8_MASK),
                  requires_base=True, min_experts=1, max_experts=None, stochastic=True,
                  paper="Deep et al. 2024, DELLA-Merging: Reducing Interference in Model Merging through "
                  "Magnitude-Based Sampling", check=_check_della)


class Della(_Della):
    """DELLA with the TIES sign election and disjoint mean (mergekit's ``della``)."""

    consensus = True
    spec = _della_spec("della", normalize=True)


class DellaLinear(_Della):
    """DELLA's MagPrune followed by a weighted sum of the task vectors (mergekit's ``della_linear``)."""

    consensus = False
    spec = _della_spec("della_linear", normalize=False)


class Sce(_TorchOp):
    """SCE (Wan et al. 2024, "FuseChat: Knowledge Fusion of Chat Models", sec. 3.3): select by
    variance, calculate weights from task-vector energy, erase sign conflicts
    (:func:`evomerge.merge.gta.sce`). No per-model weights, as in mergekit."""

    spec = OpSpec(name="sce",
                  params=(ParamSpec(name="select_topk", default=1.0, low=0.0, high=1.0, per_source=False,
                                    doc="fraction of the highest-variance entries kept"), INT8_MASK),
                  requires_base=True, min_experts=1, max_experts=None, stochastic=False,
                  paper="Wan et al. 2024, FuseChat: Knowledge Fusion of Chat Models")

    def merge(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        return gta.sce(experts, base, p["select_topk"])


class ModelStock(_TorchOp):
    """Model Stock (Jang et al. 2024): the base pulled toward the experts' mean by the factor their
    mutual angle implies (:func:`evomerge.merge.geometry.model_stock`); needs a base and two or
    more experts, no weights."""

    spec = OpSpec(name="model_stock",
                  params=(ParamSpec(name="filter_wise", default=False, low=None, high=None, per_source=False,
                                    kind="bool", doc="one factor per row instead of per tensor"),),
                  requires_base=True, min_experts=2, max_experts=None, stochastic=False,
                  paper="Jang et al. 2024, Model Stock: All we need is just a few fine-tuned models")

    def merge(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        return geometry.model_stock(experts, base, filter_wise=p["filter_wise"])


class NuSlerp(_TorchOp):
    """Spherical interpolation of two models at t = w1 / (w0 + w1) (mergekit's ``nuslerp``), of
    their task vectors when the recipe names a base (:func:`evomerge.merge.geometry.nuslerp`)."""

    spec = OpSpec(name="nuslerp", params=(WEIGHT,
                              ParamSpec(name="nuslerp_row_wise", default=False, low=None, high=None,
                                        per_source=False, kind="bool",
                                        doc="interpolate each column vector instead of the flattened tensor"),
                              ParamSpec(name="nuslerp_flatten", default=True, low=None, high=None,
                                        per_source=False, kind="bool",
                                        doc="interpolate the flattened tensor (the default)")),
                  requires_base=False, min_experts=2, max_experts=2, stochastic=False,
                  paper="Shoemake 1985, Animating rotation with quaternion curves (mergekit's NuSLERP)",
                  optional_base=True)

    def merge(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        return geometry.nuslerp(experts, base, p["weight"], row_wise=p["nuslerp_row_wise"],
                                flatten=p["nuslerp_flatten"])


class MultiSlerp(_TorchOp):
    """Weighted spherical barycentre of any number of models (mergekit's ``multislerp``), of their
    task vectors when the recipe names a base (:func:`evomerge.merge.geometry.multislerp`)."""

    spec = OpSpec(name="multislerp", params=(WEIGHT,
                                 ParamSpec(name="normalize_weights", default=True, low=None, high=None,
                                           per_source=False, kind="bool",
                                           doc="divide the weights by their sum"),
                                 ParamSpec(name="eps", default=1e-8, low=0.0, high=None, per_source=False,
                                           doc="guard against zero norms")),
                  requires_base=False, min_experts=1, max_experts=None, stochastic=False,
                  paper="Buss & Fillmore 2001, Spherical averages and applications to spherical "
                  "splines and interpolation (mergekit's Multi-SLERP)", optional_base=True)

    def merge(self, experts, base, p, generator):  # type: ignore[no-untyped-def]
        return geometry.multislerp(experts, base, p["weight"], normalize=p["normalize_weights"], eps=p["eps"])
