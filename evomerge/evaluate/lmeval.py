"""lm-evaluation-harness tasks as fitness objectives (lm-eval 0.4.x: ``pip install
'evomerge[lmeval]'``).

An objective ``{lm_eval: {task: NAME or a task YAML, metric, num_fewshot, limit}}`` is scored by
lm-eval itself: its task config builds the requests (few-shot context, choices, ``until``), its
filters and metrics score each document, and evomerge supplies only the model. On the
transformers engine that model is lm-eval's own ``HFLM`` wrapped around the live, in-place merged
model object (no reload, no engine restart), so a candidate's score is the number
``lm_eval --model hf`` computes for the exported model directory with the same settings (batch
size, dtype; tests/integration/test_lmeval.py checks it item by item). Every document's metric
value goes to the archive as that item's score; the objective is lm-eval's aggregate of them
(metrics whose aggregation is not the mean are refused, as a per-item archive cannot hold them).

Documents are scored through lm-eval's ``samples`` selection (document indices), so racing scores
a candidate chunk by chunk like any other task. Datasets are read the way lm-eval reads them; a
task whose data is not on this machine fails when the space is validated, naming the dataset
(tests and offline runs use ``dataset_path: json`` with local ``data_files``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError

REF_PREFIX = "lm_eval:"
MEAN_METRICS_IN_UNIT_RANGE = frozenset({"acc", "acc_norm", "exact_match", "mcc_norm"})  # racing needs [0, 1]
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMEvalRef:
    """Which lm-eval task an objective scores, and how (the objective's ``lm_eval:`` block)."""

    task: str  # a task name lm-eval knows, or a path to a task YAML (its directory is included)
    metric: str | None = None  # default: the task's first metric
    num_fewshot: int | None = None
    limit: int | None = None  # the first N documents
    filter: str | None = None  # which of the task's filter pipelines scores (default: its first)
    batch_size: int = 1  # lm-eval's HFLM batch size (``lm_eval --batch_size``); 1 matches the CLI default
    split: str | None = None  # the split the search scores (default: lm-eval's: the test split, else validation)
    held_out: str | None = None  # the split held-out scoring uses
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False

    def as_ref(self) -> str:
        """The task reference a worker loads (:func:`evomerge.evaluate.tasks.load_task`)."""
        return REF_PREFIX + json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_ref(cls, ref: str) -> LMEvalRef:
        return cls(**json.loads(ref[len(REF_PREFIX):]))

    @property
    def include_path(self) -> str | None:
        return str(Path(self.task).parent) if self.is_file else None

    @property
    def is_file(self) -> bool:
        return self.task.endswith((".yaml", ".yml"))


def is_lmeval_ref(ref: str) -> bool:
    return ref.startswith(REF_PREFIX)


def lmeval_module() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("an objective names an lm-eval task, and lm-eval is not installed",
                          hint="pip install 'evomerge[lmeval]' (lm-eval 0.4.x)") from None
    return lm_eval


def has_chat_template(model_dir: Path) -> bool:
    """The model directory's tokenizer has a chat template (in tokenizer_config.json or its own file)."""
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    cfg = model_dir / "tokenizer_config.json"
    try:
        return bool(json.loads(cfg.read_text()).get("chat_template")) if cfg.is_file() else False
    except (OSError, ValueError):
        return False


def task_name(ref: LMEvalRef) -> str:
    """The lm-eval task's name: the ``task:`` key of a task YAML, else the name given."""
    if not ref.is_file:
        return ref.task
    from evomerge.safe_yaml import load_yaml

    doc = load_yaml(Path(ref.task))
    name = doc.get("task") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{ref.task}: an lm-eval task YAML needs a `task:` name",
                          hint="see lm-eval's docs/task_guide.md")
    return name


@dataclass
class LMEvalTask:
    """An lm-eval task loaded for scoring: ``items`` are its document indices (after ``limit``)."""

    ref: LMEvalRef
    name: str
    metric: str
    items: tuple[int, ...]
    split: str = "search"
    manager: Any = field(default=None, repr=False)  # lm-eval's TaskManager
    task: Any = field(default=None, repr=False)  # lm-eval's Task object (config, docs)

    @property
    def bounded(self) -> bool:
        """Every document scores in [0, 1] (racing can compare it)."""
        return self.metric in MEAN_METRICS_IN_UNIT_RANGE

    @property
    def fewshot(self) -> int:
        n = self.ref.num_fewshot if self.ref.num_fewshot is not None else self.task.config.num_fewshot
        return int(n or 0)

    @property
    def spec(self) -> LMEvalTask:  # the attribute plain tasks keep their spec in (kind, name)
        return self

    kind = "lm_eval"


def load_lmeval_task(ref: LMEvalRef, *, split: str = "search") -> LMEvalTask:
    """Build the task as lm-eval would (its registry, or the YAML with its directory included)
    and read its documents; an unavailable dataset or an unknown task or metric is a
    :class:`ConfigError` naming it."""
    if split not in ("search", "heldout"):
        raise ValueError(f"split {split!r}")
    if split == "heldout" and ref.held_out is None:
        raise ConfigError(f"lm-eval task {ref.task}: no held-out split",
                          hint="name one in the objective: lm_eval: {task: ..., held_out: validation} (a split of "
                               "its dataset that the search does not score)")
    lmeval_module()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing is downloaded at run time
    from lm_eval.tasks import TaskManager, get_task_dict

    if ref.is_file and not Path(ref.task).is_file():
        raise ConfigError(f"lm-eval task file {ref.task} not found", hint="point `lm_eval.task` at a task YAML")
    name = task_name(ref)
    manager = TaskManager(include_path=ref.include_path) if ref.include_path else TaskManager()
    if name not in manager.all_tasks:
        raise ConfigError(f"lm-eval does not know the task {name!r}",
                          hint="name a task lm-eval lists (`lm_eval --tasks list`) or give a task YAML path")
    try:
        tasks = get_task_dict([name], manager)
    except Exception as err:  # noqa: BLE001 - datasets raise many types; each becomes one line
        raise ConfigError(f"lm-eval task {name}: its dataset could not be loaded ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else ''})",
                          hint="nothing is downloaded at run time: point the task's dataset_path/data_files at "
                               "local files (dataset_path: json, dataset_kwargs.data_files), or fill the Hugging "
                               "Face datasets cache first") from None
    task = tasks[name]
    if not hasattr(task, "eval_docs"):
        raise ConfigError(f"lm-eval task {name} is a group of tasks",
                          hint="give each task of the group its own objective")
    if ref.num_fewshot is not None:
        task.set_config(key="num_fewshot", value=ref.num_fewshot)
    chosen = ref.held_out if split == "heldout" else ref.split
    if chosen is not None:  # lm-eval scores its test split when it has one: make the chosen split that
        available = sorted(getattr(task, "dataset", None) or {})
        if chosen not in available:
            raise ConfigError(f"lm-eval task {name} has no split {chosen!r} (its dataset has {available})",
                              hint="name one of those splits, or add it to the task's data_files")
        task.set_config(key="test_split", value=chosen)
    metrics = [m["metric"] for m in (task.config.metric_list or [])] or list(task._metric_fn_list)
    metric = ref.metric or metrics[0]
    if metric not in metrics:
        raise ConfigError(f"lm-eval task {name} has no metric {metric!r} (it has {metrics})",
                          hint="pick one of the task's metrics")
    aggregation = task.aggregation().get(metric)
    if getattr(aggregation, "__name__", "") != "mean":
        raise ConfigError(f"lm-eval task {name}: metric {metric} aggregates by "
                          f"{getattr(aggregation, '__name__', aggregation)}, not the mean",
                          hint="evomerge keeps a score per document and averages them: use a mean metric "
                               "(acc, acc_norm, exact_match, ...)")
    n = len(task.eval_docs)
    if ref.limit is not None:
        n = min(n, ref.limit)
    if n == 0:
        raise ConfigError(f"lm-eval task {name} has no documents", hint="check its split and data files")
    return LMEvalTask(ref=ref, name=name, metric=metric, items=tuple(range(n)), split=split, manager=manager,
                      task=task)


def live_lm(engine: Any, task: LMEvalTask) -> Any:
    """lm-eval's model for a live engine: its own ``HFLM`` around the transformers engine's model
    object, or :class:`~evomerge.evaluate.lmeval_vllm.LiveVLLM` over the vLLM engine."""
    lmeval_module()
    if hasattr(engine, "llm"):
        from evomerge.evaluate.lmeval_vllm import LiveVLLM

        return LiveVLLM(engine)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=engine.model, tokenizer=engine.tok, batch_size=task.ref.batch_size)


def score_lmeval(task: LMEvalTask, lm: Any, indices: Sequence[int]) -> list[float]:
    """lm-eval's per-document ``task.metric`` for the documents ``indices`` of ``task``, scored
    with ``lm`` (:func:`live_lm`). All documents go through lm-eval's ``limit`` as the CLI does;
    a subset through its ``samples`` (in ascending order, as lm-eval maps them back)."""
    from lm_eval import simple_evaluate

    wanted = [int(i) for i in indices]
    chosen = sorted(set(wanted))
    whole = chosen == list(task.items)
    out = simple_evaluate(model=lm, tasks=[task.task], limit=len(task.items) if whole else None,
                          samples=None if whole else {task.name: chosen}, log_samples=True, bootstrap_iters=0,
                          task_manager=task.manager, verbosity="ERROR", num_fewshot=task.ref.num_fewshot,
                          apply_chat_template=task.ref.apply_chat_template,
                          fewshot_as_multiturn=task.ref.fewshot_as_multiturn)
    if out is None:
        raise ConfigError(f"lm-eval returned no results for task {task.name}", hint="check the task config")
    samples = out["samples"][task.name]
    filters = list(dict.fromkeys(s["filter"] for s in samples))
    key = task.ref.filter or (filters[0] if filters else None)
    if key not in filters:
        raise ConfigError(f"lm-eval task {task.name} has no filter {key!r} (it has {filters})",
                          hint="name one of the task's filter_list entries, or leave `filter` out")
    by_doc = {int(s["doc_id"]): float(s[task.metric]) for s in samples if s["filter"] == key and task.metric in s}
    missing = [i for i in wanted if i not in by_doc]
    if missing:
        raise ConfigError(f"lm-eval task {task.name}: no {task.metric} for documents {missing[:5]}",
                          hint="the task's filters must produce the metric for every document")
    return [by_doc[i] for i in wanted]
