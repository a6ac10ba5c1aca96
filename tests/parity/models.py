"""The parity suite's source models: tiny checkpoints in the shapes mergekit's examples name.

Four families, each a base and three experts (``a``, ``b``, ``c``: the base plus seeded noise,
so task vectors have both signs and varied magnitudes, as fine-tunes do):

- ``llama40``: Llama-shaped, 40 layers (the Llama-2-13B depth of mergekit's examples), untied;
- ``llama40_tied``: the same with tied embeddings (no ``lm_head`` tensor);
- ``mistral32``: Mistral-shaped, 32 layers, grouped-query attention (4 heads, 2 KV heads);
- ``mistral32_tied``: the same, tied.

Hidden size 16 keeps every family under a megabyte per model, so both tools merge the whole
corpus in seconds. A config names models as ``FAMILY/MEMBER`` (``llama40/a``); the suite rewrites
those names to paths under the directory :func:`build_models` wrote.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES: dict[str, dict] = {
    "llama40": dict(arch="llama", num_hidden_layers=40, hidden_size=16, intermediate_size=32,
                    num_attention_heads=2, num_key_value_heads=2),
    "mistral32": dict(arch="mistral", num_hidden_layers=32, hidden_size=16, intermediate_size=48,
                      num_attention_heads=4, num_key_value_heads=2),
}
FAMILIES |= {f"{name}_tied": dict(shape, tie_word_embeddings=True) for name, shape in list(FAMILIES.items())}
MEMBERS = ("base", "a", "b", "c")


def build_models(root: Path) -> Path:
    """Write every family's base and experts under ``root`` (``root/FAMILY/MEMBER``)."""
    import torch
    from safetensors.torch import save_file

    from evomerge import zoo

    for f_index, (family, shape_kw) in enumerate(sorted(FAMILIES.items())):
        shape = zoo.ModelShape(**shape_kw)
        tok = zoo.build_tokenizer(shape.extra_chars)
        base = zoo.new_model(shape, seed=1000 + f_index)
        state = {k: v.detach().clone().contiguous() for k, v in base.state_dict().items()}
        for m_index, member in enumerate(MEMBERS):
            out = root / family / member
            base.save_pretrained(out)  # config and the base's weights; experts overwrite the weights
            tok.save_pretrained(out)
            if member == "base":
                continue
            gen = torch.Generator().manual_seed(100 * f_index + m_index)
            tensors = {}
            for name, t in state.items():
                if base.config.tie_word_embeddings and name == "lm_head.weight":
                    continue
                delta = torch.randn(t.shape, generator=gen) * 0.02
                keep = torch.rand(t.shape, generator=gen) < 0.7  # fine-tunes leave many entries near zero
                tensors[name] = t + delta * keep
            save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return root
