"""Non-dominated sorting of objective vectors (Deb et al. 2002, NSGA-II, "fast non-dominated sort").

Objectives are oriented so that larger is better (minimized ones are negated by the caller via
``directions``). Rows with a non-finite value never enter a front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def oriented(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Flip minimized objectives so every column is maximized."""
    signs = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    return np.asarray(values, dtype=float) * signs


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """a dominates b: no worse in every objective and better in one (maximizing)."""
    return bool(np.all(a >= b) and np.any(a > b))


def fronts(values: np.ndarray) -> list[list[int]]:
    """Indices of rows by front (front 0 = the Pareto front), maximizing every column."""
    v = np.asarray(values, dtype=float)
    ok = [i for i in range(len(v)) if np.all(np.isfinite(v[i]))]
    if not ok:
        return []
    x = v[ok]
    ge = (x[:, None, :] >= x[None, :, :]).all(-1)
    gt = (x[:, None, :] > x[None, :, :]).any(-1)
    dom = ge & gt  # dom[i, j]: i dominates j
    count = dom.sum(0)  # how many dominate each row
    out: list[list[int]] = []
    current = [i for i in range(len(ok)) if count[i] == 0]
    while current:
        out.append([ok[i] for i in current])
        nxt = []
        for i in current:
            for j in np.nonzero(dom[i])[0]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(int(j))
        current = sorted(nxt)
    return out


def pareto_front(values: np.ndarray, directions: Sequence[str] | None = None) -> list[int]:
    v = np.asarray(values, dtype=float)
    if directions is not None:
        v = oriented(v, directions)
    f = fronts(v)
    return f[0] if f else []
