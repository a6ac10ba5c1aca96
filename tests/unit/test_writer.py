"""evomerge.merge.writer: atomic, streaming export of HF model directories with a manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from evomerge.errors import CorruptArtifactError, ExportError, UnsafeArtifactError
from evomerge.merge.io import DTYPES, ModelDir, SafetensorsFile, TensorMeta
from evomerge.merge.writer import MANIFEST, ModelDirWriter, verify_manifest

ALL = {
    "f64": torch.randn(2, dtype=torch.float64),
    "f32": torch.randn(3, 4),
    "f16": torch.randn(5).half(),
    "bf16": torch.randn(2, 2, 2).bfloat16(),
    "i64": torch.arange(6).view(2, 3),
    "i32": torch.tensor([-7, 9], dtype=torch.int32),
    "i16": torch.tensor([[-300, 300]], dtype=torch.int16),
    "i8": torch.tensor([-1, 2], dtype=torch.int8),
    "u8": torch.tensor([255, 0], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 3),
    "noncontig": torch.arange(12.0).view(3, 4).t(),
}
if "F8_E4M3" in DTYPES:
    ALL["f8"] = torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn)


def _metas(tensors: dict[str, torch.Tensor]) -> list[TensorMeta]:
    return [TensorMeta.of(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1).to(torch.uint8)


def _write(out: Path, tensors: dict[str, torch.Tensor], **kw) -> None:
    with ModelDirWriter(out) as w:
        tw = w.tensor_writer(_metas(tensors), **kw)
        for k, v in tensors.items():
            tw.write(k, v)
        layers = {int(k.split(".")[2]) for k in tensors if k.startswith("model.layers.")}
        w.write_json("config.json", {"architectures": ["X"], "num_hidden_layers": max(layers, default=-1) + 1})


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_round_trip_every_dtype_through_safetensors(tmp_path: Path) -> None:
    _write(tmp_path / "out", ALL)
    loaded = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(loaded) == set(ALL)
    for k, v in ALL.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert torch.equal(_bits(loaded[k]), _bits(v)), k
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    with ModelDir(tmp_path / "out") as m:  # and through our own reader
        assert m.tensor_names == list(ALL)
        assert all(torch.equal(_bits(m.read(k)), _bits(v)) for k, v in ALL.items())
    raw = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert int.from_bytes(raw[:8], "little") % 8 == 0  # data section 8-byte aligned
    verify_manifest(tmp_path / "out")
    assert _leftovers(tmp_path) == []


def test_sharded_layout_matches_hf(tmp_path: Path) -> None:
    tensors = {f"model.layers.{i}.w": torch.full((64,), float(i)) for i in range(5)}
    tensors["model.big"] = torch.ones(1000)  # larger than a shard: gets one of its own
    _write(tmp_path / "m", tensors, max_shard_bytes=600)
    d = tmp_path / "m"
    files = sorted(p.name for p in d.glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)]
    assert not (d / "model.safetensors").exists()
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 256 + 4000
    assert index["weight_map"]["model.big"] == "model-00004-of-00004.safetensors"
    assert index["weight_map"]["model.layers.0.w"] == index["weight_map"]["model.layers.1.w"]
    merged = {}
    for f in files:
        merged |= load_file(str(d / f))
    assert all(torch.equal(merged[k], v) for k, v in tensors.items())
    with ModelDir(d) as m:
        assert m.tensor_names == list(tensors)
        assert torch.equal(m.read("model.layers.4.w"), tensors["model.layers.4.w"])
        assert m.num_layers == 5  # from the config written beside the shards
    manifest = json.loads((d / MANIFEST).read_text())["files"]
    assert set(manifest) == {*files, "model.safetensors.index.json", "config.json"}
    assert all(hashlib.sha256((d / f).read_bytes()).hexdigest() == h for f, h in manifest.items())


def test_tensors_are_streamed_to_disk_as_written(tmp_path: Path) -> None:
    tensors = {"a": torch.ones(2**18), "b": torch.ones(2**18)}
    with ModelDirWriter(tmp_path / "out") as w:
        tw = w.tensor_writer(_metas(tensors))
        tw.write("a", tensors["a"])
        shard = w.tmp / "model.safetensors"
        assert shard.stat().st_size >= 2**20  # a's megabyte is on disk, not held in memory
        assert not (tmp_path / "out").exists()  # nothing visible before the end
        tw.write("b", tensors["b"])
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > 2 * 2**20


def test_temp_dir_beside_target_and_atomic_publish(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "out"
    with ModelDirWriter(out) as w:
        assert w.tmp.parent == out.parent and w.tmp.name.startswith(".out.tmp-")
        w.write_text("README.md", "hi")
        w.tensor_writer([]).close()
        assert not out.exists()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", MANIFEST, "model.safetensors"]
    assert load_file(str(out / "model.safetensors")) == {}
    assert _leftovers(out.parent) == []


def test_order_shape_dtype_and_completeness_checked(tmp_path: Path) -> None:
    metas = [TensorMeta.of("a", torch.float32, (2,)), TensorMeta.of("b", torch.float32, (2,))]
    cases = [
        (lambda tw: tw.write("b", torch.zeros(2)), r"'b' .* does not match the plan .*expected 'a'"),
        (lambda tw: tw.write("a", torch.zeros(3)), r"'a' \(3,\) .* expected 'a' \(2,\)"),
        (lambda tw: tw.write("a", torch.zeros(2, dtype=torch.float16)), "torch.float16 does not match"),
        (lambda tw: tw.write("a", torch.zeros(2)), r"only 1 of 2 tensors .* first missing: 'b'"),
    ]
    for i, (action, needle) in enumerate(cases):
        out = tmp_path / f"o{i}"
        with pytest.raises(ExportError, match=needle) as info, ModelDirWriter(out) as w:
            action(w.tensor_writer(metas))
        assert info.value.hint
        assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_extra_tensor_after_the_plan_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="all 1 tensors"), ModelDirWriter(tmp_path / "o") as w:
        tw = w.tensor_writer([TensorMeta.of("a", torch.float32, (1,))])
        tw.write("a", torch.zeros(1))
        tw.write("a", torch.zeros(1))


def test_plan_checked_up_front(tmp_path: Path) -> None:
    with ModelDirWriter(tmp_path / "o") as w:
        with pytest.raises(ExportError, match="duplicated or reserved"):
            w.tensor_writer([TensorMeta.of("a", torch.float32, (1,))] * 2)
        with pytest.raises(ExportError, match="cannot be stored"):
            w.tensor_writer([TensorMeta.of("c", torch.complex64, (1,))])
        w.tensor_writer([]).close()
        with pytest.raises(ExportError, match="called twice"):
            w.tensor_writer([])


def test_untrusted_nbytes_in_metas_is_recomputed(tmp_path: Path) -> None:
    with ModelDirWriter(tmp_path / "o") as w:
        tw = w.tensor_writer([TensorMeta("a", torch.float32, (3,), 0)])  # materialize passes nbytes=0
        tw.write("a", torch.arange(3.0))
    assert SafetensorsFile(tmp_path / "o" / "model.safetensors").read("a").tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("name", ["../x", "/abs", "sub/x", "", ".", "..", "a\\b", "nul\x00"])
def test_relnames_cannot_escape(tmp_path: Path, name: str) -> None:
    for op in ("text", "json", "copy"):
        with pytest.raises(UnsafeArtifactError, match="not a plain file name") as info, ModelDirWriter(tmp_path / "out") as w:
            if op == "text":
                w.write_text(name, "x")
            elif op == "json":
                w.write_json(name, {})
            else:
                w.copy_file(Path(__file__), name)
        assert info.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_duplicate_and_reserved_names_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="written twice or is reserved"), ModelDirWriter(tmp_path / "o") as w:
        w.write_text("a.txt", "1")
        w.write_text("a.txt", "2")
    with pytest.raises(ExportError, match="reserved"), ModelDirWriter(tmp_path / "o") as w:
        w.write_json(MANIFEST, {})
    with pytest.raises(ExportError, match="model.safetensors was already written"), ModelDirWriter(tmp_path / "o") as w:
        w.write_text("model.safetensors", "x")
        w.tensor_writer([])
    assert not (tmp_path / "o").exists()


def test_failure_in_body_removes_temp_and_propagates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom"), ModelDirWriter(tmp_path / "out") as w:
        tw = w.tensor_writer(_metas({"a": torch.ones(4)}))
        tw.write("a", torch.ones(4))
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_existing_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ModelDirWriter(out) as w:  # only a directory evomerge wrote is replaced (tests/faults/test_overwrite.py)
        w.write_text("old.txt", "old")
    with pytest.raises(ExportError, match="already exists") as info:
        ModelDirWriter(out)
    assert "--overwrite" in (info.value.hint or "")
    with ModelDirWriter(out, overwrite=True) as w:
        w.write_text("new.txt", "new")
        assert (out / "old.txt").exists()  # old content stays until the new one is complete
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "new.txt"]
    assert _leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        ModelDirWriter(tmp_path / "file", overwrite=True)


def test_relative_and_degenerate_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with ModelDirWriter("sub/../rel") as w:
        w.write_text("a.txt", "x")
    assert (tmp_path / "rel" / "a.txt").read_text() == "x" and not (tmp_path / "sub").exists()
    with pytest.raises(ExportError, match="cannot export to '/'"):
        ModelDirWriter("/", overwrite=True)
    with pytest.raises(ExportError, match="already exists"):
        ModelDirWriter(".")


def test_copy_file_and_manifest(tmp_path: Path) -> None:
    src = tmp_path / "tok.json"
    src.write_text('{"t": 1}')
    with ModelDirWriter(tmp_path / "out") as w:
        w.copy_file(src, "tokenizer.json")
        w.write_json("config.json", {"b": 1, "a": [1, 2]})
    out = tmp_path / "out"
    assert (out / "tokenizer.json").read_text() == '{"t": 1}'
    assert json.loads((out / "config.json").read_text()) == {"a": [1, 2], "b": 1}
    verify_manifest(out)
    (out / "tokenizer.json").unlink()
    with pytest.raises(CorruptArtifactError, match=r"tokenizer.json: listed in the manifest but missing"):
        verify_manifest(out)
    (out / MANIFEST).unlink()
    with pytest.raises(CorruptArtifactError, match="evomerge-manifest.json: missing or unreadable manifest"):
        verify_manifest(out)
    (out / MANIFEST).write_text('{"files": []}')
    with pytest.raises(CorruptArtifactError, match="invalid manifest"):
        verify_manifest(out)


def test_manifest_ignores_a_copied_stale_manifest(tmp_path: Path) -> None:
    _write(tmp_path / "a", {"w": torch.ones(2)})
    with ModelDirWriter(tmp_path / "b") as w:
        w.tensor_writer(_metas({"w": torch.ones(2)})).write("w", torch.ones(2))
        w.copy_file(tmp_path / "a" / "config.json", "config.json")
    verify_manifest(tmp_path / "b")


@pytest.mark.parametrize("max_shard_bytes", [2 * 2**30, 20_000])
def test_transformers_loads_the_export_with_identical_logits(tmp_path: Path, max_shard_bytes: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=40, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "src", safe_serialization=True)
    src = tmp_path / "src"
    with ModelDir(src) as m, ModelDirWriter(tmp_path / "copy") as w:
        tw = w.tensor_writer([m.meta(n) for n in m.tensor_names], max_shard_bytes=max_shard_bytes)
        for n in m.tensor_names:
            tw.write(n, m.read(n))
        w.copy_file(src / "config.json", "config.json")
    assert (tmp_path / "copy" / "model.safetensors.index.json").exists() == (max_shard_bytes == 20_000)
    verify_manifest(tmp_path / "copy")
    a = LlamaForCausalLM.from_pretrained(str(src), use_safetensors=True).eval()
    b = LlamaForCausalLM.from_pretrained(str(tmp_path / "copy"), use_safetensors=True).eval()
    ids = torch.tensor([[1, 4, 9, 16, 25, 39]])
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert la.shape == (1, 6, 40) and torch.equal(la, lb)


def test_background_writer_writes_the_same_bytes_and_hashes_them_as_it_goes(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(300, 70, generator=gen) for _ in range(7)]
    metas = [TensorMeta.of(f"w{i}", t.dtype, tuple(t.shape)) for i, t in enumerate(tensors)]
    for mode in ("inline", "bg"):
        with ModelDirWriter(tmp_path / mode) as w:
            tw = w.tensor_writer(metas, max_shard_bytes=200_000, background=mode == "bg")  # several shards
            for m, t in zip(metas, tensors, strict=True):
                tw.write(m.name, t)
        verify_manifest(tmp_path / mode)
    shards = sorted(p.name for p in (tmp_path / "bg").glob("*.safetensors"))
    assert len(shards) > 1
    for name in shards:
        a, b = (tmp_path / "inline" / name).read_bytes(), (tmp_path / "bg" / name).read_bytes()
        assert a == b
    manifest = json.loads((tmp_path / "bg" / "evomerge-manifest.json").read_text())
    for name in shards:
        assert manifest["files"][name] == hashlib.sha256((tmp_path / "bg" / name).read_bytes()).hexdigest()
