"""Magnitude rank indexes of resident task vectors: exact TIES/breadcrumbs cuts without a pass.
Floor 2 of the merge kernels (sparsify -> rank_index -> kernels -> native): of merge/, imports kernels.

A search merges the same resident sources for every candidate; only the densities change. For
a resident pair (expert E, base B) the flat positions of d = E - B are sorted once by |d|
(ascending; NaN lowest; equal magnitudes by descending index), by a two-pass counting sort of
32-bit keys in C++ (torch's stable sort as the fallback, same order). The k-th largest
magnitude then sits at slot n - k: a rank cut for any k reads one entry, plus the members of
its tie group below that slot (the ties the cut leaves out, under the lower-index-first rule of
:class:`~evomerge.merge.sparsify.RankCut`). No pass over the tensor per candidate: TIES on the
search path costs about what task arithmetic does.

Only tensors registered by their owner as resident and unchanged are indexed (``register``;
``tensor._version`` guards against in-place edits), each pair on its second cut (a one-shot
merge never pays the build: ~10 ns per entry in C++), within a memory budget of 4 bytes per
indexed entry: ``EVOMERGE_RANK_INDEX_MEMORY`` bytes per process (default 1/8 of physical
memory; 0 turns indexing off). Pairs past the budget keep the sampled-bracket path.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from evomerge.errors import ConfigError
from evomerge.merge import kernels


@dataclass
class PairIndex:
    """Flat positions of one (expert, base) pair by ascending magnitude; equal magnitudes by
    descending flat index, so the top k of the rank rule are exactly the last k slots."""

    order: Tensor  # int32 (int64 past 2**31 entries), one slot per entry

    @property
    def nbytes(self) -> int:
        return self.order.numel() * self.order.element_size()


def magnitude_keys(mag: Tensor) -> Tensor:
    """int32 sort keys, strictly monotone in float32 ``mag`` >= 0 (equal magnitudes, equal keys):
    the float32 bit pattern + 1 (at most 0x7F800001, for inf); NaN -> 0, so it ranks lowest, as
    in ``sparsify._cut_among``."""
    key = mag.view(torch.int32).add(1)
    return key.masked_fill_(mag.isnan(), 0)


def build(expert: Tensor, base: Tensor | None) -> PairIndex:
    """The index of |expert - base| (float32, as the merge kernels compute it): a counting sort
    in C++ where the native kernel is available, else torch's stable sort (the same order)."""
    e = expert.reshape(-1)
    b = base.reshape(-1) if base is not None else None
    if e.numel() < 2**31 and (mod := kernels.native_for(e, b)) is not None:
        return PairIndex(mod.rank_order(e, b, torch.get_num_threads()))
    return build_torch(expert, base)


def build_torch(expert: Tensor, base: Tensor | None) -> PairIndex:
    """``build`` with torch ops alone: a stable sort of the keys in reversed position order, so
    equal magnitudes come out by descending index."""
    mag = kernels.magnitudes(expert.reshape(-1), base.reshape(-1) if base is not None else None)
    keys = magnitude_keys(mag).flip(0)
    del mag
    sorted_keys, order = torch.sort(keys, stable=True)
    del keys, sorted_keys
    order = order.neg_().add_(order.numel() - 1)  # positions in the unflipped tensor
    return PairIndex(order.to(torch.int32) if order.numel() < 2**31 else order)


def _default_budget() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30


def budget() -> int:
    """Bytes the indexes of this process may hold (``EVOMERGE_RANK_INDEX_MEMORY``)."""
    raw = os.environ.get("EVOMERGE_RANK_INDEX_MEMORY", "").strip()
    if not raw:
        return _default_budget()
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"EVOMERGE_RANK_INDEX_MEMORY={raw!r} is not a byte count",
                          hint="set it to a whole number of bytes (0 turns rank indexes off) or unset it")
    return value


def _versions(expert: Tensor, base: Tensor | None) -> tuple[int, int]:
    """In-place edit counters of a pair (torch bumps ``_version`` on every in-place op)."""
    return expert._version, base._version if base is not None else 0


class _Entry:
    __slots__ = ("expert", "base", "versions", "uses", "index")

    def __init__(self, expert: Tensor, base: Tensor | None, on_death) -> None:  # type: ignore[no-untyped-def]
        self.expert = weakref.ref(expert, on_death)
        self.base = weakref.ref(base, on_death) if base is not None else None
        self.versions = _versions(expert, base)
        self.uses = 0
        self.index: PairIndex | None = None

    def holds(self, expert: Tensor, base: Tensor | None) -> bool:
        if self.expert() is not expert:
            return False
        if (self.base() if self.base is not None else None) is not base:
            return False
        return self.versions == _versions(expert, base)

    def dead(self) -> bool:
        return self.expert() is None or (self.base is not None and self.base() is None)


class RankIndexes:
    """The process's indexes, keyed by resident tensor identity. An index goes (and its bytes
    leave the budget) when its expert or base is freed: a closed evaluator's sources."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resident: dict[int, weakref.ref[Tensor]] = {}
        self._pairs: dict[tuple[int, int], _Entry] = {}
        self._someone_died = False  # set by weakref callbacks
        self.used = 0  # bytes held by built indexes
        self.builds = 0

    def _died(self, _ref: object) -> None:
        self._someone_died = True  # no lock here: a callback can run inside any allocation

    def _prune(self) -> None:
        """Drop entries of freed tensors (called with the lock held)."""
        if not self._someone_died:
            return
        self._someone_died = False
        for key in [k for k, e in self._pairs.items() if e.dead()]:
            index = self._pairs.pop(key).index
            if index is not None:
                self.used -= index.nbytes
        for key in [k for k, r in self._resident.items() if r() is None]:
            del self._resident[key]

    def register(self, tensor: Tensor) -> None:
        """Mark a long-lived tensor that merge ops only read (a resident source's weights)."""
        if tensor.is_floating_point() and tensor.device.type == "cpu":
            with self._lock:
                self._prune()
                self._resident[id(tensor)] = weakref.ref(tensor, self._died)

    def _is_resident(self, t: Tensor | None) -> bool:
        if t is None:
            return True
        ref = self._resident.get(id(t))
        return ref is not None and ref() is t

    def lookup(self, expert: Tensor, base: Tensor | None) -> PairIndex | None:
        """The pair's index if it is (or now gets) built; None: use the sampled path. Builds run
        under the lock (one at a time per process; a few seconds for a 100M-parameter pair)."""
        if not (self._is_resident(expert) and self._is_resident(base)):
            return None
        key = (id(expert), id(base) if base is not None else 0)
        with self._lock:
            self._prune()
            entry = self._pairs.get(key)
            if entry is None or not entry.holds(expert, base):
                if entry is not None and entry.index is not None:
                    self.used -= entry.index.nbytes
                entry = self._pairs[key] = _Entry(expert, base, self._died)
            entry.uses += 1
            if entry.index is not None or entry.uses < 2:
                return entry.index
            need = expert.numel() * (4 if expert.numel() < 2**31 else 8)
            if self.used + need > budget():
                return None
            entry.index = build(expert, base)
            self.used += entry.index.nbytes
            self.builds += 1
            return entry.index

    def clear(self) -> None:
        with self._lock:
            self._pairs.clear()
            self._resident.clear()
            self.used = 0


INDEXES = RankIndexes()
