"""Per-layer parameter schedules, with mergekit's value forms.

A parameter value is one of
- a number or bool: the same for every tensor;
- a list of numbers, a *gradient*: anchors spread evenly over depth and linearly
  interpolated (a list of exactly ``num_layers`` entries gives one value per layer);
- a list of ``{filter: SUBSTRING, value: V}`` entries: the first entry whose filter occurs
  in the tensor name (an entry without filter, or with filter ``"*"``, matches everything)
  gives the value ``V``, itself a number or gradient.

LiNeS (Wang et al. 2025, "LiNeS: Post-training Layer Scaling Prevents Forgetting and
Enhances Model Merging", eq. 2: lambda(l) = alpha + beta * (l - 1) / (L - 1)) is the gradient
``[alpha, alpha + beta]`` on ``lambda``.

Where a tensor sits on the depth axis (its ``t`` in [0, 1]) depends on the recipe format
(:data:`evomerge.recipe.RECIPE_FORMAT`):

- format 2, mergekit 0.1.5's reading (:func:`slice_position`): layer ``i`` of a slice of ``n``
  layers sits at ``i / (n - 1)`` (a one-layer slice at 1), so a gradient restarts in every
  slice; tensors outside the layer stack (embeddings, final norm, ``lm_head``) sit at 0, the
  gradient's first value; interpolation is ``(1 - f) * a + f * b`` as mergekit computes it.
- format 1, evomerge's reading before recipes were versioned (:func:`depth_position`): layer
  ``l`` of the whole output stack sits at ``l / (L - 1)``, the input embedding at 0 and every
  other tensor outside the stack at 1; interpolation is ``a + (b - a) * f``; ``"*"`` is plain
  text. Kept so that an archive's old recipes still build the model they were scored as.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evomerge.errors import ConfigError

Scalar = float | bool
ParamValue = Any  # Scalar | list[float] | list[dict]; validated by ``check_value``


def depth_position(tensor_name: str, layer: int | None, num_layers: int) -> float:
    """Format 1: where a tensor sits on the [0, 1] depth axis of the whole output stack."""
    if layer is None:
        return 0.0 if "embed" in tensor_name else 1.0
    if num_layers <= 1:
        return 0.0
    return layer / (num_layers - 1)


def slice_position(offset: int | None, slice_layers: int) -> float:
    """Format 2 (mergekit 0.1.5's planner): ``t`` of layer ``offset`` within a slice of
    ``slice_layers`` layers; ``offset=None`` for a tensor outside the layer stack (t = 0)."""
    if offset is None:
        return 0.0
    return offset / (slice_layers - 1) if slice_layers > 1 else 1.0


def interpolate_at(anchors: Sequence[Any], t: float) -> Any:
    """Format 2: mergekit's evaluation of a list at ``t``: numbers interpolate as
    ``(1 - f) * a[i] + f * a[i + 1]`` with ``i + f = t * (len - 1)``; a list holding a bool
    selects ``a[int(t * (len - 1))]``."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in anchors):
        return anchors[int(t * (len(anchors) - 1))]
    scaled = t * (len(anchors) - 1)
    i0 = int(scaled)
    i1 = min(len(anchors) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * float(anchors[i0]) + frac * float(anchors[i1])


def interpolate(anchors: Sequence[float], position: float) -> float:
    """Format 1: linear interpolation of evenly spaced ``anchors`` at ``position`` in [0, 1]."""
    if len(anchors) == 1:
        return float(anchors[0])
    x = min(max(position, 0.0), 1.0) * (len(anchors) - 1)
    lo = int(x)
    if lo >= len(anchors) - 1:
        return float(anchors[-1])
    frac = x - lo
    a, b = float(anchors[lo]), float(anchors[lo + 1])
    # exact at anchors so per-layer lists return their entries bit for bit
    return a if frac == 0.0 else a + (b - a) * frac


_TRUE = {"true", "yes", "on", "t", "y"}
_FALSE = {"false", "no", "off", "f", "n"}


def _scalar(value: Any) -> Any:
    """mergekit 0.1.5's scalar forms: a number or bool as is; a string that reads as a number is
    that number (YAML leaves ``1e-3`` a string), one that reads as a bool is that bool; None
    for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    return None


def check_value(name: str, value: Any, where: str) -> Any:
    """Validate and normalize one parameter value (ints and numeric strings become floats, bools
    and bool words become bools; a single ``{filter, value}`` mapping is a one-entry list)."""
    if isinstance(value, dict):
        value = [value]
    scalar = _scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for i, entry in enumerate(value):
            extra = set(entry) - {"filter", "value"}
            if extra or "value" not in entry:
                raise ConfigError(
                    f"{where}: parameter {name!r} entry {i} must be {{filter: ..., value: ...}}, got keys {sorted(entry)}",
                    hint="write each conditional entry as `- filter: self_attn` / `value: 0.5`",
                )
            flt = entry.get("filter")
            if flt is not None and not isinstance(flt, str):
                raise ConfigError(f"{where}: parameter {name!r} entry {i}: filter must be a string")
            inner = check_value(name, entry["value"], where)
            if isinstance(inner, list) and inner and isinstance(inner[0], dict):
                raise ConfigError(f"{where}: parameter {name!r}: conditional values cannot nest")
            out.append({"filter": flt, "value": inner} if flt is not None else {"value": inner})
        return out
    if isinstance(value, list) and value and not any(isinstance(v, dict | list) for v in value):
        scalars = [_scalar(v) for v in value]
        if None not in scalars and len({isinstance(v, bool) for v in scalars}) == 1:
            return scalars  # numbers: a gradient over depth; bools: one picked by position
    raise ConfigError(
        f"{where}: parameter {name!r} has an unsupported value {str(value)[:80]!r}",
        hint="use a number, a list of numbers (a gradient over depth), or a list of {filter, value} entries",
    )


def resolve(value: Any, tensor_name: str, t: float, *, fmt: int) -> Scalar | None:
    """The scalar that ``value`` takes for one tensor at depth ``t`` (from
    :func:`slice_position` in format 2, :func:`depth_position` in format 1); None if no
    conditional entry matches."""
    if isinstance(value, bool | float | int):
        return value
    if value and isinstance(value[0], dict):
        for entry in value:
            flt = entry.get("filter")
            if flt is None or (fmt >= 2 and flt == "*") or flt in tensor_name:
                return resolve(entry["value"], tensor_name, t, fmt=fmt)
        return None
    return interpolate_at(value, t) if fmt >= 2 else interpolate(value, t)


def resolve_all(params: Mapping[str, Any], tensor_name: str, t: float, *, fmt: int) -> dict[str, Scalar]:
    """Resolve every parameter in ``params`` for one tensor, dropping unmatched conditionals."""
    out: dict[str, Scalar] = {}
    for key, value in params.items():
        v = resolve(value, tensor_name, t, fmt=fmt)
        if v is not None:
            out[key] = v
    return out
