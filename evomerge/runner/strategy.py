"""A search space bound to its strategy: the space's ``strategy:`` settings, seed and budget and
the codec's genome (size, start point, each expert alone) as a plain
:class:`~evomerge.strategies.registry.StrategyConfig`, then built or checked by the registry.

Strategies know nothing of search spaces; this is where the two meet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from evomerge.space.schema import RESTARTS_DEFAULT, SearchSpace
from evomerge.strategies.base import Replayable
from evomerge.strategies.registry import StrategyConfig, build_strategy, check_config

if TYPE_CHECKING:
    from evomerge.space.codec import Codec


def _plain(x: Any) -> tuple[float, ...]:
    """A genome as plain floats (read back as float64, bit for bit)."""
    return tuple(float(v) for v in np.asarray(x, dtype=float).ravel())


def strategy_config(space: SearchSpace, codec: Codec, *, workers: int = 1) -> StrategyConfig:
    """The space's strategy over ``codec``'s box [0, 1]^d, started at ``codec.initial()``;
    ``workers`` is the number of candidates in flight (the run's ``strategy_workers``)."""
    s = space.strategy
    known = tuple(_plain(g) for g in codec.expert_genomes()) if s.name == "m2n2" else ()  # only M2N2 uses them
    return StrategyConfig(dim=codec.dim, x0=_plain(codec.initial()), name=s.name, seed=space.seed,
                          known_genomes=known, popsize=s.popsize, sigma=s.sigma, optimizer=s.optimizer,
                          archive_size=s.archive_size, alpha=s.alpha, mate=s.mate, split_point=s.split_point,
                          **s.m2n2_settings(),
                          options=dict(s.options),
                          budget=space.budget, multi_objective=space.multi_objective, workers=workers,
                          restarts=s.restarts or RESTARTS_DEFAULT, stall=s.stall_window(multi_objective=space.multi_objective))


def make_strategy(space: SearchSpace, codec: Codec, *, workers: int = 1) -> Replayable:
    """The space's strategy over ``codec``'s box, started at ``codec.initial()``.

    ``workers`` is the number of candidates in flight (nevergrad plans for that many)."""
    return build_strategy(strategy_config(space, codec, workers=workers))


def check_strategy(space: SearchSpace, codec: Codec, *, workers: int = 1) -> None:
    """Build the space's strategy over ``codec``'s genome as a run would, and discard it, so that
    a bad name, nevergrad optimizer, pycma option or size is a :class:`ConfigError` naming the
    space before a run exists (see :func:`evomerge.strategies.registry.check_config`)."""
    check_config(strategy_config(space, codec, workers=workers), where=f"search space {space.name!r}")
