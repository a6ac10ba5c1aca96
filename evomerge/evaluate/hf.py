"""The transformers engine: batched greedy generation and continuation log-likelihoods,
with candidates written into the live model's parameters (no disk round trip)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from evomerge.evaluate.base import Deadline, ItemPlan, TaskScores, guarded, run_tasks
from evomerge.evaluate.resident import ResidentSources
from evomerge.evaluate.tasks import Task
from evomerge.merge.materialize import merge_into
from evomerge.merge.plan import plan_merge
from evomerge.recipe import Recipe
from evomerge.result import EvalResult


class HFEngine:
    """Greedy generation and log-probs with a transformers causal LM (CPU or GPU)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64) -> None:  # type: ignore[no-untyped-def]
        self.model = model
        self.tok = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.tokens = 0  # prompt + generated tokens processed (the evaluation's token cost)

    def _ids(self, text: str, *, special: bool) -> list[int]:
        return self.tok(text, add_special_tokens=special)["input_ids"]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            enc = [self._ids(p, special=True) for p in prompts[i : i + self.batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), self.pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, e in enumerate(enc):
                ids[j, width - len(e):] = torch.tensor(e)
                mask[j, width - len(e):] = 1
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.pad, eos_token_id=self.tok.eos_token_id)
            self.tokens += sum(len(e) for e in enc)
            for row in gen[:, width:].tolist():
                self.tokens += next((k + 1 for k, t in enumerate(row) if t in (self.tok.eos_token_id, self.pad)), len(row))
                text = self.tok.decode(row, skip_special_tokens=True)
                for s in stop:
                    if s and s in text:
                        text = text[: text.index(s)]
                out.append(text)
        return out

    @torch.no_grad()
    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[tuple[float, int]]:
        """Sum of log p(continuation tokens | prompt), tokenized separately and concatenated."""
        pairs = [(self._ids(p, special=True), self._ids(c, special=False)) for p, c in zip(prompts, continuations, strict=True)]
        out: list[tuple[float, int]] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i : i + self.batch_size]
            seqs = [p + c for p, c in chunk]
            self.tokens += sum(len(q) for q in seqs)
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, s in enumerate(seqs):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits, dim=-1).cpu()
            for j, (p, c) in enumerate(chunk):
                pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)
                out.append((float(logp[j, pos, torch.tensor(c)].sum()), len(c)))
        return out


class HFEvaluator:
    """Loads the sources once, then writes each candidate into one live transformers model."""

    engine_name = "hf"

    def __init__(self, *, batch_size: int = 64, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.device = device
        self.resident = ResidentSources()
        self.engine: HFEngine | None = None
        self._model_key: tuple[str, int, torch.dtype] | None = None
        self.build_seconds = 0.0  # model construction within the current evaluation (not merging)

    def load_sources(self, sources: dict[str, str]) -> None:
        for path in sources.values():
            self.resident.get(path)

    def _engine_for(self, reference: str, num_layers: int, dtype: torch.dtype = torch.float32) -> HFEngine:
        """The live model for candidates of ``reference``'s architecture at ``num_layers``, its
        weights in ``dtype`` (the candidates' stored dtype: a bf16 checkpoint is evaluated in bf16)."""
        key = (str(Path(reference).resolve()), num_layers, dtype)
        if self.engine is None or self._model_key != key:
            t0 = time.perf_counter()  # imports, config, tokenizer, the model object: not merging
            from transformers import AutoConfig, AutoModelForCausalLM

            from evomerge.hfmodel import load_hf_tokenizer

            cfg = AutoConfig.from_pretrained(reference, local_files_only=True, trust_remote_code=False)
            cfg.num_hidden_layers = num_layers
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = [cfg.layer_types[0]] * num_layers
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(self.device).eval()
            self.engine = HFEngine(model, load_hf_tokenizer(reference), batch_size=self.batch_size)
            self._model_key = key
            self.build_seconds += time.perf_counter() - t0
        return self.engine

    def write_weights(self, recipe: Recipe, *, seed: int = 0) -> HFEngine:
        """Materialize ``recipe`` straight into the live model's parameters."""
        plan = plan_merge(recipe, self.resident.for_recipe(recipe.source_names()))
        dtype = next((j.out.dtype for j in plan.jobs if j.out.dtype.is_floating_point), torch.float32)
        engine = self._engine_for(plan.sources[plan.reference].path, plan.num_layers, dtype)
        with torch.no_grad():
            merge_into(plan, dict(engine.model.named_parameters()), seed=seed)
        return engine

    def evaluate(self, recipe: Recipe, tasks: Sequence[Task], *, deadline_s: float | None = None,
                 seed: int = 0, plan: ItemPlan | None = None) -> EvalResult:
        timings: dict[str, float] = {}
        deadline = Deadline(deadline_s)

        def work() -> TaskScores:
            t0 = time.perf_counter()
            self.build_seconds = 0.0
            engine = self.write_weights(recipe, seed=seed)
            if self.build_seconds:  # a new model object (first candidate, or another depth): not merging
                timings["build_model"] = self.build_seconds
            timings["materialize"] = time.perf_counter() - t0 - self.build_seconds
            deadline.check("materialization")
            t1 = time.perf_counter()
            result = run_tasks(engine, tasks, deadline, plan=plan)
            timings["evaluate"] = time.perf_counter() - t1
            return result

        return guarded(work, timings)
