"""Atomic, streaming writer of Hugging Face model directories (RELIABILITY.md promise 6).

Everything goes into a temporary directory beside the target; on success a manifest with the
SHA-256 of every file is written, files and directory are fsynced, and the directory is renamed
into place. On any failure the temporary directory is removed, so no partial model is visible.
Safetensors shards are streamed: all tensor metas are known up front, so each shard's header
is written first and tensor bytes follow one tensor at a time.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from evomerge.errors import CorruptArtifactError, ExportError, UnsafeArtifactError
from evomerge.merge.io import DTYPE_NAMES, TensorMeta

MANIFEST = "evomerge-manifest.json"


def _safe_relname(relname: str) -> str:
    p = Path(relname)
    if not relname or p.is_absolute() or ".." in p.parts or "\\" in relname or len(p.parts) != 1:
        raise UnsafeArtifactError(f"refusing to write {relname!r}: not a plain file name inside the output")
    return relname


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class StreamingSafetensorsWriter:
    """Writes tensors in a fixed order into one or more safetensors shards (HF layout)."""

    def __init__(self, directory: Path, metas: Sequence[TensorMeta], *, max_shard_bytes: int) -> None:
        self.dir = directory
        self.metas = [TensorMeta.of(m.name, m.dtype, m.shape) for m in metas]
        self.shards: list[list[TensorMeta]] = [[]]
        size = 0
        for m in self.metas:
            if self.shards[-1] and size + m.nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(m)
            size += m.nbytes
        n = len(self.shards)
        self.files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._next = 0
        self._shard = -1
        self._left_in_shard = 0
        self._fh: BinaryIO | None = None
        self.closed = False

    def _open_shard(self, i: int) -> None:
        if self._fh is not None:
            self._fh.close()
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for m in self.shards[i]:
            header[m.name] = {"dtype": DTYPE_NAMES[m.dtype], "shape": list(m.shape),
                              "data_offsets": [offset, offset + m.nbytes]}
            offset += m.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._fh = open(self.dir / self.files[i], "wb")  # noqa: SIM115 - closed in close()/next shard
        self._fh.write(len(raw).to_bytes(8, "little"))
        self._fh.write(raw)
        self._shard = i
        self._left_in_shard = len(self.shards[i])

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.metas):
            raise ExportError(f"unexpected tensor {name!r}: all {len(self.metas)} tensors are written")
        m = self.metas[self._next]
        if name != m.name or tuple(tensor.shape) != m.shape or tensor.dtype != m.dtype:
            raise ExportError(
                f"tensor {name!r} {tuple(tensor.shape)} {tensor.dtype} does not match the plan: "
                f"expected {m.name!r} {m.shape} {m.dtype}"
            )
        if self._left_in_shard == 0:
            self._open_shard(self._shard + 1)
        assert self._fh is not None
        data = tensor.detach().contiguous().cpu()
        if m.nbytes:
            self._fh.write(memoryview(data.view(torch.uint8).numpy()) if data.dtype != torch.uint8
                           else memoryview(data.numpy()))
        self._left_in_shard -= 1
        self._next += 1

    def close(self) -> None:
        if self.closed:
            return
        if self._next != len(self.metas):
            raise ExportError(f"only {self._next} of {len(self.metas)} tensors were written")
        if not self.metas:
            self._open_shard(0)
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": sum(m.nbytes for m in self.metas)},
                "weight_map": {m.name: self.files[i] for i, shard in enumerate(self.shards) for m in shard},
            }
            (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        self.closed = True

    def abort(self) -> None:
        """Drop the open shard without flushing (its directory is about to be removed)."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:
                pass  # flushing failed too (disk full); the temporary directory goes anyway


class ModelDirWriter:
    """Context manager that publishes a complete model directory or nothing."""

    def __init__(self, out_dir: Path | str, *, overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite
        if self.out_dir.exists() and not overwrite:
            raise ExportError(f"{self.out_dir} already exists", hint="choose another --out or pass --overwrite")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{secrets.token_hex(4)}"
        self.tmp.mkdir()
        self._writers: list[StreamingSafetensorsWriter] = []

    def write_json(self, relname: str, obj: Any) -> None:
        self.write_text(relname, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def write_text(self, relname: str, text: str) -> None:
        (self.tmp / _safe_relname(relname)).write_text(text, encoding="utf-8")

    def copy_file(self, src: Path, relname: str) -> None:
        shutil.copyfile(src, self.tmp / _safe_relname(relname))

    def tensor_writer(self, metas: Sequence[TensorMeta], *, max_shard_bytes: int = 2 * 2**30) -> StreamingSafetensorsWriter:
        w = StreamingSafetensorsWriter(self.tmp, metas, max_shard_bytes=max_shard_bytes)
        self._writers.append(w)
        return w

    def __enter__(self) -> ModelDirWriter:
        return self

    def _publish(self) -> None:
        for w in self._writers:
            w.close()
        files = sorted(p for p in self.tmp.iterdir() if p.is_file())
        manifest = {"files": {p.name: _sha256(p) for p in files}}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for p in self.tmp.iterdir():
            _fsync_path(p)
        _fsync_path(self.tmp)
        if self.out_dir.exists():
            old = self.out_dir.parent / f".{self.out_dir.name}.old-{secrets.token_hex(4)}"
            self.out_dir.rename(old)
            self.tmp.rename(self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.out_dir)
        _fsync_path(self.out_dir.parent)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                self._publish()
                return
        except BaseException as err:
            exc = err
        for w in self._writers:
            w.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise ExportError(
                f"disk full while writing {self.out_dir}; nothing was written",
                hint="free disk space or choose another --out",
            ) from exc
        if exc is not None and exc_type is None:
            raise exc


def verify_manifest(model_dir: Path | str) -> None:
    """Check every file against ``evomerge-manifest.json``; name the first that differs."""
    d = Path(model_dir)
    path = d / MANIFEST
    try:
        files = json.loads(path.read_text())["files"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError, TypeError) as err:
        raise CorruptArtifactError(f"{path}: missing or invalid manifest ({err})",
                                   hint="re-export the model with `evomerge export`") from None
    for name, digest in sorted(files.items()):
        p = d / _safe_relname(name)
        if not p.is_file():
            raise CorruptArtifactError(f"{p}: listed in the manifest but missing", hint="re-export the model")
        if _sha256(p) != digest:
            raise CorruptArtifactError(f"{p}: SHA-256 differs from the manifest (the file is corrupt)",
                                       hint="re-export the model")
