"""Search spaces (YAML, strict): sources, what varies per layer, objectives, strategy, budget.

A parameter-space (PS) search, as in Akiba et al. 2024 ("Evolutionary Optimization of Model
Merging Recipes", sec. 3.1), varies merge-op parameters per expert and per layer group; each
varied value is one gene in [0, 1] mapped linearly to its bounds (see :mod:`evomerge.space.codec`).
Paths are relative to the space file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import ConfigError
from evomerge.safe_yaml import load_yaml

if TYPE_CHECKING:
    from evomerge.recipe import Recipe

ZOO_PREFIX = "zoo://"

# Sizes a strategy allocates up front or per generation; past these a typo (popsize: 1.0e+9) would
# exhaust memory instead of searching. Seeds feed numpy's RandomState (pycma uses seed + 1).
MAX_POPSIZE = 10_000
MAX_ARCHIVE_SIZE = 1_000
MAX_BUDGET = 1_000_000
MAX_SEED = 2**32 - 2
# pycma options that evomerge sets itself (the box, the seeded RNG) or that have their own field
RESERVED_CMA_OPTIONS = {"bounds": "genomes live in the box [0, 1]", "seed": "use the space's `seed:`",
                        "randn": "evomerge seeds pycma's RNG", "verbose": "evomerge silences pycma",
                        "popsize": "use strategy.popsize"}


def _check_finite(value: Any, where: str) -> None:
    """Raise ValueError naming ``where`` when ``value`` holds a NaN or infinite number (at any depth)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; only finite numbers are allowed")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


class _Strict(BaseModel):
    # NaN and infinity are refused in every float field: a NaN weight or bound makes every candidate invalid
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Varied(_Strict):
    """One op parameter searched per expert (``per_expert``) or globally, per layer group."""

    low: float
    high: float
    init: float | None = None  # starting value (CMA-ES mean); default: the middle of the bounds

    @model_validator(mode="after")
    def _bounds(self) -> Varied:
        if not self.low < self.high:
            raise ValueError(f"bounds are inverted or empty: low {self.low} must be below high {self.high}")
        if self.init is not None and not self.low <= self.init <= self.high:
            raise ValueError(f"init {self.init} is outside [{self.low}, {self.high}]")
        return self


class LMEval(_Strict):
    """An lm-evaluation-harness task as an objective (evomerge/evaluate/lmeval.py)."""

    task: str  # an lm-eval task name, or a task YAML path (relative to the space file)
    metric: str | None = None  # default: the task's first metric
    num_fewshot: int | None = Field(None, ge=0, le=64)
    limit: int | None = Field(None, ge=1)
    filter: str | None = None  # the task's filter pipeline that scores (default: its first)
    batch_size: int = Field(1, ge=1, le=4096)  # lm-eval's HFLM batch size; 1 is `lm_eval`'s default
    split: str | None = None  # the dataset split the search scores (default: lm-eval's, its test split else validation)
    held_out: str | None = None  # the split held-out scoring uses (`evomerge eval --space ... --split heldout`)
    apply_chat_template: bool = False  # `lm_eval --apply_chat_template` (mergekit-evolve's default is true)
    fewshot_as_multiturn: bool = False  # `lm_eval --fewshot_as_multiturn` (with apply_chat_template)

    @model_validator(mode="after")
    def _splits(self) -> LMEval:
        if self.held_out is not None and self.held_out == self.split:
            raise ValueError(f"held_out split {self.held_out!r} is the split the search scores; a held-out score "
                             "needs other documents")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ValueError("fewshot_as_multiturn needs apply_chat_template: true (lm-eval refuses it too)")
        return self


LMEVAL_LATER = ("split", "held_out", "apply_chat_template", "fewshot_as_multiturn")


class Objective(_Strict):
    """A fitness task (an evomerge task spec path, ``task``, or an lm-eval task, ``lm_eval``)
    with a finite weight in the strategy's weighted sum."""

    task: str | None = None  # task spec path
    lm_eval: LMEval | None = None
    weight: float = 1.0
    direction: Literal["maximize", "minimize"] = "maximize"

    @model_validator(mode="after")
    def _one_task(self) -> Objective:
        if (self.task is None) == (self.lm_eval is None):
            raise ValueError("an objective names either `task:` (an evomerge task spec) or `lm_eval:` "
                             "(an lm-eval task), exactly one")
        return self

    @property
    def ref(self) -> str:
        """What a worker loads (evomerge.evaluate.tasks.load_task): the spec path, or the lm-eval
        task as ``lm_eval:{json}``."""
        if self.lm_eval is None:
            assert self.task is not None
            return self.task
        from evomerge.evaluate.lmeval import LMEvalRef

        return LMEvalRef(**self.lm_eval.model_dump()).as_ref()


MERGE_DTYPE_DEFAULT = "float32"  # what a new run's PS recipes do with 16-bit sources when the space leaves it out
RESTARTS_DEFAULT = "ipop"  # what a new run's cmaes does when the space leaves `restarts` out
# what a new run restarts on when the space leaves `stall` out (single-objective runs):
# - cmaes: 12 generations without a better best (docs/benchmarks.md, session 19: a window of 5 restarted
#   runs still adapting; pycma's criteria alone left a run stalled for 20 generations)
# - nevergrad: 100 evaluations without a better best of the current optimizer (docs/benchmarks.md, session 20:
#   NGOpt (MetaModel there) found nothing better than a zoo seed's candidate 28 until 200, while runs that went on
#   to improve had flat stretches of up to 93; a window of 60 cut three of those short)
NEVERGRAD_STALL = 100
STALL_DEFAULTS = {"cmaes": 12, "nevergrad": NEVERGRAD_STALL}
M2N2_DEFAULTS = {"attraction": "normalized", "fill": "seeds", "mutation": 0.1, "exploit": 0.5, "refine": 0.5,
                 "additive": 0.5}  # what a new run's m2n2 does when the space leaves them out (refine: 0 when mutation is 0)
# M2N2's settings at their unset values (the ablations' and those added later): any other value is refused for
# another strategy
M2N2_UNSET = {"mate": "attraction", "split_point": True, "attraction": None, "fill": None, "mutation": None,
              "exploit": None, "refine": None, "additive": None}
# strategy settings added after the first runs, at their unset values: a space that leaves them so hashes as before
STRATEGY_LATER_UNSET = {"restarts": None, "stall": None, **M2N2_UNSET}
# which strategies each of those settings belongs to: set for another strategy, it is refused
SETTING_OWNERS = {"restarts": ("cmaes",), "stall": ("cmaes", "nevergrad")} | {k: ("m2n2",) for k in M2N2_UNSET}
STRATEGY_TITLES = {"cmaes": "CMA-ES", "nevergrad": "nevergrad", "m2n2": "M2N2", "random": "random search"}


class StrategySpec(_Strict):
    """The strategy and its sizes. ``popsize`` is capped at MAX_POPSIZE and ``archive_size`` at
    MAX_ARCHIVE_SIZE; ``options`` go to pycma (cmaes only) and hold finite numbers, booleans or
    lists of them, never strings (pycma evaluates string options as Python expressions) nor the
    options evomerge sets itself (RESERVED_CMA_OPTIONS)."""

    name: Literal["random", "cmaes", "nevergrad", "m2n2"] = "cmaes"
    optimizer: str = "NGOpt"  # nevergrad: any registry name (NGOpt, TwoPointsDE, PSO, DE, CMA, ...)
    popsize: int | None = Field(None, ge=2, le=MAX_POPSIZE)
    sigma: float = Field(0.25, gt=0, le=1)
    archive_size: int = Field(20, ge=2, le=MAX_ARCHIVE_SIZE)  # m2n2
    alpha: float = Field(1.0, ge=0)  # m2n2: 1 = competition for resources, 0 = plain GA (competition off)
    mate: Literal["attraction", "fitness", "uniform"] = "attraction"  # m2n2: how parent 2 is drawn (ablation)
    split_point: bool = True  # m2n2: false mixes whole genomes with one weight (ablation)
    # m2n2: the paper's mechanics, set for a new run when left out (M2N2_DEFAULTS); runs created before
    # them go on with "raw" and "random"
    attraction: Literal["normalized", "raw"] | None = None
    fill: Literal["seeds", "random"] | None = None
    # m2n2: std of the Gaussian added to each child's genes (box units, clipped to the box); None:
    # M2N2_DEFAULTS for a new run, 0 (none, the paper's setting for trained sources) for one created before
    mutation: float | None = Field(None, ge=0, le=1)
    # m2n2: share of children whose first parent is the member with the best mean score (its mate
    # still drawn by attraction); None: M2N2_DEFAULTS for a new run, 0 for one created before it
    exploit: float | None = Field(None, ge=0, le=1)
    # m2n2: share of children that are the best member plus the mutation noise, no crossover; None:
    # M2N2_DEFAULTS for a new run (0 when its mutation is 0: refine steps by the mutation noise), 0 for
    # one created before it (docs/benchmarks.md, sessions 15-18)
    refine: float | None = Field(None, ge=0, le=1)
    # m2n2: share of crossovers whose two mixing weights are drawn independently (task arithmetic of
    # the parents, not an interpolation); None: M2N2_DEFAULTS for a new run, 0 for one created before it
    additive: float | None = Field(None, ge=0, le=1)
    restarts: Literal["ipop", "none"] | None = None  # cmaes; None: ipop for a new run (RESTARTS_DEFAULT)
    # cmaes: also restart when the best has not improved for this many generations (besides pycma's
    # step-size and covariance criteria); nevergrad: start a fresh optimizer from a random point when the
    # current one's best has not improved for this many evaluations; 0: no such rule; None: STALL_DEFAULTS
    # for a new single-objective run
    stall: int | None = Field(None, ge=0, le=10000)
    options: dict[str, Any] = Field(default_factory=dict)

    def m2n2_settings(self) -> dict[str, Any]:
        """attraction, fill, mutation, exploit, refine and additive as a new run uses them: the space's, else M2N2_DEFAULTS."""
        settings = {k: default if getattr(self, k) is None else getattr(self, k) for k, default in M2N2_DEFAULTS.items()}
        if self.refine is None and not settings["mutation"]:
            settings["refine"] = 0.0  # refine steps by the mutation noise: none without it
        return settings

    def stall_window(self, *, multi_objective: bool = False) -> int | None:
        """The best-so-far rule's window as a new run uses it (generations for cmaes, evaluations for
        nevergrad): the space's, else STALL_DEFAULTS; None for no such rule (``stall: 0``, another
        strategy, or a multi-objective run left at the default)."""
        if self.stall is None:
            return None if multi_objective else STALL_DEFAULTS.get(self.name)
        return self.stall or None

    @model_validator(mode="after")
    def _own_settings_only(self) -> StrategySpec:
        foreign: dict[tuple[str, ...], list[str]] = {}
        for k, unset in STRATEGY_LATER_UNSET.items():
            if getattr(self, k) != unset and self.name not in SETTING_OWNERS[k]:
                foreign.setdefault(SETTING_OWNERS[k], []).append(k)
        if foreign:
            said = [f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'} for "
                    f"{' and '.join(STRATEGY_TITLES[o] for o in owners)} only" for owners, keys in foreign.items()]
            many = len(foreign) > 1 or len(next(iter(foreign.values()))) > 1
            raise ValueError(f"{', '.join(said)}; strategy {self.name} would ignore {'them' if many else 'it'}")
        return self

    @model_validator(mode="after")
    def _options(self) -> StrategySpec:
        if self.options and self.name != "cmaes":
            raise ValueError(f"options are pycma options for cmaes; strategy {self.name} would ignore "
                             f"{sorted(self.options)}")
        for key, value in self.options.items():
            if key in RESERVED_CMA_OPTIONS:
                raise ValueError(f"options.{key} cannot be set here ({RESERVED_CMA_OPTIONS[key]})")
            _check_finite(value, f"options.{key}")
            flat = value if isinstance(value, list) else [value]
            if not all(isinstance(v, int | float) for v in flat):  # bools are ints
                raise ValueError(f"options.{key} must be a number, a boolean or a list of numbers, "
                                 f"got {value!r} (pycma would evaluate a string as Python code)")
        return self


class Racing(_Strict):
    """Race each candidate against a reference, ``chunk`` items per task per look, and stop it
    once ``test`` says at level ``error`` that it cannot reach the reference
    (:mod:`evomerge.evaluate.racing`). ``reference``: ``incumbent`` (the best exactly scored
    candidate told so far), ``strategy`` (the score the strategy needs: CMA-ES's selection cut,
    the mu-th best so far; M2N2's archive entry, the archive_size-th best; the incumbent for
    random and nevergrad) or a rank k (the k-th best). Until k candidates are scored exactly,
    candidates are scored on every item."""

    chunk: int = Field(20, ge=1, le=1_000_000)
    error: float = Field(0.05, gt=0, lt=0.5)
    test: Literal["hoeffding", "t"] = "hoeffding"
    reference: Literal["incumbent", "strategy"] | int = "strategy"

    @model_validator(mode="after")
    def _rank(self) -> Racing:
        if isinstance(self.reference, int) and not 1 <= self.reference <= MAX_ARCHIVE_SIZE:
            raise ValueError(f"racing.reference: a rank from 1 to {MAX_ARCHIVE_SIZE}, got {self.reference}")
        return self


class PromotionRace(_Strict):
    """How a promoted candidate is scored on its remaining items: ``chunk`` items per task per
    look in the run's item order, stopped as soon as a paired one-sided ``test`` says at level
    ``error`` that it cannot reach the top-k cut after all (:mod:`evomerge.evaluate.racing`)."""

    chunk: int = Field(100, ge=1, le=1_000_000)
    error: float = Field(0.05, gt=0, lt=0.5)
    test: Literal["hoeffding", "t"] = "t"


class Subset(_Strict):
    """Score each candidate on ``size`` items per task and estimate the full-set objectives
    (:mod:`evomerge.evaluate.estimate`): ``random`` items, ``anchor`` items (tinyBenchmarks) or an
    ``irt`` estimate over the anchors, fitted on the run's exactly scored candidates (the first
    ``warmup`` candidates are all exact) and refitted every ``refit`` new exact ones. A candidate
    whose estimate enters the top ``promote`` of the exact candidates is promoted: scored on the
    remaining items in the same evaluation, raced against that cut (``race``; ``null``: all at
    once); with ``pareto``, one whose estimates are not dominated by the exact candidates' Pareto
    front is scored on every item too."""

    # defaults: the setting measured to spend >= 5x fewer items at full evaluation's held-out accuracy
    # on CMA-ES and M2N2 (docs/benchmarks.md, "Fitness cost", session 12)
    method: Literal["random", "anchor", "irt"] = "anchor"
    size: int = Field(30, ge=2, le=1_000_000)
    warmup: int = Field(10, ge=2, le=MAX_BUDGET)
    refit: int = Field(10, ge=1, le=MAX_BUDGET)
    promote: int = Field(1, ge=1, le=MAX_ARCHIVE_SIZE)
    race: PromotionRace | None = PromotionRace()
    pareto: bool = False
    error: float = Field(0.05, gt=0, lt=0.5)  # intervals: two-sided at 1 - error


class Fitness(_Strict):
    """How much of each fitness task a candidate is scored on (default: every item)."""

    racing: Racing | None = None
    subset: Subset | None = None

    @model_validator(mode="after")
    def _one(self) -> Fitness:
        if self.racing is not None and self.subset is not None:
            raise ValueError("fitness: racing and subset are two ways to score fewer items; choose one")
        return self


class Dataflow(_Strict):
    """The data-flow space (Akiba et al. 2024, sec. 3.2): a path of ``repeats`` x M layer slots,
    M the layers of all path sources listed model after model, an include bit per slot and a
    scale on the hidden state entering each included layer (``scales: slot``, one gene per slot)
    or per transition between source layers (``scales: transition``, the paper's M x M matrix W).
    ``merged`` (PS+DFS only) is the PS recipe whose merge becomes the first path source."""

    repeats: int = Field(1, ge=1, le=8)
    scale: Varied = Varied(low=0.5, high=2.0, init=1.0)
    scales: Literal["slot", "transition"] = "slot"
    merged: dict[str, Any] | str | None = None  # inline mergekit-style recipe, or a recipe file

    @model_validator(mode="after")
    def _positive(self) -> Dataflow:
        if self.scale.low <= 0:
            raise ValueError(f"dataflow.scale.low must be above 0 (a layer input scale), got {self.scale.low}")
        return self


class SearchSpace(_Strict):
    """A search over merge recipes of ``experts`` on top of ``base``.

    ``kind: ps`` varies merge-op parameters per layer (group) and expert; ``kind: dfs`` searches
    a data-flow path over the layers of base and experts; ``kind: ps_dfs`` a path whose first
    source is the PS merge ``dataflow.merged`` (Akiba et al. 2024, sec. 3.3).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["ps", "dfs", "ps_dfs"] = "ps"
    base: str
    experts: tuple[str, ...] = Field(min_length=1)
    merge_method: str = "task_arithmetic"
    layer_groups: int = Field(0, ge=0)  # 0: one gene per layer; k: k groups of consecutive layers
    per_module: bool = False  # separate genes for attention and MLP tensors of each layer group
    filters: tuple[str, ...] = ()  # a gene set per tensor-name filter and one for the rest, per layer group
    smooth: bool = False  # the layer groups' values are anchors of a gradient across the layers, not steps
    # true: one more gene group for the tensors outside the layer stack (embeddings, final norm, LM head);
    # "ends": no genes of their own, the embeddings take the first layer group's values and the final
    # norm and LM head the last group's (mergekit's reading of per-group slices)
    non_layer: bool | Literal["ends"] = False
    vary: dict[str, Varied] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    tokenizer_source: str | None = Field(None, min_length=1)  # ps: the recipes' `tokenizer_source` (base, union, a model)
    # ps: the arithmetic of 16-bit sources. "float32" (a new run's default, MERGE_DTYPE_DEFAULT): merged in
    # float32, each tensor rounded once to the sources' dtype (the recipes say `dtype: float32`, `out_dtype:
    # bfloat16`, which mergekit builds the same way); "source": in their own dtype, rounding at every step
    # (mergekit with no `dtype`; runs created before this option). 32-bit sources: the same either way.
    merge_dtype: Literal["float32", "source"] | None = None
    dataflow: Dataflow | None = None
    objectives: tuple[Objective, ...] = Field(min_length=1)
    multi_objective: bool = False  # strategies that can (nevergrad) search the Pareto front directly
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    fitness: Fitness | None = None
    budget: int = Field(64, ge=1, le=MAX_BUDGET)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _finite_values(self) -> SearchSpace:
        _check_finite(self.fixed, "fixed")
        if self.dataflow is not None and isinstance(self.dataflow.merged, dict):
            _check_finite(self.dataflow.merged, "dataflow.merged")
        return self

    @model_validator(mode="after")
    def _kind(self) -> SearchSpace:
        if self.kind == "ps":
            if not self.vary:
                raise ValueError("a ps space needs `vary:` (the op parameters to search, with bounds)")
            if self.dataflow is not None:
                raise ValueError("`dataflow:` belongs to kind dfs or ps_dfs, not ps")
        else:
            if self.vary or self.fixed or self.per_module or self.non_layer or self.filters or self.smooth \
                    or self.tokenizer_source:
                raise ValueError(f"kind {self.kind} searches a layer path; vary/fixed/per_module are for kind ps, "
                                 "and so are non_layer, filters, smooth and tokenizer_source (for PS+DFS put the PS recipe under "
                                 "dataflow.merged)")
            if self.kind == "ps_dfs" and self.flow.merged is None:
                raise ValueError("kind ps_dfs needs dataflow.merged: the PS recipe (inline or a file) whose merge "
                                 "joins the path sources")
            if self.kind == "dfs" and self.flow.merged is not None:
                raise ValueError("dataflow.merged is for kind ps_dfs")
        if self.per_module and self.filters:
            raise ValueError("per_module is filters [self_attn, mlp] with the rest at their mean; give either "
                             "`per_module: true` or `filters:`, not both")
        if len(set(self.filters)) != len(self.filters) or not all(self.filters):
            raise ValueError(f"filters must be distinct, non-empty tensor-name substrings, got {list(self.filters)}")
        if self.smooth and self.non_layer == "ends":
            raise ValueError("non_layer: ends reads per-group steps (slices); with smooth: true the gradient "
                             "already gives the non-layer tensors its first value")
        if self.multi_objective and self.strategy.name != "nevergrad":
            raise ValueError(f"multi_objective: true needs strategy nevergrad (its multi-objective mode); "
                             f"{self.strategy.name} optimizes the weighted sum of the objectives, and the Pareto "
                             "front is reported either way")
        if self.multi_objective and len(self.objectives) < 2:
            raise ValueError("multi_objective: true needs at least two objectives")
        if self.multi_objective and self.strategy.stall:
            raise ValueError("strategy.stall judges a single fitness; with multi_objective: true nevergrad searches "
                             "the Pareto front and has no best to stall on: leave stall out")
        return self

    @property
    def flow(self) -> Dataflow:
        """The data-flow settings (defaults when the space leaves ``dataflow:`` out)."""
        return self.dataflow or Dataflow()

    @model_validator(mode="after")
    def _op_params(self) -> SearchSpace:
        if self.kind != "ps":
            return self
        from evomerge.merge.registry import get_op  # here: importing the schema stays light (no torch)

        spec = get_op(self.merge_method).spec  # ConfigError for unknown methods
        known = {p.name: p for p in spec.params}
        for name in [*self.vary, *self.fixed]:
            if name not in known:
                raise ValueError(f"{self.merge_method} has no parameter {name!r} (it has {sorted(known)})")
        both = set(self.vary) & set(self.fixed)
        if both:
            raise ValueError(f"{sorted(both)} are both varied and fixed")
        for name, v in self.vary.items():
            p = known[name]
            if (p.low is not None and v.low < p.low) or (p.high is not None and v.high > p.high):
                raise ValueError(f"vary.{name}: [{v.low}, {v.high}] exceeds the op's bounds [{p.low}, {p.high}]")
            if p.kind == "bool":
                raise ValueError(f"vary.{name}: boolean parameters cannot be searched; put it under fixed")
        if spec.check is not None:
            self._check_box(spec)
        return self

    def _check_box(self, spec: Any) -> None:
        """An op with a rule across its parameters (DELLA: density +- epsilon inside (0, 1)) must
        accept every candidate of the box: checked at each bound and just inside it."""
        import itertools

        from evomerge.errors import ConfigError
        from evomerge.merge.ops import resolve_params

        fixed = {k: v for k, v in self.fixed.items() if isinstance(v, int | float)}
        axes = [[(name, x) for x in (v.low, v.low + 1e-6 * (v.high - v.low), v.high - 1e-6 * (v.high - v.low),
                                     v.high)] for name, v in self.vary.items()]
        for corner in itertools.product(*axes):
            try:
                resolve_params(spec, {**fixed, **dict(corner)}, 1)
            except ConfigError as err:
                at = ", ".join(f"{k}={x:g}" for k, x in corner)
                raise ValueError(f"the box of `vary:` holds candidates {spec.name} refuses ({at}: {err.message}); "
                                 f"{err.hint}") from None

    def uses_zoo(self) -> bool:
        from evomerge.zoo import default_zoo_dir

        root = str(default_zoo_dir())
        return any(p.startswith(root) for p in (self.base, *self.experts))

    @property
    def space_hash(self) -> str:
        # fields added later are left out at their defaults, so a space that does not use them
        # hashes as it did before they existed
        later: dict[str, Any] = {k: True for k, default in (("fitness", None), ("non_layer", False), ("filters", ()),
                                                            ("smooth", False), ("tokenizer_source", None),
                                                            ("merge_dtype", None))
                                 if getattr(self, k) == default}
        strategy_later = {k for k, unset in STRATEGY_LATER_UNSET.items() if getattr(self.strategy, k) == unset}
        if strategy_later:
            later["strategy"] = strategy_later
        if all(o.lm_eval is None for o in self.objectives):
            later["objectives"] = {"__all__": {"lm_eval"}}
        else:  # lm-eval settings added later, left out at their defaults
            later["objectives"] = {i: {"lm_eval": {k for k in LMEVAL_LATER if getattr(o.lm_eval, k) == LMEval.model_fields[k].default}}
                                   for i, o in enumerate(self.objectives) if o.lm_eval is not None}
        blob = json.dumps(self.model_dump(mode="json", exclude=later), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolved(self, root: Path) -> SearchSpace:
        """Relative source and task paths made absolute against ``root``."""

        def absolute(p: str, root: Path = root) -> str:
            if p.startswith(ZOO_PREFIX):  # the built-in zoo (built on first use by `evomerge search`)
                from evomerge.zoo import default_zoo_dir

                return str(default_zoo_dir() / p[len(ZOO_PREFIX):])
            return p if Path(p).is_absolute() else str((root / p).resolve())

        d = self.model_dump(mode="python")
        d["base"] = absolute(d["base"])
        d["experts"] = tuple(absolute(e) for e in d["experts"])
        if d.get("tokenizer_source") not in (None, "base", "union"):
            d["tokenizer_source"] = absolute(d["tokenizer_source"])
        for o in d["objectives"]:
            if o.get("task") is not None:
                o["task"] = absolute(o["task"])
            lm = o.get("lm_eval")
            if lm is not None and str(lm["task"]).endswith((".yaml", ".yml")):
                lm["task"] = absolute(lm["task"])
        merged = (d.get("dataflow") or {}).get("merged")
        if isinstance(merged, str):  # a recipe file: read it here so the space is self-contained
            from evomerge.recipe import load_recipe

            rfile = Path(absolute(merged))
            d["dataflow"]["merged"] = _resolve_recipe_paths(load_recipe(rfile).to_mergekit(),
                                                            lambda p: absolute(p, rfile.parent))
        elif isinstance(merged, dict):
            d["dataflow"]["merged"] = _resolve_recipe_paths(merged, absolute)
        return SearchSpace.model_validate(d)

    def merged_recipe(self) -> Recipe | None:
        """The PS recipe of a ps_dfs space (paths resolved), validated."""
        if self.dataflow is None or self.dataflow.merged is None:
            return None
        from evomerge.recipe import recipe_from_dict

        return recipe_from_dict(self.dataflow.merged, source=f"{self.name}: dataflow.merged")


def _resolve_recipe_paths(recipe: dict[str, Any], absolute) -> dict[str, Any]:
    if not isinstance(recipe, dict):
        return recipe  # recipe_from_dict reports the problem
    out = dict(recipe)
    if isinstance(out.get("base_model"), str):
        out["base_model"] = absolute(out["base_model"])
    out["models"] = [dict(m, model=absolute(m["model"])) if isinstance(m, dict) and isinstance(m.get("model"), str)
                     else m for m in out.get("models") or []]
    return out


_SHOW_INPUT = {"finite_number", "less_than_equal", "less_than", "greater_than_equal", "greater_than",
               "int_parsing", "int_from_float", "float_parsing", "literal_error"}


def describe_validation_error(err: ValidationError) -> str:
    """Pydantic's errors as one line: ``field.path: problem (got value)`` for each, joined by ``; ``.
    A container's "too short" error is left out when one of its items failed (it is the item's fault)."""
    errors = err.errors()
    failed = [e["loc"] for e in errors]
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e["loc"])
        n = len(e["loc"])
        if e["type"] == "too_short" and any(len(o) > n and o[:n] == e["loc"] for o in failed):
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error" and "error" in (e.get("ctx") or {}):
            msg = str(e["ctx"]["error"])  # our own validators' messages, without pydantic's "Value error, "
        elif e["type"] == "string_pattern_mismatch" and loc == "name":
            msg = f"{e['input']!r} is not a space name (letters, digits, '.', '_' or '-')"
        else:
            msg = e["msg"] + (f" (got {e['input']!r})" if e["type"] in _SHOW_INPUT else "")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search space; paths inside resolve against the file's directory.
    Every problem is one :class:`ConfigError` naming the file and the field path."""
    p = Path(path)
    raw = load_yaml(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a search space must be a mapping")
    from evomerge.space.evolve_import import is_evolve_config

    if is_evolve_config(raw):
        raise ConfigError(f"{p} is a mergekit-evolve config, not an evomerge search space",
                          hint=f"convert it first: evomerge import-evolve {p} --out space.yaml")
    try:
        space = SearchSpace.model_validate(raw).resolved(p.resolve().parent)
        space.merged_recipe()  # a ps_dfs space's PS recipe is checked now, not after heavy work
        return space
    except ValidationError as err:
        raise ConfigError(f"{p}: invalid search space: {describe_validation_error(err)}",
                          hint="see search_spaces/README.md for the fields") from None
