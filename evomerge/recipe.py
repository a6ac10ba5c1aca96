"""Recipe: the human-readable merge plan, in mergekit's YAML vocabulary.

A recipe names a merge method, a base model, the expert models with their parameters, global
parameters and an output dtype; passthrough recipes list ``slices`` of layers instead. Keys and
value forms follow mergekit (``merge_method``, ``base_model``, ``models[].parameters``,
``slices[].sources[].layer_range``; values may be gradients or ``{filter, value}`` lists, see
:mod:`evomerge.schedule`), so users' configs carry over both ways.

``canonical_json`` is deterministic (sorted keys, no whitespace, ints as floats) and
``recipe_id`` is its SHA-256 prefix: identical plans have identical ids.

Recipes are versioned (``recipe_format``, see :data:`RECIPE_FORMAT`): format 2 reads a config
as mergekit 0.1.5 does (where gradients sit, which model gives a passthrough stack its final
norm and ``lm_head``, ``filter: "*"``, required parameters; :mod:`evomerge.schedule` and
:mod:`evomerge.merge.plan`), format 1 is evomerge's earlier reading. A config a user writes is
format 2; a recipe stored in an archive before formats existed carries no ``recipe_format`` and
is read as format 1 (:func:`stored_recipe`), so it still builds the model it was scored as.
Format 2 ids include the format, so the two never share an id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge import schedule
from evomerge.errors import ConfigError
from evomerge.safe_yaml import load_yaml, loads_yaml

DType = Literal["float32", "float16", "bfloat16"]

RECIPE_FORMAT = 2
"""The recipe format new recipes get: 2 = mergekit 0.1.5's reading of a config."""

OUTPUT_PROJECTIONS = ("o_proj", "down_proj")
"""The residual writes of a Llama-family layer: the tensors a data-flow path's input scales
fold into (evomerge.merge.plan) and, as ``.o_proj.``-style filters, its mergekit export."""


def is_output_projection(name: str) -> bool:
    return any(f".{p}." in name for p in OUTPUT_PROJECTIONS)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: schedule.check_value(k, v, "parameters") for k, v in params.items()}


def _none_is_empty(v: Any) -> Any:
    """An empty ``parameters:`` (YAML null) is no parameters, as mergekit reads it."""
    return {} if v is None else v


def _dtype_name(v: Any) -> Any:
    """mergekit's dtype spellings: ``torch.bfloat16`` is ``bfloat16``."""
    return v[len("torch."):] if isinstance(v, str) and v.startswith("torch.") else v


class ModelEntry(_Frozen):
    """One expert and its per-model parameters (weight, density, gamma, epsilon ...)."""

    model: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)

    _empty = field_validator("parameters", mode="before")(classmethod(lambda cls, v: _none_is_empty(v)))
    _params = field_validator("parameters")(classmethod(lambda cls, v: _check_params(v)))


class SliceSource(_Frozen):
    """Layers ``layer_range = [start, end)`` of one model, for passthrough stacking. An empty range
    (``start == end``, as mergekit allows) adds no layers; as the first or last slice it still
    names the model that gives the merged model its embeddings or its final norm and head."""

    model: str = Field(min_length=1)
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = Field(default_factory=dict)

    _empty = field_validator("parameters", mode="before")(classmethod(lambda cls, v: _none_is_empty(v)))
    _params = field_validator("parameters")(classmethod(lambda cls, v: _check_params(v)))

    @field_validator("layer_range")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 0 or v[1] < v[0]:
            raise ValueError(f"layer_range {list(v)} must be [start, end) with 0 <= start <= end")
        return v


class Slice(_Frozen):
    """One output slice. Passthrough stacks it from one source; a merge method (``slerp``, ``ties``
    ...) merges its sources layer by layer (mergekit's ``slices:`` form, as LazyMergekit writes
    it: every source the same number of layers). ``parameters`` apply to the slice's tensors
    before the global ones; ``base_model`` is the slice's base (one of its sources) instead of
    the recipe's. Data-flow merges (EvoMerge DFS) also set ``input_scale``, the factor
    on the hidden state entering the slice, and ``identity`` for an unused slot."""

    sources: tuple[SliceSource, ...] = ()
    parameters: dict[str, Any] = Field(default_factory=dict)
    base_model: str | None = Field(None, min_length=1)  # this slice's base, instead of the recipe's
    residual_weight: float | None = None  # mergekit 0.1.5 reads it and builds nothing from it; so does evomerge
    input_scale: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    identity: bool = False

    _empty = field_validator("parameters", mode="before")(classmethod(lambda cls, v: _none_is_empty(v)))
    _params = field_validator("parameters")(classmethod(lambda cls, v: _check_params(v)))

    @model_validator(mode="after")
    def _sources(self) -> Slice:
        if self.identity and self.sources:
            raise ValueError("an identity slice takes no sources")
        if not self.identity and not self.sources:
            raise ValueError("a slice needs at least one source (or `identity: true`)")
        lengths = {src.layer_range[1] - src.layer_range[0] for src in self.sources}
        if len(lengths) > 1:
            raise ValueError(f"the sources of a slice must have the same number of layers, got {sorted(lengths)}")
        models = [src.model for src in self.sources]
        if len(set(models)) != len(models):
            raise ValueError("a slice lists the same model twice (mergekit refuses duplicate merge inputs)")
        return self

    @property
    def is_dataflow(self) -> bool:
        """Uses evomerge's data-flow keys (an identity slot or an input scale)."""
        return self.identity or self.input_scale != 1.0

    @property
    def num_layers(self) -> int:
        if self.identity:
            return 1
        start, end = self.sources[0].layer_range
        return end - start


class TokenizerSpec(_Frozen):
    """mergekit's ``tokenizer:`` block: ``source`` as ``tokenizer_source`` (default ``union``);
    ``tokens`` (per-token embedding overrides) and ``pad_to_multiple_of`` are read and checked
    by :mod:`evomerge.merge.tokenizer`."""

    source: str = Field("union", min_length=1)
    tokens: dict[str, Any] | None = None
    pad_to_multiple_of: int | None = Field(None, ge=1)


class Recipe(_Frozen):
    """A merge plan over source models (paths, resolved against the recipe's directory).

    ``dtype`` is the dtype the inputs are merged in, ``out_dtype`` the one the result is stored
    in (default: ``dtype``). ``tokenizer_source`` (``base``, ``union`` or a model path), the
    equivalent ``tokenizer:`` block and ``chat_template`` (``auto`` or a Jinja template) choose the
    merged model's tokenizer (:mod:`evomerge.merge.tokenizer`)."""

    merge_method: str = Field(min_length=1)
    base_model: str | None = None
    models: tuple[ModelEntry, ...] = ()
    slices: tuple[Slice, ...] = ()
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: DType | None = None
    out_dtype: DType | None = None
    tokenizer_source: str | None = Field(None, min_length=1)
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = Field(None, min_length=1)
    recipe_format: Literal[1, 2] = RECIPE_FORMAT

    _dtypes = field_validator("dtype", "out_dtype", mode="before")(classmethod(lambda cls, v: _dtype_name(v)))

    _empty = field_validator("parameters", mode="before")(classmethod(lambda cls, v: _none_is_empty(v)))
    _params = field_validator("parameters")(classmethod(lambda cls, v: _check_params(v)))

    @model_validator(mode="after")
    def _shape(self) -> Recipe:
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give either `tokenizer_source:` or `tokenizer:`, not both (mergekit refuses both)")
        if self.merge_method == "passthrough":
            if not self.slices:
                raise ValueError("passthrough needs `slices:` (each one source with a layer_range)")
            if self.models:
                raise ValueError("passthrough takes `slices:`, not `models:`")
            if any(len(sl.sources) > 1 for sl in self.slices):
                raise ValueError("a passthrough slice takes one source (a merge method merges several)")
        else:
            if self.slices and self.models:
                raise ValueError("give either `models:` or `slices:`, not both")
            if not self.slices and not self.models:
                raise ValueError("`models:` is empty; list at least one model")
            if any(sl.is_dataflow for sl in self.slices):
                raise ValueError(f"identity slices and input_scale are for passthrough paths, not {self.merge_method!r}")
        return self

    # ------------------------------------------------------------------ identity
    def canonical_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        d.pop("recipe_format", None)
        d["merge_method"] = self.merge_method
        if self.recipe_format != 1:  # format 1 recipes keep the ids they were stored under
            d["recipe_format"] = self.recipe_format
        return d

    def canonical_json(self) -> str:
        return json.dumps(self.canonical_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def recipe_id(self) -> str:
        return "r-" + hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ sources
    @property
    def reference(self) -> str:
        """The model whose config the merge starts from: the base, else the first source."""
        return self.base_model or self.source_names()[0]

    def source_names(self) -> list[str]:
        """Every model the recipe reads, base first, without repeats."""
        names: list[str] = [self.base_model] if self.base_model else []
        names += [m.model for m in self.models]
        names += [src.model for s in self.slices for src in s.sources]
        return list(dict.fromkeys(names))

    def with_sources(self, mapping: dict[str, str]) -> Recipe:
        """The same recipe with model references renamed (e.g. names -> absolute paths)."""
        d = self.model_dump(mode="python")
        if d.get("base_model"):
            d["base_model"] = mapping.get(d["base_model"], d["base_model"])
        for m in d["models"]:
            m["model"] = mapping.get(m["model"], m["model"])
        for s in d["slices"]:
            if s.get("base_model"):
                s["base_model"] = mapping.get(s["base_model"], s["base_model"])
            for src in s.get("sources", ()):
                src["model"] = mapping.get(src["model"], src["model"])
        return Recipe.model_validate(d)

    @property
    def tokenizer_choice(self) -> str | None:
        """``tokenizer_source`` or the ``tokenizer:`` block's source: ``base``, ``union``, a model path."""
        return self.tokenizer.source if self.tokenizer is not None else self.tokenizer_source

    def resolved(self, root: Path) -> Recipe:
        """Relative model paths made absolute against ``root`` (the recipe file's directory)."""
        mapping = {n: str((root / n).resolve()) for n in self.source_names() if not Path(n).is_absolute()}
        out = self.with_sources(mapping)
        choice = self.tokenizer_choice
        if choice not in (None, "base", "union") and not Path(choice).is_absolute():
            path = str((root / choice).resolve())
            update = ({"tokenizer": self.tokenizer.model_copy(update={"source": path})} if self.tokenizer is not None
                      else {"tokenizer_source": path})
            out = out.model_copy(update=update)
        return out

    # ------------------------------------------------------------------ mergekit YAML
    def to_mergekit(self) -> dict[str, Any]:
        """A mergekit config dict. For SLERP mergekit lists the base among ``models``. A format 1
        recipe keeps ``recipe_format: 1`` (mergekit ignores the key and reads the config its own
        way; evomerge reads it back as the model it was scored as)."""
        d = self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        d.pop("recipe_format", None)
        d["merge_method"] = self.merge_method
        if self.recipe_format != RECIPE_FORMAT:
            d["recipe_format"] = self.recipe_format
        if self.merge_method == "slerp" and self.base_model and not self.slices:
            d["models"] = [{"model": self.base_model}] + d.get("models", [])
        if self.is_dataflow and self.recipe_format >= 2 and self._scale_free():
            d["slices"] = self._passthrough_slices()
        return d

    # ------------------------------------------------------------------ data-flow paths
    @property
    def is_dataflow(self) -> bool:
        """A passthrough path with evomerge's data-flow keys (``input_scale``, ``identity``)."""
        return self.merge_method == "passthrough" and any(s.is_dataflow for s in self.slices)

    def _scale_free(self) -> bool:
        return "scale" not in self.parameters and not any(
            "scale" in s.parameters or any("scale" in src.parameters for src in s.sources) for s in self.slices)

    def _passthrough_slices(self) -> list[dict[str, Any]]:
        """The path in mergekit's own passthrough vocabulary, so ``mergekit-yaml`` rebuilds the same
        weights: a slice whose entering hidden state is scaled by the cumulative product C of the
        input scales so far gets its output projections scaled by 1/C (the fold of
        :func:`evomerge.merge.plan._plan_passthrough`), and an identity slot is layer 0 of the
        reference model with its output projections scaled by 0."""
        out: list[dict[str, Any]] = []
        cumulative = 1.0
        for sl in self.slices:
            cumulative *= sl.input_scale
            if sl.identity:
                src = {"model": self.reference, "layer_range": [0, 1]}
                fold = 0.0
            else:
                src = sl.sources[0].model_dump(mode="json", exclude_defaults=True)
                fold = 1.0 / cumulative
            if fold != 1.0 and (sl.identity or src["layer_range"][1] > src["layer_range"][0]):
                src["parameters"] = {"scale": [{"filter": f".{p}.", "value": fold} for p in OUTPUT_PROJECTIONS]}
            out.append({"sources": [src]})
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_mergekit(), sort_keys=False)


# mergekit lists the base among `models` for these methods; its task vector is zero, so drop it.
_DROP_BASE_FROM_MODELS = {
    "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "slerp",
    "della", "della_linear", "sce", "model_stock", "nuslerp", "multislerp",
}


def recipe_from_dict(data: Any, *, source: str = "<recipe>") -> Recipe:
    """Validate a parsed mergekit-style config; errors name the field and the fix."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping, got {type(data).__name__}")
    data = dict(data)
    if data.get("merge_method") in _DROP_BASE_FROM_MODELS and data.get("base_model"):
        models = data.get("models") or []
        if isinstance(models, list):
            data["models"] = [
                m for m in models if not (isinstance(m, dict) and m.get("model") == data["base_model"])
            ]
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = ("unknown key (known: merge_method, base_model, models, slices, parameters, dtype, "
                       "out_dtype, tokenizer_source, tokenizer, chat_template, recipe_format)")
            lines.append(f"{loc}: {msg}")
        raise ConfigError(
            f"{source}: invalid recipe:\n    " + "\n    ".join(lines),
            hint="see README 'Recipes' for the recipe format (mergekit-style YAML)",
        ) from None
    except ConfigError as err:
        raise ConfigError(f"{source}: {err.message}", hint=err.hint) from None


def stored_recipe(data: Any, *, source: str = "<stored recipe>") -> Recipe:
    """A recipe read back from an archive (its canonical dict): one stored before recipes were
    versioned has no ``recipe_format`` and is format 1."""
    if isinstance(data, dict) and "recipe_format" not in data:
        data = {**data, "recipe_format": 1}
    return recipe_from_dict(data, source=source)


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe YAML (or JSON) file; model paths stay as written (see ``Recipe.resolved``).

    The file is read by :func:`evomerge.safe_yaml.load_yaml`: a regular file only (a FIFO or
    device is refused), at most ``MAX_YAML_BYTES``, nesting and number literals bounded."""
    return recipe_from_dict(load_yaml(path), source=str(path))


def loads_recipe(text: str, *, source: str = "<recipe>") -> Recipe:
    return recipe_from_dict(loads_yaml(text, source=source), source=source)
