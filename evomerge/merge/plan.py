"""Plan a merge: a :class:`~evomerge.recipe.Recipe` checked against its sources, as tensor jobs.

``plan_merge`` opens the sources lazily and checks them from their safetensors headers alone
(``compat``: no weights read), so a bad recipe fails before any heavy work. It lists one
:class:`TensorJob` per output tensor (sources, dtype, shape and the tensor's resolved per-layer
parameters); layer stacking and data-flow paths (DFS) are folded into plain per-tensor jobs.
``materialize`` executes a plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from evomerge import schedule
from evomerge.errors import ConfigError
from evomerge.merge.compat import check_compatible
from evomerge.merge.io import ModelDir, TensorMeta, layer_index
from evomerge.merge.ops import resolve_params
from evomerge.merge.registry import get_op
from evomerge.merge.tokenizer import TokenizerChoice, choose_tokenizer
from evomerge.recipe import OUTPUT_PROJECTIONS, Recipe, Slice, is_output_projection

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {t: n for n, t in DTYPES.items()}  # torch dtype -> the name recipes use
_LAYER_RE = re.compile(r"(^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class TensorJob:
    """How to produce one output tensor."""

    out: TensorMeta
    layer: int | None  # output layer index (drives per-layer schedules)
    base: tuple[str, str] | None  # (source, tensor name)
    experts: tuple[tuple[str, str], ...]
    params: dict[str, Any]  # ops.resolve_params's output: defaults filled, per-expert lists, checked


@dataclass
class MergePlan:
    """Everything needed to produce the merged weights, checked against headers."""

    recipe: Recipe
    sources: dict[str, ModelDir]
    reference: str
    config: dict[str, Any]
    jobs: list[TensorJob] = field(default_factory=list)
    tokenizer: TokenizerChoice | None = None  # the merged model's tokenizer (set by plan_merge)

    @property
    def metas(self) -> list[TensorMeta]:
        return [j.out for j in self.jobs]

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def close(self) -> None:
        for src in self.sources.values():
            src.close()

    def __enter__(self) -> MergePlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rename_layer(name: str, new_layer: int) -> str:
    return _LAYER_RE.sub(lambda m: f"{m.group(1)}layers.{new_layer}.", name, count=1)


def _out_dtype(recipe: Recipe, ref: ModelDir, name: str) -> torch.dtype:
    """A floating tensor is stored in ``out_dtype``, else ``dtype``, else as the source stores it."""
    src = ref.meta(name).dtype
    stored = recipe.out_dtype or recipe.dtype
    if stored is None or not src.is_floating_point:
        return src
    return DTYPES[stored]


def plan_merge(recipe: Recipe, sources: dict[str, ModelDir] | None = None) -> MergePlan:
    """Check a recipe against its sources' headers and list the tensor jobs.

    ``recipe`` model references must already be paths (see ``Recipe.resolved``) unless
    ``sources`` maps every reference to an open :class:`ModelDir`.
    """
    op = get_op(recipe.merge_method)
    spec = op.spec
    if sources is None:
        sources = {}
        try:
            for name in recipe.source_names():
                sources[name] = ModelDir(name)
        except Exception:
            for s in sources.values():
                s.close()
            raise
    n_experts = len(recipe.models)
    if spec.requires_base and not recipe.base_model and not (recipe.slices and all(sl.base_model for sl in recipe.slices)):
        raise ConfigError(
            f"merge method {spec.name!r} needs `base_model:`", hint="name the model the experts were fine-tuned from"
        )
    if recipe.merge_method != "passthrough" and not recipe.slices:
        _check_expert_count(spec, n_experts, "", hint="fix the `models:` list")
    reference = recipe.reference
    check_compatible(
        sources, reference=reference, allow_dtype_mismatch=recipe.dtype is not None,
        check_depth=not recipe.slices,
    )
    ref = sources[reference]
    config = dict(ref.config)
    plan = MergePlan(recipe=recipe, sources=sources, reference=reference, config=config)
    if recipe.merge_method == "passthrough":
        _plan_passthrough(plan, ref)
    elif recipe.slices:
        _plan_merged_slices(plan)
    else:
        _plan_elementwise(plan, ref, n_experts)
    stored = recipe.out_dtype or recipe.dtype  # mergekit's config dtype: out_dtype, else dtype
    if stored is not None:
        config["torch_dtype"] = stored
        config["dtype"] = stored
    plan.tokenizer = choose_tokenizer(recipe, sources)
    return plan


def _check_expert_count(spec: Any, n: int, where: str, *, hint: str) -> None:
    if n < spec.min_experts or (spec.max_experts is not None and n > spec.max_experts):
        want = f"{spec.min_experts}" if spec.max_experts == spec.min_experts else f"at least {spec.min_experts}"
        raise ConfigError(f"{where}merge method {spec.name!r} takes {want} model(s) besides the base, got {n}",
                          hint=hint)


def _check_layer_range(plan: MergePlan, model: str, layer_range: tuple[int, int], where: str) -> None:
    have = plan.sources[model].num_layers
    if layer_range[1] > have:
        raise ConfigError(f"{where}slice layer_range {list(layer_range)} is past the {have} layers of {model}",
                          hint=f"use a range within [0, {have})")


def _check_required(spec: Any, key: str, values: list[Any], models: list[str], tensor: str, *, hint: str) -> None:
    """Format 2: a per-model parameter mergekit has no default for must resolve for every model."""
    pspec = next(p for p in spec.params if p.name == key)
    if pspec.required and None in values:
        raise ConfigError(
            f"{spec.name}: parameter {key!r} is required (mergekit refuses a config without it) "
            f"and is missing for model {models[values.index(None)]} at tensor {tensor}", hint=hint)


def _check_required_shared(spec: Any, params: dict[str, Any], tensor: str, *, hint: str) -> None:
    """Format 2: a shared parameter mergekit has no default for must resolve."""
    for pspec in spec.params:
        if pspec.required and not pspec.per_source and pspec.name not in params:
            raise ConfigError(
                f"{spec.name}: parameter {pspec.name!r} is required (mergekit refuses a config without it) "
                f"and has no value at tensor {tensor}", hint=hint)


def _set_depth(plan: MergePlan, layers: int) -> None:
    plan.config["num_hidden_layers"] = layers
    if "layer_types" in plan.config and isinstance(plan.config["layer_types"], list):
        plan.config["layer_types"] = [plan.config["layer_types"][0]] * layers


def _layers_of(src: ModelDir) -> dict[int, list[str]]:
    """The tensor names of each layer of a source, in file order."""
    by_layer: dict[int, list[str]] = {}
    for n in src.tensor_names:
        li = layer_index(n)
        if li is not None:
            by_layer.setdefault(li, []).append(n)
    return by_layer


def _slice_param_names(recipe: Recipe) -> set[str]:
    return set(recipe.parameters) | {k for sl in recipe.slices for k in sl.parameters} \
        | {k for sl in recipe.slices for src in sl.sources for k in src.parameters}


def _check_param_names(recipe: Recipe, names: set[str]) -> None:
    spec = get_op(recipe.merge_method).spec
    known = {p.name for p in spec.params}
    unknown = names - known
    if unknown:
        raise ConfigError(
            f"merge method {spec.name!r} has no parameter(s) {sorted(unknown)}",
            hint=f"its parameters are {sorted(known) or 'none'}",
        )


def _plan_elementwise(plan: MergePlan, ref: ModelDir, n_experts: int) -> None:
    recipe = plan.recipe
    spec = get_op(recipe.merge_method).spec
    per_source = {p.name for p in spec.params if p.per_source}
    _check_param_names(recipe, set(recipe.parameters) | {k for m in recipe.models for k in m.parameters})
    for m in recipe.models:
        misplaced = set(m.parameters) - per_source
        if misplaced:
            raise ConfigError(
                f"model {m.model}: {sorted(misplaced)} are global for {spec.name!r}, not per model",
                hint="move them to the top-level `parameters:`",
            )
    L = plan.num_layers
    fmt = recipe.recipe_format
    for name in ref.tensor_names:
        layer = layer_index(name)
        t = schedule.slice_position(layer, L) if fmt >= 2 else schedule.depth_position(name, layer, L)
        glob = schedule.resolve_all(recipe.parameters, name, t, fmt=fmt)
        params: dict[str, Any] = {k: v for k, v in glob.items() if k not in per_source}
        for key in per_source:
            vals = []
            for m in recipe.models:
                v = schedule.resolve(m.parameters[key], name, t, fmt=fmt) if key in m.parameters else None
                vals.append(glob.get(key) if v is None else v)
            if fmt >= 2:
                _check_required(spec, key, vals, [m.model for m in recipe.models], name,
                                hint=f"give every model a {key!r}, or set it once in the top-level `parameters:`")
            if any(v is not None for v in vals):
                default = next(p.default for p in spec.params if p.name == key)
                vals = [default if v is None else v for v in vals]
                if any(v is None for v in vals):
                    raise ConfigError(
                        f"parameter {key!r} is missing for some models at tensor {name}",
                        hint=f"give every model a {key!r} (or set it in the top-level `parameters:`)",
                    )
                params[key] = vals
        if fmt >= 2:
            _check_required_shared(spec, params, name, hint="set it in the top-level `parameters:` (a fallback "
                                                            "entry without a filter covers every tensor)")
        params = resolve_params(spec, params, n_experts)  # bounds and lengths checked now, not mid-merge
        plan.jobs.append(
            TensorJob(
                out=TensorMeta.of(name, _out_dtype(recipe, ref, name), ref.meta(name).shape),
                layer=layer,
                base=(recipe.base_model, name) if recipe.base_model else None,
                experts=tuple((m.model, name) for m in recipe.models),
                params=params,
            )
        )


def _plan_passthrough(plan: MergePlan, ref: ModelDir) -> None:
    """Layer stacking (mergekit passthrough) and data-flow paths (EvoMerge DFS, Akiba et al. 2024).

    A data-flow slice scales the hidden state entering it by ``input_scale``. RMSNorm is scale
    invariant, so layer(c h) = c * layer'(h) where layer' has its output projections (o_proj,
    down_proj) divided by c; by induction the path with scales c_1..c_T equals, up to a factor
    C_T that the final RMSNorm removes, the plain stack whose layer k has its output projections
    divided by C_k = c_1 * ... * c_k. An ``identity`` slot is a layer whose output projections
    are zero (the residual passes through), so every path is a plain checkpoint of T layers.
    """
    recipe = plan.recipe
    _check_param_names(recipe, _slice_param_names(recipe))
    dataflow = recipe.is_dataflow
    non_layer = [n for n in ref.tensor_names if layer_index(n) is None]
    head = [n for n in non_layer if "embed" in n]
    tail = [n for n in non_layer if "embed" not in n]
    total = sum(s.num_layers for s in recipe.slices)
    spec = get_op("passthrough").spec

    def job(src: str, name: str, out_name: str, layer: int | None, params: dict[str, Any]) -> TensorJob:
        meta = plan.sources[src].meta(name)
        params = resolve_params(spec, params, 1)
        return TensorJob(
            out=TensorMeta.of(out_name, _out_dtype(recipe, plan.sources[src], name), meta.shape),
            layer=layer, base=None, experts=((src, name),), params=params,
        )

    if dataflow and not any(is_output_projection(n) for n in _layers_of(ref).get(0, [])):
        raise ConfigError(
            f"data-flow slices (input_scale, identity) need layers with {'/'.join(OUTPUT_PROJECTIONS)} "
            f"output projections; {ref.architecture} has none",
            hint="use plain passthrough slices for this architecture",
        )
    fmt = recipe.recipe_format

    def slice_source(sl: Slice) -> tuple[str, list[dict[str, Any]]]:
        """The slice's model and its parameter scopes, highest precedence first."""
        if sl.identity:
            return plan.reference, []
        return sl.sources[0].model, [sl.sources[0].parameters, sl.parameters]

    def params_for(scopes: list[dict[str, Any]], in_name: str, out_name: str, t: float) -> dict[str, Any]:
        """Format 2 resolves as mergekit does for a per-input parameter: the source's value, then
        the slice's, then the global one, filters matched on the source tensor's name; format 1
        merged the source and global dicts and matched the output name."""
        if fmt < 2:
            return schedule.resolve_all({**recipe.parameters, **(scopes[0] if scopes else {})}, out_name, t, fmt=fmt)
        out: dict[str, Any] = {}
        for scope in [recipe.parameters, *reversed(scopes)]:  # later (higher precedence) scopes win
            out.update(schedule.resolve_all(scope, in_name, t, fmt=fmt))
        return out

    # The stack's ends: format 2 takes the embeddings from the first slice's model and the final
    # norm and lm_head from the last slice's (mergekit's pre/post weights, at t = 0 with that
    # slice's parameters); format 1 took both from the reference model with global parameters.
    first_src, first_own = slice_source(recipe.slices[0]) if fmt >= 2 else (plan.reference, [])
    last_src, last_own = slice_source(recipe.slices[-1]) if fmt >= 2 else (plan.reference, [])
    for n in head:
        t = 0.0 if fmt >= 2 else schedule.depth_position(n, None, total)
        plan.jobs.append(job(first_src, n, n, None, params_for(first_own, n, n, t)))
    out_layer = 0
    cumulative = 1.0
    for sl in recipe.slices:
        cumulative *= sl.input_scale
        src_name, own = slice_source(sl)
        if sl.identity:
            layer_ids = [0]
        else:
            _check_layer_range(plan, src_name, sl.sources[0].layer_range, "")
            layer_ids = list(range(*sl.sources[0].layer_range))
        by_layer = _layers_of(plan.sources[src_name])
        for offset, li in enumerate(layer_ids):
            # format 2: a gradient restarts in every slice; format 1 spread it over the whole stack
            t = schedule.slice_position(offset, len(layer_ids)) if fmt >= 2 else \
                schedule.depth_position("", out_layer, total)
            for n in by_layer.get(li, []):
                out_name = _rename_layer(n, out_layer)
                params = params_for(own, n, out_name, t)
                if is_output_projection(n) and (sl.identity or cumulative != 1.0):
                    fold = 0.0 if sl.identity else 1.0 / cumulative
                    params["scale"] = float(params.get("scale", 1.0)) * fold
                plan.jobs.append(job(src_name, n, out_name, out_layer, params))
            out_layer += 1
    for n in tail:
        t = 0.0 if fmt >= 2 else schedule.depth_position(n, None, total)
        if fmt >= 2 and n not in plan.sources[last_src]:
            raise ConfigError(f"{last_src} has no tensor {n}, which the last slice's model gives the merged model",
                              hint="end the stack with a slice of a model of the same architecture")
        plan.jobs.append(job(last_src, n, n, None, params_for(last_own, n, n, t)))
    _set_depth(plan, out_layer)


def _plan_merged_slices(plan: MergePlan) -> None:
    """A merge method over mergekit's ``slices:`` form (format 2 only; mergekit 0.1.5's planner):
    output layer k of a slice merges layer ``start + k`` of every source of the slice, at
    t = k / (n - 1); the embeddings merge the first slice's sources and the final norm and
    lm_head the last slice's, at t = 0. A per-model parameter resolves from the source, then the
    slice, then the global parameters, filters matched on the source tensor's name; a shared one
    from the slice, then the global ones, on the output name."""
    recipe = plan.recipe
    if recipe.recipe_format < 2:
        raise ConfigError("slices with merge methods need recipe format 2", hint="drop `recipe_format: 1`")
    spec = get_op(recipe.merge_method).spec
    per_source = {p.name for p in spec.params if p.per_source}
    _check_param_names(recipe, _slice_param_names(recipe))
    uses_base = spec.requires_base or spec.optional_base

    def base_of(sl: Slice) -> str | None:
        return (sl.base_model or recipe.base_model) if uses_base else None

    for i, sl in enumerate(recipe.slices):
        models = [src.model for src in sl.sources]
        base = base_of(sl)
        if spec.requires_base and base is None:
            raise ConfigError(f"slices[{i}]: merge method {spec.name!r} needs a base model",
                              hint="set `base_model:` for the recipe or the slice")
        if base is not None and base not in models:
            raise ConfigError(f"slices[{i}]: the base model {base} is not among the slice's sources",
                              hint="list the base model in every slice (mergekit requires it too)")
        _check_expert_count(spec, len(models) - (1 if base is not None else 0), f"slices[{i}]: ",
                            hint="fix the slice's `sources:`")
        for src in sl.sources:
            _check_layer_range(plan, src.model, src.layer_range, f"slices[{i}]: ")

    def job(sl: Slice, names: dict[str, str], out_name: str, layer: int | None, t: float) -> None:
        """One output tensor merged from the slice's sources (``names``: model -> input tensor)."""
        present = [m for m, n in names.items() if n in plan.sources[m]]
        if not present:
            return  # e.g. lm_head of tied models
        if len(present) != len(names):
            missing = sorted(set(names) - set(present))
            raise ConfigError(f"{missing[0]} has no tensor {names[missing[0]]}, which {out_name} merges",
                              hint="merge models of one architecture")
        base = base_of(sl)
        experts = [m for m in names if m != base]
        params: dict[str, Any] = {}
        for scope in (recipe.parameters, sl.parameters):
            params.update({k: v for k, v in schedule.resolve_all(scope, out_name, t, fmt=2).items()
                           if k not in per_source})
        for key in per_source:
            vals = []
            for m in experts:
                own = next(src.parameters for src in sl.sources if src.model == m)
                v = None
                for scope in (own, sl.parameters, recipe.parameters):
                    if key in scope:
                        v = schedule.resolve(scope[key], names[m], t, fmt=2)
                        if v is not None:
                            break
                vals.append(v)
            _check_required(spec, key, vals, experts, out_name,
                            hint=f"give every source a {key!r}, or set it in the slice's or the top-level `parameters:`")
            if any(v is not None for v in vals):
                default = next(p.default for p in spec.params if p.name == key)
                params[key] = [default if v is None else v for v in vals]
        _check_required_shared(spec, params, out_name, hint="set it in the slice's or the top-level `parameters:`")
        lead = base if base is not None else experts[0]
        ref, ref_name = plan.sources[lead], names[lead]
        plan.jobs.append(TensorJob(
            out=TensorMeta.of(out_name, _out_dtype(recipe, ref, ref_name), ref.meta(ref_name).shape),
            layer=layer, base=(base, names[base]) if base is not None else None,
            experts=tuple((m, names[m]) for m in experts),
            params=resolve_params(spec, params, len(experts)),
        ))

    first, last = recipe.slices[0], recipe.slices[-1]
    non_layer = [n for n in plan.sources[first.sources[0].model].tensor_names if layer_index(n) is None]
    for n in non_layer:
        if "embed" in n:
            job(first, {src.model: n for src in first.sources}, n, None, 0.0)
    out_layer = 0
    for sl in recipe.slices:
        lead = sl.sources[0]
        by_layer = _layers_of(plan.sources[lead.model])
        for k in range(sl.num_layers):
            t = schedule.slice_position(k, sl.num_layers)
            for n in by_layer.get(lead.layer_range[0] + k, []):
                names = {src.model: _rename_layer(n, src.layer_range[0] + k) for src in sl.sources}
                job(sl, names, _rename_layer(n, out_layer), out_layer, t)
            out_layer += 1
    for n in non_layer:
        if "embed" not in n:
            job(last, {src.model: n for src in last.sources}, n, None, 0.0)
    _set_depth(plan, out_layer)
