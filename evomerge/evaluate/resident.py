"""Source models held in memory for a worker's lifetime, readable like :class:`~evomerge.merge.io.ModelDir`.

A worker evaluates many candidates over the same sources; keeping their tensors resident makes
each candidate's materialization pure tensor math (no disk reads). By default the tensors are
views of the safetensors files' pages (``mmap``, copy-on-write: merge ops never write their
inputs, and a stray write would copy only its pages, never touch the file): the page cache holds each source once
per node, however many workers on that node use it (8 GPU workers over a base and 3 experts of
7B in bf16 hold 56 GB once, not 8 times). Before each candidate the files are checked against
what was mapped (:meth:`~evomerge.merge.io.ModelDir.verify`): a source changed or truncated under
a run is an error, not a SIGBUS. ``mapped=False`` reads private copies instead (the behaviour
before; a source on a network file system whose pages the kernel may drop at will is one reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evomerge.merge import rank_index
from evomerge.merge.io import ModelDir, TensorMeta


class ResidentModel:
    """All tensors of one model directory: mapped (shared pages, copy-on-write) or read once (private)."""

    def __init__(self, path: str | Path, *, mapped: bool = True) -> None:
        src = ModelDir(path)
        try:
            self.path = src.path
            self.config: dict[str, Any] = src.config
            self.architecture = src.architecture
            self.tied_embeddings = src.tied_embeddings
            self.tensor_names = list(src.tensor_names)
            self._metas = {n: src.meta(n) for n in self.tensor_names}
            self._tensors = {n: src.map(n) if mapped else src.read(n) for n in self.tensor_names}
        finally:
            src.close()  # closes read descriptors; mappings live as long as their tensors
        self._src = src
        self.mapped = mapped
        for t in self._tensors.values():  # read-only for their lifetime: rank cuts may index them
            rank_index.INDEXES.register(t)

    def verify(self) -> None:
        """Refuse sources whose mapped files changed since they were mapped (a no-op when private)."""
        if self.mapped:
            self._src.verify()

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

    def __init__(self, *, mapped: bool = True) -> None:
        self._models: dict[str, ResidentModel] = {}
        self.mapped = mapped

    def get(self, path: str) -> ResidentModel:
        key = str(Path(path).resolve())
        if key not in self._models:
            self._models[key] = ResidentModel(key, mapped=self.mapped)
        return self._models[key]

    def for_recipe(self, names: list[str]) -> dict[str, ResidentModel]:
        """The recipe's sources, each checked against its files as mapped (one ``stat`` per file)."""
        models = {n: self.get(n) for n in names}
        for m in models.values():
            m.verify()
        return models
