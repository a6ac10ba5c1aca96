"""Compatibility of merge sources, decided from configs and safetensors headers alone.

No tensor data is read here (only :meth:`ModelDir.meta`): a mismatch is reported before any
heavy work, naming the tensor, the models and their shapes (docs/reliability.md promise 13).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evomerge.errors import ConfigError, ShapeMismatchError
from evomerge.merge.io import ModelDir

# Config keys whose values fix tensor shapes or how tensors are used.
SHAPE_KEYS = (
    "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "tie_word_embeddings",
)
_SAME_BASE = "merge only models that share an architecture and configuration (a base and experts fine-tuned from it)"


def _dt(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _shape_config(m: ModelDir) -> dict[str, Any]:
    """The shape-defining config values, with transformers' defaults filled in."""
    cfg = {k: m.config.get(k) for k in SHAPE_KEYS}
    cfg["tie_word_embeddings"] = m.tied_embeddings
    if cfg["num_key_value_heads"] is None:
        cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    return cfg


def _is_vocab_tensor(name: str) -> bool:
    return "embed" in name or "lm_head" in name or "wte" in name


def _first_shape_difference(ref_name: str, ref: ModelDir, name: str, other: ModelDir) -> str | None:
    for tname in ref.tensor_names:
        if tname in other:
            a, b = ref.meta(tname).shape, other.meta(tname).shape
            if a != b:
                return f"{tname}: {ref_name} has {a}, {name} has {b}"
    return None


def check_compatible(
    models: Mapping[str, ModelDir], *, reference: str, allow_dtype_mismatch: bool = False,
    check_depth: bool = True,
) -> None:
    """Raise :class:`ShapeMismatchError` unless every model matches ``models[reference]``.

    Checked in order: architecture, shape-defining config keys, tensor-name sets, per-tensor
    shapes, per-tensor dtypes (unless ``allow_dtype_mismatch``, for recipes that cast with
    ``dtype:``). ``check_depth=False`` allows different layer counts (layer stacking); the
    per-tensor checks then cover only the tensors both models have.
    """
    if reference not in models:
        raise ConfigError(f"reference model {reference!r} is not among the sources {sorted(models)}",
                          hint="name one of the recipe's models as the reference (base_model)")
    ref = models[reference]
    for name, other in models.items():
        if name == reference:
            continue
        if other.architecture != ref.architecture:
            raise ShapeMismatchError(
                f"architectures differ: {reference} is {ref.architecture}, {name} is {other.architecture}",
                hint=_SAME_BASE,
            )
        _check_config(reference, ref, name, other, check_depth)
        _check_tensors(reference, ref, name, other, allow_dtype_mismatch, check_depth)


def _check_config(ref_name: str, ref: ModelDir, name: str, other: ModelDir, check_depth: bool) -> None:
    a_cfg, b_cfg = _shape_config(ref), _shape_config(other)
    for key in SHAPE_KEYS:
        if key == "num_hidden_layers" and not check_depth:
            continue
        a, b = a_cfg[key], b_cfg[key]
        if a != b:
            what = "vocabularies differ" if key == "vocab_size" else "shapes differ"
            detail = _first_shape_difference(ref_name, ref, name, other)
            raise ShapeMismatchError(
                f"{what}: config {key} is {a} in {ref_name} but {b} in {name}"
                + (f"; first differing tensor {detail}" if detail else ""),
                hint=_SAME_BASE + (
                    "; models with different tokenizers cannot be merged tensor by tensor" if key == "vocab_size" else ""
                ),
            )


def _check_tensors(
    ref_name: str, ref: ModelDir, name: str, other: ModelDir, allow_dtype: bool, check_depth: bool
) -> None:
    ref_names, other_names = set(ref.tensor_names), set(other.tensor_names)
    if check_depth:
        for missing_in, present_in, holder, missing in (
            (name, ref_name, ref, ref_names - other_names),
            (ref_name, name, other, other_names - ref_names),
        ):
            if missing:
                ordered = [t for t in holder.tensor_names if t in missing]
                shown = ", ".join(ordered[:3]) + (f" and {len(ordered) - 3} more" if len(ordered) > 3 else "")
                raise ShapeMismatchError(
                    f"{missing_in} lacks tensor(s) that {present_in} has: {shown}",
                    hint="check that both directories hold the same model family and complete weights "
                    "(tie_word_embeddings decides whether lm_head.weight is stored)",
                )
    for tname in ref.tensor_names:
        if tname not in other_names:
            continue
        a, b = ref.meta(tname), other.meta(tname)
        if a.shape != b.shape:
            vocab = " (the vocabularies differ)" if _is_vocab_tensor(tname) else ""
            raise ShapeMismatchError(f"{tname}: {ref_name} has {a.shape}, {name} has {b.shape}{vocab}", hint=_SAME_BASE)
        if a.dtype != b.dtype and not allow_dtype:
            raise ShapeMismatchError(
                f"{tname}: {ref_name} is {_dt(a.dtype)}, {name} is {_dt(b.dtype)}",
                hint="set `dtype:` in the recipe (float32, float16 or bfloat16) to cast all sources to one dtype",
            )
