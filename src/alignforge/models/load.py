"""Models: tiny Llama presets built from scratch, and loading/saving any local HF causal LM.

Everything saved here is a standard Hugging Face directory (``config.json`` + safetensors +
tokenizer files) that plain ``transformers`` ``from_pretrained`` loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int = 1024
    tie_embeddings: bool = True


# Llama-architecture presets sized for the embedded world on a CPU. Parameter counts are the
# non-embedding (matmul) parameters, the ones that set FLOPs (design §8).
PRESETS: dict[str, Preset] = {
    "tiny-1m": Preset(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=344),
    "tiny-4m": Preset(hidden=256, layers=4, heads=4, kv_heads=4, intermediate=688),
    "small-30m": Preset(hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1376),
}


def preset_config(name: str, vocab_size: int, **overrides):
    """A ``transformers.LlamaConfig`` for a named preset."""
    from transformers import LlamaConfig

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        intermediate_size=p.intermediate,
        max_position_embeddings=p.max_positions,
        tie_word_embeddings=p.tie_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_bias=False,
        mlp_bias=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def build_model(name: str, vocab_size: int, seed: int = 0, **overrides):
    """A freshly initialised ``LlamaForCausalLM`` from a preset (deterministic for a seed)."""
    import torch
    from transformers import LlamaForCausalLM

    cfg = preset_config(name, vocab_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model


def matmul_params(model) -> int:
    """Non-embedding matmul parameters (design §8 FLOPs): linear weights, minus embeddings/lm_head."""
    import torch

    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            total += module.weight.numel()
    return total
