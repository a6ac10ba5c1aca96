"""Strategy by name: a fresh one for a search space, or one rebuilt from its saved state."""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.errors import ConfigError, EvomergeError
from evomerge.space.schema import SearchSpace
from evomerge.strategies.base import Replayable

NAMES = ("cmaes", "nevergrad", "m2n2", "random")
# CMA-ES keeps a dim x dim covariance (and its eigendecomposition): past this many genes only its
# separable (diagonal) form is sensible
MAX_CMAES_FULL_DIM = 2048


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


def check_strategy(space: SearchSpace, codec: Any, *, workers: int = 1) -> None:
    """Build the space's strategy over ``codec``'s genome as a run would, and discard it, so that
    a bad name, nevergrad optimizer, pycma option or size is a :class:`ConfigError` before a run
    exists. A CMA-ES over more than MAX_CMAES_FULL_DIM genes needs ``options: {CMA_diagonal: true}``."""
    s = space.strategy
    if s.name not in NAMES:
        raise ConfigError(f"unknown strategy {s.name!r}", hint=f"use one of {', '.join(NAMES)}")
    if s.name == "cmaes" and codec.dim > MAX_CMAES_FULL_DIM and s.options.get("CMA_diagonal") is not True:
        raise ConfigError(f"search space {space.name!r}: {codec.dim} genes is more than CMA-ES's full "
                          f"covariance allows ({MAX_CMAES_FULL_DIM} genes; it would hold a {codec.dim} x "
                          f"{codec.dim} matrix)",
                          hint="add `options: {CMA_diagonal: true}` to the strategy (separable CMA-ES), use "
                               "layer_groups or fewer genes, or pick nevergrad / m2n2 / random")
    import gc
    import sys
    import warnings

    problem = None
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _unraisable: None  # a half-built optimizer's __del__ may fail (nevergrad's)
    try:
        with warnings.catch_warnings():  # the run itself shows the libraries' warnings; this build is thrown away
            warnings.simplefilter("ignore")
            try:
                make_strategy(space, codec, workers=workers)
            except EvomergeError:
                raise
            except (ValueError, TypeError, KeyError) as err:  # e.g. pycma's "xyz is not a valid option"
                problem = (str(err).strip().splitlines() or [type(err).__name__])[0]
            gc.collect()
    finally:
        sys.unraisablehook = hook
    if problem is not None:
        hint = {"cmaes": "fix strategy.options: they are passed to pycma, so use its option names",
                "nevergrad": "pick an optimizer that runs candidates in parallel when workers or popsize exceed 1 "
                             "(NGOpt, TwoPointsDE, DE, PSO, CMA, ...)"}.get(s.name, "fix strategy: in the space")
        label = f"nevergrad {s.optimizer}" if s.name == "nevergrad" else s.name
        raise ConfigError(f"search space {space.name!r}: strategy {label} cannot start: {problem}", hint=hint)


def strategy_from_state(state: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> Replayable:
    """Rebuild a strategy saved with ``state_dict``/``state_arrays`` (replaying its events)."""
    name = state.get("name")
    classes = _classes()
    if name not in classes:
        raise ConfigError(f"strategy state names an unknown strategy {name!r}", hint=f"known: {', '.join(NAMES)}")
    return classes[name].from_state(state, arrays)
