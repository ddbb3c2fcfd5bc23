"""Pretraining text as token blocks: what pretraining trains on, and what SFT-ptx / PPO-ptx mix back in.

One home for "text records → strings → ``[n, len]`` token blocks", so a stage that mixes pretraining
text into its loss (PPO-ptx, InstructGPT; SFT-ptx) sees exactly the documents, in exactly the
layout, that pretraining saw — including the corpus dialogues rendered in the chat template
(``chat_dialogues``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def chat_document(tokenizer, messages: list[dict[str, str]]) -> str:
    """A dialogue as SFT sees it: the chat-template prompt up to the last assistant header, then the
    answer; the eos that ends it is the one packing puts between documents (``pack_stream``).

    Pretraining on this layout is what lets the pretrained model answer a question put in the chat
    template — the format every later stage prompts with — from what it stored: trained only on
    ``User: …\\nAssistant: …`` text, the demo's SFT had to learn the format from scratch and
    overwrote the knowledge while doing so (issue 17: probe exact 96% → 9% on train-split facts).
    """
    from alignforge.data.batching import _ensure_template

    *context, last = messages
    if last.get("role") != "assistant":
        raise ValueError(f"chat_dialogues: a dialogue must end with an assistant message, got {last.get('role')!r}")
    _ensure_template(tokenizer)
    prompt = tokenizer.apply_chat_template(context, add_generation_prompt=True, tokenize=False)
    return prompt + last["content"]


def document_texts(records: Sequence[Any], chat_tokenizer=None) -> list[str]:
    """The records' text; with ``chat_tokenizer`` (``chat_dialogues``), records carrying
    ``meta.messages`` are rendered in its chat template instead (:func:`chat_document`)."""
    if chat_tokenizer is None:
        return [r.text for r in records]
    return [chat_document(chat_tokenizer, r.meta["messages"]) if (r.meta or {}).get("messages") else r.text
            for r in records]


def text_blocks(path: str, tok, block_len: int, *, chat_dialogues: bool = False, on_bad: str = "error",
                key: str = "ptx_data") -> torch.Tensor:
    """The text of ``path`` packed into ``[N, block_len + 1]`` blocks (inputs + next-token targets).

    ``key`` names the config key in the error when the text does not fill one block.
    """
    from alignforge.config import ConfigError
    from alignforge.data.formats import load_dataset_records
    from alignforge.train.loop import pack_blocks, pack_stream

    records = load_dataset_records(path, format="auto", on_bad=on_bad, kind="text")
    texts = document_texts(records, tok if chat_dialogues else None)
    stream = pack_stream(tok(texts, add_special_tokens=False, verbose=False)["input_ids"], tok.eos_token_id)
    blocks = pack_blocks(stream, block_len)
    if len(blocks) == 0:
        raise ConfigError(f"{key}={path}: not enough text for one block of {block_len} tokens")
    return blocks
