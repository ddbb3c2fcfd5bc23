"""Tokenizers: train a byte-level BPE, give it our special tokens and chat template, save/load.

Everything here produces a standard Hugging Face tokenizer (``tokenizer.json`` +
``tokenizer_config.json`` + ``chat_template.jinja``), so plain
``transformers.AutoTokenizer.from_pretrained(dir)`` gives the same ids and the same template.

Special tokens (fixed names; other modules rely on them):

====================  ==========================================================================
``<|pad|>``           padding (never trained on; masked out of every loss)
``<|end|>``           eos: ends a pretraining document AND an assistant turn, so generation that
                      stops on eos stops at the end of the answer
``<|system|>``        opens a system turn
``<|user|>``          opens a user turn
``<|assistant|>``     opens an assistant turn
====================  ==========================================================================

Chat format (``CHAT_TEMPLATE``)::

    <|system|>\\n{content}<|end|>\\n<|user|>\\n{content}<|end|>\\n<|assistant|>\\n{content}<|end|>\\n

with generation prompt ``<|assistant|>\\n``. The assistant's content and its ``<|end|>`` are
wrapped in ``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True,
return_dict=True)`` marks exactly the tokens an SFT loss trains on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from alignforge.io import atomic_dir

PAD = "<|pad|>"
END = "<|end|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SPECIAL_TOKENS = [PAD, END, SYSTEM, USER, ASSISTANT]  # ids 0..4 in a tokenizer we train
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

# Jinja, rendered by transformers' sandboxed environment (``raise_exception`` is provided there).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('chat role must be system, user or assistant, got ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ message['content'] + '<|end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

# For HF tokenizers that ship without a template (GPT-2, many base models): the same layout in
# plain text, ended by the tokenizer's own eos, so no new embeddings are needed. Roles become
# "### User:" style headers — words every base model has seen, unlike our special tokens.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('chat role must be system, user or assistant, got ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Assistant:\\n' }}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
                    model_max_length: int | None = None):
    """Train a byte-level BPE on ``texts``; return a ``transformers`` fast tokenizer.

    Byte-level means every string is encodable (no unknown token), and decoding gives back the
    exact input. The five special tokens get ids 0-4 and are never split or merged into.
    ``model_max_length`` stays unset by default: pretraining tokenises whole documents and packs
    them, so a length warning from the tokenizer would only be noise.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256} "
                         f"(5 special tokens + 256 bytes), got {vocab_size}")
    core = Tokenizer(models.BPE())
    # GPT-2's regex split + byte mapping; no prefix space, so "a b" round-trips exactly.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator((t for t in texts), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=END,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT],
        **({"model_max_length": model_max_length} if model_max_length else {}),
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def ensure_chat_template(tok):
    """Make an HF tokenizer usable for chat: a template and a pad token. Returns ``tok``.

    A tokenizer that already has a chat template keeps it. Otherwise it gets
    ``FALLBACK_CHAT_TEMPLATE`` ("### User:\\n...<eos>\\n### Assistant:\\n...<eos>\\n", see there).
    With no pad token, pad = eos (GPT-2 style); this is safe because every loss and the scorer
    locate real tokens through the attention mask, never by comparing ids with pad.
    """
    if tok.eos_token is None:
        raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has no eos token; "
                         "set one (tok.eos_token = ...) before using it for chat")
    if not tok.chat_template:
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def save_tokenizer(tok, path: str | os.PathLike) -> Path:
    """Save as a standard HF tokenizer directory, atomically (the folder appears whole)."""
    with atomic_dir(path) as tmp:
        tok.save_pretrained(tmp)
    return Path(path)


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()


def find_tokenizer_dir(path: str | os.PathLike) -> Path:
    """The directory holding tokenizer files: ``path`` itself, or its ``model/`` or ``tokenizer/``.

    Accepts a tokenizer dir, an HF model dir, or a stage folder ``runs/<run>/<stage>``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {p}")
    for d in (p, p / "model", p / "tokenizer"):
        if d.is_dir() and _has_tokenizer(d):
            return d
    raise FileNotFoundError(
        f"no tokenizer found in {p}: expected tokenizer.json or tokenizer_config.json there, "
        f"or in {p / 'model'} (a stage folder) or {p / 'tokenizer'}")


# transformers v5 rebuilds the tokenizer of some model types (qwen2, phi3, …: its
# MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS) from vocab + merges with that family's own
# pre-tokenizer, ignoring the saved class. For a tokenizer saved as the generic class that
# silently changes the ids, so we load the generic class directly.
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def saved_tokenizer_class(d: str | os.PathLike) -> str | None:
    cfg = Path(d) / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text()).get("tokenizer_class")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg}: not valid JSON ({e})") from None


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer from a tokenizer dir, model dir or stage folder (local only, no hub).

    Exactly what was saved: a generic (``tokenizer.json``-defined) tokenizer is loaded as such,
    never reinterpreted by the model type next to it (see ``GENERIC_TOKENIZER_CLASSES``).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    d = find_tokenizer_dir(path)
    if saved_tokenizer_class(d) in GENERIC_TOKENIZER_CLASSES and (d / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(d), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
