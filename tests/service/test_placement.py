"""Where GPU workers keep the sources (issue 20, evomerge/runner/placement.py): the per-GPU
arithmetic, sizes read from real headers, `validate` printing the plan, and a search whose
candidates cannot fit refused before any run is written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evomerge import api
from evomerge.errors import ConfigError
from evomerge.merge.io import ModelDir
from evomerge.runner.placement import GIB, SourceSizes, parse_bytes, plan
from tests.conftest import run_cli
from tests.service.helpers import write_space

# a 7B-class Llama in bf16, base + 3 experts: 13.0 GiB per model, 128256 x 4096 embeddings
SEVEN_B = SourceSizes(sources=4 * 14_000_000_000, candidate=14_000_000_000, largest=128_256 * 4096, count=4)


def test_sources_go_on_the_gpu_when_they_fit_else_stay_on_the_host_else_the_run_is_refused() -> None:
    kv = 8 * GIB
    engine = SEVEN_B.candidate + kv
    scratch = SEVEN_B.largest * 4 * 5
    on = plan(SEVEN_B, gpus_per_worker=1, device_bytes=141 * GIB, kv_bytes=kv)  # an H200
    assert on.sources_on == "device" and on.per_rank_device == engine + SEVEN_B.sources + scratch
    assert on.host_per_node == 0 and "sources on the GPU" in on.summary
    host = plan(SEVEN_B, gpus_per_worker=1, device_bytes=40 * GIB, kv_bytes=kv)  # too small for 4 sources
    assert host.sources_on == "host" and host.per_rank_device == engine + scratch
    assert host.host_per_node == SEVEN_B.sources and "mapped once per node" in host.summary
    exact = engine + scratch  # the boundary: exactly enough for a streamed plan
    assert plan(SEVEN_B, gpus_per_worker=1, device_bytes=exact, kv_bytes=kv).sources_on == "host"
    with pytest.raises(ConfigError, match="a candidate does not fit its GPUs") as err:
        plan(SEVEN_B, gpus_per_worker=1, device_bytes=exact - 1, kv_bytes=kv)
    assert "--gpus-per-worker" in err.value.hint


def test_tensor_parallel_divides_weights_sources_and_scratch_by_the_gpus() -> None:
    one = plan(SEVEN_B, gpus_per_worker=1, device_bytes=200 * GIB, kv_bytes=0)
    four = plan(SEVEN_B, gpus_per_worker=4, device_bytes=200 * GIB, kv_bytes=0)
    assert four.tp == 4 and four.sources_on == "device"
    assert four.per_rank_device == pytest.approx(one.per_rank_device / 4, abs=4 * 5)
    # a 70B base + 3 experts on 8 x 80 GiB: the sources stay on the host, the candidate fits
    seventy = SourceSizes(sources=4 * 140 * 10**9, candidate=140 * 10**9, largest=128_256 * 8192, count=4)
    p = plan(seventy, gpus_per_worker=8, device_bytes=80 * GIB)
    assert p.sources_on == "host" and p.per_rank_device <= 80 * GIB
    with pytest.raises(ConfigError):
        plan(seventy, gpus_per_worker=1, device_bytes=80 * GIB)


def test_sizes_come_from_the_headers(tiny_sources: Path) -> None:
    paths = [str(tiny_sources / n) for n in ("base", "a", "b")]
    sizes = SourceSizes.of(paths)
    metas = []
    for p in paths:
        with ModelDir(p) as md:
            metas.append([md.meta(n) for n in md.tensor_names])
    assert sizes.count == 3 and sizes.sources == sum(m.nbytes for ms in metas for m in ms)
    assert sizes.candidate == sum(m.nbytes for m in metas[0])
    assert sizes.largest == max(math.prod(m.shape) for ms in metas for m in ms)


@pytest.mark.parametrize(("text", "size"), [("80GiB", 80 * GIB), ("80G", 80 * GIB), ("141GB", 141 * 10**9),
                                            ("24576MiB", 24 * GIB), ("1000", 1000)])
def test_device_memory_sizes(text: str, size: int) -> None:
    assert parse_bytes(text) == size


def test_validate_prints_the_plan_and_search_refuses_a_run_that_cannot_fit(tiny_sources: Path,
                                                                          tmp_path: Path) -> None:
    space = write_space(tmp_path, tiny_sources, budget=4)
    out = run_cli("validate", str(space), "--gpus-per-worker", "1", "--device-memory", "80GiB", cwd=tmp_path)
    assert out.returncode == 0 and "placement: sources on the GPU" in out.stdout, out.stderr
    bad = run_cli("validate", str(space), "--gpus-per-worker", "1", "--device-memory", "lots", cwd=tmp_path)
    assert bad.returncode == 2 and "--device-memory 'lots' is not a size" in bad.stderr
    db = tmp_path / "a.db"
    tiny = run_cli("search", "--space", str(space), "--db", f"sqlite:///{db}", "--backend", "local", "--engine",
                   "synthetic", "--gpus-per-worker", "1", "--device-memory", "1000", cwd=tmp_path)
    assert tiny.returncode != 0 and "a candidate does not fit its GPUs" in tiny.stderr, tiny.stderr
    assert "Traceback" not in tiny.stderr
    assert not db.exists() or api.runs(f"sqlite:///{db}") == []  # nothing written


def test_a_vllm_worker_with_several_gpus_runs_one_tensor_parallel_engine_over_them() -> None:
    from evomerge.runner.service import engine_options

    assert engine_options("vllm", {}, 4.0) == {"tensor_parallel": 4}
    assert engine_options("vllm", {"tensor_parallel": 2, "kv_cache_gib": 4}, 4.0) == {"tensor_parallel": 2, "kv_cache_gib": 4}
    assert engine_options("vllm", {}, 1.0) == {}  # one GPU: one rank
    assert engine_options("hf", {}, 4.0) == {}  # transformers has no tensor-parallel engine here
