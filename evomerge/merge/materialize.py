"""Execute a merge plan (``plan``): the merged weights, one tensor at a time.

``plan_merge`` (``plan``) has checked the sources from their headers and listed the tensor jobs.
``iter_merged`` then yields ``(name, tensor)`` pairs: it reads one tensor per source, applies the
merge op with the tensor's resolved per-layer parameters, scans the result for NaN/inf and moves
on, so peak memory stays near one tensor per source. The same merge feeds an export to disk
(``merge_to_dir``) or a live evaluator's weights (``merge_into``, fitness evaluation).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import MergeError
from evomerge.merge import kernels, narrow
from evomerge.merge.io import ModelDir
from evomerge.merge.plan import DTYPES, MergePlan, TensorJob, plan_merge
from evomerge.merge.registry import get_op
from evomerge.merge.tokenizer import TokenizerChoice, write_tokenizer
from evomerge.recipe import Recipe

# Files of a model directory that are never copied into a merged one.


def tensor_seed(seed: int, tensor_name: str) -> int:
    """A per-tensor seed for stochastic ops, independent of the order tensors are visited."""
    digest = hashlib.sha256(f"{seed}:{tensor_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class _ReadBuffers:
    """One reusable read buffer per source slot of a job (disk sources only: resident ones are
    already in memory), so streaming a merge touches no fresh pages after its first tensor."""

    def __init__(self) -> None:
        self.bufs: dict[int, torch.Tensor] = {}

    def read(self, src: Any, name: str, slot: int) -> torch.Tensor:
        if not isinstance(src, ModelDir):
            return src.read(name)
        need = src.meta(name).nbytes
        buf = self.bufs.get(slot)
        if buf is None or buf.numel() < need:
            buf = self.bufs[slot] = torch.empty(need, dtype=torch.uint8)
        return src.read(name, buf)


# an IEEE float is NaN or infinite exactly when its exponent bits are all ones
_EXPONENT = {torch.float32: (torch.int32, 0x7F800000), torch.bfloat16: (torch.int16, 0x7F80),
             torch.float16: (torch.int16, 0x7C00)}


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite: a test of the exponent bits (about 3x faster than
    ``torch.isfinite`` over a float32 tensor, more over 16-bit ones), else ``torch.isfinite``."""
    bits = _EXPONENT.get(t.dtype)
    if bits is None or not t.is_contiguous():
        return bool(torch.isfinite(t).all())
    view, mask = bits
    return bool(((t.view(view) & mask) != mask).all())


def _run_op(op: Any, job: TensorJob, out: torch.Tensor, experts: list[torch.Tensor], base: torch.Tensor | None,
            gen: torch.Generator | None, part: tuple[int, int, int] | None) -> int | None:
    if part is None:
        return op.into(out, experts, base=base, params=job.params, generator=gen, resolved=True)
    dim, start, length = part  # the part's entries written at their places in out (no scratch, no copy)
    return op.part_into(out, experts, base=base, params=job.params, dim=dim, start=start, length=length,
                        generator=gen, resolved=True)


def _merge_job(op: Any, plan: MergePlan, job: TensorJob, out: torch.Tensor, seed: int, reads: _ReadBuffers,
               part: tuple[int, int, int] | None = None) -> None:
    """Merge one tensor straight into ``out`` (with ``part`` = (dim, start, length): only that
    slice of it, each entry as the whole merge computes it; the rest of ``out`` is left as it
    is); raise :class:`MergeError` on non-finite values."""
    experts = [reads.read(plan.sources[s], n, i) for i, (s, n) in enumerate(job.experts)]
    if part is not None:
        dim, start, length = part
        if length == 0:
            return
        target = out.narrow(dim, start, length)
    else:
        target = out
    if not experts[0].is_floating_point():
        target.copy_(experts[0] if part is None else experts[0].narrow(dim, start, length))  # integer buffers (rare)
        return
    base = reads.read(plan.sources[job.base[0]], job.base[1], -1) if job.base else None
    widen = False  # 16-bit sources merged in float32 by the kernels as they read them (no converted copies)
    if plan.recipe.dtype is not None:  # mergekit gathers its inputs in the recipe's dtype, then merges
        want = DTYPES[plan.recipe.dtype]
        fused = getattr(op, "fused", None)
        widen = (want == torch.float32 and fused is not None and fused(job.params)
                 and all(narrow.is_narrow(x) for x in [*experts, *([base] if base is not None else [])]))
        if not widen:
            experts = [x.to(want) for x in experts]
            base = base.to(want) if base is not None else None
    gen = None
    if op.spec.stochastic:
        gen = torch.Generator().manual_seed(tensor_seed(seed, job.out.name))
    with narrow.float32_arithmetic() if widen else contextlib.nullcontext():
        bad = _run_op(op, job, out, experts, base, gen, part)
    if bad is None:
        bad = 0 if all_finite(target) else 1
    if bad:
        raise MergeError(
            f"merged tensor {job.out.name} has NaN or inf values",
            hint="check the sources for NaN weights and the recipe for extreme parameters",
        )


def iter_merged(plan: MergePlan, *, seed: int = 0, reuse: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield each merged tensor of the planned dtype in plan order; raise :class:`MergeError` on
    non-finite output. With ``reuse`` the yielded tensors are views of two alternating buffers:
    each stays valid until the step after next (an export writes one in the background while
    the next is merged)."""
    op = get_op(plan.recipe.merge_method)
    reads = _ReadBuffers()
    pool: dict[tuple[torch.dtype, int], torch.Tensor] = {}
    for k, job in enumerate(plan.jobs):
        if reuse:
            buf = pool.get((job.out.dtype, k % 2))
            numel = math.prod(job.out.shape)
            if buf is None or buf.numel() < numel:
                buf = pool[(job.out.dtype, k % 2)] = torch.empty(numel, dtype=job.out.dtype)
            out = buf[:numel].view(job.out.shape)
        else:
            out = torch.empty(job.out.shape, dtype=job.out.dtype)
        _merge_job(op, plan, job, out, seed, reads)
        yield job.out.name, out


def merge_into(plan: MergePlan, outputs: Mapping[str, torch.Tensor], *, seed: int = 0,
               parts: Mapping[str, tuple[int, int, int]] | None = None) -> None:
    """Merge every planned tensor straight into ``outputs[name]`` (live model parameters,
    engine buffers reused across candidates): no temporaries of tensor size, no extra copy.
    ``parts`` maps a tensor's name to the one slice (dim, start, length) of it to merge, such as
    a tensor-parallel rank's part (the rest of that output is left as it is; see
    :meth:`~evomerge.merge.ops._Op.part_into`). Raises :class:`MergeError` on non-finite values
    (earlier tensors are already written)."""
    op = get_op(plan.recipe.merge_method)
    parts = parts or {}
    missing = [j.out.name for j in plan.jobs if j.out.name not in outputs]
    if missing:
        raise MergeError(f"no output tensor for {missing[:3]} ({len(missing)} of {len(plan.jobs)})",
                         hint="allocate one output per planned tensor (plan.metas)")
    reads = _ReadBuffers()
    for job in plan.jobs:
        out = outputs[job.out.name]
        part = parts.get(job.out.name)
        if tuple(out.shape) != job.out.shape:
            raise MergeError(f"output {job.out.name} has shape {tuple(out.shape)}, the plan needs {job.out.shape}",
                             hint="allocate the outputs from plan.metas")
        if out.dtype == job.out.dtype:
            _merge_job(op, plan, job, out, seed, reads, part)
        else:  # round to the planned dtype first, so the candidate equals its export
            tmp = torch.empty(job.out.shape, dtype=job.out.dtype)
            _merge_job(op, plan, job, tmp, seed, reads, part)
            if part is None:
                out.copy_(tmp)
            else:
                out.narrow(part[0], part[1], part[2]).copy_(tmp.narrow(part[0], part[1], part[2]))


def _worth_compiling(plan: MergePlan) -> bool:
    """A one-shot merge compiles its kernels only when it is big enough to repay the compile:
    sparsifying or random ops over at least ``kernels.ONE_SHOT_COMPILE_MIN`` expert-entries
    (linear and task arithmetic run near memory speed eagerly)."""
    spec = get_op(plan.recipe.merge_method).spec
    if spec.name in ("linear", "task_arithmetic", "slerp", "passthrough"):
        return False
    work = sum(math.prod(j.out.shape) * len(j.experts) for j in plan.jobs)
    return work >= kernels.ONE_SHOT_COMPILE_MIN


@dataclass(frozen=True)
class MergeReport:
    out_dir: Path
    tensors: int
    bytes_written: int
    recipe_id: str


def merge_to_dir(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    max_shard_bytes: int = 2 * 2**30,
) -> MergeReport:
    """Materialize ``recipe`` (model references as paths) into a complete HF model directory.

    Written atomically (temporary directory, fsync, rename) with a sha256 manifest, the
    canonical recipe (``evomerge-recipe.json``) and a mergekit config (``mergekit_config.yml``).
    An existing ``out_dir`` is an :class:`~evomerge.errors.ExportError` unless ``overwrite``, and
    then it is replaced only if evomerge wrote it (its manifest lists every file in it, unchanged)
    and it is not the root, home or current directory or a parent of them; temporaries of dead
    evomerge processes beside it are removed (see :class:`~evomerge.merge.writer.ModelDirWriter`).
    """
    from evomerge.merge.writer import ModelDirWriter

    out_dir = Path(out_dir)
    with plan_merge(recipe) as plan, kernels.compiling(_worth_compiling(plan)):
        ref = plan.sources[plan.reference]
        total = 0
        with ModelDirWriter(out_dir, overwrite=overwrite) as w:
            tw = w.tensor_writer(plan.metas, max_shard_bytes=max_shard_bytes, background=True)
            for name, tensor in iter_merged(plan, seed=seed, reuse=True):
                tw.write(name, tensor)
                total += tensor.numel() * tensor.element_size()
            tw.close()
            w.write_json("config.json", plan.config)
            write_tokenizer(plan.tokenizer or TokenizerChoice(ref.path), w)
            w.write_text("evomerge-recipe.json", recipe.canonical_json() + "\n")
            w.write_text("mergekit_config.yml", recipe.to_yaml())
        return MergeReport(out_dir=out_dir, tensors=len(plan.jobs), bytes_written=total, recipe_id=recipe.recipe_id)
