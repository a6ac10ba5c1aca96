"""Genome <-> recipe for data-flow (DFS) and PS+DFS searches (Akiba et al. 2024, sec. 3.2-3.3).

The path sources are listed model after model (M layers in total); the path has T = r x M
slots, slot t standing for layer ``t mod M`` of that list. Genes, all in [0, 1]:

- one include gene per slot, on when above 0.5 (continuous genes thresholded, so CMA-ES and
  nevergrad search the binary part like any other; the paper encodes the indicators the same
  way for CMA-ES);
- scales: ``slot`` mode gives each slot one scale gene, the factor on the hidden state entering
  that layer; ``transition`` mode is the paper's M x M matrix W, W[i, j] scaling the state that
  layer i hands to layer j (the first layer on the path gets scale 1).

Genes are ordered slot by slot ([include_0, scale_0, include_1, scale_1, ...], then W in
transition mode), so a split point is a split along the path. An excluded slot decodes to an
identity layer, so every candidate has T layers and one evaluator engine serves them all. The
start point is the first source's own layers in order with scale 1 (the base model for DFS,
the PS merge for PS+DFS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evomerge.recipe import Recipe, recipe_from_dict
from evomerge.space.schema import SearchSpace

ON, OFF = 0.75, 0.25  # include genes of the start point: a quarter of the box from the threshold


@dataclass(frozen=True)
class Slot:
    source: int  # index into the path sources
    layer: int  # layer of that source


class DFSCodec:
    def __init__(self, space: SearchSpace, sources: list[str], layers: list[int]) -> None:
        """``sources``: path source directories (first one gives embeddings, norm and head);
        ``layers``: their layer counts."""
        if len(sources) != len(layers) or not sources:
            raise ValueError("one layer count per path source")
        self.space, self.sources, self.layers = space, list(sources), list(layers)
        flow = space.flow
        self.flow = flow
        self.order = [Slot(s, li) for s, n in enumerate(layers) for li in range(n)]  # the M source layers
        self.M = len(self.order)
        self.T = flow.repeats * self.M
        self.slots = [self.order[t % self.M] for t in range(self.T)]
        self.scale_genes = self.T if flow.scales == "slot" else self.M * self.M

    @property
    def dim(self) -> int:
        return self.T + self.scale_genes

    def _scale_gene(self, v: float) -> float:
        sc = self.flow.scale
        return (v - sc.low) / (sc.high - sc.low)

    def _scale_value(self, g: float) -> float:
        sc = self.flow.scale
        return sc.low + float(np.clip(g, 0.0, 1.0)) * (sc.high - sc.low)

    def _path_genome(self, source: int) -> np.ndarray:
        one = self._scale_gene(self.flow.scale.init if self.flow.scale.init is not None else 1.0)
        x = np.full(self.dim, one)
        for t in range(self.T):
            x[self.include_index(t)] = ON if (t < self.M and self.slots[t].source == source) else OFF
        return x

    def include_index(self, t: int) -> int:
        return 2 * t if self.flow.scales == "slot" else t

    def initial(self) -> np.ndarray:
        """The first source's own path (base for DFS, the PS merge for PS+DFS), scales 1."""
        return self._path_genome(0)

    def expert_genomes(self) -> list[np.ndarray]:
        """Each other source's own layers as a path: M2N2 seeds its archive with the sources."""
        return [self._path_genome(s) for s in range(1, len(self.sources))]

    def path(self, x: np.ndarray) -> list[tuple[Slot | None, float]]:
        """(slot or None for an excluded one, input scale) for every slot of the path."""
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        out: list[tuple[Slot | None, float]] = []
        prev: int | None = None  # index in self.order of the last included layer
        for t, slot in enumerate(self.slots):
            if x[self.include_index(t)] <= 0.5:
                out.append((None, 1.0))
                continue
            j = t % self.M
            if self.flow.scales == "slot":
                scale = self._scale_value(x[2 * t + 1])
            else:
                scale = 1.0 if prev is None else self._scale_value(x[self.T + prev * self.M + j])
            out.append((slot, scale))
            prev = j
        return out

    def decode(self, x: np.ndarray) -> Recipe:
        """A passthrough recipe of T slices: included layers with their input scale (6 digits)
        and identity slots; embeddings, final norm and head from the first source, which empty
        slices of it at both ends name (mergekit takes them from the first and last slices)."""
        ends = {"sources": [{"model": self.sources[0], "layer_range": [0, 0]}]}
        slices = [ends]
        for slot, scale in self.path(x):
            if slot is None:
                slices.append({"identity": True})
            else:
                slices.append({"sources": [{"model": self.sources[slot.source],
                                            "layer_range": [slot.layer, slot.layer + 1]}],
                               "input_scale": round(scale, 6)})
        slices.append(ends)
        return recipe_from_dict({"merge_method": "passthrough", "base_model": self.sources[0], "slices": slices},
                                source=f"{self.space.name}: decoded path")


def merged_source_dir(recipe: Recipe, cache: Path | None = None) -> Path:
    """Where the PS merge of a PS+DFS space lives: materialized once (atomically, with a
    manifest) under ``$EVOMERGE_CACHE`` (default ``~/.cache/evomerge``)/merged/<recipe_id>."""
    import os

    from evomerge.cache import cache_root
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.merge.writer import verify_manifest

    if cache is None:
        env = os.environ.get("EVOMERGE_CACHE")
        cache = Path(env) if env else cache_root()
    out = cache / "merged" / recipe.recipe_id
    if out.exists():
        verify_manifest(out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    merge_to_dir(recipe, out)
    return out
