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


def first_front(values: np.ndarray) -> list[int]:
    """Indices of the non-dominated rows (maximizing every column), for archives of millions.

    Repeatedly takes the remaining row with the largest sum (no remaining row can dominate it:
    a dominating row has a larger sum and would have been taken first and removed it) and drops,
    vectorized, every row it dominates or duplicates exactly. Cost O(n d |front|), memory O(n d).
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or len(v) == 0:
        return []
    idx = np.nonzero(np.all(np.isfinite(v), axis=1))[0]
    x = v[idx]
    front: list[int] = []
    while len(x):
        k = int(np.argmax(x.sum(axis=1)))
        p = x[k]
        front.append(int(idx[k]))
        ties = np.all(x == p, axis=1)  # exact duplicates of p are on the front with it
        front += [int(i) for i in idx[ties] if i != idx[k]]
        keep = ~(np.all(p >= x, axis=1)) | ties
        keep &= ~ties
        x, idx = x[keep], idx[keep]
    return sorted(front)


def pareto_front(values: np.ndarray, directions: Sequence[str] | None = None) -> list[int]:
    """The Pareto front (front 0 of :func:`fronts`), computed with :func:`first_front`."""
    v = np.asarray(values, dtype=float)
    if directions is not None:
        v = oriented(v, directions)
    return first_front(v)
