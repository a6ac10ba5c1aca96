"""Source models held in memory once per worker, readable like :class:`~evomerge.merge.io.ModelDir`.

A worker evaluates many candidates over the same sources; reading their tensors once and keeping
them resident makes each candidate's materialization pure tensor math (no disk reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evomerge.merge import rank_index
from evomerge.merge.io import ModelDir, TensorMeta


class ResidentModel:
    """All tensors of one model directory, loaded once."""

    def __init__(self, path: str | Path) -> None:
        with ModelDir(path) as src:
            self.path = src.path
            self.config: dict[str, Any] = src.config
            self.architecture = src.architecture
            self.tied_embeddings = src.tied_embeddings
            self.tensor_names = list(src.tensor_names)
            self._metas = {n: src.meta(n) for n in self.tensor_names}
            self._tensors = {n: src.read(n) for n in self.tensor_names}
        for t in self._tensors.values():  # read-only for their lifetime: rank cuts may index them
            rank_index.INDEXES.register(t)

    @property
    def num_layers(self) -> int:
        return int(self.config.get("num_hidden_layers", 0))

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def meta(self, name: str) -> TensorMeta:
        return self._metas[name]

    def read(self, name: str) -> torch.Tensor:
        return self._tensors[name]  # merge ops never mutate their inputs

    def close(self) -> None:
        """Resident models stay loaded for the worker's lifetime."""


class ResidentSources:
    """A cache of resident models keyed by resolved path."""

    def __init__(self) -> None:
        self._models: dict[str, ResidentModel] = {}

    def get(self, path: str) -> ResidentModel:
        key = str(Path(path).resolve())
        if key not in self._models:
            self._models[key] = ResidentModel(key)
        return self._models[key]

    def for_recipe(self, names: list[str]) -> dict[str, ResidentModel]:
        return {n: self.get(n) for n in names}
