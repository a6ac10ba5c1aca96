"""M2N2: competition for per-item resources, attraction-based mate choice, split-point crossover
(Abrantes, Lange & Tang 2025, "Competition and Attraction Improve Model Fusion", GECCO; see
ALGORITHMS.md). Children are recipes: crossover mixes genomes whose genes are ordered by
(layer group, expert, parameter), so a split point is a split between layer blocks.

- Archive of ``archive_size`` members, each with a score per fitness item in [0, 1]
  (log-likelihood items enter as exp(mean log-prob)).
- Competition: z_j = (sum_i s_ij)^alpha, fitness_i = sum_j s_ij / z_j (alpha = 0: a plain GA).
- Parent 1 ~ fitness; parent 2 ~ attraction sum_j max(0, f_kj - f_p1,j) over the normalized
  scores f_kj = s_kj / z_j (``attraction="normalized"``, as the paper's reference code's
  matchmaker; runs created before it use the raw scores s_kj).
- The archive starts with the given recipes (``fill="seeds"``; random points only while fewer
  than two could be scored) and breeds from then on, as the reference code does; runs created
  before that fill all ``archive_size`` slots first (random points after the recipes).
- Crossover: split s ~ U{0..d-1}, weight w ~ U(0, 1): child = w x1 + (1-w) x2 before s and
  (1-w) x1 + w x2 from s on.
- Mutation (``mutation``, std in box units; 0.1 for a new run, 0 for runs created before it):
  N(0, mutation^2) added to each of a child's genes, clipped to the box. The paper fuses trained
  models without it (sec. 3; its reference code mutates only models evolved from scratch); here
  the seeds are a few recipes, and without mutation no child leaves the box they span.
- Exploitation (``exploit``, a share; 0.5 for a new run, 0 for runs created before
  it): with this probability parent 1 is the member with the best mean score instead of the
  fitness draw (its mate is still drawn by attraction: the member strong where the best is
  weak). Competition keeps specialists in the archive and draws them as parents in proportion
  to their shared fitness; without it the best merge found is refined only by chance.
- Refinement (``refine``, a share; 0.5 for a new run with mutation, else 0 unless set; runs
  created before it became a default keep what they stored): with this probability the child is
  no crossover at all but the member with the best mean score plus the mutation noise (a
  (1+1)-ES step from the best, Rechenberg 1973); the other children are bred as above. Crossover
  mixes parents between their genomes, so without it the search steps beyond the best only by
  mutation on top of a mixing weight drawn anew each time.
- Additive crossover (``additive``, a share; 0.5 for a new run, 0 for runs created before it):
  with this probability a crossover draws its two mixing weights independently, child = a x1 + b
  x2 before s and b x1 + a x2 from s on with a, b ~ U(0, 1), instead of w and 1 - w. On a
  task-arithmetic weight (low bound 0, genes proportional to the weight) the child is task
  arithmetic over the parents' merges, B + a (M1 - B) + b (M2 - B) (Ilharco et al. 2023,
  "Editing Models with Task Arithmetic"): it can hold both parents' task vectors at full
  strength, where an interpolation (a + b = 1) trades one parent's weights for the other's and
  never leaves the segment between them. The good merges of both benchmark problems sum the
  experts' weights to more than any interpolation of the seeds reaches. Refinement and the
  additive crossover together are what lifted M2N2 to the bare pycma loop on both benchmark
  problems over twenty seeds; neither alone did (docs/benchmarks.md, sessions 15-18).
- Each scored child joins the archive and the member with the lowest fitness leaves (possibly
  the child).
Randomness for child ``i`` comes from ``SeedSequence([seed, i])``, so asks do not depend on
how a run was interrupted.

Ablations (the paper's sec. 4 ablates each mechanism; here each is a setting, the paper's
behaviour by default): ``alpha = 0`` turns competition off (raw summed scores select and
replace); ``mate="uniform"`` picks parent 2 uniformly among the other members and
``mate="fitness"`` by the same fitness as parent 1 (the reference code's ablation without the
"matchmaker"), instead of by attraction; ``split_point=False`` mixes whole genomes,
child = w x1 + (1-w) x2 with one w ~ U(0, 1) (the paper's crossover without a split point).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from evomerge.strategies.base import Evaluated, Genome, Replayable


def item_row(item_scores: dict[str, list[float]]) -> np.ndarray:
    """All items of all tasks in task-name order, mapped into [0, 1]. An item a cheap fitness
    left unscored (NaN: raced out, or outside an item subset) counts at the candidate's mean over
    the items of that task it was scored on, its expected score: the candidate competes on its
    estimate, not as a zero on every unscored item (a made-up penalty that kept estimated
    candidates out of the archive)."""
    parts = []
    for name in sorted(item_scores):
        s = np.asarray(item_scores[name], dtype=float)
        seen = s[~np.isnan(s)]
        if seen.size and (seen.min() < 0 or seen.max() > 1):  # log-likelihoods: probability of the reference
            s = np.exp(np.minimum(s, 0.0))
            seen = s[~np.isnan(s)]
        if seen.size < s.size:
            s = np.where(np.isnan(s), seen.mean() if seen.size else 0.0, s)
        parts.append(np.clip(s, 0.0, 1.0))
    return np.concatenate(parts) if parts else np.zeros(0)


def shared_fitness(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Competition for resources: fitness_i = sum_j s_ij / (sum_k s_kj)^alpha, zero-guarded."""
    z = scores.sum(axis=0) ** alpha
    z = np.where(z > 0, z, 1.0)
    return (scores / z).sum(axis=1)


def attraction(scores: np.ndarray, parent: int, alpha: float = 1.0, *, normalized: bool = False) -> np.ndarray:
    """How much each member is strong where ``parent`` is weak: sum_j max(0, f_kj - f_pj) with
    f_kj = s_kj / z_j (``normalized``, the paper's and its reference code's: an item few members
    solve counts more; z_j = (sum_k s_kj)^alpha as in the competition) or f_kj = s_kj (raw)."""
    f = scores
    if normalized:
        z = scores.sum(axis=0) ** alpha
        f = scores / np.where(z > 0, z, 1.0)
    gain = np.maximum(0.0, f - f[parent]).sum(axis=1)
    gain[parent] = 0.0
    return gain


def mix(x1: np.ndarray, x2: np.ndarray, split: int, a: float, b: float) -> np.ndarray:
    """a x1 + b x2 before ``split`` and b x1 + a x2 from it (not clipped)."""
    return np.concatenate([a * x1[:split] + b * x2[:split], b * x1[split:] + a * x2[split:]])


def crossover(x1: np.ndarray, x2: np.ndarray, split: int, w: float) -> np.ndarray:
    """The paper's split-point interpolation, mix(w, 1 - w), clipped to the box."""
    return np.clip(mix(x1, x2, split, w, 1 - w), 0.0, 1.0)


MATES = ("attraction", "fitness", "uniform")
Mate = Literal["attraction", "fitness", "uniform"]


def mate_weights(scores: np.ndarray, parent: int, mate: Mate, alpha: float, *, normalized: bool = False) -> np.ndarray:
    """Unnormalized chances of each member to be ``parent``'s mate (``parent`` itself is
    excluded by the caller): its attraction, its shared fitness (as parent 1 is drawn), or equal."""
    if mate == "attraction":
        return attraction(scores, parent, alpha, normalized=normalized)
    if mate == "fitness":
        return shared_fitness(scores, alpha)
    return np.ones(len(scores))


def _best(scores: np.ndarray) -> int:
    """The member (row) with the best mean score (the first of equals)."""
    return int(np.argmax(scores.mean(axis=1)))


def _pick(rng: np.random.Generator, weights: np.ndarray, exclude: int | None = None) -> int:
    w = np.maximum(np.asarray(weights, dtype=float), 0.0)
    if exclude is not None:
        w[exclude] = 0.0
    if w.sum() <= 0:
        choices = [i for i in range(len(w)) if i != exclude]
        return int(rng.choice(choices))
    return int(rng.choice(len(w), p=w / w.sum()))


class M2N2(Replayable):
    name = "m2n2"

    def __init__(self, dim: int, seeds: Sequence[np.ndarray | Sequence[float]], *, archive_size: int = 20,
                 alpha: float = 1.0, seed: int = 0, mate: Mate = "attraction", split_point: bool = True,
                 attraction: str = "raw", fill: str = "random", mutation: float = 0.0,
                 exploit: float = 0.0, refine: float = 0.0, additive: float = 0.0) -> None:
        if mate not in MATES:
            raise ValueError(f"mate must be one of {', '.join(MATES)}, got {mate!r}")
        if attraction not in ("normalized", "raw") or fill not in ("seeds", "random"):
            raise ValueError(f"attraction {attraction!r} / fill {fill!r}: normalized|raw and seeds|random")
        self.dim, self.archive_size, self.alpha, self.seed = dim, archive_size, alpha, seed
        self.mate, self.split_point = mate, split_point
        # the paper's mechanics (new runs, stored with the run): attraction over the competition's
        # normalized scores and an archive seeded with the given recipes only (breeding starts once
        # two are scored); "raw" / "random" are how runs created before them go on
        self.attraction, self.fill = attraction, fill
        self.mutation = float(mutation)
        if not 0.0 <= float(exploit) <= 1.0:
            raise ValueError(f"exploit must be a share in [0, 1], got {exploit!r}")
        self.exploit = float(exploit)
        if not 0.0 <= float(refine) <= 1.0:
            raise ValueError(f"refine must be a share in [0, 1], got {refine!r}")
        if refine and not mutation:
            raise ValueError("refine steps from the best member by the mutation noise: it needs mutation above 0")
        self.refine = float(refine)
        if not 0.0 <= float(additive) <= 1.0:
            raise ValueError(f"additive must be a share in [0, 1], got {additive!r}")
        self.additive = float(additive)
        self.told_count = 0
        self._seeds = [np.clip(np.asarray(s, dtype=float), 0, 1) for s in seeds]
        self.asked = 0
        self.members: list[tuple[int, np.ndarray, np.ndarray]] = []  # (index, genome, item scores)
        self._init_record()

    def config(self) -> dict[str, Any]:
        config = {"dim": self.dim, "seeds": [s.tolist() for s in self._seeds], "archive_size": self.archive_size,
                  "alpha": self.alpha, "seed": self.seed}
        # the ablations are stored only when set, so a default run's stored config (and its replay) is
        # what it was before they existed
        if self.mate != "attraction":
            config["mate"] = self.mate
        if not self.split_point:
            config["split_point"] = False
        if self.attraction != "raw":
            config["attraction"] = self.attraction
        if self.fill != "random":
            config["fill"] = self.fill
        if self.mutation:
            config["mutation"] = self.mutation
        if self.exploit:
            config["exploit"] = self.exploit
        if self.refine:
            config["refine"] = self.refine
        if self.additive:
            config["additive"] = self.additive
        return config

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, index]))

    def _ask(self, n: int) -> list[Genome]:
        out = []
        for _ in range(n):
            i = self.asked
            # fill the archive: given recipes first, then random points (fill "seeds": the recipes,
            # and random points only while fewer than two members could be scored)
            filled = self.archive_size if self.fill == "random" else max(2, len(self._seeds))
            if i < filled or (len(self.members) < 2 and self.told_count == i and self.fill == "seeds"):
                x = self._seeds[i] if i < len(self._seeds) else self._rng(i).random(self.dim)
                out.append(Genome(i, x, generation=0))
            elif len(self.members) >= 2:
                x, p1, p2 = self._breed(self._rng(i))
                out.append(Genome(i, x, generation=i - filled + 1,
                                  parents=(self.members[p1][0], self.members[p2][0])))
            else:
                break  # children need two scored members
            self.asked += 1
        return out

    def _breed(self, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """One child from the archive: (genome, parent 1's and parent 2's member positions)."""
        scores = np.stack([m[2] for m in self.members])
        if self.refine and rng.random() < self.refine:  # drawn only when set: runs without it ask as before
            best = _best(scores)
            x = np.clip(self.members[best][1] + rng.normal(0.0, self.mutation, self.dim), 0.0, 1.0)
            return x, best, best
        p1 = _pick(rng, shared_fitness(scores, self.alpha))
        if self.exploit and rng.random() < self.exploit:  # drawn only when set: runs without it ask as before
            p1 = _best(scores)
        p2 = _pick(rng, mate_weights(scores, p1, self.mate, self.alpha,
                                     normalized=self.attraction == "normalized"), exclude=p1)
        # split 0: the tail is the whole genome, one mixing weight for every gene
        split = int(rng.integers(0, self.dim)) if self.split_point else 0
        w = float(rng.random())
        x1, x2 = self.members[p1][1], self.members[p2][1]
        if self.additive and rng.random() < self.additive:  # drawn only when set: runs without it ask as before
            x = mix(x1, x2, split, w, float(rng.random()))  # clipped below, after the mutation
        else:
            x = crossover(x1, x2, split, w)
        if self.mutation:  # drawn after split and w, so a run without mutation asks what it did before
            x = x + rng.normal(0.0, self.mutation, self.dim)
        return np.clip(x, 0.0, 1.0), p1, p2

    def _tell(self, results: Sequence[Evaluated]) -> None:
        self.told_count += len(results)
        for r in sorted(results, key=lambda r: r.genome.index):
            if r.fitness is None or not r.item_scores:
                continue  # a failed candidate never enters the archive
            row = item_row(r.item_scores)
            if self.members and row.shape != self.members[0][2].shape:
                continue
            self.members.append((r.genome.index, np.asarray(r.genome.x, dtype=float), row))
            if len(self.members) > self.archive_size:
                fit = shared_fitness(np.stack([m[2] for m in self.members]), self.alpha)
                self.members.pop(int(np.argmin(fit)))

    def selection_rank(self) -> int:
        """A child below the archive_size-th best so far rarely enters the archive (entry is by
        shared fitness, so a specialist can: racing against this rank may discard one)."""
        return self.archive_size

    def archive(self) -> list[dict[str, Any]]:
        """The current members: candidate index, genome and per-item score row."""
        return [{"index": i, "x": x.tolist(), "scores": s.tolist()} for i, x, s in self.members]
