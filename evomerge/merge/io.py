"""Safe, lazy reading of model weights: safetensors only, validated before any tensor is read.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor names
to ``{dtype, shape, data_offsets}``, then the raw data. The header is checked in full (size cap,
dtypes, shapes, byte counts, bounds, overlaps) on open; tensors are read one at a time with
plain file IO, never through pickle and never by mapping untrusted sizes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from evomerge.errors import ConfigError, CorruptArtifactError, ShapeMismatchError, UnsafeArtifactError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

MAX_HEADER_BYTES = 100 * 2**20
MAX_CONFIG_BYTES = 4 * 2**20
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = (
    "convert it to safetensors in a trusted environment: "
    "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)"
)
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to ("model.layers.12.mlp.up_proj.weight" -> 12)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int

    @staticmethod
    def of(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> TensorMeta:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return TensorMeta(name, dtype, tuple(shape), math.prod(shape) * itemsize)


class SafetensorsFile:
    """One validated ``.safetensors`` file; tensors are read lazily by name."""

    def __init__(self, path: Path | str, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.path = Path(path)
        self._fh: BinaryIO | None = None
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: file not found", hint="check the model path") from None
        with open(self.path, "rb") as fh:
            self._parse(fh, size, max_header_bytes)

    def _bad(self, what: str) -> CorruptArtifactError:
        return CorruptArtifactError(
            f"{self.path}: corrupt safetensors file: {what}",
            hint="re-download or re-export the model; the file is truncated or was not written by a safetensors writer",
        )

    def _parse(self, fh: BinaryIO, size: int, cap: int) -> None:
        if size < 8:
            raise self._bad(f"only {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(fh.read(8), "little")
        if n > cap:
            raise self._bad(f"header of {n} bytes exceeds the {cap}-byte limit")
        if 8 + n > size:
            raise self._bad(f"header of {n} bytes runs past the end of the {size}-byte file")
        raw = fh.read(n)

        def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            d: dict[str, Any] = {}
            for k, v in pairs:
                if k in d:
                    raise self._bad(f"duplicate key {k!r} in the header")
                d[k] = v
            return d

        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_dupes)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._bad(f"header is not valid UTF-8 JSON ({err})") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise self._bad("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self._data_start = 8 + n
        data_len = size - self._data_start
        self._metas: dict[str, TensorMeta] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        for name, entry in header.items():
            self._check_entry(name, entry, data_len)
        spans = sorted((b, e, k) for k, (b, e) in self._offsets.items() if e > b)
        for (_b0, e0, k0), (b1, _e1, k1) in zip(spans, spans[1:], strict=False):
            if b1 < e0:
                raise self._bad(f"tensors {k0!r} and {k1!r} overlap in the data section")
        self.names: list[str] = sorted(self._offsets, key=lambda k: self._offsets[k])

    def _check_entry(self, name: str, entry: Any, data_len: int) -> None:
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise self._bad(f"tensor {name!r} lacks dtype, shape or data_offsets")
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise self._bad(f"tensor {name!r} has unsupported dtype {entry['dtype']!r}")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise self._bad(f"tensor {name!r} has an invalid shape {shape!r}")
        offs = entry["data_offsets"]
        if (
            not isinstance(offs, list) or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            or not 0 <= offs[0] <= offs[1]
        ):
            raise self._bad(f"tensor {name!r} has invalid data_offsets {offs!r}")
        meta = TensorMeta.of(name, dtype, tuple(shape))
        if offs[1] - offs[0] != meta.nbytes:
            raise self._bad(
                f"tensor {name!r} spans {offs[1] - offs[0]} bytes but {entry['dtype']}{shape} needs {meta.nbytes}"
            )
        if offs[1] > data_len:
            raise self._bad(f"tensor {name!r} ends at byte {offs[1]}, past the {data_len}-byte data section")
        self._metas[name] = meta
        self._offsets[name] = (offs[0], offs[1])

    def __contains__(self, name: str) -> bool:
        return name in self._metas

    def meta(self, name: str) -> TensorMeta:
        try:
            return self._metas[name]
        except KeyError:
            raise ShapeMismatchError(f"{self.path}: no tensor named {name!r}") from None

    def read(self, name: str) -> torch.Tensor:
        """Read exactly one tensor's bytes into a tensor that owns its memory."""
        meta = self.meta(name)
        begin, end = self._offsets[name]
        if self._fh is None:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open for lazy reads, closed in close()
        buf = bytearray(end - begin)
        self._fh.seek(self._data_start + begin)
        got = self._fh.readinto(buf)
        if got != len(buf):
            raise self._bad(f"tensor {name!r}: file ended after {got} of {len(buf)} bytes")
        if meta.nbytes == 0:
            return torch.empty(meta.shape, dtype=meta.dtype)
        return torch.frombuffer(buf, dtype=meta.dtype).reshape(meta.shape)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _read_json(path: Path, what: str) -> Any:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found", hint="point at a Hugging Face model directory") from None
    if size > MAX_CONFIG_BYTES:
        raise CorruptArtifactError(f"{path}: {size} bytes is too large for a {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptArtifactError(f"{path}: invalid JSON in {what} ({err})", hint="fix or regenerate the file") from None


def _safe_shard_name(model_dir: Path, name: Any) -> Path:
    if (
        not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..")
        or name.startswith(".") or not name.endswith(".safetensors") or Path(name).is_absolute()
    ):
        raise UnsafeArtifactError(
            f"{model_dir}: index.json names shard {name!r}, which is not a plain .safetensors file name",
            hint="shards must be files inside the model directory; fix weight_map in model.safetensors.index.json",
        )
    return model_dir / name


class ModelDir:
    """A Hugging Face model directory whose weights are read from safetensors only."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: model directory not found", hint="check the model path in the recipe")
        cfg = _read_json(self.path / "config.json", "config.json")
        if not isinstance(cfg, dict):
            raise CorruptArtifactError(f"{self.path / 'config.json'}: must be a JSON object")
        self.config: dict[str, Any] = cfg
        archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
        self.architecture: str = str(archs[0])
        self.tied_embeddings: bool = bool(cfg.get("tie_word_embeddings", False))
        self._files: dict[Path, SafetensorsFile] = {}
        self._where: dict[str, Path] = {}
        try:
            self._index()
        except Exception:
            self.close()
            raise

    @property
    def num_layers(self) -> int:
        return int(self.config.get("num_hidden_layers", 0))

    def _index(self) -> None:
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.exists():
            data = _read_json(index, "safetensors index")
            wmap = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(wmap, dict):
                raise CorruptArtifactError(f"{index}: no weight_map object", hint="regenerate the index")
            shards = {n: _safe_shard_name(self.path, n) for n in sorted(set(wmap.values()), key=str)}
            for p in shards.values():
                if not p.is_file():
                    raise CorruptArtifactError(f"{index}: shard {p.name} is missing", hint="copy every shard")
                self._files[p] = SafetensorsFile(p)
            for tname, shard in wmap.items():
                if tname not in self._files[shards[shard]]:
                    raise CorruptArtifactError(f"{index}: tensor {tname!r} is not in its shard {shard}")
            for p, f in self._files.items():
                for tname in f.names:
                    if wmap.get(tname) != p.name:
                        raise CorruptArtifactError(f"{p}: tensor {tname!r} is not listed for this shard in {index.name}")
                    self._where[tname] = p
            return
        found = sorted(self.path.glob("*.safetensors"))
        if single.exists():
            found = [single]
        if len(found) == 1:
            f = SafetensorsFile(found[0])
            self._files[found[0]] = f
            self._where = dict.fromkeys(f.names, found[0])
            return
        if len(found) > 1:
            raise CorruptArtifactError(
                f"{self.path}: {len(found)} .safetensors files and no model.safetensors.index.json",
                hint="add the index.json that maps tensors to shards",
            )
        pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeArtifactError(
                f"{self.path}: weights only in pickle format ({', '.join(pickles)}); evomerge never unpickles",
                hint=CONVERT_HINT,
            )
        raise ConfigError(f"{self.path}: no model weights (*.safetensors) found", hint="check the model path")

    @property
    def tensor_names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def meta(self, name: str) -> TensorMeta:
        if name not in self._where:
            raise ShapeMismatchError(f"{self.path}: no tensor named {name!r}")
        return self._files[self._where[name]].meta(name)

    def read(self, name: str) -> torch.Tensor:
        self.meta(name)
        return self._files[self._where[name]].read(name)

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def __enter__(self) -> ModelDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
