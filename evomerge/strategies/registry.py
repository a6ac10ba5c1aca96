"""Strategy by name: a fresh one for a search space, or one rebuilt from its saved state."""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.space.schema import SearchSpace
from evomerge.strategies.base import Replayable

NAMES = ("cmaes", "nevergrad", "m2n2", "random")


def _classes() -> dict[str, type[Replayable]]:
    from evomerge.strategies.cmaes import CMAES
    from evomerge.strategies.m2n2 import M2N2
    from evomerge.strategies.nevergrad import Nevergrad
    from evomerge.strategies.random import RandomSearch

    return {"cmaes": CMAES, "nevergrad": Nevergrad, "m2n2": M2N2, "random": RandomSearch}


def make_strategy(space: SearchSpace, codec: Any, *, workers: int = 1) -> Replayable:
    """The space's strategy over ``codec``'s box, started at ``codec.initial()``.

    ``workers`` is the number of evaluation slots (nevergrad plans for that many in flight)."""
    s = space.strategy
    x0 = codec.initial()
    if s.name == "random":
        from evomerge.strategies.random import RandomSearch

        return RandomSearch(codec.dim, x0, seed=space.seed)
    if s.name == "m2n2":
        from evomerge.strategies.m2n2 import M2N2

        return M2N2(codec.dim, [x0, *codec.expert_genomes()], archive_size=s.archive_size, alpha=s.alpha,
                    seed=space.seed)
    if s.name == "nevergrad":
        from evomerge.strategies.nevergrad import Nevergrad

        return Nevergrad(codec.dim, x0, optimizer=s.optimizer, budget=space.budget,
                         num_workers=max(s.popsize or 1, workers), seed=space.seed,
                         multi_objective=space.multi_objective)
    from evomerge.strategies.cmaes import CMAES

    return CMAES(codec.dim, x0, seed=space.seed, sigma=s.sigma, popsize=s.popsize, options=s.options,
                 inject=[x0])


def strategy_from_state(state: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> Replayable:
    """Rebuild a strategy saved with ``state_dict``/``state_arrays`` (replaying its events)."""
    name = state.get("name")
    classes = _classes()
    if name not in classes:
        raise ConfigError(f"strategy state names an unknown strategy {name!r}", hint=f"known: {', '.join(NAMES)}")
    return classes[name].from_state(state, arrays)
