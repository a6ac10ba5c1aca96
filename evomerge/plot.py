"""`evomerge plot`: fitness over evaluations (with the best so far) and the Pareto front."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
    ok = [r for r in rows if r.fitness is not None]
    idx = np.array([r.index for r in ok])
    fit = np.array([r.fitness for r in ok])
    if ok:
        ax.scatter(idx, fit, s=10, alpha=0.5, label="candidate")
        order = np.argsort(idx)
        ax.plot(idx[order], np.maximum.accumulate(fit[order]), color="C3", label="best so far")
    bad = [r.index for r in rows if r.fitness is None]
    if bad and ok:
        ax.scatter(bad, [fit.min()] * len(bad), marker="x", color="grey", label="failed / invalid")
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
