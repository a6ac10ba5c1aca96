"""Compatibility of merge sources, decided from configs and safetensors headers alone.

No tensor data is read here: a mismatch is reported before any heavy work, naming the tensor,
the models and their shapes (RELIABILITY.md failure test 5).
"""

from __future__ import annotations

from collections.abc import Mapping

from evomerge.errors import ShapeMismatchError
from evomerge.merge.io import ModelDir

SHAPE_KEYS = (
    "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "tie_word_embeddings",
)


def check_compatible(
    models: Mapping[str, ModelDir], *, reference: str, allow_dtype_mismatch: bool = False,
    check_depth: bool = True,
) -> None:
    """Raise :class:`ShapeMismatchError` unless every model matches ``models[reference]``.

    ``check_depth=False`` allows different layer counts (layer stacking); per-tensor checks
    then cover only the tensors both models have.
    """
    ref = models[reference]
    for name, other in models.items():
        if name == reference:
            continue
        if other.architecture != ref.architecture:
            raise ShapeMismatchError(
                f"architectures differ: {reference} is {ref.architecture}, {name} is {other.architecture}",
                hint="merge only models that share an architecture (a base and experts fine-tuned from it)",
            )
        for key in SHAPE_KEYS:
            if key == "num_hidden_layers" and not check_depth:
                continue
            a, b = ref.config.get(key), other.config.get(key)
            if a != b:
                what = "vocabularies differ" if key == "vocab_size" else "shapes differ"
                raise ShapeMismatchError(
                    f"{what}: config {key} is {a} in {reference} but {b} in {name}",
                    hint="merge only models with the same configuration (same base model)",
                )
        _check_tensors(reference, ref, name, other, allow_dtype_mismatch, check_depth)


def _check_tensors(
    ref_name: str, ref: ModelDir, name: str, other: ModelDir, allow_dtype: bool, check_depth: bool
) -> None:
    ref_names, other_names = set(ref.tensor_names), set(other.tensor_names)
    if check_depth:
        for missing_in, present_in, missing in (
            (name, ref_name, sorted(ref_names - other_names)),
            (ref_name, name, sorted(other_names - ref_names)),
        ):
            if missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                raise ShapeMismatchError(
                    f"{missing_in} lacks tensor(s) that {present_in} has: {shown}",
                    hint="check that both directories hold the same model family and complete weights",
                )
    for tname in ref.tensor_names:
        if tname not in other_names:
            continue
        a, b = ref.meta(tname), other.meta(tname)
        if a.shape != b.shape:
            vocab = " (the vocabularies differ)" if "embed" in tname or "lm_head" in tname else ""
            raise ShapeMismatchError(
                f"{tname}: {ref_name} has {a.shape}, {name} has {b.shape}{vocab}",
                hint="merge only models with the same shapes (a base and experts fine-tuned from it)",
            )
        if a.dtype != b.dtype and not allow_dtype:
            raise ShapeMismatchError(
                f"{tname}: {ref_name} is {str(a.dtype).removeprefix('torch.')}, "
                f"{name} is {str(b.dtype).removeprefix('torch.')}",
                hint="set `dtype:` in the recipe (float32, float16 or bfloat16) to cast all sources",
            )
