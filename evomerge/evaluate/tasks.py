"""Fitness task specs: YAML naming a JSONL data file, a prompt template, a kind and a metric.

Kinds (one engine interface serves all, see :class:`Engine`):
- ``generate``: greedy generation, cut at stop strings, answer extraction (``strip``,
  ``last_number`` as in GSM8K/MGSM scoring, or a ``regex`` with one group), exact match;
- ``choice``: multiple choice by the log-likelihood of each option after the prompt (MMLU style);
- ``loglik``: mean per-token log-likelihood of a reference continuation (higher is better).

Templates use ``{field}`` placeholders only (no attribute access, indexing or format specs), so
a spec can never run code. Every item gets a score in [0, 1] (``loglik``: the mean log-prob).

Bounded inputs (docs/reliability.md promise 7): data files are read only if regular (a FIFO or
device is refused, see :mod:`evomerge.textfile`) and at most :data:`MAX_JSONL_BYTES` of them;
each line's JSON nests at most 64 levels and its number literals have at most 1000 characters. A ``regex``
extractor is compiled once, when the spec loads, with the ``regex`` package, and every match
runs under a :data:`REGEX_TIMEOUT_S` deadline: a pattern that backtracks catastrophically scores
the item as wrong and logs a warning, instead of hanging the evaluation.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge.errors import ConfigError
from evomerge.safe_yaml import load_yaml
from evomerge.textfile import loads_json, open_regular

log = logging.getLogger(__name__)

MAX_JSONL_BYTES = 256 * 2**20
REGEX_TIMEOUT_S = 0.5  # per match; a real extractor on a few thousand characters needs microseconds
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@functools.lru_cache(maxsize=256)
def compile_extractor(pattern: str) -> regex.Pattern:
    """The compiled ``regex:`` extractor (cached: compiled once per process, at spec load).
    Raises ``regex.error`` for an invalid pattern."""
    return regex.compile(pattern)


class Engine(Protocol):
    """What a task needs from a model: greedy text and continuation log-probs."""

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str]) -> list[str]: ...

    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[tuple[float, int]]:
        """Sum of log-probs of each continuation given its prompt, and its token count."""
        ...


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["generate", "choice", "loglik"]
    data: str
    heldout: str | None = None
    prompt: str = Field(min_length=1)
    target: str = "answer"
    choices: str = "choices"
    extract: Literal["strip", "last_number", "regex"] = "strip"
    regex: str | None = None
    max_new_tokens: int = Field(16, ge=1, le=4096)
    stop: tuple[str, ...] = ()
    limit: int | None = Field(None, ge=1)
    description: str = ""

    @field_validator("prompt")
    @classmethod
    def _template(cls, v: str) -> str:
        for _, field, spec, conv in string.Formatter().parse(v):
            if field is None:
                continue
            if not field.isidentifier() or spec or conv:
                raise ValueError(f"placeholder {{{field}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} "
                                 "must be a plain {field_name}")
        return v

    @model_validator(mode="after")
    def _regex(self) -> TaskSpec:
        if self.extract == "regex":
            if not self.regex:
                raise ValueError("extract: regex needs `regex:` with one capture group")
            try:
                groups = compile_extractor(self.regex).groups
            except (regex.error, ValueError, OverflowError, RecursionError) as err:
                raise ValueError(f"`regex:` does not compile: {err}") from None
            if groups != 1:
                raise ValueError("`regex:` must have exactly one capture group")
        return self

    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f}


@dataclass(frozen=True)
class Task:
    """A spec with its items loaded (``split`` is ``search`` or ``heldout``)."""

    spec: TaskSpec
    items: tuple[dict[str, Any], ...]
    split: str = "search"

    @property
    def name(self) -> str:
        return self.spec.name


def load_task_spec(path: str | Path) -> tuple[TaskSpec, Path]:
    p = Path(path)
    raw = load_yaml(p)
    try:
        return TaskSpec.model_validate(raw), p.resolve().parent
    except ValidationError as err:
        lines = [f"{'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"{p}: invalid task spec:\n    " + "\n    ".join(lines),
                          hint="see fitness/README.md for the task spec fields") from None


def read_jsonl(path: Path, required: set[str]) -> list[dict[str, Any]]:
    """Items from a JSONL file; each line a JSON object holding ``required`` fields.

    The file must be a regular file (never a FIFO or device) and at most :data:`MAX_JSONL_BYTES`
    are read; each line's JSON is bounded as in :func:`evomerge.textfile.loads_json`. Every error
    is a :class:`ConfigError` naming the file and line.
    """
    too_big = ConfigError(f"{path}: task data is larger than the {MAX_JSONL_BYTES}-byte limit",
                          hint="use fewer items (`limit:` cuts after loading) or split the file")
    fh, size = open_regular(path, what="data file",
                            missing_hint="point `data:` at a local JSONL file (paths are relative to the spec)")
    items = []
    with fh:
        if size > MAX_JSONL_BYTES:
            raise too_big
        total = 0
        n = 0
        while chunk := fh.readline(MAX_JSONL_BYTES - total + 1):
            total += len(chunk)
            if total > MAX_JSONL_BYTES:
                raise too_big
            for raw in chunk.splitlines():  # \n, \r\n and a bare \r end a line, as in text mode
                n += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise ConfigError(f"{path}:{n}: not UTF-8 text (byte {err.start} of the line)",
                                      hint="save the file as UTF-8") from None
                if not line.strip():
                    continue
                obj = loads_json(line, source=f"{path}:{n}", hint="one JSON object per line")
                if not isinstance(obj, dict):
                    raise ConfigError(f"{path}:{n}: each line must be a JSON object")
                missing = required - set(obj)
                if missing:
                    raise ConfigError(f"{path}:{n}: missing field(s) {sorted(missing)}",
                                      hint=f"every item needs {sorted(required)}")
                items.append(obj)
    if not items:
        raise ConfigError(f"{path}: no items", hint="add at least one JSON object line")
    return items


def load_task(path: str | Path, *, split: str = "search") -> Task:
    """Load a task spec and the items of one split (``search`` -> ``data``, ``heldout``); an
    ``lm_eval:`` reference (a space's ``lm_eval`` objective) loads that lm-eval task instead
    (:mod:`evomerge.evaluate.lmeval`)."""
    if isinstance(path, str) and path.startswith("lm_eval:"):
        from evomerge.evaluate.lmeval import LMEvalRef, load_lmeval_task

        return load_lmeval_task(LMEvalRef.from_ref(path), split=split)  # type: ignore[return-value]
    spec, root = load_task_spec(path)
    rel = spec.data if split == "search" else spec.heldout
    if rel is None:
        raise ConfigError(f"{path}: no `heldout:` data file", hint="add `heldout: file.jsonl` to the spec")
    required = spec.fields() | {spec.target} | ({spec.choices} if spec.kind == "choice" else set())
    items = read_jsonl((root / rel), required)
    if spec.limit:
        items = items[: spec.limit]
    return Task(spec=spec, items=tuple(items), split=split)


def render(spec: TaskSpec, item: dict[str, Any]) -> str:
    return spec.prompt.format_map({k: item[k] for k in spec.fields()})


def extract_answer(spec: TaskSpec, text: str) -> str | None:
    """The answer part of a generation (GSM8K/MGSM style: ``last_number``); ``None`` when the
    ``regex`` extractor ran past :data:`REGEX_TIMEOUT_S` (the item then scores as wrong)."""
    for s in spec.stop:
        if s and s in text:
            text = text[: text.index(s)]
    if spec.extract == "last_number":
        nums = _NUMBER.findall(text)
        return _normalize_number(nums[-1]) if nums else ""
    if spec.extract == "regex":
        try:
            m = compile_extractor(spec.regex or "").search(text, timeout=REGEX_TIMEOUT_S)
        except TimeoutError:
            return None
        return m.group(1).strip() if m else ""
    return text.strip()


def _normalize_number(s: str) -> str:
    s = s.replace(",", "")
    try:
        v = float(s)
    except ValueError:
        return s
    return str(int(v)) if v.is_integer() else repr(v)


def reference(spec: TaskSpec, item: dict[str, Any]) -> str:
    """The gold answer; with ``last_number`` its last number (GSM8K's "... #### 72" -> "72")."""
    ref = str(item[spec.target])
    if spec.extract == "last_number":
        nums = _NUMBER.findall(ref)
        return _normalize_number(nums[-1]) if nums else ref.strip()
    return ref.strip()


def score_task(task: Task, engine: Engine) -> list[float]:
    """Per-item scores of one task (exact match / choice accuracy in {0, 1}; loglik: mean log-prob)."""
    spec = task.spec
    prompts = [render(spec, it) for it in task.items]
    if spec.kind == "generate":
        outs = engine.generate(prompts, max_new_tokens=spec.max_new_tokens, stop=spec.stop)
        scores = []
        for i, (o, it) in enumerate(zip(outs, task.items, strict=True)):
            answer = extract_answer(spec, o)
            if answer is None:
                log.warning("task %s: item %d: `regex:` %r ran past its %.1f s limit on a %d-character "
                            "generation; the item scores 0", spec.name, i, spec.regex, REGEX_TIMEOUT_S, len(o))
            scores.append(float(answer is not None and answer == reference(spec, it)))
        return scores
    if spec.kind == "choice":
        flat_p, flat_c, owner = [], [], []
        for i, (p, it) in enumerate(zip(prompts, task.items, strict=True)):
            opts = it[spec.choices]
            if not isinstance(opts, list) or not opts:
                raise ConfigError(f"task {spec.name}: item {i}: `{spec.choices}` must be a non-empty list")
            for o in opts:
                flat_p.append(p)
                flat_c.append(str(o))
                owner.append(i)
        lps = engine.continuation_logprobs(flat_p, flat_c)
        best: dict[int, tuple[float, int]] = {}
        k = 0
        for i, it in enumerate(task.items):
            n = len(it[spec.choices])
            scores = [lps[k + j][0] for j in range(n)]
            best[i] = (max(range(n), key=lambda j: scores[j]), n)
            k += n
        out = []
        for i, it in enumerate(task.items):
            ans = it[spec.target]
            idx = ans if isinstance(ans, int) else [str(o) for o in it[spec.choices]].index(str(ans)) \
                if str(ans) in [str(o) for o in it[spec.choices]] else -1
            out.append(float(best[i][0] == idx))
        return out
    lps = engine.continuation_logprobs(prompts, [str(it[spec.target]) for it in task.items])
    return [lp / max(1, n) if math.isfinite(lp) else float("nan") for lp, n in lps]
