"""Search spaces (YAML, strict): sources, what varies per layer, objectives, strategy, budget.

A parameter-space (PS) search, as in Akiba et al. 2024 ("Evolutionary Optimization of Model
Merging Recipes", sec. 3.1), varies merge-op parameters per expert and per layer group; each
varied value is one gene in [0, 1] mapped linearly to its bounds (see :mod:`evomerge.space.codec`).
Paths are relative to the space file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import ConfigError
from evomerge.merge.registry import get_op
from evomerge.space.loader import load_yaml

ZOO_PREFIX = "zoo://"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Varied(_Strict):
    """One op parameter searched per expert (``per_expert``) or globally, per layer group."""

    low: float
    high: float
    init: float | None = None  # starting value (CMA-ES mean); default: the middle of the bounds

    @model_validator(mode="after")
    def _bounds(self) -> Varied:
        if not self.low < self.high:
            raise ValueError(f"bounds are inverted or empty: low {self.low} must be below high {self.high}")
        if self.init is not None and not self.low <= self.init <= self.high:
            raise ValueError(f"init {self.init} is outside [{self.low}, {self.high}]")
        return self


class Objective(_Strict):
    task: str  # task spec path
    weight: float = 1.0
    direction: Literal["maximize", "minimize"] = "maximize"


class StrategySpec(_Strict):
    name: Literal["random", "cmaes", "nevergrad", "m2n2"] = "cmaes"
    optimizer: str = "NGOpt"  # nevergrad: any registry name (NGOpt, TwoPointsDE, PSO, DE, CMA, ...)
    popsize: int | None = Field(None, ge=2)
    sigma: float = Field(0.25, gt=0, le=1)
    archive_size: int = Field(20, ge=2)  # m2n2
    alpha: float = Field(1.0, ge=0)  # m2n2: 1 = competition for resources, 0 = plain GA
    options: dict[str, Any] = Field(default_factory=dict)


class SearchSpace(_Strict):
    """A PS search over merge recipes of ``experts`` on top of ``base``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["ps"] = "ps"
    base: str
    experts: tuple[str, ...] = Field(min_length=1)
    merge_method: str = "task_arithmetic"
    layer_groups: int = Field(0, ge=0)  # 0: one gene per layer; k: k groups of consecutive layers
    vary: dict[str, Varied] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict)
    objectives: tuple[Objective, ...] = Field(min_length=1)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    budget: int = Field(64, ge=1, le=1_000_000)
    seed: int = 0

    @model_validator(mode="after")
    def _op_params(self) -> SearchSpace:
        spec = get_op(self.merge_method).spec  # ConfigError for unknown methods
        known = {p.name: p for p in spec.params}
        for name in [*self.vary, *self.fixed]:
            if name not in known:
                raise ValueError(f"{self.merge_method} has no parameter {name!r} (it has {sorted(known)})")
        both = set(self.vary) & set(self.fixed)
        if both:
            raise ValueError(f"{sorted(both)} are both varied and fixed")
        for name, v in self.vary.items():
            p = known[name]
            if (p.low is not None and v.low < p.low) or (p.high is not None and v.high > p.high):
                raise ValueError(f"vary.{name}: [{v.low}, {v.high}] exceeds the op's bounds [{p.low}, {p.high}]")
            if p.kind == "bool":
                raise ValueError(f"vary.{name}: boolean parameters cannot be searched; put it under fixed")
        return self

    def uses_zoo(self) -> bool:
        from evomerge.zoo import default_zoo_dir

        root = str(default_zoo_dir())
        return any(p.startswith(root) for p in (self.base, *self.experts))

    @property
    def space_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolved(self, root: Path) -> SearchSpace:
        """Relative source and task paths made absolute against ``root``."""

        def absolute(p: str) -> str:
            if p.startswith(ZOO_PREFIX):  # the built-in zoo (built on first use by `evomerge search`)
                from evomerge.zoo import default_zoo_dir

                return str(default_zoo_dir() / p[len(ZOO_PREFIX):])
            return p if Path(p).is_absolute() else str((root / p).resolve())

        d = self.model_dump(mode="python")
        d["base"] = absolute(d["base"])
        d["experts"] = tuple(absolute(e) for e in d["experts"])
        d["objectives"] = [dict(o, task=absolute(o["task"])) for o in d["objectives"]]
        return SearchSpace.model_validate(d)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search space; paths inside resolve against the file's directory."""
    p = Path(path)
    raw = load_yaml(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a search space must be a mapping")
    try:
        return SearchSpace.model_validate(raw).resolved(p.resolve().parent)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"{loc}: {msg}")
        raise ConfigError(f"{p}: invalid search space:\n    " + "\n    ".join(lines),
                          hint="see search_spaces/README.md for the fields") from None
