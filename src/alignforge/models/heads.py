"""Scalar-head models for reward and value functions, stored as plain HF sequence classifiers.

A reward/value model is ``AutoModelForSequenceClassification`` with ``num_labels = n_heads``:
the causal-LM backbone plus ``score = nn.Linear(hidden, n_heads, bias=False)``. We use the
architecture's own class (``LlamaForSequenceClassification``, ``Qwen2…``, ``GPT2…``,
``GPTNeoX…``) instead of a custom module, so a saved reward model is loaded — and scores
identically — with nothing but ``transformers``::

    rm = AutoModelForSequenceClassification.from_pretrained(dir)
    raw = rm(input_ids, attention_mask=mask).logits          # (batch, n_heads)

Pooling (transformers' rule, which we keep so both agree): the score is read at the rightmost
token whose id is not ``config.pad_token_id``. With our tokenizer that is the ``<|end|>`` closing
the answer. With a pad = eos tokenizer (GPT-2 fallback) the trailing eos counts as padding, so
the score sits on the last content token — still after the whole response, only without eos.
Either padding side works with ``sequence_scores`` / ``token_scores``: they pass position ids
counted over real tokens only (``positions_from_mask``), so a left-padded rollout scores like
the unpadded sequence. A bare ``rm(ids, attention_mask=mask)`` counts positions from the left
edge, which agrees only for right padding — pad on the right when calling transformers directly.

Reward normalisation (``set_reward_normalization``) is stored in ``config.json`` as
``reward_mean`` / ``reward_std`` (one per head). Plain transformers returns *raw* scores;
``sequence_scores(..., normalize=True)`` (the default) returns ``(raw - mean) / std``.

Several heads (e.g. ``head_names=["helpful", "honest", "harmless"]``) are named in the config's
``id2label``.

A value model for PPO is the same class; ``token_scores`` gives the per-token values
(``batch × time × heads``) from one backbone pass.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from alignforge.models.load import (_default_dtype, quiet_transformers, resolve_device,
                                    resolve_model_dir, save_model)


def init_from_causal_lm(path: str | os.PathLike, n_heads: int = 1, head_names: Sequence[str] | None = None,
                        seed: int = 0, head_init_std: float | None = None, device: str = "cpu",
                        dtype=None, tokenizer: str | os.PathLike | None = None):
    """``(scorer, tokenizer)``: a causal LM's backbone with a fresh ``n_heads`` scalar head.

    The head is drawn from N(0, std²) with ``std = 1/sqrt(hidden + 1)`` by default (the
    reward-model init of Stiennon et al. 2020 / TRL), deterministically for ``seed``;
    ``head_init_std=0`` gives a zero head (a value model whose first estimates are 0).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from alignforge.models.tokenizer import ensure_chat_template, load_tokenizer

    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    if head_names is not None and len(head_names) != n_heads:
        raise ValueError(f"head_names {list(head_names)} has {len(head_names)} names for n_heads={n_heads}")
    model_dir = resolve_model_dir(path)
    tok = ensure_chat_template(load_tokenizer(tokenizer if tokenizer is not None else model_dir))
    names = list(head_names) if head_names else [f"score_{i}" for i in range(n_heads)]
    with quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=n_heads, pad_token_id=tok.pad_token_id,
            problem_type="regression", id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            dtype=_default_dtype(dtype), local_files_only=True, output_loading_info=True)
    # Only the head may be new: anything else missing means the backbone did not load.
    missing = [k for k in info["missing_keys"] if not k.startswith("score.")]
    if missing:
        raise ValueError(f"{model_dir}: backbone weights missing when building a scalar head "
                         f"({', '.join(sorted(missing)[:5])}…); is this a causal LM checkpoint?")
    hidden = model.score.in_features
    std = 1.0 / math.sqrt(hidden + 1) if head_init_std is None else head_init_std
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=gen) * std)
    set_reward_normalization(model, [0.0] * n_heads, [1.0] * n_heads)
    return model.to(resolve_device(device)).train(), tok


def load_scorer(path: str | os.PathLike, device: str = "cpu", dtype=None):
    """``(scorer, tokenizer)`` from a stage folder or HF dir saved by ``save_scorer``."""
    from transformers import AutoModelForSequenceClassification

    from alignforge.models.tokenizer import ensure_chat_template, load_tokenizer

    model_dir = resolve_model_dir(path)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), dtype=_default_dtype(dtype), local_files_only=True)
    if model.config.pad_token_id is None:
        raise ValueError(f"{model_dir}/config.json has no pad_token_id; a scalar-head model needs one "
                         "to find the last real token (build it with init_from_causal_lm)")
    return model.to(resolve_device(device)), ensure_chat_template(load_tokenizer(model_dir))


def save_scorer(model, tokenizer, path: str | os.PathLike) -> Path:
    """Save a scalar-head model (+ tokenizer), atomically, loadable by plain transformers."""
    return save_model(model, tokenizer, path)


def set_reward_normalization(model, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
    """Store a per-head shift/scale in the config: normalised = (raw - mean) / std."""
    n = model.config.num_labels
    mean = [float(mean)] * n if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std = [float(std)] * n if isinstance(std, (int, float)) else [float(s) for s in std]
    if len(mean) != n or len(std) != n:
        raise ValueError(f"reward normalisation needs {n} means and stds (one per head), "
                         f"got {len(mean)} and {len(std)}")
    if any(not s > 0 or not math.isfinite(s) for s in std) or not all(math.isfinite(m) for m in mean):
        raise ValueError(f"reward normalisation must be finite with std > 0, got mean={mean} std={std}")
    model.config.reward_mean = mean
    model.config.reward_std = std


def _norm(model, scores):
    import torch

    cfg = model.config
    mean = getattr(cfg, "reward_mean", None)
    std = getattr(cfg, "reward_std", None)
    if mean is None or std is None:
        return scores
    mean = torch.tensor(mean, dtype=scores.dtype, device=scores.device)
    std = torch.tensor(std, dtype=scores.dtype, device=scores.device)
    return (scores - mean) / std


def last_token_index(model, input_ids):
    """Per row, the index the HF classifier reads: the rightmost id that is not the pad id."""
    import torch

    pad = model.config.pad_token_id
    if pad is None:
        raise ValueError("model.config.pad_token_id is None; set it to the tokenizer's pad id")
    not_pad = (input_ids != pad).to(torch.int64)
    idx = torch.arange(input_ids.shape[-1], device=input_ids.device) * not_pad
    return idx.argmax(-1)


def positions_from_mask(attention_mask):
    """Position ids counting real tokens only: 0,1,2,… from the first attended token.

    For right padding this equals the default ``arange``; for left padding it keeps the real
    tokens at the positions they would have unpadded. Pads get position 0 (they are masked)."""
    if attention_mask is None:
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_scores(model, input_ids, attention_mask=None, normalize: bool = True):
    """``(batch, n_heads)`` scores of whole sequences (one forward, the HF classifier's own)."""
    raw = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask)).logits
    return _norm(_base(model), raw) if normalize else raw


def token_scores(model, input_ids, attention_mask=None, normalize: bool = False):
    """``(batch, time, n_heads)``: the head applied at every position (PPO values).

    ``token_scores(...)[b, last_token_index(...)[b]]`` equals ``sequence_scores(...)[b]``.
    Not normalised by default: a value model's targets are returns, not rewards.
    """
    base = _base(model)
    hidden = base.base_model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=positions_from_mask(attention_mask)).last_hidden_state
    out = base.score(hidden)
    return _norm(base, out) if normalize else out


def _base(model):
    """The HF classifier under a peft wrapper (for its config and backbone)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model
