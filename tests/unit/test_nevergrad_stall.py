"""nevergrad's stall rule (issue 21): a fresh optimizer from a seeded uniform point of the box
once the current one's best has not improved for ``stall`` evaluations; replayable; the default
of a new single-objective run, off for runs stored before it and for multi-objective runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.strategies.base import Evaluated
from evomerge.strategies.nevergrad import Nevergrad

pytestmark = pytest.mark.filterwarnings("ignore")  # nevergrad and scipy warn about bounds and COBYLA's rhoend

SPACE: dict[str, Any] = {"name": "x", "base": "/b", "experts": ["/e1", "/e2"], "vary": {"weight": {"low": 0, "high": 1}},
                         "objectives": [{"task": "/t.yaml"}, {"task": "/u.yaml"}]}


def drive(s: Nevergrad, fitness, n: int, batch: int = 1) -> list[np.ndarray]:
    xs: list[np.ndarray] = []
    while s.asked < n:
        got = s.ask(batch)
        xs += [g.x for g in got]
        s.tell([Evaluated(g, fitness(g)) for g in reversed(got)])
    return xs


def test_a_flat_run_restarts_after_stall_evaluations_from_its_seeded_point() -> None:
    """One evaluation sets the optimizer's best, ``stall`` more without a better one start a fresh
    optimizer whose first ask is restart 1's uniform point (default_rng([seed, 1])); a fitness
    that keeps improving never restarts; without ``stall`` a flat run never restarts."""
    s = Nevergrad(4, np.full(4, 0.5), optimizer="Cobyla", budget=30, seed=3, stall=5)
    xs = drive(s, lambda g: 0.25, 6)
    assert s.restarts == 1 and np.array_equal(xs[0], np.full(4, 0.5))
    nxt = s.ask(1)[0]
    assert np.array_equal(nxt.x, np.random.default_rng([3, 1]).uniform(0.0, 1.0, 4)) and nxt.index == 6
    s.tell([Evaluated(nxt, 0.25)])
    drive(s, lambda g: 0.25, 30)
    assert s.restarts == 4  # every 6 evaluations: one sets the fresh optimizer's best, 5 flat
    assert s.asked == 30 and len(s.told) == 30

    climbing = Nevergrad(4, np.full(4, 0.5), optimizer="Cobyla", budget=30, seed=3, stall=5)
    drive(climbing, lambda g: float(g.index), 30)
    assert climbing.restarts == 0
    never = Nevergrad(4, np.full(4, 0.5), optimizer="Cobyla", budget=30, seed=3)
    drive(never, lambda g: 0.25, 30)
    assert never.restarts == 0


def test_restarts_replay_and_late_tells_go_to_the_optimizer_that_asked() -> None:
    """With three in flight a restart can come between the tells of one batch: the rest of the
    batch goes to the optimizer that asked it (and does not count for the fresh one). Rebuilding
    from the state replays the same restarts and gives the same next asks, also after failures."""
    target = np.array([0.9, 0.1, 0.7, 0.3, 0.5])

    def fitness(g) -> float | None:
        return None if g.index == 4 else -float(np.sum((g.x - target) ** 2))

    s = Nevergrad(5, np.full(5, 0.5), optimizer="TwoPointsDE", budget=120, num_workers=3, seed=7, stall=4)
    retired: list[tuple[Any, int]] = []  # each replaced optimizer and how many tells it had then
    restart = s._restart

    def watched_restart() -> None:
        retired.append((s.opt, s.opt.num_tell))
        restart()

    s._restart = watched_restart  # type: ignore[method-assign]
    drive(s, fitness, 90, batch=3)
    assert s.restarts >= 2 and len(retired) == s.restarts
    optimizers = [o for o, _ in retired] + [s.opt]
    # every candidate went to the optimizer that asked it (each was told as many as it asked), and
    # some replaced optimizers were told candidates after a fresh one had taken over
    assert all(o.num_ask == o.num_tell for o in optimizers) and sum(o.num_tell for o in optimizers) == 90
    assert any(o.num_tell > then for o, then in retired)
    rebuilt = Nevergrad.from_state(s.state_dict(), s.state_arrays())
    assert rebuilt.restarts == s.restarts
    a, b = s.ask(3), rebuilt.ask(3)
    assert all(np.array_equal(x.x, y.x) for x, y in zip(a, b, strict=True))


def test_bad_stall_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="nevergrad stall 0 is out of range"):
        Nevergrad(3, np.full(3, 0.5), optimizer="Cobyla", stall=0)
    with pytest.raises(ConfigError, match="nevergrad stall judges a single fitness"):
        Nevergrad(3, np.full(3, 0.5), optimizer="DE", stall=5, multi_objective=True)


def test_a_new_nevergrad_run_gets_the_default_window_and_old_runs_go_on_without() -> None:
    """A new single-objective run restarts after NEVERGRAD_STALL flat evaluations; ``stall: 0``
    turns the rule off; a multi-objective run has no rule and refuses one; a run stored before
    the rule (``stall`` null or absent) resumes without it; a space that leaves ``stall`` out
    hashes as before."""
    from evomerge.runner.service import run_space
    from evomerge.space.schema import NEVERGRAD_STALL, SearchSpace, StrategySpec

    assert StrategySpec(name="nevergrad").stall_window() == NEVERGRAD_STALL
    assert StrategySpec(name="nevergrad", stall=0).stall_window() is None
    assert StrategySpec(name="nevergrad", stall=7).stall_window() == 7
    assert StrategySpec(name="nevergrad").stall_window(multi_objective=True) is None
    assert StrategySpec(name="random").stall_window() is None and StrategySpec(name="m2n2").stall_window() is None
    mo = {**SPACE, "multi_objective": True, "strategy": {"name": "nevergrad", "stall": 20}}
    with pytest.raises(ValueError, match="strategy.stall judges a single fitness"):
        SearchSpace.model_validate(mo)
    # stored before session 20: stall null (sessions 13-19), absent (before), or a number nevergrad ignored
    # (5 stored for every strategy before session 13; a space's own value later), single- or multi-objective
    for before in ({"name": "nevergrad", "optimizer": "NGOpt", "stall": None, "restarts": "ipop"},
                   {"name": "nevergrad", "optimizer": "NGOpt"},
                   {"name": "nevergrad", "optimizer": "NGOpt", "stall": 5, "restarts": "ipop"}):
        for objectives in ({}, {"multi_objective": True}):
            resumed = run_space({"space": {**SPACE, **objectives, "strategy": before}})
            assert resumed.strategy.stall == 0 and resumed.strategy.stall_window() is None
            assert resumed.strategy.restarts is None  # a CMA-ES setting, stored for every strategy before session 19
    created = run_space({"space": {**SPACE, "strategy": {"name": "nevergrad", "stall": 60}}, "nevergrad_stall": 60})
    assert created.strategy.stall_window() == 60
    # the hash of a space that leaves stall out, as evomerge computed it before the rule (3cd469a)
    assert SearchSpace.model_validate({**SPACE, "strategy": {"name": "nevergrad"}}).space_hash == "186d76a1b7729c8b"

