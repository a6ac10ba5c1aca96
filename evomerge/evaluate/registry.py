"""Evaluators by engine name: the one table the workers, ``evomerge eval`` and the API read.

Each engine's module is imported only when an evaluator is made (torch, transformers and vLLM
are heavy), so the table itself, its names and its hints cost nothing to import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from evomerge.errors import ConfigError

if TYPE_CHECKING:
    from evomerge.evaluate.base import Evaluator


def _hf(**options: Any) -> Evaluator:
    from evomerge.evaluate.hf import HFEvaluator

    return HFEvaluator(**options)


def _vllm(**options: Any) -> Evaluator:
    from evomerge.evaluate.vllm import VLLMEvaluator

    return VLLMEvaluator(**options)


def _synthetic(**options: Any) -> Evaluator:
    from evomerge.evaluate.synthetic import SyntheticEvaluator

    return SyntheticEvaluator(**options)


@dataclass(frozen=True)
class EngineInfo:
    name: str
    factory: Callable[..., Evaluator]  # keyword options (a run's engine_options) -> a fresh evaluator
    note: str | None = None  # what a hint says of it: "hf (transformers)"
    merges_weights: bool = True  # materializes candidates (torch threads, the C++ merge kernel): not synthetic

    def describe(self) -> str:
        return f"{self.name} ({self.note})" if self.note else self.name


REGISTRY: Mapping[str, EngineInfo] = MappingProxyType({e.name: e for e in (
    EngineInfo("hf", _hf, "transformers"),
    EngineInfo("vllm", _vllm),
    EngineInfo("synthetic", _synthetic, "plumbing tests", merges_weights=False),
)})
ENGINES: tuple[str, ...] = tuple(REGISTRY)  # hf, vllm, synthetic
MODEL_ENGINES: tuple[str, ...] = tuple(n for n, e in REGISTRY.items() if e.merges_weights)  # what scores a model


def describe(names: Sequence[str] = ENGINES) -> str:
    """``hf (transformers), vllm, or synthetic (plumbing tests)``: the engines for a hint or help."""
    parts = [REGISTRY[n].describe() for n in names]
    if len(parts) <= 2:
        return " or ".join(parts)
    return f"{', '.join(parts[:-1])}, or {parts[-1]}"


def lookup(name: object) -> EngineInfo | None:
    """The engine called ``name``, or None (also for a name that is not a string, e.g. from JSON)."""
    return REGISTRY.get(name) if isinstance(name, str) else None


def check_engine(name: str, *, option: str = "--engine", among: Sequence[str] = ENGINES,
                 hint: str | None = None) -> EngineInfo:
    """The engine ``name``, one of ``among``; else a ConfigError naming the option and the choices
    (``hint``: the fix to print instead of ``use <the choices>``)."""
    info = lookup(name)
    if info is None or name not in among:
        raise ConfigError(f"{option} {name!r} is not one of {', '.join(among)}", hint=hint or f"use {describe(among)}")
    return info


def merges_weights(name: str) -> bool:
    """Whether engine ``name`` materializes candidates' weights (so needs torch and the C++ merge
    kernel); an unknown name counts as one that does (making its evaluator fails, naming the choices)."""
    info = lookup(name)
    return info is None or info.merges_weights


def make_evaluator(name: str, options: Mapping[str, Any] | None = None) -> Evaluator:
    """A fresh evaluator of engine ``name`` with keyword ``options`` (a run's ``engine_options``);
    an unknown name is a ConfigError naming the choices."""
    info = lookup(name)
    if info is None:
        raise ConfigError(f"unknown engine {name!r}", hint=f"use {describe()}")
    return info.factory(**dict(options or {}))
