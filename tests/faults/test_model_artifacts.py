"""Failure tests of docs/reliability.md (promises 5, 6, 13): corrupt files, mismatched sources, path escapes,
pickle-only directories, disk full. Each gets a clear error and nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from evomerge.errors import (
    ConfigError,
    CorruptArtifactError,
    ExportError,
    ShapeMismatchError,
    UnsafeArtifactError,
)
from evomerge.merge.io import ModelDir, SafetensorsFile
from evomerge.merge.materialize import merge_to_dir
from evomerge.merge.writer import verify_manifest
from evomerge.recipe import recipe_from_dict
from tests.conftest import save_tiny

pytestmark = pytest.mark.faults


def _header_file(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + raw + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}


@pytest.mark.parametrize(
    ("header", "data", "length", "needle"),
    [
        (b"", b"", None, "shorter than the 8-byte"),
        (GOOD, bytes(16), 2**40, "exceeds the"),
        (GOOD, bytes(16), 10_000, "runs past the end"),
        (b"{not json", bytes(16), None, "not valid UTF-8 JSON"),
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8), None, "duplicate key 'a'"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(16), None, "overlap"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), None, "needs 12"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8), None, "past the 8-byte data section"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), None, "unsupported dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), None, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "lacks dtype, shape or data_offsets"),
        ({"__metadata__": {"x": 1}, **GOOD}, bytes(16), None, "__metadata__"),
    ],
)
def test_corrupt_safetensors_named_clearly(tmp_path: Path, header, data, length, needle) -> None:
    if header == b"":
        p = tmp_path / "m.safetensors"
        p.write_bytes(b"abc")
    else:
        p = _header_file(tmp_path / "m.safetensors", header, data, length)
    with pytest.raises(CorruptArtifactError, match=needle) as info:
        SafetensorsFile(p)
    assert str(p) in str(info.value)


def test_valid_file_reads_one_tensor_at_a_time(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.arange(4.0), "b": torch.ones(3, dtype=torch.bfloat16)}, str(p))
    f = SafetensorsFile(p)
    assert f.read("a").tolist() == [0.0, 1.0, 2.0, 3.0]
    assert f.read("b").dtype == torch.bfloat16
    f.close()


def test_truncated_data_is_caught_when_reading(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.arange(1000.0)}, str(p))
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])
    with pytest.raises(CorruptArtifactError, match="past the"):
        SafetensorsFile(p)


def test_bit_flip_in_export_caught_by_manifest(tiny_models, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    r = recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(tiny_models["base"]),
                          "models": [{"model": str(tiny_models["expert_a"])}]})
    merge_to_dir(r, out)
    verify_manifest(out)
    weights = out / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0x10
    weights.write_bytes(bytes(raw))
    with pytest.raises(CorruptArtifactError, match="model.safetensors: SHA-256 differs"):
        verify_manifest(out)


@pytest.mark.parametrize("shard", ["../evil.safetensors", "/tmp/abs.safetensors", "sub/x.safetensors", "x.bin"])
def test_index_shard_names_cannot_escape(tmp_path: Path, shard: str) -> None:
    d = save_tiny(tmp_path / "m")
    names = list(ModelDir(d).tensor_names)
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))
    with pytest.raises(UnsafeArtifactError, match="not a plain .safetensors file name"):
        ModelDir(d)


def test_index_pointing_at_missing_tensor(tmp_path: Path) -> None:
    d = save_tiny(tmp_path / "m")
    names = ModelDir(d).tensor_names
    wmap = dict.fromkeys(names, "model.safetensors") | {"model.extra.weight": "model.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    with pytest.raises(CorruptArtifactError, match="model.extra.weight"):
        ModelDir(d)


def test_pickle_only_directory_refused_with_convert_hint(tmp_path: Path) -> None:
    d = tmp_path / "legacy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 never unpickled")
    with pytest.raises(UnsafeArtifactError, match="pickle") as info:
        ModelDir(d)
    assert "safe_serialization=True" in str(info.value)


def test_missing_directory_and_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model directory not found"):
        ModelDir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json not found"):
        ModelDir(tmp_path / "empty")


def _no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, name):  # noqa: ANN001
        raise AssertionError(f"tensor data read during planning: {name}")

    monkeypatch.setattr(SafetensorsFile, "read", refuse)


@pytest.mark.parametrize(
    ("variant", "needle"),
    [
        ({"hidden_size": 48}, r"hidden_size is 32 in .*base but 48 in .*other"),
        ({"extra_chars": "XYZ"}, "vocabularies differ: config vocab_size"),
        ({"arch": "qwen2"}, r"architectures differ: .*base is LlamaForCausalLM, .*other is Qwen2ForCausalLM"),
        ({"num_hidden_layers": 3}, r"num_hidden_layers is 2 in .*base but 3 in .*other"),
    ],
)
def test_mismatched_sources_fail_at_plan_time_without_reading(tmp_path, monkeypatch, variant, needle) -> None:
    base = save_tiny(tmp_path / "base")
    other = save_tiny(tmp_path / "other", seed=1, **variant)
    out = tmp_path / "out"
    _no_reads(monkeypatch)
    r = recipe_from_dict({"merge_method": "ties", "base_model": str(base), "models": [{"model": str(other)}]})
    with pytest.raises(ShapeMismatchError, match=needle):
        merge_to_dir(r, out)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_shape_mismatch_names_tensor_models_and_shapes(tmp_path, monkeypatch) -> None:
    base = save_tiny(tmp_path / "base")
    other = save_tiny(tmp_path / "other", seed=1)
    with ModelDir(other) as src:
        tensors = {n: src.read(n) for n in src.tensor_names}
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(65, 32)
    save_file(tensors, str(other / "model.safetensors"))
    _no_reads(monkeypatch)
    r = recipe_from_dict({"merge_method": "linear", "base_model": str(base), "models": [{"model": str(other)}]})
    with pytest.raises(ShapeMismatchError, match=r"model.layers.1.mlp.up_proj.weight: .*base has \(64, 32\), .*other has \(65, 32\)"):
        merge_to_dir(r, tmp_path / "out")


def test_missing_tensor_named(tmp_path, monkeypatch) -> None:
    base = save_tiny(tmp_path / "base")
    other = save_tiny(tmp_path / "other", seed=1)
    with ModelDir(other) as src:
        tensors = {n: src.read(n) for n in src.tensor_names if n != "model.norm.weight"}
    save_file(tensors, str(other / "model.safetensors"))
    _no_reads(monkeypatch)
    r = recipe_from_dict({"merge_method": "linear", "base_model": str(base), "models": [{"model": str(other)}]})
    with pytest.raises(ShapeMismatchError, match=r"other lacks tensor\(s\) that .*base has: model.norm.weight"):
        merge_to_dir(r, tmp_path / "out")


def test_dtype_mismatch_needs_explicit_dtype(tmp_path, tiny_models) -> None:
    half = tmp_path / "half"
    shutil.copytree(tiny_models["expert_a"], half)
    with ModelDir(half) as src:
        tensors = {n: src.read(n).to(torch.bfloat16) for n in src.tensor_names}
    save_file(tensors, str(half / "model.safetensors"))
    spec = {"merge_method": "task_arithmetic", "base_model": str(tiny_models["base"]), "models": [{"model": str(half)}]}
    with pytest.raises(ShapeMismatchError, match="set `dtype:`"):
        merge_to_dir(recipe_from_dict(spec), tmp_path / "out")
    merge_to_dir(recipe_from_dict(spec | {"dtype": "float32"}), tmp_path / "out")
    with ModelDir(tmp_path / "out") as m:
        assert {m.meta(n).dtype for n in m.tensor_names} == {torch.float32}


def test_existing_output_is_kept_without_overwrite(tiny_models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = recipe_from_dict({"merge_method": "linear", "models": [{"model": str(tiny_models["expert_a"])}]})
    with pytest.raises(ExportError, match="already exists"):
        merge_to_dir(r, out)
    assert (out / "precious.txt").read_text() == "keep me"
    with pytest.raises(ExportError, match="it has no evomerge-manifest.json"):
        merge_to_dir(r, out, overwrite=True)  # --overwrite replaces only a directory evomerge wrote
    assert (out / "precious.txt").read_text() == "keep me"
    merge_to_dir(r, tmp_path / "mine")
    merge_to_dir(r, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "model.safetensors").exists()


DISK_FULL = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from evomerge.errors import ExportError
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import recipe_from_dict
r = recipe_from_dict({"merge_method": "task_arithmetic", "base_model": sys.argv[1], "models": [{"model": sys.argv[2]}]})
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    merge_to_dir(r, sys.argv[3])
except ExportError as e:
    print("EXPORT-ERROR", e.message)
    sys.exit(3)
"""


def test_disk_full_leaves_nothing_and_is_retryable(tiny_models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tiny_models["base"]), str(tiny_models["expert_a"]), str(out)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 3, proc.stderr
    assert "disk full while writing" in proc.stdout
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    r = recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(tiny_models["base"]),
                          "models": [{"model": str(tiny_models["expert_a"])}]})
    merge_to_dir(r, out)
    verify_manifest(out)
