"""Strategy by name: a fresh one from a plain :class:`StrategyConfig`, or one rebuilt from its
saved state.

Strategies import only the ground floor: nothing here knows search spaces. The runner turns a
search space and its genome codec into a ``StrategyConfig`` (:mod:`evomerge.runner.strategy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from evomerge.errors import ConfigError, EvomergeError
from evomerge.strategies.base import Replayable

NAMES = ("cmaes", "nevergrad", "m2n2", "random")
# CMA-ES keeps a dim x dim covariance (and its eigendecomposition): past this many genes only its
# separable (diagonal) form is sensible
MAX_CMAES_FULL_DIM = 2048


@dataclass(frozen=True)
class StrategyConfig:
    """Everything a fresh strategy is built from, as plain values.

    The strategy's own settings (``name``, ``popsize``, ``sigma``, ``optimizer``, ``archive_size``,
    ``alpha``, ``mate``, ``split_point``, pycma ``options``, ``budget``, ``multi_objective``), the
    genome it searches (``dim`` genes in the box [0, 1]^dim, started at ``x0``; ``known_genomes``
    are known good points such as each expert alone, which M2N2 seeds its archive with), the
    ``seed`` and ``workers``, the candidates the driver keeps in flight (nevergrad plans for that
    many; an optimizer built for fewer can block on an ask)."""

    dim: int
    x0: tuple[float, ...]
    name: str = "cmaes"
    seed: int = 0
    known_genomes: tuple[tuple[float, ...], ...] = ()
    popsize: int | None = None
    sigma: float = 0.25
    optimizer: str = "NGOpt"
    archive_size: int = 20
    alpha: float = 1.0
    mate: Literal["attraction", "fitness", "uniform"] = "attraction"  # m2n2: how parent 2 is drawn ("attraction", "fitness", "uniform")
    split_point: bool = True  # m2n2: false mixes whole genomes with one weight
    attraction: str = "raw"  # m2n2: "normalized" (the paper's) or "raw" (runs created before it)
    fill: str = "random"  # m2n2: "seeds" (the paper's) or "random" (runs created before it)
    mutation: float = 0.0  # m2n2: std of the Gaussian added to a child's genes (box units)
    exploit: float = 0.0  # m2n2: share of children whose first parent is the best member
    refine: float = 0.0  # m2n2: share of children that are the best member plus mutation noise (no crossover)
    additive: float = 0.0  # m2n2: share of crossovers with independent mixing weights (task arithmetic of the parents)
    options: dict[str, Any] = field(default_factory=dict)
    budget: int = 64
    multi_objective: bool = False
    workers: int = 1
    restarts: str = "none"  # cmaes: "ipop" restarts a stalled run with twice the population
    # cmaes: generations, nevergrad: evaluations without a better best that count as stalled (None: no such rule)
    stall: int | None = None


def _classes() -> dict[str, type[Replayable]]:
    from evomerge.strategies.cmaes import CMAES
    from evomerge.strategies.m2n2 import M2N2
    from evomerge.strategies.nevergrad import Nevergrad
    from evomerge.strategies.random import RandomSearch

    return {"cmaes": CMAES, "nevergrad": Nevergrad, "m2n2": M2N2, "random": RandomSearch}


def build_strategy(config: StrategyConfig) -> Replayable:
    """The configured strategy over ``config.dim`` genes, started at ``config.x0``."""
    c = config
    x0 = np.asarray(c.x0, dtype=float)
    if c.name == "random":
        from evomerge.strategies.random import RandomSearch

        return RandomSearch(c.dim, x0, seed=c.seed)
    if c.name == "m2n2":
        from evomerge.strategies.m2n2 import M2N2

        return M2N2(c.dim, [x0, *(np.asarray(g, dtype=float) for g in c.known_genomes)],
                    archive_size=c.archive_size, alpha=c.alpha, seed=c.seed, mate=c.mate,
                    split_point=c.split_point, attraction=c.attraction, fill=c.fill,
                    mutation=c.mutation, exploit=c.exploit, refine=c.refine,
                    additive=c.additive)
    if c.name == "nevergrad":
        from evomerge.strategies.nevergrad import Nevergrad

        return Nevergrad(c.dim, x0, optimizer=c.optimizer, budget=c.budget,
                         num_workers=max(c.popsize or 1, c.workers), seed=c.seed,
                         multi_objective=c.multi_objective, stall=c.stall)
    from evomerge.strategies.cmaes import CMAES

    return CMAES(c.dim, x0, seed=c.seed, sigma=c.sigma, popsize=c.popsize, options=c.options, inject=[x0],
                 restarts=c.restarts, stall=c.stall)


def check_config(config: StrategyConfig, *, where: str = "strategy") -> None:
    """Build the configured strategy as a run would, and discard it, so that a bad name, nevergrad
    optimizer, pycma option or size is a :class:`ConfigError` (prefixed with ``where``) before a run
    exists. A CMA-ES over more than MAX_CMAES_FULL_DIM genes needs ``options: {CMA_diagonal: true}``."""
    c = config
    if c.name not in NAMES:
        raise ConfigError(f"unknown strategy {c.name!r}", hint=f"use one of {', '.join(NAMES)}")
    if c.name == "cmaes" and c.dim > MAX_CMAES_FULL_DIM and c.options.get("CMA_diagonal") is not True:
        raise ConfigError(f"{where}: {c.dim} genes is more than CMA-ES's full "
                          f"covariance allows ({MAX_CMAES_FULL_DIM} genes; it would hold a {c.dim} x "
                          f"{c.dim} matrix)",
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
                build_strategy(c)
            except EvomergeError:
                raise
            except (ValueError, TypeError, KeyError) as err:  # e.g. pycma's "xyz is not a valid option"
                problem = (str(err).strip().splitlines() or [type(err).__name__])[0]
            gc.collect()
    finally:
        sys.unraisablehook = hook
    if problem is not None:
        hint = {"cmaes": "fix strategy.options: they are passed to pycma, so use its option names",
                "nevergrad": "pick an optimizer that runs candidates in parallel (NGOpt, TwoPointsDE, DE, PSO, "
                             "CMA, ...): the driver keeps lag candidates in flight (2 x workers, at least 2)"}.get(c.name, "fix strategy: in the space")
        label = f"nevergrad {c.optimizer}" if c.name == "nevergrad" else c.name
        raise ConfigError(f"{where}: strategy {label} cannot start: {problem}", hint=hint)


def strategy_from_state(state: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> Replayable:
    """Rebuild a strategy saved with ``state_dict``/``state_arrays`` (replaying its events)."""
    name = state.get("name")
    classes = _classes()
    if name not in classes:
        raise ConfigError(f"strategy state names an unknown strategy {name!r}", hint=f"known: {', '.join(NAMES)}")
    return classes[name].from_state(state, arrays)
