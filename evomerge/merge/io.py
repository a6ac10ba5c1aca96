"""Safe, lazy reading of model weights: safetensors only, validated before any tensor is read.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor names
to ``{dtype, shape, data_offsets}``, then the raw data. The header is checked in full (size cap,
duplicate keys, dtypes, shapes, byte counts, bounds, overlaps) on open; tensors are read one at
a time with plain file IO (seek + readinto), never through pickle and never by mapping untrusted
sizes (docs/reliability.md promises 5 and 7). Every file is opened only if
it is a regular file (never a FIFO or device) and JSON files are read with a cap and bounded
nesting (:mod:`evomerge.textfile`). A model's config is checked against its tensors: the layer
count must match the layers the weights hold, and the sizes loaders allocate by (vocabulary,
width, MLP width, attention heads) may not exceed the tensors' shapes, so no config value can
make later code loop or allocate past the weights.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from evomerge.errors import ConfigError, CorruptArtifactError, ShapeMismatchError, UnsafeArtifactError
from evomerge.textfile import loads_json, open_regular, read_regular

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

MAX_HEADER_BYTES = 100 * 2**20
MAX_CONFIG_BYTES = 4 * 2**20
MAX_INDEX_BYTES = 64 * 2**20
MAX_LAYERS = 100_000  # far above any real model; only reached by a config with no layer tensors to check
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = (
    "convert it to safetensors in a trusted environment: load it with transformers "
    "(AutoModelForCausalLM.from_pretrained(dir)) and save it with "
    "save_pretrained(out_dir, safe_serialization=True) (transformers >= 5 always writes safetensors), "
    "then point evomerge at out_dir"
)
_CORRUPT_HINT = "re-download or re-export the model; the file is truncated or was not written by a safetensors writer"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# input embeddings ([vocab, width]) under the names of Llama/Qwen/Mistral/Gemma, GPT-2, BLOOM/Falcon, GPT-NeoX
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to ("model.layers.12.mlp.up_proj.weight" -> 12)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorMeta:
    """What a header says about one tensor: enough to plan a merge without reading data."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int

    @staticmethod
    def of(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> TensorMeta:
        """A meta whose ``nbytes`` is computed from dtype and shape."""
        return TensorMeta(name, dtype, tuple(shape), math.prod(shape) * _itemsize(dtype))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _no_duplicates(on_dup: Any) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in pairs:
            if k in d:
                raise on_dup(k)
            d[k] = v
        return d

    return hook


class SafetensorsFile:
    """One validated ``.safetensors`` file; tensors are read lazily by name.

    Opening parses and checks only the header. ``read`` then reads exactly one tensor's bytes
    and returns a tensor that owns its memory. ``bytes_read`` counts tensor bytes read so far.
    """

    def __init__(self, path: Path | str, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.path = Path(path)
        self._fh: BinaryIO | None = None
        self._map: mmap.mmap | None = None  # the whole file, mapped by the first map()
        self._mapped: tuple[int, int, int] = (0, 0, 0)  # its size, inode and mtime then
        self.bytes_read = 0
        fh, size = self._open_file()
        with fh:
            self._parse(fh, size, max_header_bytes)

    def _open_file(self) -> tuple[BinaryIO, int]:
        # a regular file only, opened without blocking (a FIFO or device is refused, not waited on)
        return open_regular(self.path, what="safetensors file", missing_hint="check the model path", open_fn=open)

    def _bad(self, what: str) -> CorruptArtifactError:
        return CorruptArtifactError(f"{self.path}: corrupt safetensors file: {what}", hint=_CORRUPT_HINT)

    def _parse(self, fh: BinaryIO, size: int, cap: int) -> None:
        if size < 8:
            raise self._bad(f"only {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(fh.read(8), "little")
        if n > cap:
            raise self._bad(f"header of {n} bytes exceeds the {cap}-byte limit")
        if 8 + n > size:
            raise self._bad(f"header of {n} bytes runs past the end of the {size}-byte file")
        raw = fh.read(n)
        if len(raw) != n:
            raise self._bad(f"file ended inside the {n}-byte header")
        hook = _no_duplicates(lambda k: self._bad(f"duplicate key {k!r} in the header"))
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=hook)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
            raise self._bad(f"header is not valid UTF-8 JSON ({type(err).__name__}: {err})") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
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
            raise self._bad(
                f"tensor {name!r} has unsupported dtype {entry['dtype']!r} (supported: {', '.join(DTYPES)})"
            )
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise self._bad(f"tensor {name!r} has an invalid shape {shape!r}")
        offs = entry["data_offsets"]
        if not isinstance(offs, list) or len(offs) != 2 or not all(map(_is_int, offs)) or not 0 <= offs[0] <= offs[1]:
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

    def __contains__(self, name: object) -> bool:
        return name in self._metas

    def meta(self, name: str) -> TensorMeta:
        try:
            return self._metas[name]
        except KeyError:
            raise ShapeMismatchError(
                f"{self.path}: no tensor named {name!r}", hint="check the tensor name against the model's weights"
            ) from None

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Read exactly one tensor's bytes into a tensor that owns its memory, or into the front
        of ``buffer`` (uint8, at least the tensor's size: reused across reads, no fresh pages)."""
        meta = self.meta(name)
        begin, end = self._offsets[name]
        if meta.nbytes == 0:
            return torch.empty(meta.shape, dtype=meta.dtype)
        if self._fh is None:
            self._fh, _ = self._open_file()  # kept open for lazy reads, closed in close()
        if buffer is not None and buffer.dtype == torch.uint8 and buffer.is_contiguous() and buffer.numel() >= end - begin:
            raw = buffer[: end - begin]
        else:
            raw = torch.empty(end - begin, dtype=torch.uint8)  # not zero-filled: readinto overwrites it
        self._fh.seek(self._data_start + begin)
        got = self._fh.readinto(memoryview(raw.numpy()))
        self.bytes_read += got or 0
        if got != raw.numel():
            raise self._bad(f"tensor {name!r}: file ended after {got} of {raw.numel()} bytes (truncated since opening?)")
        if meta.dtype == torch.bool and bool((raw > 1).any()):
            raise self._bad(f"tensor {name!r}: BOOL data holds bytes other than 0 and 1")
        return raw.view(meta.dtype).reshape(meta.shape)

    def map(self, name: str) -> torch.Tensor:
        """A tensor over the file's own pages (``mmap``, copy-on-write): no private copy, so every
        process that maps the same file shares one copy in the page cache. A write to the tensor
        (merge ops never write their inputs) copies only the pages it touches, privately; the file
        is never written. Falls back to :meth:`read` where a view cannot be made (an offset not
        aligned to the dtype, BOOL data that must be checked). :meth:`verify` before use detects a
        file changed or truncated since it was mapped."""
        meta = self.meta(name)
        begin, _end = self._offsets[name]
        offset = self._data_start + begin
        if meta.nbytes == 0 or meta.dtype == torch.bool or offset % _itemsize(meta.dtype):
            return self.read(name)
        if self._map is None:
            fh, size = self._open_file()
            try:
                st = os.fstat(fh.fileno())
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
            finally:
                fh.close()  # the mapping keeps the file's pages; the descriptor is not needed
            self._mapped = (size, st.st_ino, st.st_mtime_ns)
        if self._data_start + self._offsets[name][1] > self._mapped[0]:
            raise self._bad(f"tensor {name!r} lies past the end of the mapped file (truncated since opening?)")
        flat = torch.frombuffer(self._map, dtype=meta.dtype, count=math.prod(meta.shape), offset=offset)
        return flat.reshape(meta.shape)

    def verify(self) -> None:
        """Refuse a mapped file that changed since it was mapped (truncated, rewritten in place or
        replaced): reading a truncated mapping's lost pages would kill the process with SIGBUS."""
        if self._map is None:
            return
        size, ino, mtime = self._mapped
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise CorruptArtifactError(f"{self.path}: the model file is gone since the run mapped it ({err.strerror})",
                                       hint="restore the file, or resume the run once the model is back") from None
        if (st.st_size, st.st_ino, st.st_mtime_ns) != (size, ino, mtime):
            what = "truncated" if st.st_ino == ino and st.st_size < size else "changed"
            raise CorruptArtifactError(
                f"{self.path}: the model file was {what} while a run had it mapped ({size} -> {st.st_size} bytes)",
                hint="leave source models untouched during a search; restore the file and resume the run")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_json_capped(path: Path, what: str, cap: int) -> Any:
    """Parse a small JSON file: a regular file (a FIFO or device is refused, never opened
    blocking), at most ``cap`` bytes read, UTF-8, no duplicate keys, nesting and numbers bounded
    (:func:`evomerge.textfile.loads_json`)."""
    hint = "fix or regenerate the file (it should be written by transformers)"
    raw = read_regular(path, cap=cap, what=what, missing_hint="point at a Hugging Face model directory",
                       too_large=CorruptArtifactError, limit_hint=hint, open_fn=open)
    on_dup = lambda k: CorruptArtifactError(f"{path}: duplicate key {k!r} in {what}", hint=hint)  # noqa: E731
    return loads_json(raw, source=str(path), what=what, error=CorruptArtifactError, hint=hint,
                      object_pairs_hook=_no_duplicates(on_dup))


def _config_fix(key: str) -> str:
    return (f"set {key} in config.json to what the weights hold, or re-export the model "
            "(save_pretrained writes a matching config)")


def _safe_shard_name(index: Path, name: Any) -> str:
    if (
        not isinstance(name, str) or not name or "/" in name or "\\" in name or "\x00" in name
        or name.startswith(".") or not name.endswith(".safetensors") or Path(name).is_absolute()
    ):
        raise UnsafeArtifactError(
            f"{index}: weight_map names shard {name!r}, which is not a plain .safetensors file name",
            hint="shards must be files inside the model directory; fix weight_map in model.safetensors.index.json",
        )
    return name


class ModelDir:
    """A Hugging Face model directory whose weights are read from safetensors only.

    Construction parses config.json and every safetensors header (no tensor data). Accepted
    layouts: ``model.safetensors``; ``model.safetensors.index.json`` plus the shards it names;
    a single other ``*.safetensors`` file. Pickle formats are refused with a conversion hint.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"{self.path}: model directory not found", hint="check the model path in the recipe")
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: not a directory", hint="point at a Hugging Face model directory")
        cfg_path = self.path / "config.json"
        cfg = read_json_capped(cfg_path, "config.json", MAX_CONFIG_BYTES)
        cfg_hint = "regenerate config.json with transformers (model.config.save_pretrained(dir))"
        if not isinstance(cfg, dict):
            raise CorruptArtifactError(f"{cfg_path}: must be a JSON object", hint=cfg_hint)
        self.config: dict[str, Any] = cfg
        archs = cfg.get("architectures")
        if archs is not None and not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
            raise CorruptArtifactError(f"{cfg_path}: architectures must be a non-empty list of names", hint=cfg_hint)
        arch = archs[0] if archs else cfg.get("model_type")
        if not isinstance(arch, str) or not arch:
            raise CorruptArtifactError(f"{cfg_path}: names no architecture (architectures or model_type)", hint=cfg_hint)
        self.architecture: str = arch
        self.tied_embeddings: bool = bool(cfg.get("tie_word_embeddings", False))
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        try:
            self._index()
            self.num_layers: int = self._layers(cfg_path, cfg_hint)
            self._check_sizes(cfg_path, cfg_hint)
        except BaseException:
            self.close()
            raise

    def _layers(self, cfg_path: Path, hint: str) -> int:
        """The layer count: the config's, which must match the layers the tensors hold (indices
        0..n-1, plus ``num_nextn_predict_layers`` multi-token-prediction layers after them);
        with no config key, one past the highest layer index in the tensor names."""
        found = self._layer_indices()
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if key in self.config:
                n = self.config[key]
                if not _is_int(n) or n < 0:
                    raise CorruptArtifactError(f"{cfg_path}: {key} must be a non-negative integer, not {n!r}", hint=hint)
                self._check_layer_count(cfg_path, key, n, found)
                return int(n)
        n = found[-1] + 1 if found else 0
        if n > MAX_LAYERS:
            raise CorruptArtifactError(
                f"{self.path}: tensor names reach layer index {found[-1]}, past the {MAX_LAYERS}-layer limit",
                hint="re-export the model; its tensor names are not a real layer stack",
            )
        return n

    def _layer_indices(self) -> list[int]:
        """Sorted layer indices in the tensor names (an index of 10+ digits is refused: garbage)."""
        for name in self._where:
            m = _LAYER.search(name)
            if m and len(m.group(1)) > 9:
                raise CorruptArtifactError(
                    f"{self.path}: tensor {name[:80]!r} has a {len(m.group(1))}-digit layer index",
                    hint="re-export the model; its tensor names are not a real layer stack",
                )
        return sorted({i for i in map(layer_index, self._where) if i is not None})

    def _check_layer_count(self, cfg_path: Path, key: str, n: int, found: list[int]) -> None:
        says = f"{cfg_path}: {key} is {n}"
        hint = _config_fix(key)
        if not found:
            if n > MAX_LAYERS:
                raise CorruptArtifactError(
                    f"{says}, past the {MAX_LAYERS}-layer limit (and no tensor name holds a layer index)", hint=hint
                )
            return
        mtp = self.config.get("num_nextn_predict_layers")
        extra = mtp if _is_int(mtp) and 0 <= mtp <= len(found) else 0
        top = found[-1] + 1
        if not n <= top <= n + extra:
            plus = f" (+ {extra} prediction layers)" if extra else ""
            raise CorruptArtifactError(
                f"{says}{plus} but the weights hold {len(found)} layers (indices {found[0]}..{found[-1]})", hint=hint
            )
        gap = next((i for i, v in enumerate(found) if i != v), None)
        if gap is not None:
            raise CorruptArtifactError(
                f"{says} but the weights hold no tensors for layer {gap} (they hold {len(found)} of layers "
                f"0..{found[-1]})", hint=hint,
            )

    def _check_sizes(self, cfg_path: Path, hint: str) -> None:
        """Config sizes that loaders allocate by (transformers' ``from_config`` in the HF
        evaluator, vLLM) may not exceed what the weights hold: ``vocab_size`` the input
        embedding's rows; ``hidden_size`` (or ``embedding_size`` / ``word_embed_proj_dim`` where a
        model projects its embeddings) its columns; ``intermediate_size`` the widest
        ``mlp.down_proj``; ``num_attention_heads`` / ``num_key_value_heads`` times the head size
        (``head_dim``, else hidden_size / heads) the rows of the widest ``q_proj`` / ``k_proj``.
        Each is checked only where the config holds an integer and the tensor exists. A smaller
        value is left to the source comparison (:func:`evomerge.merge.compat.check_compatible`),
        which names both models, and to the loaders, which refuse a shape mismatch."""
        cfg = self.config

        def size(key: str) -> int | None:
            v = cfg.get(key)
            if v is None or isinstance(v, list | dict):  # absent, or per-layer / nested: not checked here
                return None
            if not _is_int(v) or v < 0:
                raise CorruptArtifactError(f"{cfg_path}: {key} must be a non-negative integer, not {v!r}", hint=hint)
            return int(v)

        width_key = next((k for k in ("embedding_size", "word_embed_proj_dim") if k in cfg), "hidden_size")
        # (config key, the size it implies, how the message shows it, tensor-name suffixes, dimension)
        checks: list[tuple[str, int | None, str, tuple[str, ...], int]] = [
            ("vocab_size", size("vocab_size"), "", _EMBED_SUFFIXES, 0),
            (width_key, size(width_key), "", _EMBED_SUFFIXES, 1),
            ("intermediate_size", size("intermediate_size"), "", ("mlp.down_proj.weight",), 1),
        ]
        heads, hidden = size("num_attention_heads"), size("hidden_size")
        head_dim = size("head_dim") or (hidden // heads if hidden and heads else None)
        if head_dim:
            for key, suffix in (("num_attention_heads", "q_proj.weight"), ("num_key_value_heads", "k_proj.weight")):
                n = size(key)
                if n is not None:
                    shown = f"{n} (x head size {head_dim} = {n * head_dim})"
                    checks.append((key, n * head_dim, shown, (f"self_attn.{suffix}",), 0))
        for key, value, shown, suffixes, dim in checks:
            if value is None:
                continue
            widest = max(((self.meta(t).shape[dim], t) for t in self._where
                          if t.endswith(suffixes) and len(self.meta(t).shape) == 2), default=None)
            if widest is not None and value > widest[0]:
                raise CorruptArtifactError(
                    f"{cfg_path}: {key} is {shown or value} but {widest[1]} has {widest[0]} "
                    f"{('rows', 'columns')[dim]} (shape {list(self.meta(widest[1]).shape)})", hint=_config_fix(key),
                )

    def _open(self, fname: str) -> SafetensorsFile:
        f = SafetensorsFile(self.path / fname)
        self._files[fname] = f
        return f

    def _index(self) -> None:
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            self._index_sharded(index)
            return
        found = sorted(p.name for p in self.path.glob("*.safetensors") if p.is_file())
        if "model.safetensors" in found:
            found = ["model.safetensors"]  # what transformers loads, beside e.g. adapter files
        if len(found) == 1:
            f = self._open(found[0])
            self._where = dict.fromkeys(f.names, found[0])
            return
        if len(found) > 1:
            raise CorruptArtifactError(
                f"{self.path}: {len(found)} .safetensors files ({', '.join(found[:4])}) and no "
                "model.safetensors.index.json",
                hint="add the model.safetensors.index.json that maps tensors to shards, or keep one file",
            )
        pickles = sorted(p.name for p in self.path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeArtifactError(
                f"{self.path}: weights only in pickle format ({', '.join(pickles[:4])}); evomerge never unpickles",
                hint=CONVERT_HINT,
            )
        raise ConfigError(
            f"{self.path}: no model weights (*.safetensors) found",
            hint="point at a directory holding model.safetensors or model.safetensors.index.json and its shards",
        )

    def _index_sharded(self, index: Path) -> None:
        hint = "regenerate model.safetensors.index.json (save_pretrained writes it) or copy every shard"
        data = read_json_capped(index, "safetensors index", MAX_INDEX_BYTES)
        wmap = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wmap, dict) or not wmap:
            raise CorruptArtifactError(f"{index}: no weight_map object mapping tensors to shards", hint=hint)
        # Every shard name is checked before any file is opened: nothing outside the directory is touched.
        for shard in wmap.values():
            _safe_shard_name(index, shard)
        shards = sorted(set(wmap.values()))
        for shard in shards:
            if not (self.path / shard).is_file():
                raise CorruptArtifactError(f"{index}: shard {shard} is missing from {self.path}", hint=hint)
        for shard in shards:
            self._open(shard)
        for tname, shard in wmap.items():
            if tname not in self._files[shard]:
                raise CorruptArtifactError(f"{index}: tensor {tname!r} is not in its shard {shard}", hint=hint)
        for shard in shards:
            for tname in self._files[shard].names:
                if wmap.get(tname) != shard:
                    raise CorruptArtifactError(
                        f"{self.path / shard}: tensor {tname!r} is not listed for this shard in {index.name}", hint=hint
                    )
                self._where[tname] = shard

    @property
    def tensor_names(self) -> list[str]:
        """All tensors, in file order (shards by name, tensors by offset)."""
        return list(self._where)

    @property
    def files(self) -> list[Path]:
        return [self.path / f for f in self._files]

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def meta(self, name: str) -> TensorMeta:
        if name not in self._where:
            raise ShapeMismatchError(
                f"{self.path}: no tensor named {name!r}", hint="check the tensor name against the model's weights"
            )
        return self._files[self._where[name]].meta(name)

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        self.meta(name)
        return self._files[self._where[name]].read(name, buffer)

    @property
    def float_dtype(self) -> torch.dtype | None:
        """The dtype the model stores its weights in: its first floating-point tensor's (None: none)."""
        return next((m.dtype for m in map(self.meta, self.tensor_names) if m.dtype.is_floating_point), None)

    def map(self, name: str) -> torch.Tensor:
        """A copy-on-write view of the tensor over its file's shared pages (:meth:`SafetensorsFile.map`)."""
        self.meta(name)
        return self._files[self._where[name]].map(name)

    def verify(self) -> None:
        """Refuse a mapped file of this model that changed since it was mapped."""
        for f in self._files.values():
            f.verify()

    @property
    def bytes_read(self) -> int:
        return sum(f.bytes_read for f in self._files.values())

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def __enter__(self) -> ModelDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
