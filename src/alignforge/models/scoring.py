"""Scoring (prompt, response) texts with a reward model: the scalar-head classifier of
:mod:`alignforge.models.heads`, as ``alignforge reward`` saves it.

* :func:`score_texts` — ``(n, heads)`` scores of (prompt, response) pairs, encoded exactly as the
  reward stage trained on them, in length-sorted batches (input order kept), normalised as stored
  with the model by default;
* :func:`reward_from_scores` — the overall reward of those scores per the saved ``config.json``:
  the weighted combination of the heads (``reward_combine``), replaced by the safety head's score
  where it falls below ``reward_safety_threshold`` (``reward_safety_head``; Llama-2);
* :func:`head_index` / :func:`select_reward` — which score a consumer of the model uses: ``overall``
  (``reward_from_scores``; a one-head model's only head) or one named/indexed head;
* :func:`collate_rows` — right-padded ids and the attention mask (the classifier reads the last
  non-pad token).

The reward stage trains and evaluates with these; everything else that scores with a saved reward
model (PPO/REINFORCE rollouts, RSFT and eval through ``eval.scorers.RewardModelScorer``, tests,
benchmarks, the world's cycle checks) calls them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignforge.data.batching import encode_example, pad_id_of
from alignforge.data.records import Prompt
from alignforge.models.heads import _base, sequence_scores


def collate_rows(rows: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and 2D attention mask (the HF classifier reads the last non-pad token)."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = 1
    return ids.to(device), mask.to(device)


#: ``reward.head`` value meaning the combined reward (:func:`reward_from_scores`), not one head.
OVERALL = "overall"


def head_index(model, head: str | int, where: str = "reward.head") -> int | None:
    """The score column ``head`` names: ``None`` for ``overall`` (the combined reward), else the index
    of a head given by index or ``id2label`` name. ``ValueError`` names the heads there are."""
    cfg = _base(model).config
    names = [cfg.id2label[i] for i in range(cfg.num_labels)] if getattr(cfg, "id2label", None) else \
        [str(i) for i in range(cfg.num_labels)]
    head = str(head)
    if head == OVERALL:
        return None
    if head.isdigit() and int(head) < len(names):
        return int(head)
    if head in names:
        return names.index(head)
    raise ValueError(f"{where}: {head!r} is not a head of this reward model (heads: {', '.join(names)}; "
                     f"an index 0..{len(names) - 1}; or {OVERALL!r}, their combination)")


def select_reward(model, scores: torch.Tensor, head: int | None) -> torch.Tensor:
    """``(batch,)`` rewards from ``(batch, heads)`` normalised scores: one head, or (``head=None``)
    the overall reward of :func:`reward_from_scores`."""
    return reward_from_scores(model, scores) if head is None else scores[:, head]


def reward_from_scores(model, scores: torch.Tensor) -> torch.Tensor:
    """The overall reward of ``(batch, heads)`` *normalised* scores, per the saved config: the weighted
    combination, replaced by the safety head's score where it falls below the threshold (Llama-2)."""
    cfg = _base(model).config
    n = scores.shape[-1]
    weights = torch.tensor(getattr(cfg, "reward_combine", None) or [1.0 / n] * n, dtype=scores.dtype,
                           device=scores.device)
    reward = scores @ weights
    gate = getattr(cfg, "reward_safety_head", None)
    if gate is not None:
        safety = scores[:, gate]
        reward = torch.where(safety < float(cfg.reward_safety_threshold), safety, reward)
    return reward


@torch.no_grad()
def score_texts(model, tok, pairs: Sequence[tuple[Prompt, str]], max_len: int, batch_size: int,
                normalize: bool = True) -> torch.Tensor:
    """``(n, heads)`` scores of (prompt, response) pairs, length-sorted batches, input order kept."""
    device = next(model.parameters()).device
    rows = []
    for p, resp in pairs:
        ex = encode_example(tok, p, resp, max_len=max_len, min_prompt_tokens=1)
        # A response longer than max_len on its own: score its last max_len tokens (still ends in eos).
        rows.append(ex.input_ids if ex is not None else encode_example(tok, p, resp).input_ids[-max_len:])
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.zeros(len(rows), _base(model).config.num_labels)
    for j in range(0, len(order), batch_size):
        chunk = order[j:j + batch_size]
        ids, mask = collate_rows([rows[i] for i in chunk], pad_id_of(tok), device)
        out[chunk] = sequence_scores(model, ids, mask, normalize=normalize).float().cpu()
    return out
