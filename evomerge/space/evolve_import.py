"""mergekit-evolve genome configs as evomerge search spaces (``evomerge import-evolve``).

mergekit-evolve (deprecated, mergekit#692) searches a genome of shape (layer groups, models,
parameter sets, merge parameters) with pycma: ``layer_granularity`` layers per group (0: one
group), one parameter set per entry of ``filters`` plus one for the other tensors, and per model
a ``weight`` (and a ``density`` for TIES / DARE-TIES). A genome decodes to per-group mergekit
``slices`` (the embeddings read the first group's values, the final norm and LM head the last
group's), or with ``smooth: true`` to per-model gradients with one anchor per group. Its CMA-ES
starts at weight 1/n and density 1 with sigma0 = 1/6 (``--sigma0``), pycma's default population
(``--force-population-size``) and ``--max-fevals`` (100) evaluations; its fitness is the weighted
sum of lm-eval task metrics.

The space written here searches the same genome: the same number of genes with the same
meaning, in evomerge's order (group, parameter set, model, parameter). Genes live in the box
[0, 1] mapped to bounds: ``weight`` to [0, W] (or [-W, W] with ``allow_negative_weights``; W from
``--weight-bound``, 1 by default: mergekit-evolve's weights are unbounded and abs()-folded),
``density`` to [0, 1] (mergekit-evolve clamps it there). sigma0 is rescaled to box units by the
weight's span, and the density genes keep sigma0 itself through pycma's ``CMA_stds`` when the
spans differ. Settings evomerge cannot carry over are refused by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.safe_yaml import load_yaml

EVOLVE_METHODS = {"linear": ("weight",), "task_arithmetic": ("weight",), "ties": ("weight", "density"),
                  "dare_ties": ("weight", "density")}
NORMALIZED_BY_DEFAULT = {"ties", "dare_ties", "linear"}  # mergekit-evolve's `normalize: null`
GENOME_KEYS = {"models", "merge_method", "base_model", "tokenizer_source", "layer_granularity", "normalize",
               "allow_negative_weights", "filters", "smooth"}
TOP_KEYS = {"genome", "tasks", "limit", "num_fewshot", "shuffle", "random_init", "apply_chat_template",
            "fewshot_as_multiturn"}
SIGMA0 = 1 / 6  # mergekit-evolve's --sigma0 default
MAX_FEVALS = 100  # mergekit-evolve's --max-fevals default


def is_evolve_config(doc: Any) -> bool:
    """A mergekit-evolve config (``genome:`` and ``tasks:``) rather than an evomerge space."""
    return isinstance(doc, dict) and "genome" in doc and "tasks" in doc


def _model_path(ref: Any, where: str) -> str:
    if isinstance(ref, dict):
        if set(ref) - {"model"} or not isinstance(ref.get("model"), str | dict):
            raise ConfigError(f"{where}: {ref!r} is a model reference evomerge cannot carry over (LoRA adapters, "
                              "overrides)", hint="name a model directory; merge a LoRA into its model first")
        ref = ref["model"]["path"] if isinstance(ref["model"], dict) else ref["model"]
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{where}: expected a model path, got {ref!r}", hint="give a local model directory")
    if "+" in ref:
        raise ConfigError(f"{where}: {ref} is a model with a LoRA adapter (model+lora), which evomerge cannot "
                          "carry over", hint="merge the adapter into the model first and name that directory")
    return ref


def _absolute(path: str, root: Path) -> str:
    """A model path relative to the config's directory made absolute (the space may be written elsewhere)."""
    return path if Path(path).is_absolute() else str((root / path).resolve())


def _num_layers(path: str) -> int:
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"model {path}: no config.json there (a Hugging Face hub name?); the layer groups need "
                          "the model's layer count",
                          hint="rewrite the config's model paths to local model directories (nothing is downloaded)")
    n = json.loads(cfg.read_text()).get("num_hidden_layers")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"model {path}: config.json has no num_hidden_layers", hint="name a decoder model")
    return n


def _task_ref(name: str, search_paths: list[Path]) -> str:
    """A task name, or the task YAML declaring that name in one of ``search_paths`` (mergekit-evolve's
    ``--task-search-path``), so the space is self-contained."""
    for root in search_paths:
        for f in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
            try:
                doc = load_yaml(f)
            except ConfigError:
                continue
            if isinstance(doc, dict) and doc.get("task") == name:
                return str(f.resolve())
    return name


def convert(doc: Any, *, root: Path, name: str, max_fevals: int = MAX_FEVALS, sigma0: float = SIGMA0,
            seed: int = 0, popsize: int | None = None, weight_bound: float = 1.0,
            task_search_paths: list[Path] | None = None) -> dict[str, Any]:
    """The evomerge space (a dict for YAML) that searches ``doc``'s genome; ``root`` is the config's
    directory (relative model paths stay relative to it, as the space file is written beside it or
    with absolute paths)."""
    if not is_evolve_config(doc):
        raise ConfigError("not a mergekit-evolve config (it needs `genome:` and `tasks:`)",
                          hint="pass the evol_merge_config.yml that mergekit-evolve reads")
    unknown = sorted(set(doc) - TOP_KEYS)
    g = doc["genome"]
    if not isinstance(g, dict):
        raise ConfigError("genome: must be a mapping", hint="see mergekit's docs/evolve.md")
    unknown += [f"genome.{k}" for k in sorted(set(g) - GENOME_KEYS)]
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in the mergekit-evolve config",
                          hint="remove them (mergekit-evolve's config keys: genome, tasks, limit, num_fewshot, ...)")
    method = g.get("merge_method")
    if method == "slerp":
        raise ConfigError("genome.merge_method slerp cannot be carried over: mergekit-evolve decodes a slerp genome "
                          "by picking the two heaviest models per group (a top-2 and softmax over the genes)",
                          hint="search slerp's t directly: write an evomerge space with merge_method: slerp and "
                               "vary: {t: ...}")
    if method not in EVOLVE_METHODS:
        raise ConfigError(f"genome.merge_method {method!r} is not one mergekit-evolve searches",
                          hint=f"use one of {sorted(EVOLVE_METHODS)}")
    for key, why in (("shuffle", "evomerge scores lm-eval's documents in lm-eval's order (with `limit`, the first N)"),
                     ("random_init", "evomerge's CMA-ES starts at each parameter's init (weight 1/n, density 1), "
                                     "and its IPOP restarts start from random points")):
        if doc.get(key):
            raise ConfigError(f"{key}: true cannot be carried over ({why})", hint=f"drop `{key}:` from the config")
    models = g.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError("genome.models: a non-empty list of models is required", hint="list the models to merge")
    experts = [_absolute(_model_path(m, f"genome.models[{i}]"), root) for i, m in enumerate(models)]
    base = g.get("base_model")
    if base is None:
        if method != "linear":
            raise ConfigError(f"genome.base_model is required for {method}", hint="name the base model")
        base_path = experts[0]
    else:
        base_path = _absolute(_model_path(base, "genome.base_model"), root)
    if method == "linear" and base is not None and base_path not in experts:
        raise ConfigError("genome: a linear merge with a base_model outside `models` cannot be carried over "
                          "(mergekit-evolve would merge the base without a weight)",
                          hint="list the base model under `models:` too, or drop base_model")
    layers = _num_layers(base_path)
    gran = int(g.get("layer_granularity") or 0)
    if gran < 0 or (gran > 0 and layers % gran):
        raise ConfigError(f"genome.layer_granularity {gran} does not divide the model's {layers} layers",
                          hint="pick a divisor of the layer count (mergekit-evolve requires it too)")
    groups = layers // gran if gran > 0 else 1
    filters = [str(f) for f in (g.get("filters") or [])]
    smooth = bool(g.get("smooth", False))
    negative = bool(g.get("allow_negative_weights", False))
    params = EVOLVE_METHODS[method]
    n = len(experts)
    low = -weight_bound if negative else 0.0
    vary: dict[str, Any] = {"weight": {"low": low, "high": weight_bound, "init": 1.0 / n}}
    if "density" in params:
        vary["density"] = {"low": 0.0, "high": 1.0, "init": 1.0}
    normalize = g.get("normalize")
    fixed: dict[str, Any] = {"normalize": bool(method in NORMALIZED_BY_DEFAULT if normalize is None else normalize)}
    if method != "linear":
        fixed["int8_mask"] = True  # as mergekit-evolve writes it (a storage choice; the values are the same)
    span = weight_bound - low
    strategy: dict[str, Any] = {"name": "cmaes", "sigma": min(1.0, sigma0 / span), "restarts": "none"}
    if popsize is not None:
        strategy["popsize"] = popsize
    if "density" in params and span != 1.0:
        per_set = len(filters) + 1
        strategy["options"] = {"CMA_stds": [1.0, span] * (groups * per_set * n)}
    objectives = []
    paths = task_search_paths or []
    for i, t in enumerate(doc["tasks"] or []):
        t = {"name": t} if isinstance(t, str) else t
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or set(t) - {"name", "weight", "metric"}:
            raise ConfigError(f"tasks[{i}]: expected a task name or {{name, weight, metric}}, got {t!r}",
                              hint="see mergekit's docs/evolve.md")
        metric, _, filt = str(t.get("metric", "acc,none")).partition(",")
        lm: dict[str, Any] = {"task": _task_ref(t["name"], paths), "metric": metric, "filter": filt or "none",
                              "apply_chat_template": bool(doc.get("apply_chat_template", True)),
                              "fewshot_as_multiturn": bool(doc.get("fewshot_as_multiturn", True))}
        for key in ("limit", "num_fewshot"):
            if doc.get(key) is not None:
                lm[key] = int(doc[key])
        objectives.append({"lm_eval": lm, "weight": float(t.get("weight", 1.0))})
    if not objectives:
        raise ConfigError("tasks: at least one task is required", hint="list the lm-eval tasks to score")
    space: dict[str, Any] = {"name": re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "evolve",
                             "kind": "ps", "base": base_path, "experts": experts, "merge_method": method,
                             "layer_groups": groups}
    if filters:
        space["filters"] = filters
    if smooth:
        space["smooth"] = True
    elif groups > 1:
        space["non_layer"] = "ends"  # per-group slices: embeddings from the first group, norm and head the last
    space["vary"] = vary
    space["fixed"] = fixed
    if g.get("tokenizer_source") is not None:
        space["tokenizer_source"] = str(g["tokenizer_source"])
    space.update({"objectives": objectives, "strategy": strategy, "budget": int(max_fevals), "seed": int(seed)})
    return space


def import_evolve(path: Path, **kwargs: Any) -> dict[str, Any]:
    """Read a mergekit-evolve config file and convert it (:func:`convert`)."""
    doc = load_yaml(path)
    return convert(doc, root=path.resolve().parent, name=kwargs.pop("name", None) or path.stem, **kwargs)


def genome_order(space: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """For each evomerge gene in order, its index in mergekit-evolve's genotype tensor of shape
    (layer groups, models, parameter sets, parameters): evomerge orders genes by (group, set,
    model, parameter). Tests and users moving a mergekit-evolve genotype across use it."""
    groups = int(space["layer_groups"])
    sets = len(space.get("filters") or []) + 1
    models = len(space["experts"])
    params = len(space["vary"])
    return [(g, m, s, p) for g in range(groups) for s in range(sets) for m in range(models) for p in range(params)]
