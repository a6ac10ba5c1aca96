"""Failure tests of docs/reliability.md (promises 5, 6, 13) at the IO layer: corrupt, truncated or
bit-flipped safetensors, mismatched sources (from headers alone, and a merge planned over them),
path escapes in index.json, pickle-only directories, disk full and existing targets. Each gives a
clear error naming the file (and tensor/models), and leaves nothing half-written."""

from __future__ import annotations

import builtins
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import evomerge.merge.io as io_mod
from evomerge.errors import CorruptArtifactError, ExportError, ShapeMismatchError, UnsafeArtifactError
from evomerge.merge.compat import check_compatible
from evomerge.merge.io import ModelDir, SafetensorsFile, TensorMeta
from evomerge.merge.materialize import merge_to_dir
from evomerge.merge.writer import ModelDirWriter, verify_manifest
from evomerge.recipe import recipe_from_dict
from tests.conftest import save_tiny

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


def _raw_file(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + raw + data)
    return path


def _t(dtype: str = "F32", shape: list | None = None, offs: list | None = None) -> dict:
    return {"dtype": dtype, "shape": [2] if shape is None else shape, "data_offsets": [0, 8] if offs is None else offs}


CORRUPT = {
    "short file": (b"abc", None, None, "only 3 bytes, shorter than the 8-byte header length"),
    "oversized header": ({"a": _t()}, bytes(8), 2**62, r"header of \d+ bytes exceeds the 104857600-byte limit"),
    "header past end": ({"a": _t()}, bytes(8), 5000, "runs past the end"),
    "bad json": (b'{"a": {"dtype": "F32",', bytes(8), None, "not valid UTF-8 JSON"),
    "not utf8": (b'{"\xff": 1}', bytes(8), None, "not valid UTF-8 JSON"),
    "deep json": (b"[" * 100_000 + b"]" * 100_000, b"", None, "not valid UTF-8 JSON"),
    "not an object": (b"[1, 2]", b"", None, "header is not a JSON object"),
    "duplicate keys": (b'{"a": ' + json.dumps(_t()).encode() + b', "a": ' + json.dumps(_t()).encode() + b"}",
                       bytes(8), None, "duplicate key 'a'"),
    "overlapping offsets": ({"a": _t(offs=[0, 8]), "b": _t(offs=[4, 12])}, bytes(16), None, "'a' and 'b' overlap"),
    "wrong byte count": ({"a": _t(shape=[3], offs=[0, 8])}, bytes(8), None, "spans 8 bytes but F32\\[3\\] needs 12"),
    "offset beyond end": ({"a": _t(shape=[4], offs=[0, 16])}, bytes(8), None, "ends at byte 16, past the 8-byte data"),
    "unknown dtype": ({"a": _t(dtype="Q4_K")}, bytes(8), None, "unsupported dtype 'Q4_K'"),
    "negative dim": ({"a": _t(shape=[-2])}, bytes(8), None, "invalid shape"),
    "bool dim": ({"a": _t(shape=[True])}, bytes(8), None, "invalid shape"),
    "float dim": ({"a": _t(shape=[2.0])}, bytes(8), None, "invalid shape"),
    "inverted offsets": ({"a": _t(offs=[8, 0])}, bytes(8), None, "invalid data_offsets"),
    "three offsets": ({"a": _t(offs=[0, 4, 8])}, bytes(8), None, "invalid data_offsets"),
    "missing field": ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "lacks dtype, shape or data_offsets"),
    "entry not object": ({"a": [1]}, bytes(8), None, "lacks dtype, shape or data_offsets"),
    "metadata not str": ({"__metadata__": {"format": 1}, "a": _t()}, bytes(8), None, "__metadata__ must map"),
    "metadata not dict": ({"__metadata__": ["pt"], "a": _t()}, bytes(8), None, "__metadata__ must map"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_safetensors_named_clearly(tmp_path: Path, case: str) -> None:
    header, data, length, needle = CORRUPT[case]
    p = tmp_path / "model.safetensors"
    if data is None:
        p.write_bytes(header)
    else:
        _raw_file(p, header, data, length)
    with pytest.raises(CorruptArtifactError, match=needle) as info:
        SafetensorsFile(p)
    assert str(p) in str(info.value)
    assert info.value.hint and "re-download or re-export" in info.value.hint


def test_truncated_file_is_refused_at_open(tmp_path: Path) -> None:
    """A real file cut short (an interrupted download): its last tensor ends past the data."""
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.arange(1000.0)}, str(p))
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])
    with pytest.raises(CorruptArtifactError, match="past the") as info:
        SafetensorsFile(p)
    assert str(p) in str(info.value)


def test_corrupt_shard_fails_model_dir_before_any_read(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1}))
    _raw_file(d / "model.safetensors", {"a": _t(), "b": _t(offs=[4, 12])}, bytes(16))
    with pytest.raises(CorruptArtifactError, match=r"m/model.safetensors: corrupt safetensors file: .*overlap"):
        ModelDir(d)


# ---------------------------------------------------------------- tiny real models (transformers)


def _tiny(path: Path, *, seed: int = 0, arch: str = "llama", **kw) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=40, max_position_embeddings=64) | kw
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    torch.manual_seed(seed)
    model_cls(config_cls(**shape)).save_pretrained(path, safe_serialization=True)
    return path


def _export_copy(src: Path, out: Path) -> None:
    with ModelDir(src) as m, ModelDirWriter(out) as w:
        tw = w.tensor_writer([m.meta(n) for n in m.tensor_names])
        for n in m.tensor_names:
            tw.write(n, m.read(n))
        w.copy_file(src / "config.json", "config.json")


def test_bit_flip_in_export_caught_by_manifest(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export_copy(_tiny(tmp_path / "src"), out)
    verify_manifest(out)
    weights = out / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x04  # one bit inside the tensor data; the header stays valid
    weights.write_bytes(bytes(raw))
    SafetensorsFile(weights).close()  # the header cannot tell ...
    with pytest.raises(CorruptArtifactError, match=r"export/model.safetensors: SHA-256 differs") as info:
        verify_manifest(out)  # ... the manifest can
    assert info.value.hint


# ---------------------------------------------------------------- path traversal in index.json


@pytest.mark.parametrize("shard", ["../x.safetensors", "/abs.safetensors", "sub/x.safetensors", "..", "x.bin",
                                   "ok\\..\\x.safetensors"])
def test_index_shard_names_cannot_escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard: str) -> None:
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1}))
    victim = {"a": torch.ones(2)}
    save_file(victim, str(d / "good.safetensors"))
    save_file(victim, str(tmp_path / "x.safetensors"))  # real files the bad names would reach
    save_file(victim, str(d / "sub" / "x.safetensors"))
    if shard.startswith("/"):
        shard = str(tmp_path / "x.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "good.safetensors", "b": shard}})
    )
    opened: list[str] = []

    def spy(path, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(Path(path).name)
        return builtins.open(path, *a, **kw)

    monkeypatch.setattr(io_mod, "open", spy, raising=False)
    with pytest.raises(UnsafeArtifactError, match="not a plain .safetensors file name") as info:
        ModelDir(d)
    assert "model.safetensors.index.json" in str(info.value) and info.value.hint
    assert opened == ["config.json", "model.safetensors.index.json"]  # no shard opened, not even good.safetensors


def test_index_pointing_at_a_missing_tensor(tmp_path: Path) -> None:
    d = save_tiny(tmp_path / "m")
    names = ModelDir(d).tensor_names
    wmap = dict.fromkeys(names, "model.safetensors") | {"model.extra.weight": "model.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    with pytest.raises(CorruptArtifactError, match="model.extra.weight"):
        ModelDir(d)


# ---------------------------------------------------------------- pickle-only directories


@pytest.mark.parametrize("fname", ["pytorch_model.bin", "model.pt", "weights.PTH", "last.ckpt", "state.pkl"])
def test_pickle_only_directory_refused_with_convert_hint(tmp_path: Path, monkeypatch, fname: str) -> None:
    def never(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("something tried to unpickle")

    for target in ("pickle.load", "pickle.loads", "pickle.Unpickler", "torch.load"):
        monkeypatch.setattr(target, never)  # prove nothing unpickles
    d = tmp_path / "legacy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2}))
    (d / fname).write_bytes(b"\x80\x04\x95" + torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(UnsafeArtifactError, match=rf"legacy: weights only in pickle format \({fname}\)") as info:
        ModelDir(d)
    assert "never unpickles" in str(info.value)
    assert "save_pretrained" in info.value.hint and "safe_serialization=True" in info.value.hint


# ---------------------------------------------------------------- mismatched sources, decided from headers


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    out = {"base": _tiny(root / "base"), "expert_a": _tiny(root / "expert_a", seed=1)}
    out["qwen"] = _tiny(root / "qwen", arch="qwen2", seed=2)
    out["vocab"] = _tiny(root / "vocab", vocab_size=43)
    out["kv"] = _tiny(root / "kv", num_key_value_heads=1)
    wide = _tiny(root / "wide", seed=3)  # same config, one tensor reshaped by hand
    with ModelDir(wide) as m:
        t = {n: m.read(n) for n in m.tensor_names}
    t["model.layers.1.mlp.up_proj.weight"] = torch.zeros(65, 32)
    save_file(t, str(wide / "model.safetensors"), metadata={"format": "pt"})
    out["wide"] = wide
    emb = _tiny(root / "emb", seed=4)  # config says vocab 40, embedding holds 48 rows
    t = {n: (v if n != "model.embed_tokens.weight" else torch.zeros(48, 32)) for n, v in t.items()}
    t["model.layers.1.mlp.up_proj.weight"] = torch.zeros(64, 32)
    save_file(t, str(emb / "model.safetensors"), metadata={"format": "pt"})
    out["emb"] = emb
    missing = _tiny(root / "missing", seed=5)
    with ModelDir(missing) as m:
        t = {n: m.read(n) for n in m.tensor_names if n != "model.norm.weight"}
    save_file(t, str(missing / "model.safetensors"), metadata={"format": "pt"})
    out["missing"] = missing
    half = _tiny(root / "half", seed=6)
    with ModelDir(half) as m:
        t = {n: m.read(n).to(torch.bfloat16) for n in m.tensor_names}
    save_file(t, str(half / "model.safetensors"), metadata={"format": "pt"})
    out["half"] = half
    return out


def _check(zoo: dict[str, Path], other: str, monkeypatch: pytest.MonkeyPatch, **kw) -> None:
    def refuse(self, name):  # noqa: ANN001, ANN202
        raise AssertionError(f"tensor data read during planning: {name}")

    models = {"base": ModelDir(zoo["base"]), other: ModelDir(zoo[other])}
    monkeypatch.setattr(SafetensorsFile, "read", refuse)
    try:
        check_compatible(models, reference="base", **kw)
    finally:
        assert all(m.bytes_read == 0 for m in models.values())
        for m in models.values():
            m.close()


MISMATCH = {
    "qwen": r"architectures differ: base is LlamaForCausalLM, qwen is Qwen2ForCausalLM",
    # "first" is file order: safetensors sorts names, so lm_head.weight may come before the embedding
    "vocab": r"vocabularies differ: config vocab_size is 40 in base but 43 in vocab; first differing tensor "
             r"(lm_head|model\.embed_tokens)\.weight: base has \(40, 32\), vocab has \(43, 32\)",
    "kv": r"config num_key_value_heads is 2 in base but 1 in kv; first differing tensor "
          r"model.layers.0.self_attn.k_proj.weight: base has \(32, 32\), kv has \(16, 32\)",
    "wide": r"model.layers.1.mlp.up_proj.weight: base has \(64, 32\), wide has \(65, 32\)",
    "emb": r"model.embed_tokens.weight: base has \(40, 32\), emb has \(48, 32\) \(the vocabularies differ\)",
    "missing": r"missing lacks tensor\(s\) that base has: model.norm.weight",
    "half": r"(lm_head|model\.embed_tokens)\.weight: base is float32, half is bfloat16",
}


@pytest.mark.parametrize("other", list(MISMATCH))
def test_mismatched_sources_fail_from_headers_alone(zoo, monkeypatch, other: str) -> None:
    with pytest.raises(ShapeMismatchError, match=MISMATCH[other]) as info:
        _check(zoo, other, monkeypatch)
    assert info.value.hint


def test_compatible_sources_pass_and_dtype_cast_is_opt_in(zoo, monkeypatch) -> None:
    _check(zoo, "expert_a", monkeypatch)
    with pytest.raises(ShapeMismatchError) as info:
        _check(zoo, "half", monkeypatch)
    assert "set `dtype:` in the recipe" in info.value.hint
    _check(zoo, "half", monkeypatch, allow_dtype_mismatch=True)


def test_missing_tensor_reported_from_either_side(zoo, monkeypatch) -> None:
    def refuse(self, name):  # noqa: ANN001, ANN202
        raise AssertionError("read")

    monkeypatch.setattr(SafetensorsFile, "read", refuse)
    with ModelDir(zoo["missing"]) as a, ModelDir(zoo["base"]) as b, \
            pytest.raises(ShapeMismatchError, match=r"missing lacks tensor\(s\) that base has: model.norm.weight"):
        check_compatible({"missing": a, "base": b}, reference="missing")


def _no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, name):  # noqa: ANN001, ANN202
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
def test_a_merge_of_mismatched_sources_fails_at_plan_time_and_writes_nothing(tmp_path, monkeypatch, variant,
                                                                             needle) -> None:
    base = save_tiny(tmp_path / "base")
    other = save_tiny(tmp_path / "other", seed=1, **variant)
    out = tmp_path / "out"
    _no_reads(monkeypatch)
    r = recipe_from_dict({"merge_method": "ties", "base_model": str(base), "models": [{"model": str(other)}]})
    with pytest.raises(ShapeMismatchError, match=needle):
        merge_to_dir(r, out)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_a_recipe_dtype_casts_sources_of_another_dtype(tmp_path, tiny_models) -> None:
    half = tmp_path / "half"
    shutil.copytree(tiny_models["expert_a"], half)
    with ModelDir(half) as src:
        tensors = {n: src.read(n).to(torch.bfloat16) for n in src.tensor_names}
    save_file(tensors, str(half / "model.safetensors"))
    spec = {"merge_method": "task_arithmetic", "base_model": str(tiny_models["base"]),
            "models": [{"model": str(half), "parameters": {"weight": 1.0}}]}
    with pytest.raises(ShapeMismatchError, match="set `dtype:`"):
        merge_to_dir(recipe_from_dict(spec), tmp_path / "out")
    merge_to_dir(recipe_from_dict(spec | {"dtype": "float32"}), tmp_path / "out")
    with ModelDir(tmp_path / "out") as m:
        assert {m.meta(n).dtype for n in m.tensor_names} == {torch.float32}


# ---------------------------------------------------------------- disk full, existing targets

DISK_FULL = r"""
import errno, resource, signal, sys
from pathlib import Path
import torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from evomerge.errors import ExportError
from evomerge.merge.io import TensorMeta
from evomerge.merge.writer import ModelDirWriter
out = Path(sys.argv[1])
metas = [TensorMeta.of(f"w{i}", torch.float32, (64, 1024)) for i in range(4)]  # 1 MiB in all
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    with ModelDirWriter(out) as w:
        w.write_json("config.json", {"architectures": ["X"]})
        tw = w.tensor_writer(metas, max_shard_bytes=2**30, background=sys.argv[2] == "bg")
        for m in metas:
            tw.write(m.name, torch.ones(m.shape))
except ExportError as e:
    cause = e.__cause__
    print("EXPORT-ERROR", e.message, "|", e.hint, "|", getattr(cause, "errno", None) == errno.EFBIG)
    sys.exit(3)
print("NO ERROR")
"""


@pytest.mark.parametrize("mode", ["inline", "bg"])
def test_disk_full_during_export_leaves_nothing_and_is_retryable(tmp_path: Path, mode: str) -> None:
    """Also when the bytes are written by the background writer thread (the error surfaces in
    the caller's thread at its next write or close); with space again, the same export succeeds."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, str(out), mode], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"EXPORT-ERROR disk full while writing {out}" in proc.stdout
    assert "free disk space" in proc.stdout and proc.stdout.strip().endswith("True")  # chained from EFBIG
    assert list(tmp_path.iterdir()) == []  # no out, no .out.tmp-*
    metas = [TensorMeta.of(f"w{i}", torch.float32, (64, 1024)) for i in range(4)]
    with ModelDirWriter(out) as w:  # nothing of the failed attempt is in the way
        w.write_json("config.json", {"architectures": ["X"]})
        tw = w.tensor_writer(metas, max_shard_bytes=2**30, background=mode == "bg")
        for m in metas:
            tw.write(m.name, torch.ones(m.shape))
    verify_manifest(out)


def test_existing_target_without_overwrite_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match=rf"{out} already exists") as info:
        ModelDirWriter(out)
    assert "--overwrite" in info.value.hint
    assert [p.name for p in out.iterdir()] == ["precious.txt"] and (out / "precious.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_target_appearing_during_export_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="already exists"), ModelDirWriter(out) as w:
        w.write_text("a.txt", "new")
        out.mkdir()  # someone else published meanwhile
        (out / "precious.txt").write_text("keep me")
    assert (out / "precious.txt").read_text() == "keep me" and not (out / "a.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
