"""The offline model zoo: a tiny Llama base and experts fine-tuned on synthetic skills.

Nothing can be downloaded here, so tests, the demo and the benchmarks use models this module
trains on the CPU in a few minutes. The recipe follows what makes merging meaningful
(Yu et al. 2024, "Language Models are Super Mario", sec. 4; Ilharco et al. 2023): experts
fine-tuned *briefly* from a shared base that was pretrained on a mix of the skills, so their
task vectors are small and compatible. Experts fine-tuned from a base that knows nothing of
their skills do not merge.

Skills are character-level string tasks answered by greedy generation and scored by exact
match; ``skill_items`` makes deterministic held-in (``split="dev"``) and held-out
(``split="test"``) items.

Two zoos are specified here. The default :class:`ZooSpec` is the 2-layer Llama zoo of ``add``,
``caesar`` and ``length`` experts that ``zoo://`` names. :data:`QWEN2_SPEC` is a second problem
the first is not: a 4-layer Qwen2-style model with tied input and output embeddings, pretrained
on other tasks, with experts on three other skills (``sub``, ``count``, ``sort``); it is built
the same way under its own digest (``ensure_zoo(spec=QWEN2_SPEC)``).
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from evomerge import cache

# ----------------------------------------------------------------------------- tokenizer

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list("0123456789abcdefghijklmnopqrstuvwxyz+-=:> ")
PAD, BOS, EOS, UNK = 0, 1, 2, 3


def vocab(extra_chars: str = "") -> dict[str, int]:
    """Character vocabulary: special tokens first, then one id per character."""
    chars = CHARS + [c for c in extra_chars if c not in CHARS]
    return {tok: i for i, tok in enumerate(SPECIALS + chars)}


def build_tokenizer(extra_chars: str = ""):
    """A character-level fast tokenizer that transformers and vLLM both load.

    A BPE model with no merges splits text into single characters; the Fuse decoder joins
    them back without spaces.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab_map = vocab(extra_chars)
    tok = Tokenizer(models.BPE(vocab=vocab_map, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=256,
    )
    return fast


def encode(text: str, vocab_map: dict[str, int]) -> list[int]:
    return [vocab_map.get(c, UNK) for c in text]


# ----------------------------------------------------------------------------- skills

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rng: np.random.Generator, lo: int, hi: int, letters: str = LETTERS) -> str:
    n = int(rng.integers(lo, hi + 1))
    return "".join(letters[i] for i in rng.integers(0, len(letters), size=n))


def _letter_shift(word: str, k: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + k) % 26] for c in word)


# Pretraining tasks: what the base learns. They build the circuits the skills reuse (copying
# letters by position, mapping letters, adding digits), but no skill itself.
def _copy(rng: np.random.Generator) -> tuple[str, str]:
    w = _word(rng, 4, 7)
    return f"cpy:{w}=", w


def _shift1(rng: np.random.Generator) -> tuple[str, str]:
    w = _word(rng, 4, 7)
    return f"rt1:{w}=", _letter_shift(w, 1)


def _add_small(rng: np.random.Generator) -> tuple[str, str]:
    a, b = (int(x) for x in rng.integers(0, 10, size=2))
    return f"add:{a}+{b}=", str(a + b)


def _reverse_short(rng: np.random.Generator) -> tuple[str, str]:
    w = _word(rng, 2, 3)
    return f"rev:{w}=", w[::-1]


# Pretraining tasks of the Qwen2 zoo (QWEN2_SPEC): the small or partial form of each of its skills.
COUNT_LETTERS = "abcdef"  # count draws words over six letters, so counts above one are common


def _sub_small(rng: np.random.Generator) -> tuple[str, str]:
    a = int(rng.integers(0, 10))
    b = int(rng.integers(0, a + 1))
    return f"sub:{a}-{b}=", str(a - b)


def _has_letter(rng: np.random.Generator) -> tuple[str, str]:
    w = _word(rng, 4, 9, COUNT_LETTERS)
    c = COUNT_LETTERS[int(rng.integers(0, len(COUNT_LETTERS)))]
    return f"has:{w}>{c}=", "y" if c in w else "n"


def _min_letter(rng: np.random.Generator) -> tuple[str, str]:
    w = _word(rng, 3, 5)
    return f"min:{w}=", min(w)


# Skills: what experts are fine-tuned on and what fitness measures.
def _add(rng: np.random.Generator) -> tuple[str, str]:
    """Two-digit plus one-digit addition (the base only knows one-digit sums)."""
    a, b = int(rng.integers(0, 20)), int(rng.integers(0, 10))
    return f"add:{a}+{b}=", str(a + b)


def _caesar(rng: np.random.Generator) -> tuple[str, str]:
    """Shift every letter by 3 (the base only knows a shift by 1)."""
    w = _word(rng, 4, 7)
    return f"rot:{w}=", _letter_shift(w, 3)


def _length(rng: np.random.Generator) -> tuple[str, str]:
    """Count the letters of a word (the base never counts)."""
    w = _word(rng, 1, 9)
    return f"len:{w}=", str(len(w))


def _sub(rng: np.random.Generator) -> tuple[str, str]:
    """A number below 20 minus a one-digit number, never below zero (the base only subtracts
    one-digit numbers)."""
    a = int(rng.integers(0, 20))
    b = int(rng.integers(0, min(a, 9) + 1))
    return f"sub:{a}-{b}=", str(a - b)


def _count(rng: np.random.Generator) -> tuple[str, str]:
    """How often a letter occurs in a word over six letters (the base only says whether it occurs)."""
    w = _word(rng, 4, 9, COUNT_LETTERS)
    c = COUNT_LETTERS[int(rng.integers(0, len(COUNT_LETTERS)))]
    return f"cnt:{w}>{c}=", str(w.count(c))


def _sort(rng: np.random.Generator) -> tuple[str, str]:
    """The letters of a word in alphabetical order (the base only finds the smallest)."""
    w = _word(rng, 3, 5)
    return f"srt:{w}=", "".join(sorted(w))


PRETRAIN: dict[str, Callable[[np.random.Generator], tuple[str, str]]] = {
    "copy": _copy,
    "shift1": _shift1,
    "add_small": _add_small,
    "reverse_short": _reverse_short,
    "sub_small": _sub_small,
    "has_letter": _has_letter,
    "min_letter": _min_letter,
}
SKILLS: dict[str, Callable[[np.random.Generator], tuple[str, str]]] = {
    "add": _add,
    "caesar": _caesar,
    "length": _length,
    "sub": _sub,
    "count": _count,
    "sort": _sort,
}
TASKS = {**PRETRAIN, **SKILLS}

_SPLIT_SEED = {"train": 0, "dev": 1, "test": 2}


def skill_items(skill: str, n: int, *, split: str = "dev", seed: int = 0) -> list[tuple[str, str]]:
    """``n`` deterministic (prompt, answer) items of ``skill``; splits draw from disjoint streams."""
    if skill not in SKILLS:
        raise KeyError(f"unknown skill {skill!r}; known: {sorted(SKILLS)}")
    rng = np.random.default_rng([seed, _SPLIT_SEED[split], zlib.crc32(skill.encode())])
    return [SKILLS[skill](rng) for _ in range(n)]


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class ModelShape:
    """Architecture hyper-parameters of a zoo model."""

    arch: str = "llama"  # "llama", "mistral" or "qwen2"
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    tie_word_embeddings: bool = False
    extra_chars: str = ""


def make_config(shape: ModelShape):
    """A transformers config for ``shape`` with the zoo's vocabulary."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[shape.arch]
    return cls(
        vocab_size=len(vocab(shape.extra_chars)),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=128,
        tie_word_embeddings=shape.tie_word_embeddings,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        rms_norm_eps=1e-5,
        torch_dtype="float32",
    )


def new_model(shape: ModelShape, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(shape))
    return model


def _batch(items: Sequence[tuple[str, str]], vmap: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels; loss only on the answer and the closing </s>."""
    seqs, labels = [], []
    for prompt, answer in items:
        p, a = encode(prompt, vmap), encode(answer, vmap) + [EOS]
        seqs.append([BOS] + p + a)
        labels.append([-100] * (1 + len(p)) + a)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, l_) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l_)] = torch.tensor(l_)
    return ids, lab


def _sample(task: str, rng: np.random.Generator) -> tuple[str, str]:
    """One training item of a skill or pretraining task."""
    return TASKS[task](rng)


@dataclass(frozen=True)
class TrainPlan:
    """One training phase: the mix of skills (name -> weight), steps, learning rate."""

    mix: dict[str, float]
    steps: int
    lr: float
    batch_size: int = 64
    warmup: int = 20
    seed: int = 0


def train(model, plan: TrainPlan, vmap: dict[str, int], log: Callable[[str], None] | None = None) -> None:
    """AdamW with linear warm-up and cosine decay on a sampled mix of skills."""
    names = sorted(plan.mix)
    probs = np.array([plan.mix[n] for n in names], dtype=float)
    probs /= probs.sum()
    rng = np.random.default_rng([plan.seed, 99])
    torch.manual_seed(plan.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    for step in range(plan.steps):
        frac = step / max(1, plan.steps)
        lr = plan.lr * min(1.0, (step + 1) / plan.warmup) * 0.5 * (1 + np.cos(np.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        picks = rng.choice(len(names), size=plan.batch_size, p=probs)
        items = [_sample(names[k], rng) for k in picks]
        ids, lab = _batch(items, vmap)
        out = model(input_ids=ids, attention_mask=(ids != PAD).long(), labels=lab)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log and (step % 200 == 0 or step == plan.steps - 1):
            log(f"  step {step:5d} loss {out.loss.item():.4f}")
    model.eval()


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def greedy_answers(model, prompts: Sequence[str], vmap: dict[str, int], max_new_tokens: int = 8) -> list[str]:
    """Batched greedy decoding with left padding; stops at </s>."""
    inv = {i: c for c, i in vmap.items()}
    enc = [[BOS] + encode(p, vmap) for p in prompts]
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, width - len(e) :] = torch.tensor(e)
        mask[i, width - len(e) :] = 1
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    answers = []
    for row in out[:, width:].tolist():
        chars = []
        for t in row:
            if t in (EOS, PAD):
                break
            chars.append(inv.get(t, "?"))
        answers.append("".join(chars))
    return answers


def skill_accuracy(model, skill: str, vmap: dict[str, int], n: int = 200, split: str = "test") -> float:
    """Exact-match accuracy of greedy answers on ``n`` items of ``skill``."""
    items = skill_items(skill, n, split=split)
    preds = greedy_answers(model, [p for p, _ in items], vmap)
    return float(np.mean([p == a for p, (_, a) in zip(preds, items, strict=True)]))


# ----------------------------------------------------------------------------- building


@dataclass(frozen=True)
class ZooSpec:
    """Everything that determines the zoo's bytes; its hash names a cache entry."""

    version: int = 1
    seed: int = 0
    shape: ModelShape = field(default_factory=ModelShape)
    experts: tuple[str, ...] = ("add", "caesar", "length")
    pretrain: tuple[str, ...] = ("copy", "shift1", "add_small", "reverse_short")
    base_steps: int = 700
    base_lr: float = 3e-3
    expert_steps: int = 400
    expert_lr: float = 4e-4
    old_data_fraction: float = 0.3  # share of each expert's batches drawn from the base's pretraining mix

    def digest(self) -> str:
        import hashlib

        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# The second problem (bench/strategy_comparison.py --problem qwen2): another architecture (Qwen2:
# biases on the q/k/v projections, grouped-query attention), tied input and output embeddings,
# twice the depth, and three skills the default zoo lacks. Its base is pretrained on copying and
# on the small or partial form of each skill (one-digit subtraction, whether a letter occurs, the
# smallest letter), so the experts' brief fine-tunes start from a base that knows something of
# their skills and their task vectors merge (Yu et al. 2024, sec. 4).
QWEN2_SPEC = ZooSpec(
    shape=ModelShape(arch="qwen2", num_hidden_layers=4, num_key_value_heads=2, tie_word_embeddings=True),
    experts=("sub", "count", "sort"),
    pretrain=("copy", "sub_small", "has_letter", "min_letter"),
)


# Variants for compatibility tests: untrained, but real checkpoints that transformers loads.
VARIANTS: dict[str, ModelShape] = {
    "wide": ModelShape(hidden_size=160, intermediate_size=480, num_attention_heads=4, num_key_value_heads=4),
    "deep": ModelShape(num_hidden_layers=3),
    "vocab": ModelShape(extra_chars="ABCDEF"),
    "tied": ModelShape(tie_word_embeddings=True),
    "qwen2_base": ModelShape(arch="qwen2", num_key_value_heads=2),
}


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _state(model) -> dict[str, torch.Tensor]:
    """The model's parameters by name; a tied output embedding is the input one, counted once."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _reload(path: Path):
    """The model as saved at ``path``. transformers writes a tied model without ``lm_head.weight``
    and ties it again on load; a reload that came back untied would score another model than the
    one built, so it is refused here rather than found in a search."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    if model.config.tie_word_embeddings:
        if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            raise RuntimeError(f"{path}: tie_word_embeddings is set but the reloaded output embedding is not tied")
    return model


@contextlib.contextmanager
def building(out_dir: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary directory beside ``out_dir`` that replaces it when the block completes; on
    any error it is removed, so an interrupted build leaves nothing that looks finished.

    The block must write ``zoo.json``; the list of every file built is added to it (``files``),
    and that is what makes a zoo replaceable: with ``overwrite`` an existing ``out_dir`` is
    replaced only if it is empty or a zoo whose ``zoo.json`` lists every file in it (see
    :func:`check_zoo_replaceable`), and it is removed only after the new zoo is in place.
    Temporaries are named after their owner, and those of dead processes beside ``out_dir``
    are removed first (:func:`evomerge.merge.writer.remove_stale_temporaries`).
    """
    import os
    import shutil

    from evomerge.errors import ConfigError
    from evomerge.merge.writer import refuse_protected, remove_stale_temporaries, temp_path

    out = Path(os.path.abspath(out_dir))
    if not out.name:
        raise ConfigError(f"cannot build a zoo in {str(out_dir)!r}", hint="choose a new directory such as zoo/")
    if os.path.lexists(out):
        if not overwrite:
            raise ConfigError(f"{out} already exists", hint="choose another directory or pass --overwrite")
        if out.is_symlink() or not out.is_dir():
            raise ConfigError(f"{out} exists and is not a directory; refusing to replace it",
                              hint="remove it yourself or choose another directory")
        refuse_protected(out)
        check_zoo_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)
    tmp = temp_path(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _record_files(tmp)
        if os.path.lexists(out):
            if not overwrite:
                raise ConfigError(f"{out} already exists", hint="choose another directory or pass --overwrite")
            refuse_protected(out)
            old = temp_path(out, "old")
            out.rename(old)
            try:  # checked where it now is: nothing can slip in between the check and the deletion
                check_zoo_replaceable(old, shown=out)
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _zoo_files(root: Path) -> tuple[list[str], list[str]]:
    """Relative paths of the regular files and of everything else (directories aside) under ``root``,
    symlinks not followed."""
    import os
    import stat

    def unreadable(err: OSError) -> None:
        from evomerge.errors import ConfigError

        raise ConfigError(f"cannot inspect {err.filename}: {err.strerror}", hint="check its permissions")

    files, other = [], []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISREG(mode):
                files.append(rel)
            elif not stat.S_ISDIR(mode):
                other.append(rel)  # os.walk lists a symlink to a directory among dirnames but never enters it
    return sorted(files), sorted(other)


def _record_files(tmp: Path) -> None:
    path = tmp / "zoo.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = [f for f in _zoo_files(tmp)[0] if f != "zoo.json"]
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def check_zoo_replaceable(root: Path, *, shown: Path | None = None) -> None:
    """Raise :class:`~evomerge.errors.ConfigError` unless ``root`` is empty or a zoo evomerge
    built: a ``zoo.json`` with ``models`` and ``files`` (the list every build records), and
    nothing under it but those files and their directories. The first other entry is named."""
    from evomerge.errors import ConfigError

    shown = shown or root
    hint = "choose a new directory (or remove this one yourself if it is disposable)"
    files, other = _zoo_files(root)
    if not files and not other and not any(root.iterdir()):
        return
    try:
        manifest = json.loads((root / "zoo.json").read_text()) if (root / "zoo.json").is_file() else None
    except (OSError, ValueError):
        manifest = None
    listed = manifest.get("files") if isinstance(manifest, dict) and isinstance(manifest.get("models"), list) else None
    if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed) or (root / "zoo.json").is_symlink():
        raise ConfigError(f"refusing to replace {shown}: it has no zoo.json listing its files, so it is not a zoo "
                          "this evomerge built", hint=hint)
    allowed = {*listed, "zoo.json"}
    for rel in [*other, *files]:
        if rel not in allowed:
            raise ConfigError(f"refusing to replace {shown}: {shown / rel} is not a file of the zoo (not listed in "
                              "its zoo.json)", hint=f"move it out of {shown}, or {hint}")


def build_zoo(
    out_dir: str | Path,
    spec: ZooSpec | None = None,
    *,
    log: Callable[[str], None] | None = print,
    overwrite: bool = False,
) -> dict:
    """Train the base and experts and save every model as a Hugging Face directory.

    Written to a temporary directory and renamed when complete, so an interrupted build
    leaves nothing that looks finished. Returns the manifest also saved as ``zoo.json``.
    """
    import copy

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = spec or ZooSpec()
    say = log or (lambda _m: None)
    threads = torch.get_num_threads()
    t_start = time.perf_counter()
    try:
        torch.set_num_threads(min(2, threads))
        with building(out_dir, overwrite=overwrite) as tmp:
            vmap = vocab()
            tok = build_tokenizer()
            skills = list(spec.experts)
            say(f"zoo {spec.digest()}: pretraining the base on {list(spec.pretrain)} for {spec.base_steps} steps")
            base = new_model(spec.shape, spec.seed)
            train(base, TrainPlan(mix=dict.fromkeys(spec.pretrain, 1.0), steps=spec.base_steps, lr=spec.base_lr,
                                  seed=spec.seed), vmap, log=log)
            _save(base, tok, tmp / "base")
            base_state = _state(base)
            models = {"base": base}
            for i, skill in enumerate(skills):
                say(f"fine-tuning expert_{skill} for {spec.expert_steps} steps")
                expert = copy.deepcopy(base)
                mix = {t: spec.old_data_fraction / len(spec.pretrain) for t in spec.pretrain}
                mix[skill] = 1.0 - spec.old_data_fraction
                train(expert, TrainPlan(mix=mix, steps=spec.expert_steps, lr=spec.expert_lr, warmup=10,
                                        seed=spec.seed + 1 + i), vmap)
                _save(expert, tok, tmp / f"expert_{skill}")
                models[f"expert_{skill}"] = expert
            say("scoring base and experts as saved")
            scores = {name: {s: skill_accuracy(_reload(tmp / name), s, vmap) for s in skills} for name in models}
            for j, (name, vshape) in enumerate(VARIANTS.items()):
                vtok = build_tokenizer(vshape.extra_chars)
                _save(new_model(vshape, spec.seed + 100 + j), vtok, tmp / "variants" / name)
            # A Qwen2 "expert": the Qwen2 base plus a small deterministic perturbation.
            qwen = new_model(VARIANTS["qwen2_base"], spec.seed + 100 + list(VARIANTS).index("qwen2_base"))
            gen = torch.Generator().manual_seed(spec.seed + 200)
            with torch.no_grad():
                for p in qwen.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.01)
            _save(qwen, build_tokenizer(), tmp / "variants" / "qwen2_expert")
            manifest = {
                "digest": spec.digest(),
                "spec": asdict(spec),
                "skills": skills,
                "models": ["base"] + [f"expert_{s}" for s in skills],
                "variants": list(VARIANTS) + ["qwen2_expert"],
                "accuracy": scores,
                "accuracy_items": 200,
                "build_seconds": round(time.perf_counter() - t_start, 1),
                "base_delta_norm": {
                    f"expert_{s}": float(
                        torch.sqrt(sum(((v - base_state[k]) ** 2).sum() for k, v in _state(models[f"expert_{s}"]).items()))
                    )
                    for s in skills
                },
            }
            (tmp / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        torch.set_num_threads(threads)
    return manifest


def default_zoo_dir(spec: ZooSpec | None = None) -> Path:
    """A per-spec cache directory under ``~/.cache/evomerge``. ``$EVOMERGE_ZOO``, if set, is where
    the default spec's zoo (the one ``zoo://`` names) lives instead; another spec (such as
    :data:`QWEN2_SPEC`) always gets its own directory, so the variable never hands it that zoo."""
    import os

    spec = spec or ZooSpec()
    env = os.environ.get("EVOMERGE_ZOO")
    if env and spec == ZooSpec():
        return Path(env)
    return cache.cache_root() / f"zoo-{spec.digest()}"


def ensure_zoo(path: str | Path | None = None, spec: ZooSpec | None = None, log=print) -> Path:
    """The zoo at ``path`` (default: the machine's cache, one directory per spec digest, shared by
    the demo, searches and the tests), built first if it is missing. Processes that ask at once
    build it once: the first holds an flock on ``<dir>.lock`` while it builds, the others wait
    for it and then find the zoo complete."""
    import fcntl

    p = Path(path) if path else default_zoo_dir(spec)
    if (p / "zoo.json").exists():
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.parent / f"{p.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            if not (p / "zoo.json").exists():
                build_zoo(p, spec, log=log, overwrite=p.exists())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return p


def load_zoo_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / "zoo.json").read_text())
