"""Shared fixtures: tiny real checkpoints written with transformers, and the trained zoo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def save_tiny(path: Path, *, seed: int = 0, **shape_kw) -> Path:
    """A small random Llama (or Qwen2) checkpoint with the zoo tokenizer: real files, fast to make."""
    from evomerge import zoo

    defaults = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2)
    defaults.update(shape_kw)
    shape = zoo.ModelShape(**defaults)
    model = zoo.new_model(shape, seed)
    model.save_pretrained(path)
    zoo.build_tokenizer(shape.extra_chars).save_pretrained(path)
    return path


@pytest.fixture
def tiny_models(tmp_path: Path) -> dict[str, Path]:
    """base + two 'experts' (base plus small deterministic noise), all Llama, hidden 32, 2 layers."""
    import torch

    from evomerge.merge.io import ModelDir

    base = save_tiny(tmp_path / "base", seed=0)
    out = {"base": base}
    for i, name in enumerate(["expert_a", "expert_b"]):
        from safetensors.torch import save_file

        d = tmp_path / name
        save_tiny(d, seed=0)
        gen = torch.Generator().manual_seed(10 + i)
        with ModelDir(base) as src:
            tensors = {n: src.read(n) + 0.05 * torch.randn(src.meta(n).shape, generator=gen) for n in src.tensor_names}
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        out[name] = d
    return out


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """The trained zoo (built once per machine into the cache; about 2-3 minutes on 2 cores)."""
    from evomerge.zoo import ensure_zoo

    return ensure_zoo(log=None)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    for i, name in enumerate(["base", "a", "b"]):
        save_tiny(root / name, seed=i)
    return root


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per test module (about 4 s to start), small object store; module-scoped so
    the `ray start` cluster test never runs beside it."""
    import ray

    from evomerge.runner.ray_backend import worker_env

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=4, object_store_memory=128 * 2**20, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": worker_env()})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server URL: EVOMERGE_TEST_PG_URL, else a throwaway cluster for the session.
    Missing binaries skip the tests, or fail them when EVOMERGE_REQUIRE_PG=1 (CI)."""
    url = os.environ.get("EVOMERGE_TEST_PG_URL")
    if url:
        yield url
        return
    from tests.pg import Cluster, pg_bin

    if pg_bin() is None:
        msg = "PostgreSQL server binaries not found; run scripts/postgres.sh"
        if os.environ.get("EVOMERGE_REQUIRE_PG") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    cluster = Cluster()
    try:
        yield cluster.url()
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """A fresh empty database on the test server."""
    from tests.pg import new_database

    return new_database(pg_server)


def run_cli(*args: str, cwd: Path, timeout: float = 300, **env_extra: str):
    """Run ``python -m evomerge.cli ARGS`` in a subprocess (offline, this checkout on the path)."""
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **env_extra)
    return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
