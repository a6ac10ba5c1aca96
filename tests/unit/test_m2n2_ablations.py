"""M2N2's ablation settings (Abrantes et al. 2025): competition off is ``alpha: 0``; ``mate``
draws parent 2 by attraction (default), by fitness or uniformly; ``split_point: false`` mixes
whole genomes. Each changes what is asked; the defaults ask, store and hash what they did before
the settings existed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from evomerge.space.schema import SearchSpace, StrategySpec
from evomerge.strategies.base import Evaluated
from evomerge.strategies.m2n2 import M2N2, mate_weights
from evomerge.strategies.registry import StrategyConfig, build_strategy, strategy_from_state


def _drive(m: M2N2, rounds: int = 8) -> list:
    asked = []
    for _ in range(rounds):
        gen = m.ask(2)
        asked += gen
        m.tell([Evaluated(g, float((g.x > 0.7).sum()), {"t": [float(v > 0.7) for v in g.x]}) for g in gen])
    return asked


def _three_seeds() -> list[np.ndarray]:
    return [np.array([1, 1, 0, 0, 0, 0.0]), np.array([0, 0, 1, 1, 0, 0.0]), np.array([0, 0, 0, 0, 1, 1.0])]


def test_defaults_ask_and_store_what_they_did_before_the_ablations() -> None:
    m = M2N2(6, _three_seeds(), archive_size=4, seed=3)
    asked = _drive(m)
    # children 6 and 7 as the strategy asked them before `mate` and `split_point` existed
    assert asked[6].parents == (1, 4)
    assert np.round(asked[6].x, 6).tolist() == [0.846496, 0.026244, 0.993012, 0.944347, 0.050407, 0.033392]
    assert asked[7].parents == (2, 1)
    assert np.round(asked[7].x, 6).tolist() == [0.0, 0.0, 0.300348, 0.300348, 0.699652, 0.699652]
    assert set(m.config()) == {"dim", "seeds", "archive_size", "alpha", "seed"}  # runs store this config
    explicit = M2N2(6, _three_seeds(), archive_size=4, seed=3, mate="attraction", split_point=True)
    assert explicit.config() == m.config()
    assert all(np.array_equal(a.x, b.x) for a, b in zip(asked, _drive(explicit), strict=True))


def _archive(mate: str = "attraction", split_point: bool = True) -> M2N2:
    """Four members: A solves items 0-1, B item 2, C item 0 (a subset of A), D nothing."""
    m = M2N2(4, [np.eye(4)[i] for i in range(4)], archive_size=4, seed=0, mate=mate,  # type: ignore[arg-type]
             split_point=split_point)
    rows = [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    m.tell([Evaluated(g, sum(r), {"t": r}) for g, r in zip(m.ask(4), rows, strict=True)])
    return m


def _pairs(m: M2N2, n: int = 400) -> Counter:
    return Counter(g.parents for g in m.ask(n))  # no tells: every child is drawn from the same archive


def test_mate_attraction_never_pairs_a_parent_with_a_member_weaker_everywhere() -> None:
    pairs = _pairs(_archive())
    assert pairs[(0, 2)] == 0  # C solves nothing A does not: no attraction
    assert pairs[(0, 3)] == 0 and not any(p2 == 3 for _, p2 in pairs)  # D solves nothing
    assert pairs[(0, 1)] > 0


def test_mate_fitness_draws_parent_2_as_parent_1_is_drawn() -> None:
    pairs = _pairs(_archive("fitness"))
    assert pairs[(0, 2)] > 0  # C has fitness, though no attraction to A
    assert not any(3 in p for p in pairs)  # D has no fitness: never a parent
    s = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert mate_weights(s, 0, "fitness", 1.0).tolist() == pytest.approx([1.5, 1.0, 0.5, 0.0])


def test_mate_uniform_ignores_scores() -> None:
    pairs = _pairs(_archive("uniform"))
    assert pairs[(0, 2)] > 0 and pairs[(0, 3)] > 0  # members with no attraction nor fitness are mates too
    assert not any(p1 == 3 for p1, _ in pairs)  # parent 1 is still drawn by fitness
    assert all(p1 != p2 for p1, p2 in pairs)


def test_split_point_off_mixes_whole_genomes_with_one_weight() -> None:
    def spread(split_point: bool) -> list[int]:
        m = M2N2(6, [np.zeros(6), np.ones(6)], archive_size=2, seed=1, split_point=split_point)
        m.tell([Evaluated(g, 1.0, {"t": [1.0, 0.0] if g.index == 0 else [0.0, 1.0]}) for g in m.ask(2)])
        return [len(np.unique(g.x)) for g in m.ask(40)]

    assert set(spread(False)) == {1}  # w x1 + (1 - w) x2 on every gene
    assert max(spread(True)) == 2  # w before the split, 1 - w from it on


def test_alpha_zero_turns_competition_off() -> None:
    def firsts(alpha: float) -> list[float]:
        m = _archive()
        m.alpha = alpha
        counts = Counter()
        for (p1, _), n in _pairs(m, 2000).items():
            counts[p1] += n
        return [counts[i] / 2000 for i in range(4)]

    # shared fitness: C's item 0 is shared with A, so C (0.5) is drawn half as often as B (1.0)
    assert firsts(1.0) == pytest.approx([1.5 / 3, 1 / 3, 0.5 / 3, 0.0], abs=0.04)
    # raw summed scores: B and C solve one item each, A two
    assert firsts(0.0) == pytest.approx([0.5, 0.25, 0.25, 0.0], abs=0.04)


def test_ablations_are_stored_and_replay() -> None:
    m = M2N2(6, _three_seeds(), archive_size=4, seed=3, mate="uniform", split_point=False)
    asked = _drive(m)
    assert m.config()["mate"] == "uniform" and m.config()["split_point"] is False
    again = strategy_from_state(m.state_dict(), m.state_arrays())
    assert isinstance(again, M2N2) and again.mate == "uniform" and not again.split_point
    assert [g.x.tolist() for g in again.ask(3)] == [g.x.tolist() for g in m.ask(3)]
    assert any(not np.array_equal(a.x, b.x) for a, b in zip(asked, _drive(M2N2(6, _three_seeds(), archive_size=4,
                                                                               seed=3)), strict=True))
    with pytest.raises(ValueError, match="mate must be one of"):
        M2N2(2, [], mate="random")  # type: ignore[arg-type]


def test_spec_passes_the_ablations_and_defaults_hash_as_before() -> None:
    spec = StrategySpec(name="m2n2", mate="fitness", split_point=False)
    built = build_strategy(StrategyConfig(dim=3, x0=(0.5, 0.5, 0.5), name="m2n2", mate=spec.mate,
                                          split_point=spec.split_point))
    assert isinstance(built, M2N2) and built.mate == "fitness" and not built.split_point
    with pytest.raises(ValidationError, match="is for M2N2 only; strategy [a-z]+ would ignore it"):
        StrategySpec(name="cmaes", mate="uniform")
    with pytest.raises(ValidationError, match="is for M2N2 only; strategy [a-z]+ would ignore it"):
        StrategySpec(name="random", split_point=False)

    def space(**strategy) -> SearchSpace:
        return SearchSpace.model_validate({"name": "s", "base": "/b", "experts": ["/e"], "vary": {
            "weight": {"low": 0, "high": 1}}, "objectives": [{"task": "/t.yaml"}],
            "strategy": {"name": "m2n2", **strategy}})

    assert space().space_hash == space(mate="attraction", split_point=True).space_hash
    # the hash of a default M2N2 space is the one stored before the settings existed
    assert space().space_hash == "0b423622e909a734"
    assert space(mate="uniform").space_hash != space().space_hash
    assert space(split_point=False).space_hash != space().space_hash


def test_the_papers_attraction_weights_items_few_members_solve_more() -> None:
    """Attraction over the competition's normalized scores (Abrantes et al. 2025; the reference
    code's matchmaker): a mate that solves an item nobody else solves outweighs one that solves
    two items everyone solves; with raw scores it is the other way round."""
    from evomerge.strategies.m2n2 import attraction

    scores = np.array([[0, 0, 0, 1, 1.0],   # parent: solves the common items 3 and 4 only
                       [0, 1, 1, 1, 1.0],   # solves two items (1, 2) three members share
                       [1, 0, 0, 1, 1.0],   # solves item 0, which nobody else does
                       [0, 1, 1, 1, 1.0],
                       [0, 1, 1, 1, 1.0]])
    raw = attraction(scores, 0)
    norm = attraction(scores, 0, 1.0, normalized=True)
    assert raw[1] > raw[2] and norm[2] > norm[1] and raw[0] == norm[0] == 0.0


def test_a_new_run_breeds_once_its_seeds_are_scored_and_an_old_one_fills_with_random_points() -> None:
    seeds = _three_seeds()
    paper = M2N2(6, seeds, archive_size=20, seed=1, attraction="normalized", fill="seeds")
    legacy = M2N2(6, seeds, archive_size=20, seed=1)
    assert paper.config()["attraction"] == "normalized" and "fill" not in legacy.config()
    rng = np.random.default_rng(0)
    for m in (paper, legacy):
        for _ in range(4):
            for g in m.ask(1):
                m.tell([Evaluated(g, 0.5, {"t": rng.random(8).round().tolist()})])
    assert [g.parents != () for g in paper.genomes.values()] == [False, False, False, True]
    assert all(g.parents == () for g in legacy.genomes.values())  # still filling its 20 slots


def test_stored_m2n2_runs_keep_the_mechanics_they_started_with() -> None:
    from evomerge.runner.service import run_space

    space = {"name": "x", "base": "/b", "experts": ["/e"], "vary": {"weight": {"low": 0, "high": 1}},
             "objectives": [{"task": "/t.yaml"}], "strategy": {"name": "m2n2", "archive_size": 5}}
    old = run_space({"space": space})
    assert (old.strategy.attraction, old.strategy.fill) == ("raw", "random")
    new = run_space({"space": {**space, "strategy": {"name": "m2n2", "attraction": "normalized", "fill": "seeds"}}})
    assert (new.strategy.attraction, new.strategy.fill) == ("normalized", "seeds")
    assert run_space({"space": {**space, "strategy": {"name": "cmaes"}}}).strategy.attraction is None


def test_mutation_moves_children_off_the_seeds_hull_and_replays() -> None:
    """``mutation`` adds N(0, mutation^2) to each child's genes (clipped to the box) after the
    crossover's draws: without it every child stays inside the box spanned by its seeds (here
    gene 0 never leaves [0, 0.2]); with it the children leave that hull, and a replay from the
    stored state asks the same genomes."""
    seeds = [np.full(4, 0.2), np.zeros(4)]

    def run(mutation: float) -> tuple[M2N2, list]:
        m = M2N2(4, seeds, archive_size=6, seed=2, attraction="normalized", fill="seeds", mutation=mutation)
        rng = np.random.default_rng(1)
        asked = []
        for _ in range(12):
            for g in m.ask(1):
                asked.append(g)
                m.tell([Evaluated(g, 0.5, {"t": rng.random(6).round().tolist()})])
        return m, asked

    plain, plain_asked = run(0.0)
    mutated, mutated_asked = run(0.1)
    assert "mutation" not in plain.config() and mutated.config()["mutation"] == 0.1
    assert all(0.0 <= g.x[0] <= 0.2 + 1e-12 for g in plain_asked)
    assert any(g.x[0] > 0.2 for g in mutated_asked)
    assert all(((g.x >= 0) & (g.x <= 1)).all() for g in mutated_asked)
    again = strategy_from_state(mutated.state_dict(), mutated.state_arrays())
    assert [g.x.tolist() for g in again.ask(3)] == [g.x.tolist() for g in mutated.ask(3)]
    # the same parents and crossover draws: mutation only adds to what the plain run asked
    assert [g.parents for g in mutated_asked[:3]] == [g.parents for g in plain_asked[:3]]


def test_mutation_is_an_m2n2_setting_stored_with_the_run() -> None:
    from evomerge.runner.service import run_space

    with pytest.raises(ValidationError, match="is for M2N2 only; strategy [a-z]+ would ignore it"):
        StrategySpec(name="cmaes", mutation=0.1)
    with pytest.raises(ValidationError):
        StrategySpec(name="m2n2", mutation=-0.1)
    space = {"name": "x", "base": "/b", "experts": ["/e"], "vary": {"weight": {"low": 0, "high": 1}},
             "objectives": [{"task": "/t.yaml"}], "strategy": {"name": "m2n2"}}
    assert run_space({"space": space}).strategy.mutation == 0.0  # stored before mutation existed: none
    assert run_space({"space": {**space, "strategy": {"name": "m2n2", "mutation": 0.05}}}).strategy.mutation == 0.05
    hashed = SearchSpace.model_validate(space).space_hash
    assert hashed == SearchSpace.model_validate({**space, "strategy": {"name": "m2n2", "mutation": None}}).space_hash
    assert hashed != SearchSpace.model_validate({**space, "strategy": {"name": "m2n2", "mutation": 0.05}}).space_hash


SCORED_SEEDS = [np.full(5, 0.5), np.zeros(5), np.ones(5)]
SCORED_QUALITY = {0: 0.9, 1: 0.2, 2: 0.4}  # seed 0 is the best member; children score below it


def run_scored(**settings: float) -> tuple[M2N2, list, list]:
    """20 asks of a small M2N2 (mutation 0.1 plus ``settings``), each candidate told a score row
    drawn from its quality; also the member with the best mean score at each ask (None before any)."""
    m = M2N2(5, SCORED_SEEDS, archive_size=8, seed=4, attraction="normalized", fill="seeds", mutation=0.1, **settings)
    rng = np.random.default_rng(3)
    asked, best = [], []
    for _ in range(20):
        best.append(m.members[int(np.argmax([row.mean() for _, _, row in m.members]))] if m.members else None)
        for g in m.ask(1):
            asked.append(g)
            q = SCORED_QUALITY.get(g.index, 0.3)
            m.tell([Evaluated(g, q, {"t": (rng.random(10) < q).astype(float).tolist()})])
    return m, asked, best


def assert_asks_as_without_settings(asked: list) -> None:
    """A run without the later settings, told the same scores, asks exactly ``asked``."""
    legacy = M2N2(5, SCORED_SEEDS, archive_size=8, seed=4, attraction="normalized", fill="seeds", mutation=0.1)
    rng = np.random.default_rng(3)
    for g0 in asked:
        (g,) = legacy.ask(1)
        assert g.x.tolist() == g0.x.tolist() and g.parents == g0.parents
        q = SCORED_QUALITY.get(g.index, 0.3)
        legacy.tell([Evaluated(g, q, {"t": (rng.random(10) < q).astype(float).tolist()})])


def test_exploit_breeds_from_the_best_member_and_replays() -> None:
    """``exploit`` p: with probability p a child's first parent is the member with the best mean
    score (its mate still drawn by attraction). exploit 1: every child has the best member as a
    parent; exploit 0 asks exactly what a run without the setting asked (no extra draw); a replay
    from the stored state asks the same genomes."""
    plain, plain_asked, plain_best = run_scored(exploit=0.0)
    always, always_asked, always_best = run_scored(exploit=1.0)
    assert "exploit" not in plain.config() and always.config()["exploit"] == 1.0
    children = [(g, b[0]) for g, b in zip(always_asked, always_best, strict=True) if g.parents]
    assert len(children) == 17 and all(g.parents[0] == b for g, b in children)
    assert any(g.parents[0] != b[0] for g, b in zip(plain_asked, plain_best, strict=True) if g.parents)
    assert_asks_as_without_settings(plain_asked)
    again = strategy_from_state(always.state_dict(), always.state_arrays())
    assert [g.x.tolist() for g in again.ask(3)] == [g.x.tolist() for g in always.ask(3)]


def test_exploit_is_an_m2n2_setting_new_runs_get_and_old_runs_do_not() -> None:
    from evomerge.runner.service import run_space
    from evomerge.space.schema import M2N2_DEFAULTS

    with pytest.raises(ValidationError, match="is for M2N2 only; strategy [a-z]+ would ignore it"):
        StrategySpec(name="cmaes", exploit=0.5)
    with pytest.raises(ValidationError):
        StrategySpec(name="m2n2", exploit=1.5)
    assert StrategySpec(name="m2n2").m2n2_settings()["exploit"] == M2N2_DEFAULTS["exploit"] > 0
    space = {"name": "x", "base": "/b", "experts": ["/e"], "vary": {"weight": {"low": 0, "high": 1}},
             "objectives": [{"task": "/t.yaml"}], "strategy": {"name": "m2n2", "mutation": 0.1}}
    assert run_space({"space": space}).strategy.exploit == 0.0  # stored before exploit existed: none
    hashed = SearchSpace.model_validate(space).space_hash
    assert hashed == SearchSpace.model_validate({**space, "strategy": {**space["strategy"], "exploit": None}}).space_hash
    assert hashed != SearchSpace.model_validate({**space, "strategy": {**space["strategy"], "exploit": 0.5}}).space_hash


def test_refine_steps_from_the_best_member_and_replays() -> None:
    """``refine`` p: with probability p a child is the member with the best mean score plus the
    mutation noise (no crossover: both parents are that member). refine 0 asks exactly what a run
    without the setting asked (no extra draw); it needs mutation; a replay asks the same genomes."""
    plain, plain_asked, _ = run_scored(refine=0.0)
    always, always_asked, always_best = run_scored(refine=1.0)
    assert "refine" not in plain.config() and always.config()["refine"] == 1.0
    children = [(g, b) for g, b in zip(always_asked, always_best, strict=True) if g.parents]
    assert len(children) == 17
    for g, (index, x, _row) in children:  # the best member, moved by the mutation noise only
        assert g.parents == (index, index)
        step = np.asarray(g.x) - x
        assert 0 < np.abs(step).max() < 0.6 and np.all((np.asarray(g.x) >= 0) & (np.asarray(g.x) <= 1))
    assert_asks_as_without_settings(plain_asked)
    again = strategy_from_state(always.state_dict(), always.state_arrays())
    assert [g.x.tolist() for g in again.ask(3)] == [g.x.tolist() for g in always.ask(3)]
    with pytest.raises(ValueError, match="needs mutation"):
        M2N2(5, SCORED_SEEDS, mutation=0.0, refine=0.5)


def test_refine_is_a_new_run_default_with_mutation_and_old_runs_go_on_without_it() -> None:
    from evomerge.runner.service import run_space
    from evomerge.space.schema import M2N2_DEFAULTS

    with pytest.raises(ValidationError, match="is for M2N2 only; strategy [a-z]+ would ignore it"):
        StrategySpec(name="cmaes", refine=0.5)
    with pytest.raises(ValidationError):
        StrategySpec(name="m2n2", refine=-0.1)
    assert StrategySpec(name="m2n2").m2n2_settings()["refine"] == M2N2_DEFAULTS["refine"] == 0.5
    # refine steps by the mutation noise: a space without mutation gets none unless it sets both
    assert StrategySpec(name="m2n2", mutation=0.0).m2n2_settings()["refine"] == 0.0
    assert StrategySpec(name="m2n2", mutation=0.2, refine=0.25).m2n2_settings()["refine"] == 0.25
    assert StrategySpec(name="m2n2", refine=0.5).m2n2_settings()["refine"] == 0.5
    space = {"name": "x", "base": "/b", "experts": ["/e"], "vary": {"weight": {"low": 0, "high": 1}},
             "objectives": [{"task": "/t.yaml"}], "strategy": {"name": "m2n2", "mutation": 0.1, "exploit": 0.5}}
    assert run_space({"space": space}).strategy.refine == 0.0  # stored before refine existed: none
    hashed = SearchSpace.model_validate(space).space_hash
    assert hashed == SearchSpace.model_validate({**space, "strategy": {**space["strategy"], "refine": None}}).space_hash
    assert hashed != SearchSpace.model_validate({**space, "strategy": {**space["strategy"], "refine": 0.5}}).space_hash


def _disjoint_children(additive: float, n: int = 300) -> np.ndarray:
    """n children of two members on disjoint genes, A = (0.6, 0) solving item 0 and B = (0, 0.6)
    solving item 1, no mutation: every child is bred from A and B."""
    m = M2N2(2, [np.array([0.6, 0.0]), np.array([0.0, 0.6])], archive_size=2, seed=5, attraction="normalized",
             fill="seeds", additive=additive)
    m.tell([Evaluated(g, 0.5, {"t": row}) for g, row in zip(m.ask(2), ([1.0, 0.0], [0.0, 1.0]), strict=True)])
    children = m.ask(n)  # no tells: all drawn from the same two members
    assert len(children) == n and all(set(g.parents) == {0, 1} for g in children)
    return np.array([g.x for g in children])


def test_additive_crossover_sums_the_parents_instead_of_interpolating() -> None:
    """``additive`` p: with probability p a crossover's mixing weights a, b are drawn independently
    (a x1 + b x2 before the split, b x1 + a x2 from it). Two parents on disjoint genes show which:
    a split at gene 1 gives (0.6 w, 0.6 w) either way; a child of the whole genomes (split 0) is
    (0.6 b, 0.6 a), whose genes sum to 0.6 under interpolation (b = 1 - a) and anywhere in
    [0, 1.2] under the additive crossover."""
    interpolated = _disjoint_children(0.0)
    whole = ~np.isclose(interpolated[:, 0], interpolated[:, 1])
    assert whole.sum() > 100 and np.allclose(interpolated[whole].sum(axis=1), 0.6)
    added = _disjoint_children(1.0)
    whole = ~np.isclose(added[:, 0], added[:, 1])
    sums = added[whole].sum(axis=1)
    assert whole.sum() > 100 and added.min() >= 0 and added.max() <= 0.6
    # 0.6 (a + b), a + b triangular on [0, 2]: each tail beyond 0.6 +- 0.2 holds 2/9 of the children
    assert (sums > 0.8).mean() > 0.12 and (sums < 0.4).mean() > 0.12
    assert (np.abs(sums - 0.6) > 0.01).mean() > 0.9
    half = _disjoint_children(0.5)
    whole = ~np.isclose(half[:, 0], half[:, 1])
    on_segment = np.isclose(half[whole].sum(axis=1), 0.6).mean()
    assert 0.3 < on_segment < 0.7


def test_additive_is_an_m2n2_setting_that_replays_and_old_runs_go_on_without_it() -> None:
    """additive 0 asks exactly what a run without the setting asked (no extra draw) and is not
    stored; a set share is stored, replays, is refused for another strategy and out of [0, 1]; a
    run stored before it goes on without it; an unset space hashes as before."""
    from evomerge.runner.service import run_space
    from evomerge.space.schema import M2N2_DEFAULTS

    plain, plain_asked, _ = run_scored(additive=0.0)
    assert "additive" not in plain.config()
    assert_asks_as_without_settings(plain_asked)
    some, some_asked, _ = run_scored(additive=0.5)
    assert some.config()["additive"] == 0.5
    assert [g.x.tolist() for g in some_asked] != [g.x.tolist() for g in plain_asked]
    again = strategy_from_state(some.state_dict(), some.state_arrays())
    assert [g.x.tolist() for g in again.ask(3)] == [g.x.tolist() for g in some.ask(3)]
    with pytest.raises(ValueError, match="additive must be a share"):
        M2N2(5, SCORED_SEEDS, additive=1.5)
    with pytest.raises(ValidationError, match="is for M2N2 only; strategy [a-z]+ would ignore it"):
        StrategySpec(name="cmaes", additive=0.5)
    with pytest.raises(ValidationError):
        StrategySpec(name="m2n2", additive=-0.1)
    assert StrategySpec(name="m2n2").m2n2_settings()["additive"] == M2N2_DEFAULTS["additive"]
    assert StrategySpec(name="m2n2", additive=0.25).m2n2_settings()["additive"] == 0.25
    space = {"name": "x", "base": "/b", "experts": ["/e"], "vary": {"weight": {"low": 0, "high": 1}},
             "objectives": [{"task": "/t.yaml"}], "strategy": {"name": "m2n2", "mutation": 0.1, "exploit": 0.5}}
    assert run_space({"space": space}).strategy.additive == 0.0  # stored before additive existed: none
    built = build_strategy(StrategyConfig(dim=2, x0=(0.5, 0.5), name="m2n2", additive=0.5))
    assert built.config()["additive"] == 0.5
    hashed = SearchSpace.model_validate(space).space_hash
    assert hashed == SearchSpace.model_validate({**space, "strategy": {**space["strategy"], "additive": None}}).space_hash
    assert hashed != SearchSpace.model_validate({**space, "strategy": {**space["strategy"], "additive": 0.5}}).space_hash
