"""Genome <-> recipe for parameter-space searches.

The genome is a point of the box [0, 1]^d; gene i maps linearly to its parameter's bounds.
Genes are ordered by (layer group, expert, parameter), so a split point over the genome is a
split at layer-block granularity (M2N2's crossover keeps children valid recipes). A recipe gives
every expert a per-layer list of ``num_layers`` values (one value per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evomerge.merge.io import ModelDir
from evomerge.merge.registry import get_op
from evomerge.recipe import Recipe, recipe_from_dict
from evomerge.space.schema import SearchSpace


@dataclass(frozen=True)
class Gene:
    group: int
    expert: int | None  # None for a global parameter
    param: str
    low: float
    high: float


class PSCodec:
    def __init__(self, space: SearchSpace, num_layers: int | None = None) -> None:
        self.space = space
        if num_layers is None:
            with ModelDir(space.base) as base:
                num_layers = base.num_layers
        self.num_layers = num_layers
        self.groups = num_layers if space.layer_groups == 0 else min(space.layer_groups, num_layers)
        spec = get_op(space.merge_method).spec
        per_source = {p.name for p in spec.params if p.per_source}
        genes: list[Gene] = []
        for g in range(self.groups):
            for e in range(len(space.experts)):
                for name, v in space.vary.items():
                    if name in per_source:
                        genes.append(Gene(g, e, name, v.low, v.high))
            for name, v in space.vary.items():
                if name not in per_source:
                    genes.append(Gene(g, None, name, v.low, v.high))
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

    def decode(self, x: np.ndarray) -> Recipe:
        """The recipe a genome stands for (values rounded to 6 digits for stable recipe ids)."""
        vals = self.values(x)
        per_expert: list[dict[str, list[float]]] = [{} for _ in self.space.experts]
        glob: dict[str, list[float]] = {}
        for gene, v in zip(self.genes, vals, strict=True):
            target = glob if gene.expert is None else per_expert[gene.expert]
            target.setdefault(gene.param, [0.0] * self.groups)[gene.group] = round(float(v), 6)
        layer_groups = [self.group_of_layer(li) for li in range(self.num_layers)]

        def per_layer(by_group: list[float]) -> list[float]:
            return [by_group[g] for g in layer_groups]

        models = []
        for path, params in zip(self.space.experts, per_expert, strict=True):
            models.append({"model": path, "parameters": {k: per_layer(v) for k, v in params.items()}})
        parameters = dict(self.space.fixed) | {k: per_layer(v) for k, v in glob.items()}
        return recipe_from_dict({"merge_method": self.space.merge_method, "base_model": self.space.base,
                                 "models": models, "parameters": parameters})
