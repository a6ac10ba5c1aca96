"""The demo job: the built-in zoo merged with a few fixed recipes, each scored on every skill.

Once the search lands, the demo runs a search instead; the fixed recipes stay as baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from evomerge.hfmodel import load_hf_model
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import Recipe, recipe_from_dict
from evomerge.zoo import ensure_zoo, load_zoo_manifest, skill_accuracy, vocab

PER_LAYER_WEIGHTS = ([0.32, 0.18], [0.85, 1.12], [0.72, 1.21])  # add, caesar, length


def fixed_recipes(skills: list[str]) -> dict[str, Recipe]:
    """Baseline merges of the zoo's experts, model paths relative to the zoo directory."""
    experts = [f"expert_{s}" for s in skills]

    def rec(method: str, per_model: dict, params: dict) -> Recipe:
        return recipe_from_dict(
            {
                "merge_method": method,
                "base_model": "base",
                "models": [{"model": e, "parameters": per_model} for e in experts],
                "parameters": params,
            }
        )

    # Per-layer weights ([layer 0 + embeddings, layer 1 + head] per expert): the best of 1500
    # random trials in [0, 1.5] on the dev split of the default zoo as torch 2.13 builds it (the
    # zoo's training is deterministic for one torch build, not across builds: re-tune when the
    # pinned torch changes). Chosen to score the same whether lm_head takes the gradient's first
    # or last value. The search replaces this.
    per_layer = recipe_from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": "base",
            "models": [
                {"model": e, "parameters": {"weight": w}}
                for e, w in zip(experts, PER_LAYER_WEIGHTS, strict=True)
            ],
        }
    )
    return {
        "per_layer_task_arithmetic": per_layer,
        "task_arithmetic_l0.5": rec("task_arithmetic", {"weight": 1.0}, {"lambda": 0.5}),
        "task_arithmetic_l1.0": rec("task_arithmetic", {"weight": 1.0}, {"lambda": 1.0}),
        "ties_d0.5": rec("ties", {"weight": 1.0, "density": 0.5}, {"lambda": 1.0}),
        "dare_ties_d0.5": rec("dare_ties", {"weight": 1.0, "density": 0.5}, {"lambda": 1.0}),
        "linear": recipe_from_dict(
            {"merge_method": "linear", "models": [{"model": e, "parameters": {"weight": 1.0}} for e in experts]}
        ),
    }


def run_demo(workdir: Path, *, log: Callable[..., None] = print, n_items: int = 200):
    """Build (or reuse) the machine's zoo (the cache the tests and ``zoo://`` spaces use, or
    ``$EVOMERGE_ZOO``), merge the fixed recipes under ``workdir``, score all models."""
    workdir = Path(workdir)
    zoo = ensure_zoo(log=log)
    manifest = load_zoo_manifest(zoo)
    skills = manifest["skills"]
    scores: dict[str, dict[str, float]] = dict(manifest["accuracy"])
    (workdir / "recipes").mkdir(parents=True, exist_ok=True)
    for name, recipe in fixed_recipes(skills).items():
        (workdir / "recipes" / f"{name}.yaml").write_text(
            recipe.with_sources({s: str(zoo / s) for s in recipe.source_names()}).to_yaml()
        )
        out = workdir / "merged" / name
        merge_to_dir(recipe.resolved(zoo), out, overwrite=True)
        model = load_hf_model(out)
        scores[name] = {s: skill_accuracy(model, s, vocab(), n=n_items) for s in skills}
        log(f"merged and scored {name}: {out}")
    return scores, skills
