"""Where a GPU worker keeps the sources, and whether a run fits its devices (issue 20).

From the safetensors headers only (no tensor is read): the sources' bytes as stored, one
candidate's bytes (the base's tensors in the candidates' dtype), the largest tensor. A worker
with ``g`` GPUs of ``device`` bytes each runs one engine over the ``g`` GPUs, tensor-parallel
(TP = g when g >= 1): each rank holds 1/TP of the candidate's weights and, when the sources are
on the device, 1/TP of every source (each rank merges only its own shard, as vLLM's loaders shard
a checkpoint). Per rank:

    engine   = weights / TP + kv        (kv: the KV cache and activations the engine needs)
    device   = engine + sources / TP + scratch    (scratch: the largest tensor's shard in float32,
                                                   sources + 1 of them: one merge's working set)

The sources go on the device when ``device`` fits in the GPU's memory (merging then runs at device
bandwidth), else they stay in host memory, shared by the node's workers through the page cache
(evomerge.evaluate.resident) and streamed to the device tensor by tensor; a plan whose engine
alone (plus one streamed tensor) does not fit is refused before the run starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from evomerge.errors import ConfigError
from evomerge.merge.io import ModelDir

GIB = 1024**3
KV_DEFAULT_FRACTION = 0.10  # of a device's memory kept for the KV cache and activations (vLLM needs some)


@dataclass(frozen=True)
class SourceSizes:
    """What the sources of a run weigh, from their headers."""

    sources: int  # bytes of every source's tensors as stored (base and experts)
    candidate: int  # bytes of one candidate: the reference model's tensors in their stored dtype
    largest: int  # entries of the largest tensor
    count: int  # how many sources

    @staticmethod
    def of(paths: list[str]) -> SourceSizes:
        total, candidate, largest = 0, 0, 0
        for k, path in enumerate(dict.fromkeys(paths)):
            with ModelDir(path) as md:
                metas = [md.meta(n) for n in md.tensor_names]
            total += sum(m.nbytes for m in metas)
            if k == 0:
                candidate = sum(m.nbytes for m in metas)
            largest = max([largest, *(math.prod(m.shape) for m in metas)])
        return SourceSizes(total, candidate, largest, len(dict.fromkeys(paths)))


@dataclass(frozen=True)
class Placement:
    sources_on: str  # "device" or "host"
    tp: int  # tensor-parallel degree (GPUs per worker)
    per_rank_device: int  # bytes per GPU the plan needs
    device: int  # bytes per GPU available
    host_per_node: int  # bytes of sources held in host memory per node (once: mapped), 0 when on the device
    summary: str  # one line for `validate`


def parse_bytes(text: str, option: str = "--device-memory") -> int:
    """``80GiB`` or ``80G`` (binary), ``141GB`` (decimal), ``24576MiB``, or a plain number of bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])(iB|B)?)?\s*", text, flags=re.IGNORECASE)
    value = float(m.group(1)) if m else 0.0
    if not m or value <= 0:
        raise ConfigError(f"{option} {text!r} is not a size above 0",
                          hint=f"pass {option} like 80GiB, 141GB or 24576MiB")
    power = "KMGT".index(m.group(2).upper()) + 1 if m.group(2) else 0
    base = 1000 if (m.group(3) or "").upper() == "B" else 1024
    return int(value * base**power)


def plan(sizes: SourceSizes, *, gpus_per_worker: float, device_bytes: int,
         kv_bytes: int | None = None) -> Placement:
    """The placement of one worker's sources (module docstring); ConfigError when it cannot fit."""
    if gpus_per_worker <= 0:
        raise ConfigError("a device memory plan needs GPUs: --gpus-per-worker is 0",
                          hint="pass --gpus-per-worker 1 or more with --device-memory")
    tp = max(1, int(gpus_per_worker))
    kv = int(KV_DEFAULT_FRACTION * device_bytes) if kv_bytes is None else kv_bytes
    engine = math.ceil(sizes.candidate / tp) + kv
    scratch = math.ceil(sizes.largest / tp) * 4 * (sizes.count + 1)  # float32 shard of each source + output
    on_device = engine + math.ceil(sizes.sources / tp) + scratch
    streamed = engine + scratch
    gib = lambda b: f"{b / GIB:.1f} GiB"  # noqa: E731
    if on_device <= device_bytes:
        return Placement("device", tp, on_device, device_bytes, 0,
                         f"sources on the GPU: {gib(on_device)} of {gib(device_bytes)} per GPU (TP {tp}: weights "
                         f"{gib(sizes.candidate / tp)}, sources {gib(sizes.sources / tp)}, KV {gib(kv)}, merge "
                         f"scratch {gib(scratch)}); merges at device bandwidth")
    if streamed <= device_bytes:
        return Placement("host", tp, streamed, device_bytes, sizes.sources,
                         f"sources in host memory, streamed per tensor: {gib(streamed)} of {gib(device_bytes)} per "
                         f"GPU (TP {tp}: weights {gib(sizes.candidate / tp)}, KV {gib(kv)}, scratch {gib(scratch)}); "
                         f"{gib(sizes.sources)} of sources mapped once per node (on the GPU they would need "
                         f"{gib(on_device)} per GPU)")
    raise ConfigError(
        f"a candidate does not fit its GPUs: {gib(streamed)} per GPU needed (TP {tp}: weights "
        f"{gib(sizes.candidate / tp)}, KV {gib(kv)}, merge scratch {gib(scratch)}), {gib(device_bytes)} available",
        hint="give each worker more GPUs (--gpus-per-worker, tensor parallel) or GPUs with more memory")
