"""Runs inside each vLLM worker process: materializes a recipe into the live engine weights.

vLLM calls methods of this class by name through ``LLM.collective_rpc`` (ARCHITECTURE.md: swap
weights in place instead of starting an engine per candidate). Only a recipe's JSON crosses the
process boundary; the worker keeps the source tensors resident and merges locally.
"""

from __future__ import annotations

import math
import time
from typing import Any


class EvomergeWorkerExtension:
    """Mixed into vLLM's worker class via ``worker_extension_cls``."""

    def evomerge_apply(self, recipe_json: str, seed: int) -> dict[str, Any]:
        import json

        from evomerge.errors import EvomergeError, MergeError
        from evomerge.evaluate.resident import ResidentSources
        from evomerge.merge.materialize import merge_into
        from evomerge.merge.plan import plan_merge
        from evomerge.recipe import stored_recipe

        t0 = time.perf_counter()
        resident = getattr(self, "_evomerge_resident", None)
        if resident is None:
            resident = self._evomerge_resident = ResidentSources()
        try:
            recipe = stored_recipe(json.loads(recipe_json))
            plan = plan_merge(recipe, resident.for_recipe(recipe.source_names()))
            merged, fresh = self._evomerge_buffers(plan)
            parts = self._evomerge_parts(plan)
            if parts and fresh:  # what this rank leaves unmerged is NaN, so a load that reads it shows
                for name in parts:
                    merged[name].fill_(float("nan"))
                self._evomerge_parts_checked = False
            merge_into(plan, merged, seed=seed, parts=parts)  # NaN-scanned before any weight changes
        except MergeError as err:
            return {"status": "invalid", "error": err.message}
        except EvomergeError as err:
            return {"status": "failed", "error": str(err)}
        t1 = time.perf_counter()
        self.model_runner.reload_weights(weights_iterator=iter(merged.items()))  # type: ignore[attr-defined]
        if parts and not getattr(self, "_evomerge_parts_checked", False):
            # the first load from these buffers: a NaN in the engine means vLLM read a slice these
            # rules did not merge; merge whole from now on (still exact)
            if self._evomerge_loaded_nan():
                self._evomerge_parts_wrong = True
                parts = {}
                merge_into(plan, merged, seed=seed)
                self.model_runner.reload_weights(weights_iterator=iter(merged.items()))  # type: ignore[attr-defined]
            self._evomerge_parts_checked = True
        self._evomerge_fix_tied_head(plan.config)
        self._evomerge_clear_kv()
        total = sum(math.prod(m.shape) for m in plan.metas)
        unmerged = sum(merged[n].numel() - merged[n].narrow(p.dim, p.start, p.length).numel() for n, p in parts.items())
        return {"status": "ok", "materialize": t1 - t0, "swap": time.perf_counter() - t1,
                "merged_fraction": (total - unmerged) / total if total else 1.0}

    def _evomerge_parts(self, plan: Any) -> dict[str, Any]:
        """This rank's part of each tensor under tensor parallelism (evaluate/vllm_shards.py);
        empty without it, or once the rules were found wrong for this engine's model."""
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        from evomerge.evaluate.vllm_shards import rank_parts

        tp = get_tensor_model_parallel_world_size()
        if tp <= 1 or getattr(self, "_evomerge_parts_wrong", False):
            return {}
        return rank_parts(plan.config, ((m.name, tuple(m.shape)) for m in plan.metas),
                          get_tensor_model_parallel_rank(), tp)

    def _evomerge_loaded_nan(self) -> bool:
        """Whether any of the engine's weights holds a NaN (after a load from NaN-marked parts)."""
        import torch

        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return any(bool(torch.isnan(p).any()) for p in model.parameters() if p.is_floating_point())

    def evomerge_weight_dtypes(self) -> list[str]:
        """The dtypes the engine's weights are held in (a bf16 checkpoint's engine: bf16 only)."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return sorted({str(p.dtype) for p in model.parameters()})

    def _evomerge_clear_kv(self) -> None:
        """Zero the KV cache. A candidate whose activations overflow writes NaN into cache blocks
        that later sequences reuse; attention masks stale slots by weighting them 0, and 0 x NaN
        is NaN, so the next candidate would score wrong (found by the evaluator contract). One
        write pass over the cache per candidate (1 GiB by default here)."""
        caches = getattr(self.model_runner, "kv_caches", None)  # type: ignore[attr-defined]
        stack = list(caches.values()) if isinstance(caches, dict) else list(caches or [])
        while stack:
            t = stack.pop()
            if isinstance(t, list | tuple):
                stack.extend(t)
            elif hasattr(t, "zero_"):
                t.zero_()

    def _evomerge_buffers(self, plan: Any) -> tuple[dict[str, Any], bool]:
        """One staging tensor per planned weight, kept and reused by every later candidate of
        the same shapes (no fresh allocations, no page faults per candidate); and whether they
        were just allocated."""
        import torch

        key = tuple((m.name, m.shape, m.dtype) for m in plan.metas)
        cached = getattr(self, "_evomerge_staging", None)
        fresh = cached is None or cached[0] != key
        if fresh:
            cached = (key, {m.name: torch.empty(m.shape, dtype=m.dtype) for m in plan.metas})
            self._evomerge_staging = cached
        return cached[1], fresh

    def _evomerge_fix_tied_head(self, config: dict[str, Any]) -> None:
        """With tied embeddings the CPU LM head keeps its packed copy of the old weights after a
        reload; re-running its post-load processing repacks it from the new embedding."""
        if not config.get("tie_word_embeddings"):
            return
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        head = getattr(model, "lm_head", None)
        method = getattr(head, "quant_method", None)
        if head is not None and method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)
