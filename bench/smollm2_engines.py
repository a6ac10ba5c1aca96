"""Engine start against in-place swap on a real model: SmolLM2-135M-Instruct (issue 20).

    python -m bench.smollm2_engines [--candidates 3]

Base SmolLM2-135M-Instruct (bench/smollm2.py, float32, tied embeddings) and its three ``dense``
experts (bench/merge_smollm2.py). For each engine: the first candidate (sources mapped, engine or
model built), then ``--candidates`` TIES candidates written in place (transformers: into the live
model; vLLM: swapped into the running engine), with the materialize and swap seconds of each,
and the generation of 4 chat prompts (32 new tokens, greedy). Then a fresh vLLM engine started
from the last candidate's export must generate the same text as the swapped engine did (tied
embeddings: the LM head is repacked after a swap).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Name three primary colors.", "What is 12 + 7?",
           "Write one sentence about the sea."]


def recipe(base: Path, experts: list[Path], i: int):  # type: ignore[no-untyped-def]
    from evomerge.recipe import recipe_from_dict

    w = [0.2 + 0.1 * ((i + k) % 5) for k in range(len(experts))]
    return recipe_from_dict({"merge_method": "ties", "base_model": str(base), "models": [
        {"model": str(e), "parameters": {"weight": wk, "density": 0.5}} for e, wk in zip(experts, w, strict=True)]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.merge_smollm2 import expert_dirs
    from bench.smollm2 import ensure_smollm2
    from evomerge.evaluate.hf import HFEvaluator
    from evomerge.evaluate.vllm import VLLMEngine, VLLMEvaluator, shutdown_llm
    from evomerge.merge.materialize import merge_to_dir

    base = ensure_smollm2()
    experts = expert_dirs(base, "dense")
    recipes = [recipe(base, experts, i) for i in range(args.candidates + 1)]
    rows = []

    hf = HFEvaluator()
    t0 = time.perf_counter()
    hf.write_weights(recipes[0])
    hf_first = time.perf_counter() - t0
    hf_times = []
    for r in recipes[1:]:
        t0 = time.perf_counter()
        hf.build_seconds = 0.0
        hf.write_weights(r)
        hf_times.append(time.perf_counter() - t0)
    rows.append(("transformers, in place", hf_first, statistics.median(hf_times), None))
    del hf

    v = VLLMEvaluator()
    t0 = time.perf_counter()
    v.swap(recipes[0])
    v_first = time.perf_counter() - t0
    swaps, mats = [], []
    for r in recipes[1:]:
        engine, phases = v.swap(r)
        swaps.append(phases.get("swap", 0.0))
        mats.append(phases.get("materialize", 0.0))
    chat = [engine.llm.get_tokenizer().apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                            add_generation_prompt=True) for p in PROMPTS]
    swapped = engine.generate(chat, max_new_tokens=32, stop=[])
    start = v.start_seconds
    v.close()
    rows.append(("vLLM, swap in place", v_first, statistics.median(m + s for m, s in zip(mats, swaps, strict=True)),
                 start))

    from vllm import LLM

    with tempfile.TemporaryDirectory(prefix="evomerge-smollm2-") as tmp:
        merge_to_dir(recipes[-1], Path(tmp) / "c")
        t0 = time.perf_counter()
        llm = LLM(model=str(Path(tmp) / "c"), dtype="float32", enforce_eager=True, seed=0)
        fresh_start = time.perf_counter() - t0
        try:
            fresh = VLLMEngine(llm, llm.get_tokenizer()).generate(chat, max_new_tokens=32, stop=[])
        finally:
            shutdown_llm(llm)
    print(f"\nSmolLM2-135M-Instruct fp32, base + 3 dense experts, TIES candidates ({args.candidates} after the first).\n")
    print("| engine | first candidate (s) | each later candidate: merge + swap (s, median) | engine start (s) |")
    print("|---|---|---|---|")
    for name, first, later, eng in rows:
        print(f"| {name} | {first:.2f} | {later:.3f} | {'-' if eng is None else f'{eng:.1f}'} |")
    print(f"| vLLM, a fresh engine from the export | - | - | {fresh_start:.1f} |")
    same = swapped == fresh
    print(f"\nswapped engine == fresh engine of the export (greedy, 4 prompts x 32 tokens): {same}")
    print(f"e.g. {PROMPTS[0]!r} -> {swapped[0]!r}")
    if not same:
        raise SystemExit("swap and fresh engine disagree")


if __name__ == "__main__":
    main()
