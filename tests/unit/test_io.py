"""evomerge.merge.io: safe, lazy reading of safetensors files and HF model directories."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import evomerge.merge.io as io_mod
from evomerge.errors import ConfigError, CorruptArtifactError, UnsafeArtifactError
from evomerge.merge.io import DTYPES, ModelDir, SafetensorsFile, TensorMeta, layer_index

ALL = {
    "f64": torch.randn(2, dtype=torch.float64),
    "f32": torch.randn(3, 4),
    "f16": torch.randn(5).half(),
    "bf16": torch.randn(2, 2, 2).bfloat16(),
    "i64": torch.arange(6).view(2, 3),
    "i32": torch.tensor([-7, 2**31 - 1], dtype=torch.int32),
    "i16": torch.tensor([[-300, 300]], dtype=torch.int16),
    "i8": torch.tensor([-1, 2], dtype=torch.int8),
    "u8": torch.tensor([255, 0], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 3),
}
if "F8_E4M3" in DTYPES:
    ALL["f8e4m3"] = torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn)
if "F8_E5M2" in DTYPES:
    ALL["f8e5m2"] = torch.tensor([0.25, 4.0]).to(torch.float8_e5m2)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality for every dtype (float8 has no torch.equal kernel on CPU)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.element_size() == 1 and a.dtype not in (torch.bool, torch.uint8, torch.int8):
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


class CountingOpen:
    """Replaces ``open`` inside evomerge.merge.io and counts the bytes read through it."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.bytes = 0

    def __call__(self, path, mode="r", *args, **kwargs):  # noqa: ANN001, ANN204
        fh = builtins.open(path, mode, *args, **kwargs)
        self.opened.append(Path(path).name)
        counter = self

        class Wrapped:
            def read(self, n=-1):  # noqa: ANN001, ANN202
                data = fh.read(n)
                counter.bytes += len(data)
                return data

            def readinto(self, buf):  # noqa: ANN001, ANN202
                got = fh.readinto(buf)
                counter.bytes += got or 0
                return got

            def __getattr__(self, name):  # noqa: ANN001, ANN204
                return getattr(fh, name)

            def __enter__(self):  # noqa: ANN204
                return self

            def __exit__(self, *exc):  # noqa: ANN002, ANN204
                fh.close()

        return Wrapped()


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingOpen:
    c = CountingOpen()
    monkeypatch.setattr(io_mod, "open", c, raising=False)
    return c


def _config(d: Path, **kw) -> None:
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2} | kw
    (d / "config.json").write_text(json.dumps(cfg))


def _model_dir(d: Path, tensors: dict[str, torch.Tensor], **cfg) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    _config(d, **cfg)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def test_round_trip_every_dtype(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    save_file(ALL, str(p), metadata={"format": "pt", "note": "hi"})
    with SafetensorsFile(p) as f:
        assert f.metadata == {"format": "pt", "note": "hi"}
        assert sorted(f.names) == sorted(ALL)
        for name, t in ALL.items():
            got = f.read(name)
            assert _same(got, t), name
            assert f.meta(name) == TensorMeta(name, t.dtype, tuple(t.shape), t.numel() * t.element_size())


def test_names_follow_file_offsets(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    save_file({"z": torch.zeros(4), "a": torch.ones(2), "m": torch.ones(1)}, str(p))
    with SafetensorsFile(p) as f:
        offs = [f._offsets[n][0] for n in f.names]
        assert offs == sorted(offs) and sorted(f.names) == ["a", "m", "z"]


def test_read_returns_an_owned_writable_tensor(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.arange(4.0)}, str(p))
    with SafetensorsFile(p) as f:
        t = f.read("a")
        t += 100  # must not fail (writable) nor leak into the next read
        assert f.read("a").tolist() == [0.0, 1.0, 2.0, 3.0]
        assert t.tolist() == [100.0, 101.0, 102.0, 103.0]
    assert t.sum().item() == 406.0  # still valid after the file is closed


def test_reads_only_the_requested_tensor_bytes(tmp_path: Path, counting: CountingOpen) -> None:
    p = tmp_path / "x.safetensors"
    save_file({"small": torch.ones(10), "big": torch.zeros(100_000)}, str(p))
    header = 8 + int.from_bytes(p.read_bytes()[:8], "little")
    with SafetensorsFile(p) as f:
        assert counting.bytes == header  # opening reads the header only
        assert f.read("small").sum().item() == 10.0
        assert counting.bytes == header + 40
        assert f.bytes_read == 40


def test_lazy_read_survives_damage_to_other_tensors(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.arange(8.0), "b": torch.ones(1000)}, str(p))
    f = SafetensorsFile(p)
    begin_b = f._data_start + f._offsets["b"][0]
    with open(p, "r+b") as fh:  # truncate away b after opening: a is still readable, b fails cleanly
        fh.truncate(begin_b + 10)
    assert f.read("a").tolist() == list(map(float, range(8)))
    with pytest.raises(CorruptArtifactError, match=r"x.safetensors.*'b': file ended after 10 of 4000 bytes"):
        f.read("b")
    f.close()


def test_bool_bytes_other_than_0_1_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    save_file({"b": torch.tensor([True, False])}, str(p))
    raw = bytearray(p.read_bytes())
    raw[-1] = 7
    p.write_bytes(bytes(raw))
    with SafetensorsFile(p) as f, pytest.raises(CorruptArtifactError, match="BOOL data"):
        f.read("b")


_DT = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(_DT), st.lists(st.integers(0, 5), min_size=0, max_size=3)), min_size=1, max_size=5
    ),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, specs, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        f"t{i}": (torch.randn(shape, generator=gen) * 50).to(dtype) for i, (dtype, shape) in enumerate(specs)
    }
    p = tmp_path_factory.mktemp("prop") / "x.safetensors"
    save_file(tensors, str(p))
    with SafetensorsFile(p) as f:
        assert all(_same(f.read(k), v) for k, v in tensors.items())


def test_model_dir_single_file(tmp_path: Path, counting: CountingOpen) -> None:
    tensors = {"model.embed_tokens.weight": torch.randn(40, 8), "model.layers.0.mlp.up_proj.weight": torch.randn(4, 8),
               "model.layers.1.mlp.up_proj.weight": torch.randn(4, 8)}  # the config's 2 layers
    d = _model_dir(tmp_path / "m", tensors, tie_word_embeddings=True)
    counting.bytes = 0
    with ModelDir(d) as m:
        header = 8 + int.from_bytes((d / "model.safetensors").read_bytes()[:8], "little")
        assert counting.bytes == (d / "config.json").stat().st_size + header  # no tensor data
        assert m.architecture == "LlamaForCausalLM" and m.tied_embeddings and m.num_layers == 2
        assert m.tensor_names == list(tensors)
        assert "model.embed_tokens.weight" in m and "nope" not in m
        assert m.meta("model.layers.0.mlp.up_proj.weight").shape == (4, 8)
        assert torch.equal(m.read("model.embed_tokens.weight"), tensors["model.embed_tokens.weight"])
        assert m.bytes_read == 40 * 8 * 4


def test_model_dir_config_fallbacks(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    save_file({"model.layers.0.w": torch.ones(1), "model.layers.4.w": torch.ones(1)}, str(d / "model.safetensors"))
    with ModelDir(d) as m:
        assert m.architecture == "qwen2" and m.num_layers == 5 and not m.tied_embeddings


def test_model_dir_reads_transformers_shards(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=40)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "m", max_shard_size=20_000)
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    state = model.state_dict()
    with ModelDir(tmp_path / "m") as m:
        assert len(m.files) > 1 and set(m.tensor_names) == set(state)
        for n in m.tensor_names:
            assert torch.equal(m.read(n), state[n]), n
        assert m.num_layers == 2 and m.architecture == "LlamaForCausalLM"


def test_model_safetensors_wins_over_other_files(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", {"w": torch.ones(2)})
    save_file({"lora": torch.ones(1)}, str(d / "adapter_model.safetensors"))
    with ModelDir(d) as m:
        assert m.tensor_names == ["w"]


def test_several_safetensors_without_index_refused(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    _config(d)
    save_file({"a": torch.ones(1)}, str(d / "part1.safetensors"))
    save_file({"b": torch.ones(1)}, str(d / "part2.safetensors"))
    with pytest.raises(CorruptArtifactError, match="2 .safetensors files .* no model.safetensors.index.json") as info:
        ModelDir(d)
    assert info.value.hint and "index" in info.value.hint


def _sharded(d: Path) -> Path:
    d.mkdir()
    _config(d)
    save_file({"a": torch.ones(2)}, str(d / "s1.safetensors"))
    save_file({"b": torch.ones(3)}, str(d / "s2.safetensors"))
    return d


def test_index_rules(tmp_path: Path) -> None:
    d = _sharded(tmp_path / "m")
    idx = d / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    with ModelDir(d) as m:
        assert m.tensor_names == ["a", "b"] and m.read("b").tolist() == [1.0, 1.0, 1.0]
    idx.write_text(json.dumps({"weight_map": {"a": "s1.safetensors"}}))  # a stray unlisted shard is ignored
    with ModelDir(d) as m:
        assert m.tensor_names == ["a"]
    idx.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "c": "s2.safetensors"}}))
    with pytest.raises(CorruptArtifactError, match=r"tensor 'c' is not in its shard s2.safetensors"):
        ModelDir(d)
    save_file({"a": torch.ones(2), "extra": torch.ones(1)}, str(d / "s1.safetensors"))
    idx.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    with pytest.raises(CorruptArtifactError, match=r"s1.safetensors: tensor 'extra' is not listed for this shard"):
        ModelDir(d)
    save_file({"a": torch.ones(2)}, str(d / "s1.safetensors"))
    idx.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}))
    with pytest.raises(CorruptArtifactError, match=r"tensor 'b' is not in its shard s1.safetensors"):
        ModelDir(d)
    idx.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s3.safetensors"}}))
    with pytest.raises(CorruptArtifactError, match="shard s3.safetensors is missing"):
        ModelDir(d)
    idx.write_text('{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}')
    with pytest.raises(CorruptArtifactError, match="duplicate key 'a'"):
        ModelDir(d)
    idx.write_text(json.dumps({"weight_map": ["a"]}))
    with pytest.raises(CorruptArtifactError, match="no weight_map"):
        ModelDir(d)
    idx.write_text(json.dumps({"weight_map": {"a": ["s1.safetensors"]}}))
    with pytest.raises(UnsafeArtifactError, match="not a plain .safetensors file name"):
        ModelDir(d)


def test_missing_and_invalid_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model directory not found"):
        ModelDir(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        ModelDir(tmp_path / "file")
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(ConfigError, match=r"config.json not found") as info:
        ModelDir(d)
    assert str(d) in str(info.value) and info.value.hint
    _config(d)
    with pytest.raises(ConfigError, match=r"no model weights \(\*.safetensors\) found") as info:
        ModelDir(d)
    assert info.value.hint


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{oops", "invalid JSON in config.json"),
        (b"\xff\xfe{}", "invalid JSON in config.json"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"architectures": "Llama"}', "architectures must be a non-empty list"),
        (b'{"hidden_size": 4}', "names no architecture"),
        (b'{"model_type": "llama", "num_hidden_layers": "two"}', "num_hidden_layers must be a non-negative integer"),
        (b'{"model_type": "llama", "model_type": "gpt2"}', "duplicate key 'model_type'"),
        (b'{"model_type": "' + b"x" * (5 * 2**20) + b'"}', "larger than the"),
    ],
)
def test_invalid_config(tmp_path: Path, content: bytes, needle: str) -> None:
    d = _model_dir(tmp_path / "m", {"w": torch.ones(1)})
    (d / "config.json").write_bytes(content)
    with pytest.raises(CorruptArtifactError, match=needle) as info:
        ModelDir(d)
    assert "config.json" in str(info.value) and info.value.hint


def test_config_fifo_does_not_block(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    os.mkfifo(d / "config.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        ModelDir(d)


def test_unknown_tensor_name_is_a_clear_error(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", {"w": torch.ones(1)})
    with ModelDir(d) as m, pytest.raises(Exception, match="no tensor named 'v'") as info:
        m.meta("v")
    assert str(d) in str(info.value)


def test_layer_index() -> None:
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("layers.3.attn.weight") == 3
    assert layer_index("model.embed_tokens.weight") is None
    assert layer_index("model.norm.weight") is None
    assert layer_index("model.mylayers.2.x") is None
