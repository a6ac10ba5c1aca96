"""Genome <-> recipe for parameter-space (PS) searches (Akiba et al. 2024, sec. 3.1).

The genome is a point of the box [0, 1]^d; gene i maps linearly to its parameter's bounds.
Genes are ordered by (layer group, module, expert, parameter), so a split point over the genome
is a split at layer-block granularity (M2N2's crossover keeps children valid recipes). A recipe
gives every expert a per-layer list of ``num_layers`` values (one value per layer). With
``per_module`` each layer group has separate genes for attention (``self_attn``) and MLP
tensors, written as mergekit filter lists; the layer's other tensors (norms) take their mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from evomerge.merge.io import ModelDir, layer_index
from evomerge.merge.plan import DTYPE_NAMES
from evomerge.merge.registry import get_op
from evomerge.recipe import Recipe, recipe_from_dict
from evomerge.space.schema import SearchSpace

if TYPE_CHECKING:
    from evomerge.space.dataflow import DFSCodec

MODULES = ("self_attn", "mlp")  # tensor-name substrings of Llama/Qwen2/Mistral attention and MLP blocks


class Codec(Protocol):
    """Genome <-> recipe over the box [0, 1]^dim: what the strategies, the driver and the checks
    use of a codec (:class:`PSCodec`, :class:`~evomerge.space.dataflow.DFSCodec`). A codec whose
    path sources differ from the space's base and experts also has a ``sources`` list."""

    space: SearchSpace

    @property
    def dim(self) -> int: ...

    def initial(self) -> np.ndarray: ...

    def expert_genomes(self) -> list[np.ndarray]: ...

    def decode(self, x: np.ndarray) -> Recipe: ...


@dataclass(frozen=True)
class Gene:
    group: int
    expert: int | None  # None for a global parameter
    param: str
    low: float
    high: float
    module: str | None = None  # per_module: "self_attn" or "mlp"


class PSCodec:
    """Genome <-> PS recipe. Genes in order: for each layer group and each gene set of the group
    (one; with ``per_module`` attention then MLP; with ``filters`` each filter then the rest),
    each expert's per-model parameters, then the global ones; with ``non_layer: true`` one more
    group last, for the tensors outside the layer stack (embeddings, final norm, LM head: the
    base's tensors without a layer index), decoded as mergekit filters on their exact names ahead
    of the per-layer values."""

    def __init__(self, space: SearchSpace, num_layers: int | None = None) -> None:
        self.space = space
        self.non_layer_names: tuple[str, ...] = ()
        self.dtypes: dict[str, str] = {}  # the recipes' dtype keys (16-bit sources merged in float32)
        if num_layers is None or space.non_layer:  # (a given num_layers: genome-layout tests without files)
            with ModelDir(space.base) as base:
                num_layers = base.num_layers if num_layers is None else num_layers
                if space.non_layer:
                    self.non_layer_names = tuple(n for n in base.tensor_names if layer_index(n) is None)
                stored = base.float_dtype
            if space.merge_dtype != "source" and stored in (torch.bfloat16, torch.float16):
                self.dtypes = {"dtype": "float32", "out_dtype": DTYPE_NAMES[stored]}
        self.num_layers = num_layers
        self.groups = num_layers if space.layer_groups == 0 else min(space.layer_groups, num_layers)
        self.sets: tuple[str | None, ...] = MODULES if space.per_module else (*space.filters, None)
        spec = get_op(space.merge_method).spec
        per_source = {p.name for p in spec.params if p.per_source}
        genes: list[Gene] = []
        blocks = [(g, module) for g in range(self.groups) for module in self.sets]
        if self.non_layer_names and space.non_layer is True:
            blocks.append((self.groups, None))  # the non-layer group
        for g, module in blocks:
            for e in range(len(space.experts)):
                for name, v in space.vary.items():
                    if name in per_source:
                        genes.append(Gene(g, e, name, v.low, v.high, module))
            for name, v in space.vary.items():
                if name not in per_source:
                    genes.append(Gene(g, None, name, v.low, v.high, module))
        self.genes = tuple(genes)

    @property
    def dim(self) -> int:
        return len(self.genes)

    def group_of_layer(self, layer: int) -> int:
        return min(layer * self.groups // self.num_layers, self.groups - 1)

    def initial(self) -> np.ndarray:
        """The starting point: each parameter's ``init`` (default: the middle of its bounds)."""
        x = []
        for g in self.genes:
            init = self.space.vary[g.param].init
            x.append(0.5 if init is None else (init - g.low) / (g.high - g.low))
        return np.array(x, dtype=float)

    def expert_genomes(self) -> list[np.ndarray]:
        """One genome per expert that is that expert alone (its weight 1, the others 0), when the
        ``weight`` bounds allow it: M2N2 seeds its archive with the source models."""
        v = self.space.vary.get("weight")
        if v is None or not v.low <= 0.0 <= 1.0 <= v.high:
            return []
        out = []
        for e in range(len(self.space.experts)):
            x = self.initial()
            for i, g in enumerate(self.genes):
                if g.param == "weight":
                    x[i] = ((1.0 if g.expert == e else 0.0) - g.low) / (g.high - g.low)
            out.append(x)
        return out

    def values(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        lows = np.array([g.low for g in self.genes])
        highs = np.array([g.high for g in self.genes])
        return lows + x * (highs - lows)

    def _set_of(self, tensor: str) -> str | None:
        """The gene set a tensor's values come from (mergekit: the first filter its name contains)."""
        if self.space.per_module:
            return None  # the rest: the mean of attention and MLP, which per_layer writes as the rest
        return next((f for f in self.space.filters if f in tensor), None)

    def decode(self, x: np.ndarray) -> Recipe:
        """The recipe a genome stands for (values rounded to 6 digits for stable recipe ids)."""
        vals = self.values(x)
        # target -> param -> gene set -> value per group
        per_expert: list[dict[str, dict[str | None, list[float]]]] = [{} for _ in self.space.experts]
        glob: dict[str, dict[str | None, list[float]]] = {}
        outer: dict[tuple[int | None, str], float] = {}  # (expert, param) -> the non-layer group's value
        for gene, v in zip(self.genes, vals, strict=True):
            if gene.group == self.groups:
                outer[(gene.expert, gene.param)] = round(float(v), 6)
                continue
            target = glob if gene.expert is None else per_expert[gene.expert]
            by_module = target.setdefault(gene.param, {})
            by_module.setdefault(gene.module, [0.0] * self.groups)[gene.group] = round(float(v), 6)
        layer_groups = [self.group_of_layer(li) for li in range(self.num_layers)]
        smooth = self.space.smooth

        def across(groups: list[float]) -> float | list[float]:
            """One set's values as mergekit reads them: anchors of a gradient (smooth; one anchor is
            a scalar), else one value per layer (each layer its group's)."""
            if smooth:
                return groups[0] if len(groups) == 1 else list(groups)
            return [groups[g] for g in layer_groups]

        def set_values(by_module: dict[str | None, list[float]]) -> dict[str | None, list[float]]:
            if not self.space.per_module:
                return by_module
            attn, mlp = (by_module[m] for m in MODULES)
            return {**by_module, None: [round((a + b) / 2, 6) for a, b in zip(attn, mlp, strict=True)]}

        def per_layer(by_module: dict[str | None, list[float]], key: tuple[int | None, str]):
            sets = set_values(by_module)
            if key in outer:
                ends = [{"filter": n, "value": outer[key]} for n in self.non_layer_names]
            elif self.space.non_layer == "ends":  # embeddings: the first group's; norm, LM head: the last's
                ends = [{"filter": n, "value": sets[self._set_of(n)][0 if "embed" in n else -1]}
                        for n in self.non_layer_names]
            else:
                ends = []
            filtered = [{"filter": m, "value": across(sets[m])} for m in self.sets if m is not None]
            rest = across(sets[None])
            return ends + filtered + [{"value": rest}] if ends or filtered else rest

        models = []
        for e, (path, params) in enumerate(zip(self.space.experts, per_expert, strict=True)):
            models.append({"model": path, "parameters": {k: per_layer(v, (e, k)) for k, v in params.items()}})
        parameters = dict(self.space.fixed) | {k: per_layer(v, (None, k)) for k, v in glob.items()}
        recipe = {"merge_method": self.space.merge_method, "base_model": self.space.base, "models": models,
                  "parameters": parameters}
        if self.space.tokenizer_source is not None:
            recipe["tokenizer_source"] = self.space.tokenizer_source
        return recipe_from_dict(recipe | self.dtypes)


def make_codec(space: SearchSpace, *, materialize: bool = True) -> PSCodec | DFSCodec:
    """The codec for a space's kind. For PS+DFS this materializes the PS merge once (cached by
    recipe id) so it can be a path source like any model directory; ``materialize=False`` (for
    validation) stands the merge's reference model in for it."""
    if space.kind == "ps":
        return PSCodec(space)
    from evomerge.space.dataflow import DFSCodec, merged_source_dir

    sources = [space.base, *space.experts]
    if space.kind == "ps_dfs":
        recipe = space.merged_recipe()
        assert recipe is not None  # the schema requires it for ps_dfs
        merged = merged_source_dir(recipe) if materialize else (recipe.base_model or recipe.source_names()[0])
        sources = [str(merged), *space.experts]
    layers = []
    for s in sources:
        with ModelDir(s) as md:
            layers.append(md.num_layers)
    return DFSCodec(space, sources, layers)


def check_sources(space: SearchSpace, codec: Codec) -> None:
    """Before any heavy work, from headers only: every source against the first (architecture,
    shape-defining config, tensor names and shapes; layer counts may differ for data-flow
    paths), then the start recipe planned. Raises ShapeMismatchError / ConfigError."""
    from evomerge.merge.compat import check_compatible
    from evomerge.merge.plan import plan_merge

    paths = list(dict.fromkeys(getattr(codec, "sources", [space.base, *space.experts])))
    dirs = {p: ModelDir(p) for p in paths}
    try:
        check_compatible(dirs, reference=paths[0], check_depth=space.kind == "ps")
    finally:
        for d in dirs.values():
            d.close()
    with plan_merge(codec.decode(codec.initial())):
        pass
