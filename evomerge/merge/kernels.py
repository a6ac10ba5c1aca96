"""Fused elementwise merge kernels: one pass over the sources per output tensor.
Floor 1 of the merge kernels (sparsify -> rank_index -> kernels -> native): of merge/, imports native.

Every task-vector merge (ALGORITHMS.md) is, per entry, a function of the base entry, the
experts' entries, a few per-expert scalars and the entry's flat index:

    d_i = E_i - B                         (or E_i alone without a base: linear)
    x_i = s_i * d_i * keep_i              keep_i: magnitude rank band (TIES trim, breadcrumbs)
                                          and/or a DARE Bernoulli draw
    merged = sum_i x_i / W                (sum; W = sum_i w_i when normalizing)
           | TIES elect + disjoint merge  (Yadav et al. 2023, sec. 3 steps 2-3)
    out = B + lambda * merged

``run`` evaluates that formula for one output tensor and writes it straight into ``out`` (a
live model parameter, an engine buffer or an export buffer), reading each source once: first
with the C++ build of the formula (``native``: L1-sized blocks, vectorized loops, both cores),
where it builds; else through ``torch.compile`` (inductor fuses the formula into one loop;
tensors of at least ``COMPILE_MIN_NUMEL`` entries, ~4 s of compiling per process); else the very
same function runs eagerly over cache-sized chunks. ``EVOMERGE_NATIVE=0`` skips the C++ kernel,
``EVOMERGE_COMPILE=0`` turns compiling off, ``=1`` compiles every tensor. All three keep the
same entries and agree to float rounding (tested).

DARE's mask is counter-based: entry j of expert i is kept when hash(seed_i, j) < density *
2**32, a pure function of the seed and the flat index. It is the same in a fused kernel, in
chunks or on another machine, and it draws nothing from global RNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from evomerge.merge import native

log = logging.getLogger("evomerge.kernels")

CHUNK = 1 << 16  # eager path: entries per chunk (256 KiB temporaries: cache resident, and small enough
#                  that malloc reuses them instead of mapping fresh pages per chunk)
NATIVE_BASE, NATIVE_LOW, NATIVE_HIGH, NATIVE_RANDOM, NATIVE_CONSENSUS, NATIVE_NORMALIZE = 1, 2, 4, 8, 16, 32
NATIVE_DTYPES = frozenset((torch.float32, torch.bfloat16, torch.float16, torch.float64))
NATIVE_THREADED_NUMEL = 1 << 19  # smaller tensors run on the caller's thread (waking a helper costs ~50 us)
COMPILE_MIN_NUMEL = 1 << 18  # smaller tensors (norms, the tiny zoo) are cheap eagerly; compiling costs seconds
_M32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # below 2**27: products of 32-bit values stay below 2**59 (no int64 overflow)


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xor-shift-multiply with Mueller's constant 0x45d9f3b) of int64
    values in [0, 2**32); a bijection of that range."""
    x = ((x >> 16) ^ x) * _MIX & _M32
    x = ((x >> 16) ^ x) * _MIX & _M32
    return (x >> 16) ^ x


def random_bits(idx: Tensor, seed_lo: Tensor | int, seed_hi: Tensor | int) -> Tensor:
    """Uniform 32-bit values (int64 in [0, 2**32)) for flat indices ``idx`` under a 64-bit seed:
    the hash of the low index word xor the seed, with the high word (zero below 2**32 entries)
    folded in by an odd multiplier."""
    return mix32((idx & _M32) ^ seed_lo ^ _fold_high(idx >> 32, seed_hi))


def _fold_high(high: Tensor | int, seed_hi: Tensor | int) -> Tensor | int:
    return ((high ^ seed_hi) * 0x2C1B3C6D) & _M32  # < 2**62: no int64 overflow


def premixed_seed(seed_lo: int, seed_hi: int) -> int:
    """For tensors below 2**32 entries the high index word is 0, so random_bits(idx, lo, hi) ==
    mix32(idx ^ premixed_seed(lo, hi)): three int64 ops per entry fewer."""
    return seed_lo ^ int(_fold_high(0, seed_hi))


def keep_bits_eager(offset: int, n: int, seed: int, keep: int) -> Tensor:
    """mix32(idx ^ seed) < keep for idx = offset .. offset + n - 1 (< 2**32), computed in numpy's
    wrapping uint32 arithmetic: the same bits as the int64 formula, in a quarter of the time."""
    if keep >= 1 << 32:
        return torch.ones(n, dtype=torch.bool)
    x = np.arange(offset, offset + n, dtype=np.uint32)
    x ^= np.uint32(seed)
    c = np.uint32(_MIX)
    x ^= x >> np.uint32(16)
    x *= c
    x ^= x >> np.uint32(16)
    x *= c
    x ^= x >> np.uint32(16)
    return torch.from_numpy(x < np.uint32(keep))


ALL_TIES = 1 << 62  # a rank cut's index bound that keeps every entry equal to its threshold


@dataclass(frozen=True)
class Variant:
    """What one kernel computes; each distinct variant compiles once per process."""

    experts: int
    base: bool  # task vectors against a base (else a plain weighted sum of the experts: linear)
    rank_low: bool  # keep only entries above a magnitude rank cut (TIES trim, breadcrumbs)
    rank_high: bool  # drop entries above a second rank cut (breadcrumbs' outliers)
    random: bool  # DARE drop
    consensus: bool  # TIES sign election and disjoint merge
    normalize: bool  # consensus: divide by the weights of the agreeing experts
    tie_cuts: bool = False  # some rank cut splits the entries equal to its threshold by index
    wide: bool = False  # 2**32 entries or more: hash the high index word too


# Per-expert scalars, one row per expert (float32 / int64 tensors: new values never recompile).
F_SCALE, F_WEIGHT, F_LOW_T, F_HIGH_T = range(4)
I_LOW_CUT, I_HIGH_CUT, I_KEEP, I_SEED_LO, I_SEED_HI = range(5)


def _keep_top(a: Tensor, t: Tensor | float, cut: Tensor | int, idx: Tensor | None) -> Tensor:
    """The entries of a rank cut: a > t, or a == t at a flat index below ``cut`` (every such
    entry when ``idx`` is None). Written as a negation so that NaN counts as inside."""
    if idx is None:
        return ~(a < t)
    return ~((a < t) | ((a == t) & (idx >= cut)))


def _drop_top(a: Tensor, t: Tensor | float, cut: Tensor | int, idx: Tensor | None) -> Tensor:
    """The same rank cut for dropping (NaN counts as outside: not dropped)."""
    if idx is None:
        return a >= t
    return (a > t) | ((a == t) & (idx < cut))


def magnitudes(expert: Tensor, base: Tensor | None) -> Tensor:
    """|expert - base| in float32, computed exactly as the fused merge kernels compute it (what
    rank cuts, ``sparsify``, and rank indexes, ``rank_index``, order entries by)."""
    return (expert.float() - base.float()).abs() if base is not None else expert.float().abs()


def _body(v: Variant, out: Tensor, base: Tensor | None, experts: Sequence[Tensor], fp, ip, glob,  # type: ignore[no-untyped-def]
          offset) -> Tensor:
    """Write the merged values into ``out`` (flat). Returns a float32 scalar that is NaN exactly
    when the result, or a task vector of a masking op, holds a NaN or inf (x * 0 is 0 for every
    finite x, so its sum never overflows): a NaN in a source is reported even where a mask
    drops it. ``fp``/``ip`` are the per-expert rows and ``glob`` (lambda, the plain sum's
    divisor W) as tensors when compiled, as Python numbers when eager (no dispatch per scalar)."""
    n = out.numel()
    idx = None
    if isinstance(offset, Tensor) and offset.dim() == 1:
        idx = offset  # explicit flat indices: a gathered fix-up of a few entries
    elif v.tie_cuts or v.random:
        idx = torch.arange(n, dtype=torch.int64, device=out.device) + offset
    b = base.float() if v.base and base is not None else None
    masked = v.rank_low or v.rank_high or v.random
    # linear (mergekit's float32 addcmul): the models after the first are fused-multiply-added below
    fma_sum = b is None and not masked and not v.consensus
    xs = []
    check = torch.zeros((), dtype=torch.float32, device=out.device) if masked else 0.0
    for i, e in enumerate(experts):
        d = e.float() - b if b is not None else e.float()
        if fma_sum and i > 0:
            xs.append(d)
            continue
        if masked:
            check = check + (d * 0.0).sum()  # NaN iff d holds NaN/inf (even entries a mask drops)
        keep = None
        if v.rank_low or v.rank_high:
            a = d.abs()
            tie_idx = idx if v.tie_cuts else None
            if v.rank_low:
                keep = _keep_top(a, fp[i][F_LOW_T], ip[i][I_LOW_CUT], tie_idx)
            if v.rank_high:
                drop = _drop_top(a, fp[i][F_HIGH_T], ip[i][I_HIGH_CUT], tie_idx)
                keep = ~drop if keep is None else keep & ~drop
        if v.random:
            if isinstance(offset, int) and not v.wide:  # eager chunk: numpy's uint32 ops are ~4x cheaper
                kept = keep_bits_eager(offset, n, ip[i][I_SEED_LO], ip[i][I_KEEP])
            else:
                assert idx is not None
                bits = random_bits(idx, ip[i][I_SEED_LO], ip[i][I_SEED_HI]) if v.wide else mix32(idx ^ ip[i][I_SEED_LO])
                kept = bits < ip[i][I_KEEP]
            keep = kept if keep is None else keep & kept
        x = d * fp[i][F_SCALE]
        xs.append(x if keep is None else x * keep)  # (a product, not torch.where: ~10x cheaper eagerly)
    merged: Tensor
    if not xs:
        merged = torch.zeros(n, dtype=torch.float32, device=out.device)
    elif v.consensus:
        # TIES elect + disjoint merge as two one-sided sums: P = sum of the positive w_i d_i,
        # N = of the negative; the elected sign is that of the sum in expert order (0 elects +;
        # not P + N, whose rounding can flip a near-zero sum), and the agreeing entries are
        # exactly those summed into P (or N)
        pos = neg = total = None
        wpos = wneg = None
        for i, x in enumerate(xs):
            p_, n_ = x.clamp(min=0.0), x.clamp(max=0.0)
            pos = p_ if pos is None else pos + p_
            neg = n_ if neg is None else neg + n_
            total = x if total is None else total + x
            if v.normalize:
                wp, wn = (x > 0) * fp[i][F_WEIGHT], (x < 0) * fp[i][F_WEIGHT]
                wpos = wp if wpos is None else wpos + wp
                wneg = wn if wneg is None else wneg + wn
        assert pos is not None and neg is not None and total is not None
        elect_pos = total >= 0
        merged = torch.where(elect_pos, pos, neg)
        if v.normalize:
            assert wpos is not None and wneg is not None
            divisor = torch.where(elect_pos, wpos, wneg)
            merged = merged / (divisor + (divisor == 0))  # a zero divisor becomes 1
    else:
        merged = xs[0]
        if fma_sum:
            for d, row in zip(xs[1:], fp[1:], strict=True):
                merged = torch.addcmul(merged, d, row[F_SCALE]) if isinstance(row[F_SCALE], Tensor) \
                    else torch.add(merged, d, alpha=row[F_SCALE])
        else:
            for x in xs[1:]:
                merged = merged + x
        if not (isinstance(glob, list) and glob[1] == 1.0):  # (eager: skip a division by 1)
            merged = merged / glob[1]
    if isinstance(glob, list):  # eager: write straight into ``out``, skip a scaling by 1
        if b is None:
            out.copy_(merged)
        elif glob[0] == 1.0:
            torch.add(b, merged, out=out)
        else:
            torch.add(b, merged, alpha=glob[0], out=out)
        return check + (out * 0.0).sum()
    result = b + glob[0] * merged if b is not None else merged
    out.copy_(result)
    return check + (result * 0.0).sum()


def _bracket_body(codes: Tensor, expert: Tensor, base: Tensor | None, edges: Tensor) -> Tensor:
    """Sub-bracket codes of a = |expert - base| for ascending ``edges`` q_0 <= ... <= q_S:
    code = [a >= q_0] + #{j >= 1: a > q_j}, so j in 1..S for q_{j-1} < a <= q_j (j = 1 from q_0
    inclusive) and 0 outside [q_0, q_S]. Returns the counts #(a >= q_0) and #(a > q_j), j = 1..S:
    one fused pass (int32 indicators, int64 sums: exact at any size; float sums are ~2x slower
    as bool sums, and float32 ones stop counting exactly at 2**24)."""
    a = (expert.float() - base.float()).abs() if base is not None else expert.float().abs()
    code = (a >= edges[0]).to(torch.int32)
    counts = [code.sum(dtype=torch.int64)]
    for j in range(1, edges.numel()):
        above = (a > edges[j]).to(torch.int32)
        code = code + above
        counts.append(above.sum(dtype=torch.int64))
    codes.copy_((code * (code < edges.numel())).to(torch.uint8))
    return torch.stack(counts)


_compiled: dict[object, Callable[..., Tensor]] = {}
_compile_broken: list[str] = []
_lock = threading.Lock()


_policy = threading.local()  # per-thread override set by ``compiling`` (None: by tensor size)

# One-shot merges (an export) pay the ~4 s compile once for nothing else: below this many
# expert-entries (sum of tensor sizes x experts) eager merging is as fast (~18 ns per
# expert-entry for DARE/TIES eagerly, ~0.6 ns fused + the compile).
ONE_SHOT_COMPILE_MIN = 250_000_000


_OFF, _ON = ("0", "off", "false", "no", "never"), ("1", "on", "true", "yes", "always")


def _mode() -> str:
    mode = os.environ.get("EVOMERGE_COMPILE", "auto").strip().lower()
    if mode not in (*_OFF, *_ON, "auto", ""):
        from evomerge.errors import ConfigError

        raise ConfigError(f"EVOMERGE_COMPILE={mode!r} is not a compile mode",
                          hint="set EVOMERGE_COMPILE to 0 (never compile merge kernels), 1 (always) or auto (by size)")
    return mode


def use_compiled(numel: int) -> bool:
    mode = _mode()
    if mode in _OFF or _compile_broken:
        return False
    if mode in _ON:
        return True
    if getattr(_policy, "value", None) is False:
        return False
    return numel >= COMPILE_MIN_NUMEL


@contextlib.contextmanager
def compiling(enabled: bool | None) -> Iterator[None]:
    """Within the block (this thread), compile large tensors' kernels only if ``enabled`` (None:
    by size alone). ``EVOMERGE_COMPILE`` still overrides."""
    before = getattr(_policy, "value", None)
    _policy.value = enabled
    try:
        yield
    finally:
        _policy.value = before


def _compiled_fn(key: object, body: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``body`` compiled once per ``key``, under a code object of its own (dynamo keeps at most
    8 compiled graphs per code object; variants must not evict each other)."""
    with _lock:
        fn = _compiled.get(key)
        if fn is None:
            if not _compiled and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
                # a handful of small kernels: inductor's subprocess compile pool costs more to start
                # (~1.5 s here) than it saves
                import torch._inductor.config as inductor_config

                inductor_config.compile_threads = 1
            code = body.__code__.replace(co_name=f"evomerge_kernel_{len(_compiled)}")
            fresh = types.FunctionType(code, body.__globals__, code.co_name, body.__defaults__, body.__closure__)
            fn = _compiled[key] = torch.compile(fresh, dynamic=True, fullgraph=True)
        return fn


def _signature(arg: object) -> object:
    """What dynamo specializes a graph on besides sizes (compiled with ``dynamic=True``): each
    tensor argument's dtype and rank (an offset scalar vs a part's per-entry indices), lists
    item by item, and which arguments are absent."""
    if isinstance(arg, Tensor):
        return arg.dtype, arg.dim()
    if isinstance(arg, (list, tuple)):
        return tuple(_signature(a) for a in arg)
    return arg is None


def _try_compiled(key: object, body: Callable[..., Tensor], *args: object) -> Tensor | None:
    """``body(*args)`` compiled, one compiled kernel (one code object) per ``key`` and argument
    signature (``_signature``): dynamo recompiles a code object for every new dtype or rank and
    fails hard (fullgraph) after 8 graphs, after which every merge of the process would run
    eagerly; a process merging several dtypes, whole tensors and parts never gets near that.
    None when compiling is unavailable (then for the rest of the process)."""
    try:
        return _compiled_fn((key, _signature(args)), body)(*args)
    except Exception as exc:  # no C++ compiler, unsupported platform: eager from now on
        _compile_broken.append(repr(exc))
        log.warning("torch.compile unavailable (%s); merging eagerly (slower)", str(exc).splitlines()[0][:200])
        return None


def _run_native(v: Variant, out: Tensor, base: Tensor | None, experts: list[Tensor], fp: list[list[float]],
                ip: list[list[int]], glob: list[float], fixups: Sequence[Tensor]) -> float | None:
    """The C++ kernel (``native``), tie fix-ups included; None when it is off, failed to build, or
    a dtype is not its."""
    mod = native_for(out, *experts, base)
    if mod is None:
        return None
    bad = mod.merge(out, base, experts, [x for row in fp for x in row], [x for row in ip for x in row], glob[0],
                    glob[1], _native_flags(v), _threads(out.numel()), list(fixups) if v.tie_cuts else [])
    return math.nan if bad else 0.0


def _native_flags(v: Variant) -> int:
    """The C++ kernel's flag word for variant ``v``."""
    return (NATIVE_BASE * v.base + NATIVE_LOW * v.rank_low + NATIVE_HIGH * v.rank_high + NATIVE_RANDOM * v.random
            + NATIVE_CONSENSUS * v.consensus + NATIVE_NORMALIZE * v.normalize)


def native_ok(*tensors: Tensor | None) -> bool:
    """Whether the C++ kernels take these tensors (None: absent): contiguous, on the CPU, of a
    dtype they read; anything else (a CUDA evaluator's weights, strided views) takes the torch
    kernels."""
    for t in tensors:  # (a plain loop: this runs for every tensor of every candidate)
        if t is not None and not (t.is_cpu and t.dtype in NATIVE_DTYPES and t.is_contiguous()):
            return False
    return True


def native_for(*tensors: Tensor | None) -> types.ModuleType | None:
    """The C++ kernels' module if they take these tensors (``native_ok``) and are built, else None."""
    return native.module() if native_ok(*tensors) else None


def fused_bracket(n: int, expert: Tensor, base: Tensor | None) -> bool:
    """Whether ``bracket`` runs as one fused pass (C++ or compiled), where extra edges are nearly
    free; eagerly every extra edge is another pass."""
    return native_for(expert, base) is not None or use_compiled(n)


def _bound_body(v: Variant) -> Callable[..., Tensor]:
    """``_body`` for variant ``v``: the whole tensor's compiled pass in ``run`` and a gathered
    part's in ``_compiled_part`` (``_try_compiled`` compiles each signature once)."""
    def body(out_, base_, experts_, fp_, ip_, glob_, offset_):  # type: ignore[no-untyped-def]
        return _body(v, out_, base_, experts_, fp_, ip_, glob_, offset_)

    return body


def _threads(numel: int) -> int:
    return torch.get_num_threads() if numel >= NATIVE_THREADED_NUMEL else 1


def run(v: Variant, out: Tensor, base: Tensor | None, experts: Sequence[Tensor], fp: list[list[float]],
        ip: list[list[int]], glob: list[float], fixups: Sequence[Tensor] = ()) -> int:
    """Evaluate variant ``v`` into ``out``; return 1 if a non-finite value was read or written, else 0.
    ``fixups``: flat indices (int64; may repeat) where rank cuts split a tie group (``v.tie_cuts``);
    the pass over everything takes whole tie groups, and only these entries are recomputed with
    the exact rule."""
    flat_out = out.view(-1) if out.is_contiguous() else torch.empty(out.numel(), dtype=out.dtype)
    flat_b = base.reshape(-1) if base is not None else None
    flat_e = [e.reshape(-1) for e in experts]
    n = flat_out.numel()
    _mode()  # a misspelt EVOMERGE_COMPILE is refused whichever kernel runs
    check: float | None = None
    if n and not v.wide:
        check = _run_native(v, flat_out, flat_b, flat_e, fp, ip, glob, fixups)
        if check is not None:
            fixups = ()  # rewritten by the C++ kernel
    main = dataclasses.replace(v, tie_cuts=False) if v.tie_cuts and check is None else v
    if check is None and n and use_compiled(n):
        got = _try_compiled(main, _bound_body(main), flat_out, flat_b, flat_e, torch.tensor(fp, dtype=torch.float32),
                            torch.tensor(ip, dtype=torch.int64), torch.tensor(glob, dtype=torch.float32),
                            torch.zeros((), dtype=torch.int64))
        check = float(got) if got is not None else None
    if check is None:
        check = 0.0
        for s in range(0, n, CHUNK):
            e_ = min(n, s + CHUNK)
            check += float(_body(main, flat_out[s:e_], flat_b[s:e_] if flat_b is not None else None,
                                 [x[s:e_] for x in flat_e], fp, ip, glob, s))
    if v.tie_cuts and fixups:
        idx = torch.unique(torch.cat(list(fixups)))  # sorted, distinct
        fixed, fixed_check = _at(v, flat_b, flat_e, fp, ip, glob, idx, flat_out.dtype)
        check += fixed_check
        flat_out.index_copy_(0, idx, fixed)
    if flat_out.data_ptr() != out.data_ptr():
        out.copy_(flat_out.view(out.shape))
    return 0 if math.isfinite(check) else 1


def _at(v: Variant, flat_b: Tensor | None, flat_e: Sequence[Tensor], fp, ip, glob, idx: Tensor,  # type: ignore[no-untyped-def]
        dtype: torch.dtype) -> tuple[Tensor, float]:
    """The merged values at flat indices ``idx`` (in ``dtype``) and the NaN check of ``_body``."""
    out = torch.empty(idx.numel(), dtype=dtype)
    check = float(_body(v, out, flat_b[idx] if flat_b is not None else None, [x[idx] for x in flat_e],
                        fp, ip, glob, idx))
    return out, check


@dataclass(frozen=True)
class Strided:
    """A part of a flat tensor: entries ``first + o * stride + [0, block)`` for o in [0, outer),
    in that order (a slice along one dimension of a row-major tensor: see ``strided``)."""

    outer: int
    block: int
    stride: int
    first: int

    @property
    def numel(self) -> int:
        return self.outer * self.block

    def indices(self) -> Tensor:
        """The part's flat indices, in its order (int64)."""
        rows = torch.arange(self.outer, dtype=torch.int64) * self.stride + self.first
        return (rows[:, None] + torch.arange(self.block, dtype=torch.int64)[None, :]).reshape(-1)


def strided(shape: Sequence[int], dim: int, start: int, length: int) -> Strided:
    """The slice ``start:start + length`` along ``dim`` of a row-major tensor of ``shape``."""
    inner = math.prod(shape[dim + 1:])
    return Strided(math.prod(shape[:dim]), length * inner, shape[dim] * inner, start * inner)


def run_part(v: Variant, out: Tensor, base: Tensor | None, experts: Sequence[Tensor], fp: list[list[float]],
             ip: list[list[int]], glob: list[float], part: Strided, fixups: Sequence[Tensor] = ()) -> int:
    """``run`` for the entries of ``part`` alone, written contiguously into ``out`` (``part.numel``
    entries) or, when ``out`` has the sources' size, at their own places in it (the rest of
    ``out`` untouched): each entry by the exact rule at its global index (its tie cut, its DARE
    bits), so a tensor-parallel rank's part equals the full merge there. The C++ kernel reads
    and writes the part's blocks in place; otherwise the entries are gathered and merged as ``run``
    merges the whole (compiled where it compiles, ``_compiled_part``; else eagerly, ``run_at``).
    Returns 1 if a non-finite value was read or written in the part, else 0."""
    flat_b = base.reshape(-1) if base is not None else None
    flat_e = [e.reshape(-1) for e in experts]
    mod = native_for(out, *flat_e, flat_b) if not v.wide and out.is_contiguous() else None
    if mod is not None:
        bad = mod.merge_part(out.view(-1), flat_b, flat_e, [x for row in fp for x in row], [x for row in ip for x in row],
                             glob[0], glob[1], _native_flags(v), _threads(part.numel), list(fixups) if v.tie_cuts else [],
                             part.outer, part.block, part.stride, part.first)
        return 1 if bad else 0
    idx = part.indices()
    values, bad = _compiled_part(v, flat_b, flat_e, fp, ip, glob, idx, out.dtype, fixups)
    if values is None:
        values, bad = run_at(v, base, experts, fp, ip, glob, idx, out.dtype)
    if out.numel() == part.numel:
        out.view(-1).copy_(values)
    else:
        out.view(-1).index_copy_(0, idx, values)
    return bad


def _compiled_part(v: Variant, flat_b: Tensor | None, flat_e: Sequence[Tensor], fp: list[list[float]],
                   ip: list[list[int]], glob: list[float], idx: Tensor, dtype: torch.dtype,
                   fixups: Sequence[Tensor]) -> tuple[Tensor | None, int]:
    """The part at ``idx`` as ``run`` computes it where ``run`` would compile the whole tensor:
    the same compiled body over the gathered entries (each at its global index), then the tie
    fix-ups that fall in the part by the exact rule eagerly, as ``run`` does; so a part is the
    whole merge there bit for bit in every kernel mode. (None, 0) where ``run`` would not
    compile (the part is then merged eagerly, as the whole is) or compiling is unavailable."""
    if not idx.numel() or not use_compiled(flat_e[0].numel()):
        return None, 0
    main = dataclasses.replace(v, tie_cuts=False)
    values = torch.empty(idx.numel(), dtype=dtype)
    got = _try_compiled(main, _bound_body(main), values, flat_b[idx] if flat_b is not None else None,
                        [x[idx] for x in flat_e], torch.tensor(fp, dtype=torch.float32),
                        torch.tensor(ip, dtype=torch.int64), torch.tensor(glob, dtype=torch.float32), idx)
    if got is None:
        return None, 0
    check = float(got)
    if v.tie_cuts and fixups:
        at = torch.isin(idx, torch.cat(list(fixups))).nonzero().view(-1)
        if at.numel():
            fixed, fixed_check = _at(v, flat_b, flat_e, fp, ip, glob, idx[at], dtype)
            check += fixed_check
            values[at] = fixed
    return values, 0 if math.isfinite(check) else 1


def run_at(v: Variant, base: Tensor | None, experts: Sequence[Tensor], fp: list[list[float]],
           ip: list[list[int]], glob: list[float], idx: Tensor, dtype: torch.dtype = torch.float32
           ) -> tuple[Tensor, int]:
    """The merged values at flat indices ``idx`` alone (int64, any order): each entry is computed
    by the exact rule at its own global index (its tie cut, its DARE bits), so any subset of the
    entries, such as a tensor-parallel rank's shard, equals the full merge there (the rule
    ``run`` applies to its tie fix-ups). Returns (values in ``dtype``, 1 if a non-finite value was
    read or written else 0)."""
    values, check = _at(v, base.reshape(-1) if base is not None else None, [e.reshape(-1) for e in experts],
                        fp, ip, glob, idx, dtype)
    return values, 0 if math.isfinite(check) else 1


def bracket(codes: Tensor, expert: Tensor, base: Tensor | None, edges: list[float]) -> list[int]:
    """Fill ``codes`` (flat uint8, at least numel long) with each entry's sub-bracket of
    |expert - base| between ascending ``edges`` and return the counts of ``_bracket_body``: one
    pass over the sources (magnitude selection, see ``sparsify.rank_cut``)."""
    n = expert.numel()
    edge_t = torch.tensor(edges, dtype=torch.float32)
    mod = native_for(expert, base) if n and codes.is_contiguous() else None
    if mod is not None:
        return [int(c) for c in mod.bracket(codes, expert, base, edge_t, _threads(n))]
    if n and use_compiled(n):
        got = _try_compiled(("bracket", len(edges)), _bracket_body, codes[:n], expert, base, edge_t)
        if got is not None:
            return [int(c) for c in got]
    total = torch.zeros(len(edges), dtype=torch.int64)
    for s in range(0, n, CHUNK):
        e_ = min(n, s + CHUNK)
        total += _bracket_body(codes[s:e_], expert[s:e_], base[s:e_] if base is not None else None, edge_t)
    return [int(c) for c in total]
