"""A tiny, deterministic pretraining setup for tests (this repo's and other stages').

``tiny_corpus(dir)`` writes a small text corpus and a held-out file, plus a 300-token BPE
tokenizer trained on it, once; ``tiny_pretrain_args(dir, out)`` are the ``key=value``
overrides for a pretrain run that takes a second or two on one CPU thread (hidden 32,
2 layers, seq 32). Nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_NAMES = ["heron", "fox", "owl", "badger", "Marrowfen", "the silver river", "Glimmerwood", "Tova",
          "Bram", "the salt hills"]
_VERBS = ["lives near", "sings to", "counts", "guards", "visits"]

TINY_MODEL = "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4, " \
             "intermediate_size: 64, max_position_embeddings: 64}"


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(_NAMES, 2)
        out.append(f"{a.capitalize()} {rng.choice(_VERBS)} {b}. It has {rng.randint(1, 99)} friends "
                   f"and {rng.randint(2, 9)} plus {rng.randint(2, 9)} stones.")
    return out


def tiny_corpus(root: str | Path, n_train: int = 300, n_eval: int = 30) -> dict[str, Path]:
    """Write ``train.jsonl``, ``eval.jsonl`` and ``tokenizer/`` under ``root`` (idempotent)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"train": root / "train.jsonl", "eval": root / "eval.jsonl", "tokenizer": root / "tokenizer"}
    if not paths["train"].exists():
        for key, n, seed in (("train", n_train, 0), ("eval", n_eval, 1)):
            paths[key].write_text("".join(json.dumps({"text": t}) + "\n" for t in _sentences(n, seed)))
    if not (paths["tokenizer"] / "tokenizer.json").exists():
        from alignforge.models.tokenizer import save_tokenizer, train_tokenizer

        save_tokenizer(train_tokenizer(_sentences(n_train, 0), vocab_size=300), paths["tokenizer"])
    return paths


def tiny_pretrain_args(root: str | Path, out: str | Path, **train: object) -> list[str]:
    """``key=value`` overrides for a tiny pretrain on :func:`tiny_corpus` (train.* from kwargs)."""
    paths = tiny_corpus(root)
    t = {"seq_len": 32, "batch_size": 8, "max_steps": 12, "warmup_steps": 3, "log_every": 1,
         "eval_every": 4, "save_every": 4, "lr": 3e-3}
    t.update(train)
    return [f"data.train={paths['train']}", f"data.eval={paths['eval']}",
            f"model.tokenizer={paths['tokenizer']}", f"model.overrides={TINY_MODEL}",
            "runtime.threads=1", "runtime.progress=false", "runtime.device=cpu", f"out={out}",
            *[f"train.{k}={v}" for k, v in t.items()]]
