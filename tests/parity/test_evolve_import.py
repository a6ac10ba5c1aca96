"""`evomerge import-evolve` (issue 17): a mergekit-evolve genome config becomes a search space over
the same genome. mergekit-evolve itself (in mergekit's own virtual environment) decodes random
genotypes and merges them; the imported space decodes the same genotypes (moved gene by gene into
evomerge's order and box) and evomerge merges them: every tensor must be equal bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from evomerge.errors import ConfigError
from evomerge.space.evolve_import import convert, genome_order, import_evolve

HERE = Path(__file__).resolve().parent

# name -> (family, genome block); models are FAMILY/MEMBER names of tests.parity.models
GENOMES = {
    "ties_filters": ("llama40", {"models": ["a", "b"], "merge_method": "ties", "base_model": "base",
                                 "layer_granularity": 8, "filters": ["self_attn", "mlp"]}),
    "ta_base_in_models_negative": ("llama40", {"models": ["base", "a", "b"], "merge_method": "task_arithmetic",
                                               "base_model": "base", "layer_granularity": 10,
                                               "allow_negative_weights": True}),
    "ta_smooth_tied": ("llama40_tied", {"models": ["a", "b", "c"], "merge_method": "task_arithmetic",
                                        "base_model": "base", "layer_granularity": 8, "smooth": True,
                                        "filters": ["mlp"]}),
    "linear_one_group": ("mistral32", {"models": ["a", "b"], "merge_method": "linear", "layer_granularity": 0}),
}


def write_config(root: Path, models: Path, name: str) -> Path:
    family, genome = GENOMES[name]
    g = dict(genome, models=[str(models / family / m) for m in genome["models"]])
    if "base_model" in g:
        g["base_model"] = str(models / family / g["base_model"])
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump({"genome": g, "tasks": [{"name": "some_task", "metric": "acc,none"}]}))
    return path


def shape_of(space: dict) -> tuple[int, int, int, int]:
    return (space["layer_groups"], len(space["experts"]), len(space.get("filters") or []) + 1, len(space["vary"]))


def random_genotype(space: dict, rng: np.random.Generator) -> np.ndarray:
    """Values inside the space's bounds on a 3-digit grid (so the box round trip is exact)."""
    geno = np.zeros(shape_of(space))
    for p, (name, v) in enumerate(space["vary"].items()):
        geno[..., p] = np.round(rng.uniform(v["low"], v["high"], size=geno.shape[:-1]), 3)
        assert name in ("weight", "density")
    return geno


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from bench.mergekit_venv import ensure_mergekit, mergekit_python
    from tests.parity.models import build_models

    root = tmp_path_factory.mktemp("evolve")
    models = build_models(root / "models")
    rng = np.random.default_rng(7)
    jobs, cases = [], {}
    for name in GENOMES:
        cfg = write_config(root, models, name)
        space = import_evolve(cfg)
        geno = random_genotype(space, rng)
        out = root / "mergekit" / name
        jobs.append({"config": str(cfg), "genotype": geno.ravel().tolist(), "out": str(out)})
        cases[name] = {"config": cfg, "space": space, "genotype": geno, "mergekit": out}
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "mergekit").mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([str(mergekit_python(ensure_mergekit())), str(HERE / "run_evolve_genome.py"),
                           str(root / "jobs.json")], env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "cases": cases}


def _tensors(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("name", list(GENOMES))
def test_the_imported_space_builds_what_mergekit_evolve_builds_for_the_same_genotype(runs: dict, name: str) -> None:
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.space.codec import PSCodec
    from evomerge.space.schema import SearchSpace

    case = runs["cases"][name]
    space, geno = case["space"], case["genotype"]
    codec = PSCodec(SearchSpace.model_validate(space))
    order = genome_order(space)
    assert codec.dim == len(order) == geno.size  # the same number of genes
    x = np.empty(codec.dim)
    for i, (gene, at) in enumerate(zip(codec.genes, order, strict=True)):
        assert gene.param == list(space["vary"])[at[3]] and gene.group == at[0] and gene.expert == at[1]
        x[i] = (geno[at] - gene.low) / (gene.high - gene.low)
    ours = runs["root"] / "evomerge" / name
    merge_to_dir(codec.decode(x), ours)
    theirs, mine = _tensors(case["mergekit"]), _tensors(ours)
    assert sorted(theirs) == sorted(mine)
    differ = [n for n in theirs if theirs[n].dtype != mine[n].dtype or not bool((theirs[n] == mine[n]).all())]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    # and the base model's untouched tensors did move: the case is informative
    base = _tensors(Path(space["base"]))
    assert any(not bool((base[n] == mine[n]).all()) for n in base)


def test_the_start_point_is_mergekit_evolves_and_cma_settings_map(runs: dict) -> None:
    space = runs["cases"]["ties_filters"]["space"]
    assert space["vary"]["weight"] == {"low": 0.0, "high": 1.0, "init": 0.5}  # 1 / n models
    assert space["vary"]["density"] == {"low": 0.0, "high": 1.0, "init": 1.0}
    assert space["fixed"] == {"normalize": True, "int8_mask": True}  # ties: normalized by default
    assert space["strategy"] == {"name": "cmaes", "sigma": pytest.approx(1 / 6), "restarts": "none"}
    assert space["budget"] == 100 and space["non_layer"] == "ends" and space["layer_groups"] == 5
    neg = runs["cases"]["ta_base_in_models_negative"]["space"]
    assert neg["vary"]["weight"]["low"] == -1.0 and neg["fixed"]["normalize"] is False
    assert neg["strategy"]["sigma"] == pytest.approx(1 / 12)  # sigma0 1/6 over a weight span of 2
    assert runs["cases"]["ta_smooth_tied"]["space"]["smooth"] is True
    assert "non_layer" not in runs["cases"]["linear_one_group"]["space"]


def test_negative_weights_with_densities_keep_sigma0_per_gene(runs: dict, tmp_path: Path) -> None:
    cfg = runs["cases"]["ties_filters"]["config"]
    doc = yaml.safe_load(cfg.read_text())
    doc["genome"]["allow_negative_weights"] = True
    space = convert(doc, root=cfg.parent, name="neg", sigma0=0.2, popsize=12, max_fevals=40, seed=3)
    assert space["strategy"]["sigma"] == pytest.approx(0.1) and space["strategy"]["popsize"] == 12
    stds = space["strategy"]["options"]["CMA_stds"]
    assert len(stds) == len(genome_order(space)) and stds[:2] == [1.0, 2.0]  # weight, then density x span
    assert space["budget"] == 40 and space["seed"] == 3


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["genome"].update(merge_method="slerp"), "slerp cannot be carried over"),
    (lambda d: d["genome"].update(merge_method="della"), "not one mergekit-evolve searches"),
    (lambda d: d.update(shuffle=True), "shuffle: true cannot be carried over"),
    (lambda d: d.update(random_init=True), "random_init: true cannot be carried over"),
    (lambda d: d["genome"].update(layer_granularity=7), "does not divide the model's 40 layers"),
    (lambda d: d["genome"].update(models=["org/hub-model", *d["genome"]["models"]]), None),
    (lambda d: d["genome"].update(models=[d["genome"]["models"][0] + "+some/lora"]), "LoRA adapter"),
    (lambda d: d["genome"].update(frobnicate=1), "unknown key"),
    (lambda d: d["genome"].pop("base_model"), "base_model is required for ties"),
])
def test_what_cannot_be_carried_over_is_refused_by_name(runs: dict, edit, message: str | None) -> None:
    cfg = runs["cases"]["ties_filters"]["config"]
    doc = yaml.safe_load(cfg.read_text())
    edit(doc)
    if message is None:  # a hub name: the layer count needs a local directory (base is local here, so it passes)
        space = convert(doc, root=cfg.parent, name="x")
        assert space["experts"][0].endswith("org/hub-model")
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        convert(doc, root=cfg.parent, name="x")


def test_the_cli_writes_a_space_that_validates_and_search_points_at_it(runs: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from evomerge.cli import app

    cfg = runs["cases"]["ties_filters"]["config"]
    out = tmp_path / "space.yaml"
    r = CliRunner().invoke(app, ["import-evolve", str(cfg), "--out", str(out), "--max-fevals", "30"])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "merge_method: ties" in text and "budget: 30" in text and "filters:" in text
    again = CliRunner().invoke(app, ["import-evolve", str(cfg), "--out", str(out)])
    assert again.exit_code != 0 and out.read_text() == text  # an existing file is kept
    from evomerge.space.schema import load_space

    with pytest.raises(ConfigError, match="is a mergekit-evolve config") as info:
        load_space(cfg)
    assert "evomerge import-evolve" in (info.value.hint or "")
