"""Pareto fronts: members never dominate each other; every other row is dominated by a member."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evomerge.pareto import dominates, fronts, pareto_front

values = arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 4)),
                elements=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, float("nan")]))


@settings(max_examples=200, deadline=None)
@given(values)
def test_front_members_never_dominate_each_other_and_cover_the_rest(v: np.ndarray) -> None:
    front = pareto_front(v)
    for i in front:
        for j in front:
            assert not dominates(v[i], v[j])
    finite = [i for i in range(len(v)) if np.all(np.isfinite(v[i]))]
    for j in set(finite) - set(front):
        assert any(dominates(v[i], v[j]) for i in front)
    assert all(np.all(np.isfinite(v[i])) for i in front)
    layers = fronts(v)
    assert sorted(i for f in layers for i in f) == finite  # every finite row in exactly one front


def test_directions_flip_minimized_objectives() -> None:
    v = np.array([[1.0, 10.0], [0.5, 1.0], [0.4, 5.0]])
    assert pareto_front(v, ["maximize", "minimize"]) == [0, 1]
    assert pareto_front(v, ["maximize", "maximize"]) == [0]


@settings(max_examples=300, deadline=None)
@given(values)
def test_fast_first_front_equals_nsga2_front_zero(v: np.ndarray) -> None:
    from evomerge.pareto import first_front

    layers = fronts(v)
    assert first_front(v) == (sorted(layers[0]) if layers else [])
