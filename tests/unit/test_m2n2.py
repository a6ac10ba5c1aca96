"""M2N2 (Abrantes et al. 2025): competition, attraction, crossover, archive replacement."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.strategies.base import Evaluated, Genome
from evomerge.strategies.m2n2 import M2N2, attraction, crossover, item_row, shared_fitness


def test_competition_rewards_rare_skills() -> None:
    # A and B both solve item 0; only C solves item 1: C's single item is worth more.
    s = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert shared_fitness(s, 1.0).tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert shared_fitness(s, 0.0).tolist() == [1.0, 1.0, 1.0]  # alpha 0: raw sums (plain GA)
    assert shared_fitness(np.zeros((2, 3)), 1.0).tolist() == [0.0, 0.0]  # zero-guarded


def test_attraction_prefers_partners_strong_where_parent_is_weak() -> None:
    s = np.array([[1, 1, 0, 0], [1, 1, 0, 0.5], [0, 0, 1, 1], [0.2, 0.2, 0.2, 0.2]], dtype=float)
    a = attraction(s, 0)
    assert a[0] == 0 and a[2] == 2.0 and a[1] == 0.5 and a[3] == pytest.approx(0.4)
    assert int(np.argmax(a)) == 2


def test_crossover_split_and_mixing() -> None:
    x1, x2 = np.zeros(6), np.ones(6)
    child = crossover(x1, x2, split=2, w=0.8)
    assert child.tolist() == pytest.approx([0.2, 0.2, 0.8, 0.8, 0.8, 0.8])
    assert crossover(x1, x2, split=3, w=1.0).tolist() == [0, 0, 0, 1, 1, 1]


def test_item_row_maps_loglik_to_probabilities() -> None:
    row = item_row({"b": [0.0, 1.0], "a": [-0.5, 0.0, -2.0]})
    assert row[:3] == pytest.approx(np.exp([-0.5, 0.0, -2.0])) and row[3:].tolist() == [0.0, 1.0]


def test_item_row_counts_an_unscored_item_at_the_candidates_mean_on_its_task() -> None:
    nan = float("nan")
    row = item_row({"a": [1.0, nan, 0.0, 1.0], "b": [nan, nan], "c": [-1.0, nan]})
    # a: scored 1, 0, 1 -> the unscored item counts 2/3; b: nothing scored -> 0; c: exp(-1) for both
    assert row.tolist() == pytest.approx([1.0, 2 / 3, 0.0, 1.0, 0.0, 0.0, np.exp(-1.0), np.exp(-1.0)])
    assert not np.isnan(row).any()


def _scores(x: np.ndarray) -> dict[str, list[float]]:
    # item j is solved when gene j is near 1: experts that are good at different genes
    return {"t": [float(v > 0.7) for v in x]}


def test_m2n2_fills_archive_then_breeds_and_keeps_the_best() -> None:
    def run(seed: int) -> tuple[list[np.ndarray], M2N2]:
        seeds = [np.array([1, 1, 0, 0, 0, 0.0]), np.array([0, 0, 1, 1, 0, 0.0]), np.array([0, 0, 0, 0, 1, 1.0])]
        m = M2N2(6, seeds, archive_size=5, seed=seed)
        xs = []
        for _ in range(12):
            gen = m.ask(3)
            xs += [g.x for g in gen]
            m.tell([Evaluated(g, float(sum(_scores(g.x)["t"])) if g.index != 4 else None,
                              _scores(g.x) if g.index != 4 else {}) for g in gen])
        return xs, m

    xs, m = run(0)
    xs2, _ = run(0)
    assert all(np.array_equal(a, b) for a, b in zip(xs, xs2, strict=True))
    assert np.array_equal(xs[0], [1, 1, 0, 0, 0, 0])  # seeded with the given recipes first
    assert len(m.members) == 5 and 4 not in [i for i, _, _ in m.members]  # failed candidate never joins
    assert all(np.all((x >= 0) & (x <= 1)) for x in xs)
    # attraction + crossover combine complementary members: some child solves more items than any seed (2)
    assert max(s.sum() for _, _, s in m.members) > 2
    assert m.asked == 36 and len(m.archive()) == 5


def test_children_wait_for_two_scored_members() -> None:
    m = M2N2(3, [np.zeros(3)], archive_size=2, seed=0)
    first = m.ask(5)
    assert [g.index for g in first] == [0, 1]  # the archive's two seeds, then nothing until scored
    m.tell([Evaluated(first[0], 1.0, {"t": [1.0, 0.0]})])
    assert m.ask(1) == []
    m.tell([Evaluated(first[1], 1.0, {"t": [0.0, 1.0]})])
    child = m.ask(1)[0]
    assert isinstance(child, Genome) and set(child.parents) == {0, 1}
