"""Atomic, streaming writer of Hugging Face model directories (docs/reliability.md promise 6).

Everything goes into a temporary directory beside the target; on success a manifest with the
SHA-256 of every file is written, files and directory are fsynced, and the directory is renamed
into place. On any failure the temporary directory is removed, so no partial model is visible;
running out of disk (ENOSPC, EFBIG, EDQUOT) becomes an :class:`ExportError`.
Overwriting replaces only a directory evomerge wrote (:func:`check_replaceable`). Temporaries
are named after their owner (``.<target>.tmp-<host>-<pid>-<random>``), so the next export into
the same parent removes those a killed process left (:func:`remove_stale_temporaries`).
Safetensors shards are streamed: all tensor metas are known up front, so each shard's header
is written first and tensor bytes follow one tensor at a time (peak memory about one tensor).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import torch

from evomerge.errors import CorruptArtifactError, EvomergeError, ExportError, UnsafeArtifactError
from evomerge.merge.io import DTYPE_NAMES, TensorMeta, read_json_capped

MANIFEST = "evomerge-manifest.json"
INDEX = "model.safetensors.index.json"
_WRITE_CHUNK = 64 * 2**20
_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_MAX_MANIFEST_BYTES = 16 * 2**20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Failure tests only: EVOMERGE_HOLD_EXPORT=FILE stops an export after its first tensor is on disk,
# writes FILE ({"pid", "tmp"}) and waits there (at most an hour) to be killed.
HOLD_ENV = "EVOMERGE_HOLD_EXPORT"
_HOLD_MAX_S = 3600.0


def _safe_relname(relname: str, root: Path | None = None) -> str:
    """A plain file name inside the output directory (the layout is flat, like HF model dirs)."""
    p = Path(relname) if isinstance(relname, str) and "\x00" not in relname else None
    if p is None or not relname or p.is_absolute() or "\\" in relname or len(p.parts) != 1 or relname in (".", ".."):
        raise UnsafeArtifactError(
            f"refusing to write {relname!r}{f' in {root}' if root else ''}: not a plain file name inside the output",
            hint="use a bare file name such as 'config.json' (no directories, '..' or absolute paths)",
        )
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


def _disk_full(exc: BaseException | None) -> OSError | None:
    """The OSError meaning 'out of space' in ``exc`` or its cause/context chain, if any."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _hold_for_test(marker: str, directory: Path, fh: BinaryIO | None) -> None:
    """Failure tests (``HOLD_ENV``): flush the open shard, announce ``{"pid", "tmp"}`` in ``marker``
    (written whole, then renamed) and wait to be killed."""
    if fh is not None:
        fh.flush()
        os.fsync(fh.fileno())
    part = f"{marker}.part"
    with open(part, "w", encoding="utf-8") as out:
        json.dump({"pid": os.getpid(), "tmp": str(directory)}, out)
    os.replace(part, marker)
    time.sleep(_HOLD_MAX_S)


def _host_tag() -> str:
    """This host's name as temporaries carry it (letters, digits, '.', '_', '-'; at most 64)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "localhost"


def temp_path(target: Path, kind: str = "tmp") -> Path:
    """A temporary of this process beside ``target``: ``.<name>.<kind>-<host>-<pid>-<12 hex>``.

    ``kind`` is ``tmp`` (a directory being written) or ``old`` (a replaced directory about to be
    deleted); :func:`remove_stale_temporaries` recognizes both by this name alone."""
    if kind not in ("tmp", "old"):
        raise ValueError(f"temporary kind {kind!r} is not tmp or old")
    return target.parent / f".{target.name}.{kind}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(6)}"


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists; when that cannot be told (another user's), it does."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def remove_stale_temporaries(parent: Path) -> list[Path]:
    """Clean up after evomerge processes that died (SIGKILL, power loss) while writing into ``parent``.

    Only directories named as :func:`temp_path` names them, with this host's name and the pid of
    no running process (nor this one), are touched: a ``tmp`` (an unfinished export) is deleted;
    an ``old`` (a replaced directory that was to be deleted) is deleted when its target exists,
    and otherwise renamed back to it (the owner died between moving it aside and publishing the
    replacement). Temporaries of live processes or other hosts, symlinks and every other name
    are left alone. Best effort: what cannot be removed is skipped. Returns the paths handled.
    """
    if os.name != "posix":
        return []
    pattern = re.compile(rf"\.(?P<target>.+)\.(?P<kind>tmp|old)-{re.escape(_host_tag())}-"
                         r"(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{12}")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    handled = []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        pid = int(m["pid"])
        try:
            if pid == os.getpid() or not entry.is_dir(follow_symlinks=False) or _pid_alive(pid):
                continue
            path = Path(entry.path)
            target = path.parent / m["target"]
            if m["kind"] == "old" and not os.path.lexists(target):
                path.rename(target)
            else:
                shutil.rmtree(path)
            handled.append(path)
        except OSError:
            continue
    return handled


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be replaced (the root, the home or current directory, or a parent of
    either), or None."""
    real = Path(os.path.realpath(path))
    if real.parent == real:
        return "the root directory"
    places = [("your home directory", os.path.expanduser("~"))]
    try:
        places.append(("the current directory", os.getcwd()))
    except OSError:
        pass
    for what, where in places:
        where_real = Path(os.path.realpath(where))
        if where_real == real:
            return what
        if where_real.is_relative_to(real):
            return f"a parent of {what}"
    return None


def _listing(directory: Path) -> tuple[tuple[int, int], dict[str, os.stat_result]]:
    st = os.lstat(directory)
    return (st.st_dev, st.st_ino), {e.name: e.stat(follow_symlinks=False) for e in os.scandir(directory)}


def check_replaceable(directory: Path, *, shown: Path | None = None, known: Any = None) -> Any:
    """Raise :class:`ExportError` unless ``directory`` is one evomerge may replace; return its fingerprint.

    Replaceable means empty, or holding an ``evomerge-manifest.json`` that parses as evomerge's
    (a regular file, ``{"files": {plain name: sha256}}``) and otherwise only regular files that
    manifest lists, each with its listed SHA-256: nothing evomerge did not write, nothing changed
    since. The first other entry (a user's file, a subdirectory, a symlink, an edited weight
    file) is named in the error. Hashing is skipped when the fingerprint (names, sizes, mtimes,
    inodes) equals ``known``, one an earlier check returned. ``shown`` is the path in messages.
    """
    shown = shown or directory
    hint = (f"move it out of {shown} or choose another --out; --overwrite only replaces a directory "
            "evomerge wrote and nobody changed")
    try:
        ident, entries = _listing(directory)
    except OSError as err:
        raise ExportError(f"cannot inspect {shown} before replacing it: {err}",
                          hint="check its permissions, or choose another --out") from err
    fingerprint = (ident, tuple(sorted((name, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
                                       for name, st in entries.items())))
    if not entries:
        return fingerprint  # nothing to lose
    manifest = entries.get(MANIFEST)
    if manifest is None or not stat.S_ISREG(manifest.st_mode):
        raise ExportError(f"refusing to replace {shown}: it has no {MANIFEST}, so evomerge did not write it",
                          hint="choose a new directory for --out (or remove this one yourself if it is disposable)")
    try:
        data = read_json_capped(directory / MANIFEST, "evomerge manifest", _MAX_MANIFEST_BYTES)
    except EvomergeError as err:
        raise ExportError(f"refusing to replace {shown}: its {MANIFEST} is unreadable ({err.message})",
                          hint="choose a new directory for --out (or remove this one yourself if it is disposable)"
                          ) from None
    files = data.get("files") if isinstance(data, dict) and set(data) == {"files"} else None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and _plain_name(k) and k != MANIFEST and isinstance(v, str) and _SHA256_HEX.fullmatch(v)
        for k, v in files.items()
    ):
        raise ExportError(f"refusing to replace {shown}: its {MANIFEST} is not evomerge's "
                          "(expected {\"files\": {file name: sha256}})",
                          hint="choose a new directory for --out (or remove this one yourself if it is disposable)")
    for name, st in sorted(entries.items()):
        if name == MANIFEST:
            continue
        if name not in files:
            raise ExportError(f"refusing to replace {shown}: {shown / name} is not listed in its {MANIFEST} "
                              "(evomerge did not write it)", hint=hint)
        if not stat.S_ISREG(st.st_mode):
            raise ExportError(f"refusing to replace {shown}: {shown / name} is not a regular file "
                              "(evomerge writes only regular files)", hint=hint)
    if fingerprint != known:
        for name in sorted(entries):
            if name != MANIFEST and _sha256(directory / name) != files[name]:
                raise ExportError(f"refusing to replace {shown}: {shown / name} changed since evomerge wrote it "
                                  f"(its SHA-256 differs from {MANIFEST})", hint=hint)
    return fingerprint


def _plain_name(name: str) -> bool:
    try:
        _safe_relname(name)
    except UnsafeArtifactError:
        return False
    return True


def refuse_protected(path: Path) -> None:
    """Raise :class:`ExportError` if ``path`` is the root, the home or the current directory or a
    parent of either: none of them is ever replaced, whatever it holds."""
    why = _protected(path)
    if why is not None:
        raise ExportError(f"refusing to replace {path}: it is {why}",
                          hint="choose a new directory that does not exist yet, such as merged/")


class StreamingSafetensorsWriter:
    """Writes tensors in a fixed order into one or more safetensors shards (HF layout).

    One file ``model.safetensors`` when everything fits in ``max_shard_bytes``; otherwise
    ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``. A tensor larger
    than the limit gets a shard of its own.
    """

    def __init__(self, directory: Path, metas: Sequence[TensorMeta], *, max_shard_bytes: int,
                 background: bool = False) -> None:
        self.dir = directory
        if max_shard_bytes <= 0:
            raise ExportError(f"max_shard_bytes must be positive, not {max_shard_bytes}",
                              hint="pass a shard size such as 2 * 2**30")
        seen: set[str] = set()
        self.metas: list[TensorMeta] = []
        for m in metas:
            if m.dtype not in DTYPE_NAMES:
                raise ExportError(f"tensor {m.name!r}: dtype {m.dtype} cannot be stored in safetensors here",
                                  hint=f"cast it to one of {', '.join(map(str, DTYPE_NAMES))}")
            if m.name in seen or m.name == "__metadata__" or not isinstance(m.name, str):
                raise ExportError(f"tensor name {m.name!r} is duplicated or reserved in {directory}",
                                  hint="give every output tensor a unique name")
            seen.add(m.name)
            self.metas.append(TensorMeta.of(m.name, m.dtype, m.shape))  # nbytes recomputed, not trusted
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
        self._hash: Any = None
        self.digests: dict[str, str] = {}  # sha256 of each finished shard, computed as it was written
        self.closed = False
        # background: file writes and hashing run on one thread, so they overlap the caller's
        # next tensor; ``write`` returns once the previous tensor is on its way to disk, and the
        # tensor just passed must stay untouched until the next ``write`` (or ``close``) returns
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="evomerge-writer") if background else None
        self._pending: Future[None] | None = None
        self._hold = os.environ.get(HOLD_ENV) or None

    def _open_shard(self, i: int) -> None:
        self._close_fh()
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for m in self.shards[i]:
            header[m.name] = {"dtype": DTYPE_NAMES[m.dtype], "shape": list(m.shape),
                              "data_offsets": [offset, offset + m.nbytes]}
            offset += m.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors does
        self._fh = open(self.dir / self.files[i], "wb")  # noqa: SIM115 - closed in close()/next shard
        self._hash = hashlib.sha256()
        self._put(len(raw).to_bytes(8, "little"))
        self._put(raw)
        self._shard = i
        self._left_in_shard = len(self.shards[i])

    def _put(self, data: bytes | memoryview) -> None:
        assert self._fh is not None
        self._fh.write(data)
        self._hash.update(data)

    def _close_fh(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()
            self.digests[Path(fh.name).name] = self._hash.hexdigest()

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # a failed write (disk full) surfaces here, in the caller's thread

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; it must match the next meta's name, dtype and shape."""
        if self.closed or self._next >= len(self.metas):
            raise ExportError(f"unexpected tensor {name!r}: all {len(self.metas)} tensors for {self.dir} are written",
                              hint="write each planned tensor exactly once")
        m = self.metas[self._next]
        if name != m.name or tuple(tensor.shape) != m.shape or tensor.dtype != m.dtype:
            raise ExportError(
                f"tensor {name!r} {tuple(tensor.shape)} {tensor.dtype} does not match the plan for "
                f"{self.files[self._shard_of(self._next)]}: expected {m.name!r} {m.shape} {m.dtype}",
                hint="write tensors in the order, shapes and dtypes given to tensor_writer()",
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8) if m.nbytes else None
        self._next += 1
        if self._pool is None:
            self._append(data)
            return
        self._wait()
        self._pending = self._pool.submit(self._append, data)

    def _append(self, data: torch.Tensor | None) -> None:
        if self._left_in_shard == 0:
            self._open_shard(self._shard + 1)
        if data is not None:
            view = memoryview(data.numpy())
            for start in range(0, len(view), _WRITE_CHUNK):
                self._put(view[start:start + _WRITE_CHUNK])
        self._left_in_shard -= 1
        if self._hold is not None:
            hold, self._hold = self._hold, None
            _hold_for_test(hold, self.dir, self._fh)

    def _shard_of(self, k: int) -> int:
        for i, shard in enumerate(self.shards):
            if k < len(shard):
                return i
            k -= len(shard)
        return len(self.shards) - 1

    def close(self) -> None:
        """Finish the last shard and write the index; every planned tensor must have been written."""
        if self.closed:
            return
        if self._next != len(self.metas):
            raise ExportError(
                f"only {self._next} of {len(self.metas)} tensors were written to {self.dir}; "
                f"first missing: {self.metas[self._next].name!r}",
                hint="write every tensor passed to tensor_writer() before closing",
            )
        self._wait()
        if self._pool is not None:
            self._pool.shutdown()
        if not self.metas:
            self._open_shard(0)
        self._close_fh()
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": sum(m.nbytes for m in self.metas)},
                "weight_map": {m.name: self.files[i] for i, shard in enumerate(self.shards) for m in shard},
            }
            (self.dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        self.closed = True

    def abort(self) -> None:
        """Drop the open shard without caring about flush errors (its directory is about to go)."""
        try:
            self._wait()
        except Exception:  # noqa: S110 - the write that failed is being reported already
            pass
        if self._pool is not None:
            self._pool.shutdown()
        try:
            self._close_fh()
        except OSError:
            pass  # flushing failed too (disk full); the temporary directory is removed anyway


class ModelDirWriter:
    """Context manager that publishes a complete model directory or nothing.

    Files go to ``tmp`` (``.<name>.tmp-<host>-<pid>-<random>`` beside ``out_dir``; stale ones of
    dead processes there are removed first, see :func:`remove_stale_temporaries`). A clean exit
    closes the tensor writer, writes ``evomerge-manifest.json`` (``{"files": {name: sha256}}``),
    fsyncs files and directory and renames ``tmp`` to ``out_dir``. An existing ``out_dir`` is an
    :class:`ExportError` unless ``overwrite``, and even then it is replaced only if evomerge wrote
    it and nobody changed it (:func:`check_replaceable`, checked again after it is moved aside)
    and it is not the root, home or current directory or a parent of them: the new directory is
    complete before the old one is moved aside, swapped in and deleted.
    Any exception removes ``tmp`` and propagates (out-of-space as :class:`ExportError`).
    """

    def __init__(self, out_dir: Path | str, *, overwrite: bool = False) -> None:
        self.out_dir = Path(os.path.abspath(out_dir))  # lexical: "a/../b" -> "b", symlinks untouched
        self.overwrite = overwrite
        if not self.out_dir.name:
            raise ExportError(f"cannot export to {str(out_dir)!r}", hint="choose a new directory such as --out merged/")
        self._checked = self._check_target()  # fingerprint of the directory to replace, if any
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out_dir.parent)
            self.tmp = temp_path(self.out_dir, "tmp")
            self.tmp.mkdir()
        except OSError as err:
            if _disk_full(err):
                raise self._disk_full_error() from err
            raise ExportError(f"cannot create a temporary directory beside {self.out_dir}: {err}",
                              hint="check that the parent directory is writable, or choose another --out") from err
        self._writers: list[StreamingSafetensorsWriter] = []
        self._names: set[str] = set()

    def _check_target(self, *, contents: bool = True) -> Any:
        """None if ``out_dir`` is free; else raise unless ``overwrite`` may replace it (with
        ``contents``: its files checked too; returns their fingerprint)."""
        if not os.path.lexists(self.out_dir):
            return None
        if not self.overwrite:
            raise ExportError(f"{self.out_dir} already exists",
                              hint="choose another --out or pass --overwrite to replace it")
        if self.out_dir.is_symlink() or not self.out_dir.is_dir():
            raise ExportError(f"{self.out_dir} exists and is not a directory; refusing to replace it",
                              hint="remove it yourself or choose another --out")
        refuse_protected(self.out_dir)
        return check_replaceable(self.out_dir) if contents else None

    def _disk_full_error(self) -> ExportError:
        return ExportError(f"disk full while writing {self.out_dir}; nothing was written",
                           hint="free disk space or choose another --out on a larger disk")

    def _claim(self, relname: str) -> Path:
        _safe_relname(relname, self.out_dir)
        if relname == MANIFEST or relname in self._names:
            raise ExportError(f"{self.out_dir}: {relname} is written twice or is reserved",
                              hint=f"write each file once; {MANIFEST} is written by evomerge")
        self._names.add(relname)
        return self.tmp / relname

    def write_json(self, relname: str, obj: Any) -> None:
        self.write_text(relname, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def write_text(self, relname: str, text: str) -> None:
        self._claim(relname).write_text(text, encoding="utf-8")

    def copy_file(self, src: Path, relname: str) -> None:
        shutil.copyfile(src, self._claim(relname))

    def tensor_writer(self, metas: Sequence[TensorMeta], *, max_shard_bytes: int = 2 * 2**30,
                      background: bool = False) -> StreamingSafetensorsWriter:
        """The (single) streaming writer of this directory's weights (``background``: see
        :class:`StreamingSafetensorsWriter`)."""
        if self._writers:
            raise ExportError(f"{self.out_dir}: tensor_writer() called twice",
                              hint="pass every tensor's meta to one tensor_writer()")
        w = StreamingSafetensorsWriter(self.tmp, metas, max_shard_bytes=max_shard_bytes, background=background)
        for fname in [*w.files, INDEX]:
            if fname in self._names:
                raise ExportError(f"{self.out_dir}: {fname} was already written", hint="let tensor_writer() write weights")
        self._names.update([*w.files, INDEX])
        self._writers.append(w)
        return w

    def __enter__(self) -> ModelDirWriter:
        return self

    def _publish(self) -> None:
        for w in self._writers:
            w.close()
        files = sorted(p for p in self.tmp.iterdir() if p.is_file() and p.name != MANIFEST)
        known = {name: digest for w in self._writers for name, digest in w.digests.items()}
        manifest = {"files": {p.name: known.get(p.name) or _sha256(p) for p in files}}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for p in self.tmp.iterdir():
            _fsync_path(p)
        _fsync_path(self.tmp)
        if os.path.lexists(self.out_dir):
            self._check_target(contents=False)  # it may have appeared, or changed, while we were writing
            old = temp_path(self.out_dir, "old")
            self.out_dir.rename(old)
            try:  # checked where it now is: nothing can slip in between the check and the deletion
                check_replaceable(old, shown=self.out_dir, known=self._checked)
                self.tmp.rename(self.out_dir)
            except BaseException:
                old.rename(self.out_dir)
                raise
            _fsync_path(self.out_dir.parent)
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
        full = _disk_full(exc)
        if full is not None and not isinstance(exc, ExportError):
            raise self._disk_full_error() from full
        if exc_type is None:
            raise exc  # the failure came from publishing, not from the with-block


def verify_manifest(model_dir: Path | str) -> None:
    """Check every file against ``evomerge-manifest.json``; name the first that is missing or differs."""
    d = Path(model_dir)
    path = d / MANIFEST
    hint = "re-export the model with `evomerge export` (the directory was modified or damaged)"
    try:
        data = read_json_capped(path, "evomerge manifest", 16 * 2**20)
    except CorruptArtifactError:
        raise
    except Exception as err:
        raise CorruptArtifactError(f"{path}: missing or unreadable manifest ({err})", hint=hint) from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise CorruptArtifactError(f"{path}: invalid manifest (no files object mapping names to sha256)", hint=hint)
    for name, digest in sorted(files.items()):
        p = d / _safe_relname(name, d)
        if not p.is_file():
            raise CorruptArtifactError(f"{p}: listed in the manifest but missing", hint=hint)
        if _sha256(p) != digest:
            raise CorruptArtifactError(f"{p}: SHA-256 differs from the manifest (the file is corrupt)", hint=hint)
