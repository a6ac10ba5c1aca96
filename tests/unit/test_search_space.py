"""Search spaces: strict validation, genome codec, strategies' determinism."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.space.codec import PSCodec
from evomerge.space.schema import SearchSpace, StrategySpec, load_space
from evomerge.strategies.base import Evaluated, penalty
from evomerge.strategies.cmaes import CMAES
from evomerge.strategies.random import RandomSearch

REPO = Path(__file__).resolve().parents[2]


def space(**kw) -> SearchSpace:
    d = dict(name="t", base="/m/base", experts=("/m/a", "/m/b"), merge_method="ties",
             vary={"weight": {"low": 0.0, "high": 2.0}, "density": {"low": 0.2, "high": 1.0, "init": 0.6},
                   "lambda": {"low": 0.5, "high": 1.5}},
             objectives=[{"task": "/t.yaml"}])
    d.update(kw)
    return SearchSpace.model_validate(d)


def test_shipped_spaces_validate() -> None:
    for p in sorted((REPO / "search_spaces").glob("*.yaml")):
        s = load_space(p)
        assert s.budget > 0 and all(Path(o.task).exists() for o in s.objectives)


@pytest.mark.parametrize(("text", "needle"), [
    ("vary: {weight: {low: 1.0, high: 0.5}}", "bounds are inverted"),
    ("vary: {densty: {low: 0, high: 1}}", "has no parameter 'densty'"),
    ("vary: {density: {low: 0, high: 2}}", "exceeds the op's bounds"),
    ("vary: {weight: {low: 0, high: 1, init: 3}}", "init 3.0 is outside"),
    ("vary: {normalize: {low: 0, high: 1}}", "boolean parameters cannot be searched"),
    ("vary: {weight: {low: 0, high: 1}}\nfoo: 1", "foo: unknown key"),
])
def test_bad_spaces_are_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("name: s\nbase: b\nexperts: [e]\nmerge_method: ties\nobjectives: [{task: t.yaml}]\n" + text + "\n")
    with pytest.raises(ConfigError, match="invalid search space|unknown merge method") as info:
        load_space(p)
    assert needle in str(info.value)


def test_unknown_merge_method() -> None:
    with pytest.raises(ConfigError, match="unknown merge method 'tiez'"):
        space(merge_method="tiez")


def test_codec_orders_genes_by_layer_group_and_decodes_per_layer_values() -> None:
    codec = PSCodec(space(layer_groups=2), num_layers=4)
    assert codec.dim == 2 * (2 * 2 + 1)
    assert [(g.group, g.expert, g.param) for g in codec.genes[:5]] == [
        (0, 0, "weight"), (0, 0, "density"), (0, 1, "weight"), (0, 1, "density"), (0, None, "lambda")]
    x = np.linspace(0, 1, codec.dim)
    r = codec.decode(x)
    w0 = r.models[0].parameters["weight"]
    assert len(w0) == 4 and w0[0] == w0[1] == 0.0 and w0[2] == w0[3] == pytest.approx(2.0 * x[5])
    assert r.parameters["lambda"][3] == pytest.approx(0.5 + x[9])
    init = codec.initial()
    assert init[1] == pytest.approx((0.6 - 0.2) / 0.8) and init[0] == 0.5
    assert codec.decode(init).recipe_id == codec.decode(init.copy()).recipe_id


def test_random_search_is_deterministic_and_starts_at_the_initial_recipe() -> None:
    a, b = RandomSearch(5, np.full(5, 0.3), seed=7), RandomSearch(5, np.full(5, 0.3), seed=7)
    xa, xb = [g.x for g in a.ask(4)], [g.x for g in b.ask(2) + b.ask(2)]
    assert all(np.array_equal(p, q) for p, q in zip(xa, xb, strict=True))
    assert np.array_equal(xa[0], np.full(5, 0.3))
    assert not np.array_equal(xa[1], RandomSearch(5, np.full(5, 0.3), seed=8).ask(2)[1].x)


def test_cmaes_generation_barrier_penalty_and_replay() -> None:
    def run(fail_index: int | None, splits: list[int]) -> list[np.ndarray]:
        es = CMAES(4, np.full(4, 0.5), seed=3, popsize=6)
        seen = []
        for _ in range(3):
            gen = []
            for n in splits:
                gen += es.ask(n)
            assert len(gen) == 6 and es.ask(1) == []  # barrier: nothing more until the generation is told
            seen += [g.x for g in gen]
            res = [Evaluated(g, None if g.index == fail_index else -float(np.sum((g.x - 0.2) ** 2))) for g in gen]
            es.tell(res[3:])
            es.tell(res[:3])  # out of order, partial tells
        return seen

    a, b = run(None, [6]), run(None, [2, 4])
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    c = run(1, [6])  # a failed candidate changes later generations but never breaks the run
    assert all(np.all((x >= 0) & (x <= 1)) for x in c)
    assert penalty([0.5, None, -2.0]) == -3.0 and penalty([None]) == -1.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("optimizer", ["TwoPointsDE", "PSO", "OnePlusOne"])
def test_nevergrad_optimizers_by_name_are_seeded_and_improve(optimizer: str) -> None:
    from evomerge.strategies.nevergrad import Nevergrad

    def run(seed: int) -> tuple[list[np.ndarray], float]:
        ng_ = Nevergrad(3, np.full(3, 0.5), optimizer=optimizer, budget=60, num_workers=4, seed=seed)
        xs, best = [], -np.inf
        for _ in range(15):
            gen = ng_.ask(4)
            res = [Evaluated(g, None if g.index == 5 else -float(np.sum((g.x - 0.8) ** 2))) for g in gen]
            ng_.tell(list(reversed(res)))  # out of order
            xs += [g.x for g in gen]
            best = max([best] + [r.fitness for r in res if r.fitness is not None])
        return xs, best

    a, best = run(1)
    b, _ = run(1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(np.all((x >= 0) & (x <= 1)) for x in a)
    assert best > -float(np.sum((np.full(3, 0.5) - 0.8) ** 2))  # better than the start


def test_unknown_nevergrad_optimizer() -> None:
    from evomerge.strategies.nevergrad import Nevergrad

    with pytest.raises(ConfigError, match="unknown nevergrad optimizer 'NoSuchOpt'"):
        Nevergrad(2, np.zeros(2), optimizer="NoSuchOpt")


SPACE_HEAD = "name: s\nbase: b\nexperts: [e]\nmerge_method: ties\n"


@pytest.mark.parametrize(("text", "line"), [
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml, weight: .nan}]",
     "objectives.0.weight: Input should be a finite number (got nan)"),
    ("vary: {weight: {low: 0, high: .inf}}\nobjectives: [{task: t.yaml}]",
     "vary.weight.high: Input should be a finite number (got inf)"),
    ("vary: {weight: {low: 0, high: 1}}\nfixed: {lambda: .nan}\nobjectives: [{task: t.yaml}]",
     "fixed.lambda is nan; only finite numbers are allowed"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml}]\nstrategy: {popsize: 1.0e+9}",
     "strategy.popsize: Input should be less than or equal to 10000 (got 1000000000.0)"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml}]\nstrategy: {name: m2n2, archive_size: 5000}",
     "strategy.archive_size: Input should be less than or equal to 1000 (got 5000)"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml}]\nstrategy: {options: {tolx: '1e-3'}}",
     "strategy: options.tolx must be a number, a boolean or a list of numbers"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml}]\nstrategy: {options: {seed: 3}}",
     "strategy: options.seed cannot be set here (use the space's `seed:`)"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml}]\nstrategy: {name: random, options: {tolx: 1}}",
     "strategy: options are pycma options for cmaes; strategy random would ignore ['tolx']"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml}]\nstrategy: {name: m2n2, stall: 12}",
     "strategy: stall is for CMA-ES and nevergrad only; strategy m2n2 would ignore it"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml}]\nstrategy: {name: random, restarts: ipop, stall: 0}",
     "strategy: restarts is for CMA-ES only, stall is for CMA-ES and nevergrad only; strategy random would ignore them"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: [{task: t.yaml}]\nseed: 4294967295",
     "seed: Input should be less than or equal to 4294967294 (got 4294967295)"),
    ("vary: {weight: {low: 0, high: 1}}\nobjectives: []", "objectives: Tuple should have at least 1 item"),
])
def test_non_finite_numbers_oversized_strategies_and_unsafe_options_are_one_line_errors(
        tmp_path: Path, text: str, line: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(SPACE_HEAD + text + "\n")
    with pytest.raises(ConfigError) as info:
        load_space(p)
    assert info.value.message.startswith(f"{p}: invalid search space: {line}")
    assert "\n" not in info.value.message and "Value error" not in info.value.message


class _Box:
    """A stand-in codec: only the genome's size matters to the strategy check."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def initial(self) -> np.ndarray:
        return np.full(self.dim, 0.5)

    def expert_genomes(self) -> list[np.ndarray]:
        return []


def test_strategy_check_refuses_what_the_strategy_cannot_start_with() -> None:
    from evomerge.runner.strategy import check_strategy
    from evomerge.strategies.registry import MAX_CMAES_FULL_DIM

    check_strategy(space(), _Box(6))
    with pytest.raises(ConfigError, match=f"3000 genes is more than CMA-ES's full covariance allows "
                                          rf"\({MAX_CMAES_FULL_DIM} genes"):
        check_strategy(space(), _Box(3000))
    check_strategy(space(strategy={"options": {"CMA_diagonal": True}}), _Box(3000))  # separable: fine
    with pytest.raises(ConfigError, match="strategy cmaes cannot start: xyz is not a valid option"):
        check_strategy(space(strategy={"options": {"xyz": 1}}), _Box(6))
    with pytest.raises(ConfigError, match="strategy nevergrad BFGS cannot start: .*parallelization"):
        check_strategy(space(strategy={"name": "nevergrad", "optimizer": "BFGS"}), _Box(6), workers=2)


SEARCHABLE = {
    "della": {"weight": {"low": 0.2, "high": 1.0}, "density": {"low": 0.3, "high": 0.7},
              "epsilon": {"low": 0.05, "high": 0.25}},
    "della_linear": {"weight": {"low": 0.2, "high": 1.0}, "density": {"low": 0.4, "high": 0.6}},
    "sce": {"select_topk": {"low": 0.1, "high": 1.0}},
    "nuslerp": {"weight": {"low": 0.1, "high": 1.0}},
    "multislerp": {"weight": {"low": 0.1, "high": 1.0}},
    "model_stock": None,
    "ties": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.2, "high": 1.0}},
}


@pytest.mark.parametrize("method", sorted(SEARCHABLE))
def test_methods_search_their_parameters_within_their_bounds(method: str, tiny_models: dict, tmp_path: Path) -> None:
    """Each method's parameters can be varied per layer group; decoded candidates merge."""
    from evomerge.merge.materialize import merge_to_dir

    vary = SEARCHABLE[method]
    fixed = {"filter_wise": True} if method == "model_stock" else {"rescale": False} if method == "ties" else {}
    if vary is None:  # Model Stock has no number to search: its space is refused with the reason
        with pytest.raises(ValueError, match="needs `vary:`"):  # pydantic's ValidationError
            space(merge_method=method, vary={}, fixed=fixed)
        return
    s = space(merge_method=method, vary=vary, fixed=fixed, layer_groups=2, base=str(tiny_models["base"]),
              experts=(str(tiny_models["expert_a"]), str(tiny_models["expert_b"])))
    codec = PSCodec(s, num_layers=2)
    for k, x in enumerate((codec.initial(), np.random.default_rng(0).random(codec.dim))):
        recipe = codec.decode(x)
        assert recipe.merge_method == method
        merge_to_dir(recipe, tmp_path / f"out{k}")


def test_della_spaces_whose_box_breaks_density_plus_minus_epsilon_are_refused() -> None:
    with pytest.raises(ValueError, match="density .* epsilon"):  # pydantic's ValidationError
        space(merge_method="della", vary={"density": {"low": 0.2, "high": 1.0}, "epsilon": {"low": 0.0, "high": 0.1}})
    with pytest.raises(ValueError, match="choose epsilon below"):
        space(merge_method="della", vary={"density": {"low": 0.3, "high": 0.6}}, fixed={"epsilon": 0.35})
    space(merge_method="della", vary={"density": {"low": 0.3, "high": 0.6}}, fixed={"epsilon": 0.25})


@pytest.mark.parametrize("per_module", [False, True])
def test_the_non_layer_group_weights_embeddings_norm_and_head_apart_from_the_layers(
        tiny_models: dict, tmp_path: Path, per_module: bool) -> None:
    """``non_layer: true`` (issue 21): one more gene group, last, for the tensors outside the layer
    stack; a decoded candidate merges them with that group's values and every layer with its own."""
    from evomerge.merge.io import ModelDir, layer_index
    from evomerge.merge.materialize import merge_to_dir

    base, a, b = tiny_models["base"], tiny_models["expert_a"], tiny_models["expert_b"]
    plain = space(merge_method="task_arithmetic", vary={"weight": {"low": 0.0, "high": 1.0}}, base=str(base),
                  experts=(str(a), str(b)), per_module=per_module)
    s = plain.model_copy(update={"non_layer": True})
    codec, before = PSCodec(s), PSCodec(plain)
    assert codec.non_layer_names == ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight")
    assert codec.dim == before.dim + 2  # one weight per expert
    assert codec.genes[: before.dim] == before.genes  # the layer genes keep their places
    assert [(g.group, g.expert) for g in codec.genes[before.dim:]] == [(codec.groups, 0), (codec.groups, 1)]
    x = np.random.default_rng(3).random(codec.dim)
    x[-2:] = [0.25, 0.9]  # the non-layer weights of a and b
    merge_to_dir(codec.decode(x), tmp_path / "out")
    # the same layer genes without the group: every tensor outside the stack takes the layer gradient's value
    merge_to_dir(before.decode(x[: before.dim]), tmp_path / "plain")
    with ModelDir(base) as mb, ModelDir(a) as ma, ModelDir(b) as mx, ModelDir(tmp_path / "out") as out, \
            ModelDir(tmp_path / "plain") as ref:
        for name in mb.tensor_names:
            got = out.read(name)
            if layer_index(name) is None:
                want = mb.read(name) + 0.25 * (ma.read(name) - mb.read(name)) + 0.9 * (mx.read(name) - mb.read(name))
                assert torch_close(got, want), name
            else:
                assert torch_close(got, ref.read(name)), name


def torch_close(x, y) -> bool:  # type: ignore[no-untyped-def]
    import torch

    return bool(torch.allclose(x, y, rtol=0, atol=1e-6))


def test_non_layer_is_for_parameter_spaces() -> None:
    for extra in ({"non_layer": True}, {"filters": ["mlp"]}, {"smooth": True}, {"tokenizer_source": "base"}):
        with pytest.raises(ValueError, match="are for kind ps, and so are non_layer, filters, smooth"):
            space(kind="dfs", vary={}, **extra)


def test_ipop_restarts_a_stalled_cmaes_with_twice_the_population_and_replays() -> None:
    """Issue 21: a flat fitness never improves the best, so after ``stall`` generations the run
    restarts from another point with twice the population; replay restarts identically; without
    restarts the population never grows."""
    def run(restarts: str) -> CMAES:
        s = CMAES(4, np.full(4, 0.5), seed=2, popsize=6, restarts=restarts, stall=2)
        while s.asked < 60:
            got = s.ask(100)
            s.tell([Evaluated(g, 0.25) for g in got])
        return s

    plain, ipop = run("none"), run("ipop")
    assert plain.restart == 0 and plain.es.popsize == 6
    assert ipop.restart >= 2 and ipop.es.popsize == 6 * 2 ** ipop.restart
    assert ipop.selection_rank() == ipop.es.popsize // 2
    sizes = [len(ev[2]) for ev in ipop.events if ev[0] == "ask" and ev[2]]
    assert sizes[:3] == [6, 6, 6]  # the first run: `stall` generations after the first, then 12
    rebuilt = CMAES.from_state(ipop.state_dict(), ipop.state_arrays())
    assert rebuilt.restart == ipop.restart and rebuilt.events == ipop.events
    nxt, again = ipop.ask(1)[0], rebuilt.ask(1)[0]
    assert np.array_equal(nxt.x, again.x)


def test_a_new_cmaes_run_restarts_after_twelve_flat_generations_and_old_runs_keep_their_rule() -> None:
    """Sessions 13 and 19: a best-so-far rule of 5 generations restarted zoo runs that were still
    adapting, pycma's criteria alone left one stalled for twenty; a new run's window is
    STALL_DEFAULTS["cmaes"] (12). A fitness
    with a slight slope (1e-6 x the sum of the genes) and a step every sixth generation never
    restarts it, with ``stall: 2`` it does; a flat fitness restarts it after 12 generations without
    a better best (the thirteenth generation is asked at twice the population), not with pycma's
    criteria only (``stall: 0``). A run stored with ``stall: 5`` (before session 13) resumes with
    it, one stored with ``stall: null`` (sessions 13-18) with pycma's criteria only."""
    from evomerge.runner.service import run_space
    from evomerge.space.schema import STALL_DEFAULTS

    def run(stall: int | None, fitness: Callable[[Any], float], asks: int = 90) -> CMAES:
        s = CMAES(4, np.full(4, 0.5), seed=2, popsize=6, restarts="ipop", stall=stall)
        while s.asked < asks:
            got = s.ask(100)
            s.tell([Evaluated(g, fitness(g)) for g in got])
        return s

    def slope(g: Any) -> float:
        return 0.25 + 1e-3 * (g.index // 36) + 1e-6 * float(g.x.sum())

    assert STALL_DEFAULTS["cmaes"] == 12 and StrategySpec(name="cmaes").stall_window() == 12
    assert StrategySpec(name="cmaes", stall=0).stall_window() is None
    assert run(12, slope).restart == 0 and run(None, slope).restart == 0 and run(2, slope).restart >= 1
    flat = run(12, lambda g: 0.25, asks=84)
    sizes = [len(ev[2]) for ev in flat.events if ev[0] == "ask" and ev[2]]
    assert flat.restart == 1 and flat.es.popsize == 12 and sizes[:13] == [6] * 13
    assert run(None, lambda g: 0.25, asks=84).restart == 0
    stored = {"name": "x", "base": "/b", "experts": ["/e"], "vary": {"weight": {"low": 0, "high": 1}},
              "objectives": [{"task": "/t.yaml"}], "strategy": {"name": "cmaes", "restarts": "ipop", "stall": 5}}
    assert run_space({"space": stored}).strategy.stall_window() == 5
    between = {**stored, "strategy": {"name": "cmaes", "restarts": "ipop", "stall": None}}
    assert run_space({"space": between}).strategy.stall_window() is None
    fresh = {**stored, "strategy": {"name": "cmaes"}}
    assert SearchSpace.model_validate(fresh).strategy.stall_window() == 12
    assert SearchSpace.model_validate(fresh).space_hash == SearchSpace.model_validate(
        {**stored, "strategy": {"name": "cmaes", "stall": None}}).space_hash
