"""Which task-vector entries a sparsifying merge keeps: exact magnitude rank cuts.
Floor 3 of the merge kernels (sparsify -> rank_index -> kernels -> native): imports rank_index, kernels.

TIES trims each task vector to its k largest |d| entries (Yadav et al. 2023, sec. 3, step 1),
breadcrumbs keeps a band below the largest (Davari & Belilovsky 2024, sec. 3). A rank cut is a
threshold ``t`` and a flat index ``cut``: an entry is in the top k when |d| > t, or |d| == t at an
index below ``cut``, so exactly k entries are selected and among equal magnitudes at the
threshold the lower flat index counts as larger.

``rank_cut`` finds it without sorting or a full selection over the tensor (``torch.kthvalue`` on
25M entries takes ~0.4 s here, a sort ~3 s): the k-th value is bracketed from a strided sample
of up to 131,072 entries, one fused pass splits the bracket into 8 sub-brackets, counts the
entries above each and marks every entry with its sub-bracket, and the exact k-th value is
selected among the entries of the one sub-bracket that holds rank k (a fraction of a percent
of the tensor). A bracket that misses (a sample far from typical) falls back to the full
selection, so the cut is always exact.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from evomerge.merge import kernels, rank_index
from evomerge.merge.kernels import magnitudes

SAMPLE = 1 << 17  # largest strided sample
_ZERO_MARGIN = 0.05  # the sample's nonzero share may exceed k / n by this and still be checked exactly
_ZERO_CHUNK = 1 << 20  # entries scanned at a time for the k-th zero
SAMPLE_FACTOR = 5.0  # sample size ~ (SAMPLE_FACTOR * n)^(2/3), see rank_cut
SUB_BRACKETS = 8  # the bracket pass splits its range; only the sub-bracket with rank k is gathered
SMALL = 1 << 16  # below this many entries, select directly on the full magnitudes
_BRACKET_SIGMAS = 5.0

# torch.rand could not draw float32 keep probabilities below 2**-24 and rescaling by such an
# inverse blows the few survivors up, so DARE densities below this drop every entry.
MIN_DARE_DENSITY = 2.0**-24


@dataclass(frozen=True, eq=False)
class RankCut:
    """Exactly the k largest entries: |d| > threshold, or |d| == threshold at index < cut.
    ``outside_ties``: the flat indices of the entries equal to the threshold that the cut leaves
    out (index >= cut), so a kernel can apply the cheap rule |d| >= threshold everywhere and fix
    up just those few entries; None when the cut takes the whole tie group, or when the
    threshold is 0: those ties are entries with d = 0, which add nothing to a merge kept or not
    (a signed zero times a 0/1 mask keeps its sign; it is never > 0 or < 0 for the election or
    its weights), and a fine-tune can leave millions of them."""

    threshold: float
    cut: int
    outside_ties: Tensor | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RankCut) and (self.threshold, self.cut) == (other.threshold, other.cut)

    def __hash__(self) -> int:
        return hash((self.threshold, self.cut))

    @staticmethod
    def everything() -> RankCut:
        return RankCut(-1.0, kernels.ALL_TIES)

    @staticmethod
    def nothing() -> RankCut:
        return RankCut(math.inf, kernels.ALL_TIES)


def _cut_among(values: Tensor, positions: Tensor | None, need: int) -> RankCut:
    """The cut selecting the ``need`` largest of ``values`` (flat indices ``positions``, ascending;
    None = 0..n-1), given that every entry equal to the result lies among them. NaN entries
    rank below everything (the kernels keep them anyway, so the output is flagged non-finite)."""
    values = values.nan_to_num(nan=-1.0, posinf=math.inf, neginf=-math.inf)
    t = torch.kthvalue(values, values.numel() - need + 1).values
    above = int(torch.count_nonzero(values > t))
    ties = (values == t).nonzero().squeeze(1)
    take = need - above  # >= 1: the k-th value itself
    if take == ties.numel():  # the whole tie group is in: no index bound needed
        return RankCut(float(t), kernels.ALL_TIES)
    flat = positions[ties] if positions is not None else ties
    outside = flat[take:].to(torch.int64, copy=True) if float(t) != 0.0 else None  # (see RankCut)
    return RankCut(float(t), int(flat[take - 1]) + 1, outside)


def _cut_from_order(e: Tensor, b: Tensor | None, order: Tensor, k: int) -> RankCut:
    """The cut of the ``k`` largest (0 < k < n) read from a rank order (``rank_index``: ascending
    magnitude, ties by descending index): the threshold is the magnitude at slot n - k; the tie
    members below that slot, found in windows that double, are the ties left out."""
    slot = order.numel() - k

    def mags(lo: int, hi: int) -> Tensor:
        pos = order[lo:hi].to(torch.int64)
        return magnitudes(e[pos], b[pos] if b is not None else None).nan_to_num(nan=-1.0, posinf=math.inf)

    t = float(mags(slot, slot + 1)[0])
    if t == 0.0:  # ties of d = 0 are not listed (see RankCut)
        whole = slot == 0 or float(mags(slot - 1, slot)[0]) != 0.0
        return RankCut(t, kernels.ALL_TIES) if whole else RankCut(t, int(order[slot]) + 1)
    lo, width = slot, 64
    while lo > 0:
        start = max(0, lo - width)
        differ = (mags(start, lo) != t).nonzero()
        if differ.numel():
            lo = start + int(differ[-1]) + 1
            break
        lo, width = start, width * 2
    if lo == slot:
        return RankCut(t, kernels.ALL_TIES)
    return RankCut(t, int(order[slot]) + 1, order[lo:slot].flip(0).to(torch.int64))


def native_cut(expert: Tensor, base: Tensor | None, order: Tensor, k: int) -> RankCut | None:
    """The rank cut of the ``k`` largest |expert - base| read from a rank order
    (``rank_index``) in C++, or None when the C++ kernel is off or a dtype is not its."""
    mod = kernels.native_for(expert, base) if order.dtype == torch.int32 else None
    if mod is None:
        return None
    t, cut, outside = mod.cut_sorted(expert, base, order, k)
    if cut < 0:
        return RankCut(t, kernels.ALL_TIES)
    return RankCut(t, cut, outside)


class _Scratch:
    """A reusable uint8 buffer for sub-bracket codes (one per thread; grows as needed)."""

    def __init__(self) -> None:
        self.local = threading.local()

    def get(self, n: int) -> Tensor:
        """Codes for ``n`` entries, padded with zeros to a multiple of 8."""
        words = (n + 7) // 8
        buf = getattr(self.local, "buf", None)
        if buf is None or buf.numel() < words * 8:
            buf = self.local.buf = torch.zeros(words * 8, dtype=torch.uint8)
        view = buf[: words * 8]
        view[n:].zero_()
        return view



_scratch = _Scratch()


def _positions(codes: Tensor, j: int) -> Tensor:
    """Flat indices (ascending) of the entries of ``codes`` (length a multiple of 8) equal to
    ``j`` >= 1: all-zero 8-byte words are skipped first, so sparse codes cost a scan of N/8 words."""
    words = codes.view(torch.int64).nonzero().squeeze(1)
    block = torch.index_select(codes.view(-1, 8), 0, words)
    rows, cols = (block == j).nonzero(as_tuple=True)
    return torch.index_select(words, 0, rows) * 8 + cols


def rank_cut(expert: Tensor, base: Tensor | None, k: int) -> RankCut:
    """The exact cut of the ``k`` largest |expert - base| entries (flat, row-major order)."""
    e = expert.reshape(-1)
    b = base.reshape(-1) if base is not None else None
    n = e.numel()
    if k >= n:
        return RankCut.everything()
    if k <= 0:
        return RankCut.nothing()
    index = rank_index.INDEXES.lookup(expert, base)
    if index is not None:  # resident sources: the k-th largest is at a known slot, no pass
        fast = native_cut(e, b, index.order, k)
        return fast if fast is not None else _cut_from_order(e, b, index.order, k)
    if n <= SMALL:
        return _cut_among(magnitudes(e, b), None, k)
    # Selection costs ~12 ns per entry (sample and bracket alike); the bracket holds about
    # 10 sigma / sqrt(m) of the entries, so a sample of m ~ (SAMPLE_FACTOR n)^(2/3) balances the two.
    stride = n // min(SAMPLE, max(4096, int((SAMPLE_FACTOR * n) ** (2 / 3))))
    sample = magnitudes(e[::stride], b[::stride] if b is not None else None)
    m = sample.numel()
    p = k / n
    if float(torch.count_nonzero(sample)) / m <= p + _ZERO_MARGIN:
        zero_cut = _cut_at_zero(magnitudes(e, b), k)
        if zero_cut is not None:
            return zero_cut
    half = _BRACKET_SIGMAS * math.sqrt(m * p * (1 - p)) + 8
    hi_rank = min(m - 1, math.floor(p * m - half))  # 0-based ranks from the top; -1: no upper bound
    lo_rank = max(0, math.ceil(p * m + half))  # m: no lower bound
    if hi_rank >= lo_rank:  # an empty bracket (only when the width is forced to zero)
        return _cut_among(magnitudes(e, b), None, k)
    # fused, 8 sub-brackets cost little more than one; eagerly every extra edge is a pass
    edges = _edges(sample.numpy(), hi_rank, lo_rank, SUB_BRACKETS if kernels.fused_bracket(n, e, b) else 1)
    codes = _scratch.get(n)
    counts = kernels.bracket(codes, e, b, edges)
    # sub-bracket j (1..S) holds edges[j-1] < |d| <= edges[j] (j = 1: from edges[0] inclusive);
    # counts[j] entries lie above it, so it holds the k-th largest when counts[j] < k <= counts[j-1]
    for j in range(len(edges) - 1, 0, -1):
        if counts[j] < k <= counts[j - 1]:
            positions = _positions(codes, j)
            if positions.numel() != counts[j - 1] - counts[j]:
                break  # cannot happen with consistent counts; never trust a cut that does not add up
            values = magnitudes(torch.index_select(e, 0, positions),
                                 torch.index_select(b, 0, positions) if b is not None else None)
            return _cut_among(values, positions, k - counts[j])
    return _cut_among(magnitudes(e, b), None, k)  # the bracket missed: select over everything


def _cut_at_zero(mag: Tensor, k: int) -> RankCut | None:
    """The cut of the ``k`` largest of ``mag`` when the k-th largest is 0 (fewer than k entries
    differ from the base: sparse and all-zero task vectors, untouched modules, DARE-pruned
    experts), found without selecting among the zeros (that selection over a tie group of
    millions cost ~10x a dense cut; docs/benchmarks.md, issue 20): every positive entry, then the
    zeros by lower index (the rule of :func:`_cut_among`; NaN ranks below them). None when the
    k-th largest is not 0."""
    positive = int(torch.count_nonzero(mag > 0))
    if positive >= k:
        return None
    take = k - positive
    seen = 0
    for lo in range(0, mag.numel(), _ZERO_CHUNK):  # the take-th zero, a chunk at a time (no n-long index)
        zeros = mag[lo:lo + _ZERO_CHUNK] == 0
        here = int(torch.count_nonzero(zeros))
        if seen + here >= take:
            last = lo + int(zeros.nonzero()[take - seen - 1])
            if seen + here == take and not bool((mag[last + 1:] == 0).any()):
                return RankCut(0.0, kernels.ALL_TIES)  # the whole tie group of zeros is in
            return RankCut(0.0, last + 1)  # zeros past it are out; at threshold 0 they need no fix-up list
        seen += here
    return None  # fewer zeros than needed: NaN entries are in the cut; the general path handles that


def _edges(sample, hi_rank: int, lo_rank: int, parts: int) -> list[float]:  # type: ignore[no-untyped-def]
    """``parts`` + 1 ascending edges from the sample's values at top ranks ``lo_rank`` down to
    ``hi_rank`` (-1.0 below everything when lo_rank is past the sample, inf above it when -1)."""
    m = sample.shape[0]
    tops = [lo_rank - (lo_rank - hi_rank) * j // parts for j in range(parts + 1)]
    wanted = sorted({m - 1 - r for r in tops if 0 <= r < m})
    picked = np.partition(sample, wanted) if wanted else sample
    return [math.inf if r < 0 else -1.0 if r >= m else float(picked[m - 1 - r]) for r in tops]


def top_k_count(density: float, numel: int) -> int:
    """TIES trim size: k = max(1, int(density * numel)) (mergekit's rule)."""
    return max(1, int(density * numel))


def breadcrumb_counts(density: float, gamma: float, numel: int) -> tuple[int, int]:
    """(entries in the top band kept together with the outliers, outliers dropped): keep the
    int(density * numel) entries just below the int(gamma * numel) largest; as in mergekit,
    density takes precedence when density + gamma > 1."""
    n_keep = int(density * numel)
    n_top = min(int(gamma * numel), numel - n_keep)
    return n_keep + n_top, n_top


def in_cut(mag: Tensor, cut: RankCut) -> Tensor:
    """Bool mask (shape of ``mag``) of the entries a cut selects."""
    idx = torch.arange(mag.numel()).view(mag.shape)
    return (mag > cut.threshold) | ((mag == cut.threshold) & (idx < cut.cut))


def magnitude_topk(d: Tensor, density: float) -> Tensor:
    """TIES trim of one task vector, in place: keep the k = max(1, int(density * numel)) largest
    |d| and zero the rest; density >= 1 keeps everything."""
    if density >= 1.0:
        return d
    cut = rank_cut(d, None, top_k_count(density, d.numel()))
    return d.masked_fill_(~in_cut(d.abs(), cut), 0.0)


def breadcrumbs(d: Tensor, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs mask of one task vector, in place (Davari & Belilovsky 2024, sec. 3):
    drop the largest ``gamma`` fraction and keep the int(density * numel) entries just below."""
    if density >= 1.0:
        return d
    k_band, n_top = breadcrumb_counts(density, gamma, d.numel())
    mag = d.abs()
    keep = in_cut(mag, rank_cut(d, None, k_band))
    if n_top > 0:
        keep &= ~in_cut(mag, rank_cut(d, None, n_top))
    return d.masked_fill_(~keep, 0.0)
