"""Safe reading and atomic streaming writing of model directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import ExportError, UnsafeArtifactError
from evomerge.merge.io import ModelDir, SafetensorsFile, TensorMeta, layer_index
from evomerge.merge.writer import ModelDirWriter, verify_manifest
from tests.conftest import save_tiny

ALL = {
    "f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2, 2).bfloat16(),
    "f64": torch.randn(2).double(), "i64": torch.arange(6).view(2, 3), "i8": torch.tensor([-1, 2], dtype=torch.int8),
    "u8": torch.tensor([255, 0], dtype=torch.uint8), "b": torch.tensor([True, False]), "empty": torch.zeros(0, 3),
}


def test_reads_what_safetensors_writes_every_dtype(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    save_file(ALL, str(p))
    f = SafetensorsFile(p)
    for name, t in ALL.items():
        got = f.read(name)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
        assert f.meta(name).nbytes == t.numel() * t.element_size()
    f.close()


def test_streaming_writer_round_trips_through_safetensors(tmp_path: Path) -> None:
    metas = [TensorMeta.of(k, v.dtype, tuple(v.shape)) for k, v in ALL.items()]
    with ModelDirWriter(tmp_path / "out") as w:
        tw = w.tensor_writer(metas)
        for k, v in ALL.items():
            tw.write(k, v)
        w.write_json("config.json", {"architectures": ["X"], "num_hidden_layers": 0})
    loaded = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in ALL.items())
    verify_manifest(tmp_path / "out")


def test_sharded_write_and_lazy_read(tmp_path: Path) -> None:
    tensors = {f"model.layers.{i}.w": torch.full((64,), float(i)) for i in range(6)}
    metas = [TensorMeta.of(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with ModelDirWriter(tmp_path / "m") as w:
        tw = w.tensor_writer(metas, max_shard_bytes=600)
        for k, v in tensors.items():
            tw.write(k, v)
        w.write_json("config.json", {"architectures": ["X"], "num_hidden_layers": 6})
    files = sorted(p.name for p in (tmp_path / "m").glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 256
    with ModelDir(tmp_path / "m") as m:
        assert m.tensor_names == list(tensors)
        assert torch.equal(m.read("model.layers.4.w"), tensors["model.layers.4.w"])
        assert m.num_layers == 6


def test_writer_checks_order_shape_and_completeness(tmp_path: Path) -> None:
    metas = [TensorMeta.of("a", torch.float32, (2,)), TensorMeta.of("b", torch.float32, (2,))]
    with pytest.raises(ExportError, match="does not match the plan"), ModelDirWriter(tmp_path / "o1") as w:
        w.tensor_writer(metas).write("b", torch.zeros(2))
    with pytest.raises(ExportError, match="does not match the plan"), ModelDirWriter(tmp_path / "o2") as w:
        w.tensor_writer(metas).write("a", torch.zeros(3))
    with pytest.raises(ExportError, match="only 1 of 2 tensors"), ModelDirWriter(tmp_path / "o3") as w:
        w.tensor_writer(metas).write("a", torch.zeros(2))
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())


@pytest.mark.parametrize("name", ["../x", "/abs", "sub/x", ""])
def test_writer_refuses_path_escapes(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeArtifactError), ModelDirWriter(tmp_path / "out") as w:
        w.write_text(name, "x")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_written_model_gives_identical_logits_in_transformers(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    src = save_tiny(tmp_path / "src")
    with ModelDir(src) as m, ModelDirWriter(tmp_path / "copy") as w:
        metas = [m.meta(n) for n in m.tensor_names]
        tw = w.tensor_writer(metas, max_shard_bytes=30_000)
        for n in m.tensor_names:
            tw.write(n, m.read(n))
        w.copy_file(src / "config.json", "config.json")
    a = LlamaForCausalLM.from_pretrained(str(src), use_safetensors=True)
    b = LlamaForCausalLM.from_pretrained(str(tmp_path / "copy"), use_safetensors=True)
    ids = torch.tensor([[1, 4, 9, 16, 25]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_layer_index() -> None:
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("layers.3.x") == 3
    assert layer_index("model.embed_tokens.weight") is None
    assert layer_index("model.norm.weight") is None
