"""`evomerge plot`: fitness over evaluations (with the best so far) and the Pareto front; raced-out
candidates (their fitness an estimate on part of the items) drawn hollow, apart from exact ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evomerge.store import CandidateRow


def fitness_series(rows: Sequence[CandidateRow]) -> dict[str, list[CandidateRow]]:
    """The fitness panel's groups: ``exact`` (scored on every item; the best-so-far line follows
    them), ``raced`` (raced out: an estimate), ``failed`` (no fitness)."""
    out: dict[str, list[CandidateRow]] = {"exact": [], "raced": [], "failed": []}
    for r in rows:
        out["failed" if r.fitness is None else "exact" if r.fidelity == "exact" else "raced"].append(r)
    return out


def plot_run(run: str, out: str | Path, *, db: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evomerge import api

    with api.open_store(db) as store:
        info = store.get_run(run)
        rows = [r for r in store.candidates(info.id) if r.status in ("COMPLETE", "INVALID", "TIMEOUT", "FAILED")]
        front = {r.index for r in store.pareto(info.id)}
    names = [o["name"] for o in info.objectives]
    fig, axes = plt.subplots(1, 2 if len(names) >= 2 else 1, figsize=(11 if len(names) >= 2 else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    groups = fitness_series(rows)
    ok = groups["exact"] + groups["raced"]
    exact = groups["exact"]
    idx = np.array([r.index for r in exact])
    fit = np.array([r.fitness for r in exact])
    if exact:
        ax.scatter(idx, fit, s=10, alpha=0.5, label="candidate")
        order = np.argsort(idx)
        ax.plot(idx[order], np.maximum.accumulate(fit[order]), color="C3", label="best so far (exact)")
    if groups["raced"]:
        ax.scatter([r.index for r in groups["raced"]], [r.fitness for r in groups["raced"]], s=14,
                   facecolors="none", edgecolors="C0", alpha=0.6, label="raced out or subset (estimate)")
    bad = [r.index for r in groups["failed"]]
    if bad and ok:
        ax.scatter(bad, [min(r.fitness for r in ok)] * len(bad), marker="x", color="grey", label="failed / invalid")
    ax.set_xlabel("evaluation (candidate index)")
    ax.set_ylabel("fitness (weighted sum)")
    ax.set_title(f"{info.name}: fitness over evaluations")
    ax.legend(loc="lower right", fontsize=8)
    if len(names) >= 2:
        ax = axes[0][1]
        a, b = names[0], names[1]
        pts = [r for r in ok if r.objectives and a in r.objectives and b in r.objectives]
        ax.scatter([r.objectives[a] for r in pts], [r.objectives[b] for r in pts], s=10, alpha=0.4, label="candidate")
        fr = [r for r in pts if r.index in front]
        ax.scatter([r.objectives[a] for r in fr], [r.objectives[b] for r in fr], s=30, color="C3",
                   label=f"Pareto front over all {len(names)} objectives")
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        ax.set_title("objectives")
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
