"""Tiny random models and a template-less tokenizer, built locally, for tests (design §8).

They stand in for the real architectures we claim to support — Llama, GPT-2 (no pad token),
Qwen2, GPT-NeoX — at a few thousand parameters, so a test can save, reload and compare them in
milliseconds. Nothing here downloads anything.
"""

from __future__ import annotations

ARCHS = ("llama", "gpt2", "qwen2", "gpt_neox")

# Shared tiny shape: 2 layers, hidden 32, 4 heads (head dim 8, even, as rotary needs).
_HIDDEN, _LAYERS, _HEADS, _FFN, _POSITIONS = 32, 2, 4, 64, 128


def tiny_config(arch: str, vocab_size: int, pad_token_id: int | None = None, eos_token_id: int | None = None,
                max_positions: int = _POSITIONS, tie_embeddings: bool | None = None):
    """A tiny ``transformers`` config for ``arch``. GPT-2 gets no pad id, like the real one.
    ``tie_embeddings`` defaults to tied for Llama, untied for Qwen2 and GPT-NeoX (GPT-2 always ties)."""
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(vocab_size=vocab_size, hidden_size=_HIDDEN, num_hidden_layers=_LAYERS,
                              num_attention_heads=_HEADS, num_key_value_heads=2,
                              intermediate_size=_FFN, max_position_embeddings=max_positions,
                              pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None,
                              tie_word_embeddings=True if tie_embeddings is None else tie_embeddings)
    if arch == "qwen2":
        # Qwen2 has q/k/v biases and untied embeddings by default: both paths get exercised.
        return tf.Qwen2Config(vocab_size=vocab_size, hidden_size=_HIDDEN, num_hidden_layers=_LAYERS,
                              num_attention_heads=_HEADS, num_key_value_heads=2,
                              intermediate_size=_FFN, max_position_embeddings=max_positions,
                              pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None,
                              tie_word_embeddings=bool(tie_embeddings))
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=_HIDDEN, n_layer=_LAYERS, n_head=_HEADS,
                             n_inner=_FFN, n_positions=max_positions, pad_token_id=None,
                             eos_token_id=eos_token_id, bos_token_id=eos_token_id)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=_HIDDEN, num_hidden_layers=_LAYERS,
                                num_attention_heads=_HEADS, intermediate_size=_FFN,
                                max_position_embeddings=max_positions, rotary_pct=0.5,
                                pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                                bos_token_id=None, tie_word_embeddings=bool(tie_embeddings))
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {', '.join(ARCHS)}")


def tiny_random_model(arch: str, vocab_size: int, seed: int = 0, pad_token_id: int | None = None,
                      eos_token_id: int | None = None, max_positions: int = _POSITIONS,
                      tie_embeddings: bool | None = None):
    """A randomly initialised tiny ``*ForCausalLM`` of ``arch``, deterministic for ``seed``, fp32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                      max_positions=max_positions, tie_embeddings=tie_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


_TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Where does the heron live? In Marrowfen, by the silver river.",
    "User: what is two plus two? Assistant: four.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000.",
] * 8


def tiny_tokenizer_without_template(vocab_size: int = 320):
    """A GPT-2-like byte-level BPE: eos ``<|endoftext|>``, no pad token, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    tok.chat_template = None
    return tok


def tiny_qwen2_tokenizer(vocab_size: int = 320):
    """A ``Qwen2Tokenizer`` (Qwen's pre-tokenizer, NFC, ``<|endoftext|>`` = eos = pad, no chat
    template) over a tiny BPE: what a Qwen2 checkpoint ships, so plain ``AutoTokenizer`` — which
    always rebuilds Qwen2 tokenizers as this class — loads it unchanged."""
    import json

    from transformers import Qwen2Tokenizer

    bpe = json.loads(tiny_tokenizer_without_template(vocab_size).backend_tokenizer.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=bpe["vocab"], merges=[tuple(m) for m in bpe["merges"]])
    tok.chat_template = None
    return tok


def tiny_tokenizer(arch: str):
    """The kind of tokenizer each architecture comes with, tiny: GPT-2 without pad or template,
    Qwen2 with pad = eos and no template, Llama / GPT-NeoX with alignforge's own (template, pad)."""
    if arch == "gpt2":
        return tiny_tokenizer_without_template()
    if arch == "qwen2":
        return tiny_qwen2_tokenizer()
    if arch in ("llama", "gpt_neox"):
        from alignforge.models.tokenizer import train_tokenizer

        return train_tokenizer(_TINY_CORPUS, vocab_size=320)
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {', '.join(ARCHS)}")
