"""The C++ build of the fused merge formula (native_merge.cpp), loaded on first use.
Floor 0 of the merge kernels (sparsify -> rank_index -> kernels -> native): no merge imports.

``kernels._body`` is the formula; torch.compile turns it into one loop but costs ~4 s per
process (importing dynamo and inductor, tracing), which a one-shot export never earns back and
every Ray worker pays at start-up. The same formula in C++ (blocks of 512 entries kept in L1,
each step a loop the compiler vectorizes, blocks split over threads) is built once per machine
with torch's extension builder into the evomerge cache and then loads in ~0.1 s. Besides the
merge it holds the other per-entry passes: the sampled rank cut's bracket pass, the rank-index
build (a counting sort) and the cut read from an index (``sparsify``, ``rank_index``). Outputs
of 2**18 float32 entries or more are written with non-temporal stores (no write-allocate reads).

``EVOMERGE_NATIVE=0`` turns it off (``1`` or ``auto``, the default, use it when it builds). A
failed build (no C++ compiler, no ninja) logs one warning and the process falls back to the
torch.compile / eager kernels.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from evomerge.cache import cache_root
from evomerge.errors import ConfigError

log = logging.getLogger("evomerge.kernels")

SOURCE = Path(__file__).with_name("native_merge.cpp")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno"]

STALE_BUILD_DAYS = 30  # builds of other sources or CPUs untouched this long are removed

_lock = threading.Lock()
_module: list[ModuleType | None] = []  # [] not tried yet; [None] build failed; [module]
broken: list[str] = []


def _mode() -> str:
    mode = os.environ.get("EVOMERGE_NATIVE", "auto").strip().lower()
    if mode not in ("0", "1", "auto", ""):
        raise ConfigError(f"EVOMERGE_NATIVE={mode!r} is not a native-kernel mode",
                          hint="set EVOMERGE_NATIVE to 0 (Python kernels only), 1 or auto (the C++ kernel when it builds)")
    return mode


def _build_dir() -> Path:
    """One build per source (text and path: torch's builder rebuilds a directory whose ninja file
    names another path), flags, torch version and CPU (``-march=native``)."""
    cpu = ""
    try:
        cpu = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        cpu = platform.processor()
    key = hashlib.sha256("\n".join([SOURCE.read_text(), str(SOURCE.resolve()), " ".join(FLAGS), torch.__version__, cpu]).encode())
    return cache_root() / "native" / key.hexdigest()[:16]


@contextlib.contextmanager
def _build_lock(build: Path) -> Iterator[None]:
    """Serialize builds and loads across processes with an flock, which the kernel drops when its
    holder dies. torch's own lock is a plain file that a process killed mid-build (a worker
    SIGKILLed by a fault test or a crash) leaves behind, and every later load would wait on it
    forever; under our lock no live builder can hold it, so a leftover one is removed."""
    with open(build / "evomerge.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            stale = build / "lock"
            if stale.exists():
                log.warning("removing the lock file of an interrupted native kernel build: %s", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prune_stale_builds(root: Path, *, keep: Path, days: float = STALE_BUILD_DAYS) -> list[Path]:
    """Remove build directories under ``root`` (one per source version, flags and CPU, ~1 MB each)
    that no process has loaded for ``days``; a directory whose lock another process holds is left
    alone. Returns the removed directories."""
    import shutil
    import time

    removed = []
    cutoff = time.time() - days * 86400
    for d in root.iterdir() if root.is_dir() else ():
        try:
            if d == keep or not d.is_dir() or d.is_symlink() or d.stat().st_mtime > cutoff:
                continue
            with open(d / "evomerge.lock", "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a build or load holds it
                shutil.rmtree(d)
            removed.append(d)
        except OSError:  # locked, or already gone: another process's business
            continue
    return removed


def module() -> ModuleType | None:
    """The built extension, or None (turned off, or the build failed: Python kernels)."""
    if _mode() == "0":
        return None
    if _module:
        return _module[0]
    with _lock:
        if not _module:
            try:
                from torch.utils import cpp_extension

                build = _build_dir()
                build.mkdir(parents=True, exist_ok=True)
                with _build_lock(build):
                    mod = cpp_extension.load(name="evomerge_native_merge", sources=[str(SOURCE)],
                                             extra_cflags=FLAGS, build_directory=str(build), verbose=False)
                    os.utime(build)  # in use: not stale for another STALE_BUILD_DAYS
                _module.append(mod)
                prune_stale_builds(build.parent, keep=build)
            except Exception as exc:  # no compiler, no ninja, unsupported platform
                broken.append(repr(exc))
                log.warning("native merge kernel unavailable (%s); using the torch kernels",
                            str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__)
                _module.append(None)
    return _module[0]


if __name__ == "__main__":  # `python -m evomerge.merge.native`: build now (CI, set-up scripts)
    import sys

    built = module()
    print(f"native merge kernel: {built.__file__ if built else 'unavailable: ' + '; '.join(broken)}")
    sys.exit(0 if built is not None or _mode() == "0" else 1)
