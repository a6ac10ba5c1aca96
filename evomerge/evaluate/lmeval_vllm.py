"""lm-eval's model interface over evomerge's live vLLM engine (the candidate swapped in place).

lm-eval's own vLLM wrapper starts an engine from a model directory; a search keeps one engine per
worker and replaces its weights per candidate (evaluate/vllm.py), so lm-eval gets this ``LM``
instead: its three request types answered by that engine. lm-eval's ``TemplateLM`` supplies the
request handling shared by its backends (splitting context and continuation, the empty-context
rule); this class supplies tokens and scores:

- ``loglikelihood``: log p(continuation | context) summed over the continuation's tokens from
  vLLM's prompt log-probabilities, and whether each continuation token is the argmax;
- ``loglikelihood_rolling``: the same over lm-eval's disjoint rolling windows of a text (windows
  of the engine's length less two tokens, as lm-eval's own vLLM backend cuts them, where its
  transformers backend uses the full length: texts longer than that are split differently);
- ``generate_until``: greedy generation up to ``max_gen_toks`` tokens, cut at the first stop
  string (and the end-of-text token), as lm-eval's transformers backend decodes it.

The tokenizer calls are lm-eval's transformers backend's (special tokens as the tokenizer adds
them, contexts left-truncated to the model's length), so a document scores here as
``lm_eval --model hf`` scores it on the exported directory, up to the engines' float rounding
(tests/integration/test_lmeval.py compares them document by document).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from evomerge.errors import ConfigError

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task sets no max_gen_toks


class LiveVLLM(TemplateLM):
    """An lm-eval ``LM`` whose model is a running ``vllm.LLM`` (a :class:`~evomerge.evaluate.vllm.VLLMEngine`)."""

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine
        self.llm = engine.llm
        self.tokenizer = engine.tok

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "evomerge-live")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if not string:
            return []
        if add_special_tokens is None:  # a chat-templated string brings its own BOS
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return list(self.tokenizer(string, add_special_tokens=add_special_tokens)["input_ids"])

    def _prompt_logprobs(self, sequences: Sequence[list[int]]) -> list[Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
        self.engine.tokens += sum(len(s) for s in sequences)
        return [o.prompt_logprobs for o in outs]

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        limit = self.max_length - 1  # vLLM generates at least one token after the prompt
        sequences, starts = [], []
        for _key, context, continuation in requests:
            whole = context + continuation
            overflow = max(0, len(whole) - limit)
            sequences.append(whole[overflow:])
            starts.append(len(context) - overflow)  # where the continuation begins in the kept window
        out = []
        for seq, start, logprobs in zip(sequences, starts, self._prompt_logprobs(sequences), strict=True):
            total, greedy = 0.0, True
            for pos in range(max(start, 1), len(seq)):
                ranked = logprobs[pos]
                total += ranked[seq[pos]].logprob
                greedy = greedy and max(ranked, key=lambda t, r=ranked: r[t].logprob) == seq[pos]
            out.append((total, greedy))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in (r.args for r in requests):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length - 2, context_len=1)]  # a window and vLLM's one generated token fit
            scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            out.append(sum(lp for lp, _ in scored))
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        eos = self.tokenizer.decode([self.eot_token_id])
        prompts, params, stops = [], [], []
        for context, gen_kwargs in (r.args for r in requests):
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if eos and eos not in until:
                until.append(eos)
            max_gen = int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            sampled = kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0
            if sampled:
                raise ConfigError("an lm-eval task asks for sampled generation (do_sample / temperature > 0)",
                                  hint="fitness needs deterministic scores: set generation_kwargs do_sample: false")
            ids = self.tok_encode(context)[-(self.max_length - max_gen):]
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(SamplingParams(temperature=0.0, max_tokens=max_gen, stop=until, skip_special_tokens=True))
            stops.append(until)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        self.engine.tokens += sum(len(o.prompt_token_ids or ()) + len(o.outputs[0].token_ids) for o in outs)
        texts = []
        for o, until in zip(outs, stops, strict=True):
            text = o.outputs[0].text
            for stop in until:  # as lm-eval's transformers backend cuts a decoded generation
                text = text.split(stop)[0]
            texts.append(text)
        return texts
