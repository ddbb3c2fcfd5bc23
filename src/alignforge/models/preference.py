"""A pairwise preference model P(A ≻ B | x) for Nash-MD, antisymmetric by averaging both orders.

A scalar reward model scores one response; a *preference model* reads the prompt and **both**
responses and says how likely the first is preferred. It can represent preferences no scalar
reward can — e.g. a cycle A ≻ B ≻ C ≻ A — which is why Nash learning from human feedback
(Munos et al. 2023) uses one instead of a reward.

The model is an ordinary scalar-head classifier (``AutoModelForSequenceClassification`` with one
head, built by :func:`alignforge.models.heads.init_from_causal_lm`, saved/loaded by
``save_scorer`` / ``load_scorer``). It reads one sequence, built on token ids (design §8)::

    prompt_ids(x) + tok(A) + [eos] + tok(SEPARATOR) + tok(B) + [eos]

and its head, pooled at the last real token, gives ``f(x, A, B)``. A single pass is not
antisymmetric (the network knows which response came first), so we define

    logit(A ≻ B) = ½ (f(x, A, B) − f(x, B, A))          P(A ≻ B) = sigmoid(logit)

which makes ``logit(B ≻ A) = −logit(A ≻ B)`` exactly, hence ``P(A≻B) + P(B≻A) = 1`` and
``P(A ≻ A) = ½`` for any weights — position bias cancels by construction, not by training.

Training (:func:`preference_loss`): binary cross-entropy of that logit against the target 1 for
a preferred pair and ½ for a tie (a tie says "equally good", which this model can express, unlike
a Bradley–Terry reward model that must drop ties). Optionally a Llama-2 margin per strength level,
``−log σ(logit − m(strength))``, as the reward stage's ``reward.margins`` (ties get none), and a
linear warmup of the learning rate. :func:`preference_accuracy` is the held-out check: the share of
non-tie pairs where P(chosen ≻ rejected) > ½ — the same number the reward stage reports as
``eval_accuracy`` for a scalar reward model on the same file, so the two compare directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignforge.data.batching import pad_id_of, prompt_ids, response_ids
from alignforge.data.preferences import PairStats, expand_preferences, margins_for
from alignforge.data.records import Comparison, Prompt, Record

# Marks where response B starts. The eos closing A already ends it; the marker makes the boundary
# visible to tokenizers whose eos doubles as padding (GPT-2), where eos alone looks like a pad.
SEPARATOR = "\n\n### Response B\n"


@dataclass
class PreferenceExample:
    """One training item: ``target`` = P(a ≻ b) to fit (1 preferred, ½ tie); ``weight`` per pair."""

    prompt: Prompt
    a: str
    b: str
    target: float = 1.0
    weight: float = 1.0
    strength: int | None = None  # 0..3 (negligibly .. significantly better), for margins


def preference_examples(records: Iterable[Record], stats: PairStats | None = None) -> list[PreferenceExample]:
    """Comparison / ranking / rating records → examples (chosen as ``a``, target 1; ties → ½).

    Non-tie records go through :func:`alignforge.data.preferences.expand_preferences` (rankings'
    1/C(K,2) weights, Likert pairs); comparison ties, which that function drops for reward models,
    are kept here with target ½ and counted in ``stats.by_source['tie']``.
    """
    stats = stats if stats is not None else PairStats()
    records = list(records)
    ties = [r for r in records if isinstance(r, Comparison) and r.tie]
    rest = [r for r in records if not (isinstance(r, Comparison) and r.tie)]
    out = [PreferenceExample(p.prompt, p.chosen, p.rejected, 1.0, p.weight, p.strength)
           for p in expand_preferences(rest, stats)]
    for r in ties:
        stats.comparisons += 1
        stats.by_source["tie"] += 1
        out.append(PreferenceExample(r.prompt, r.chosen, r.rejected, 0.5, 1.0))
    return out


def encode_both_orders(tokenizer, prompt: Prompt, a: str, b: str, *, max_len: int | None = None,
                       min_prompt_tokens: int = 8) -> tuple[list[int], list[int]] | None:
    """``(ids(x, a, b), ids(x, b, a))`` — equal lengths; the prompt is cut from the left to fit
    ``max_len``; ``None`` when the two responses leave fewer than ``min_prompt_tokens`` for it."""
    p = prompt_ids(tokenizer, prompt)
    ra, rb = response_ids(tokenizer, a), response_ids(tokenizer, b)
    sep = [int(i) for i in tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]]
    body = len(ra) + len(sep) + len(rb)
    if max_len is not None and len(p) + body > max_len:
        room = max_len - body
        if room < min(min_prompt_tokens, len(p)):
            return None
        p = p[-room:]
    return p + ra + sep + rb, p + rb + sep + ra


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(-1) - 1


def one_order_scores(model, rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """``f`` for each row of ids: the head at the row's last real token (right padding, so the
    default positions are right). Pooling is done here from the mask rather than by transformers'
    "rightmost non-pad id" rule, because with an eos-as-pad tokenizer the closing eos would be
    mistaken for padding."""
    device = next(model.parameters()).device
    ids, mask = _right_pad(rows, pad_id, device)
    get = getattr(model, "get_base_model", None)
    base = get() if callable(get) else model
    hidden = base.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    last = _last_real(mask)
    pooled = hidden[torch.arange(len(rows), device=device), last]
    return base.score(pooled)[:, 0].float()


def pair_logits(model, ab_rows: Sequence[Sequence[int]], ba_rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Antisymmetric ``logit(A ≻ B) = ½ (f(x,A,B) − f(x,B,A))`` for each pair (one forward of 2N rows)."""
    if len(ab_rows) != len(ba_rows):
        raise ValueError(f"pair_logits: {len(ab_rows)} (x,A,B) rows but {len(ba_rows)} (x,B,A) rows")
    f = one_order_scores(model, list(ab_rows) + list(ba_rows), pad_id)
    n = len(ab_rows)
    return 0.5 * (f[:n] - f[n:])


def preference_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                    margins: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean binary cross-entropy ``−[t log σ(z − m) + (1−t) log σ(−(z − m))]`` (Σ w·ℓ / Σ w);
    ``m`` = 0 unless ``margins`` (Llama-2: a clearer preference must be won by a larger logit)."""
    if margins is not None:
        logits = logits - margins.to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if weights is None:
        return per.mean()
    weights = weights.to(per.dtype)
    return (per * weights).sum() / weights.sum()


def encode_examples(tokenizer, examples: Sequence[PreferenceExample], max_len: int | None = None
                    ) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Encode examples in both orders; returns ``(ab_rows, ba_rows, kept_indices)`` (too long → dropped)."""
    ab, ba, kept = [], [], []
    for i, ex in enumerate(examples):
        enc = encode_both_orders(tokenizer, ex.prompt, ex.a, ex.b, max_len=max_len)
        if enc is not None:
            ab.append(enc[0])
            ba.append(enc[1])
            kept.append(i)
    return ab, ba, kept


@torch.no_grad()
def preference_probs(model, tokenizer, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str],
                     *, max_len: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """``P(a_i ≻ b_i | prompt_i)`` for text triples. A pair too long for ``max_len`` is an error
    here (a score for it would be silently wrong), not a skip."""
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(f"preference_probs: {len(prompts)} prompts, {len(a)} A and {len(b)} B responses")
    was_training = model.training
    model.eval()
    pad = pad_id_of(tokenizer)
    out = []
    try:
        for s in range(0, len(prompts), batch_size):
            ab, ba = [], []
            for i in range(s, min(s + batch_size, len(prompts))):
                enc = encode_both_orders(tokenizer, prompts[i], a[i], b[i], max_len=max_len)
                if enc is None:
                    raise ValueError(f"preference_probs: pair {i} does not fit max_len={max_len}")
                ab.append(enc[0])
                ba.append(enc[1])
            out.append(torch.sigmoid(pair_logits(model, ab, ba, pad)))
    finally:
        model.train(was_training)
    return torch.cat(out).cpu()


def fit_preference_model(model, tokenizer, examples: Sequence[PreferenceExample], *, steps: int, lr: float = 1e-3,
                         batch_size: int = 8, max_len: int | None = None, seed: int = 0,
                         weight_decay: float = 0.0, warmup_steps: int = 0,
                         margins: Sequence[float] | None = None) -> list[float]:
    """A plain AdamW loop on :func:`preference_loss` (shuffled minibatches, seeded; the learning
    rate rises linearly over ``warmup_steps``, then stays); returns the per-step losses.
    ``margins``: one margin per strength level 0..3 for preferred pairs (ties and pairs without a
    strength get 0). For a full run with checkpoints/metrics use a stage; this is what the Nash
    stage and tests use to fit a preference model on a few thousand pairs."""
    ab, ba, kept = encode_examples(tokenizer, examples, max_len)
    if not kept:
        raise ValueError("fit_preference_model: no example fits max_len")
    targets = torch.tensor([examples[i].target for i in kept])
    weights = torch.tensor([examples[i].weight for i in kept])
    margin = torch.tensor(margins_for([examples[i] for i in kept], margins)) * (targets == 1.0)
    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(kept), generator=gen).tolist()
    pos, losses = 0, []
    model.train()
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(kept), generator=gen).tolist(), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        logits = pair_logits(model, [ab[i] for i in idx], [ba[i] for i in idx], pad)
        loss = preference_loss(logits, targets[idx].to(device), weights[idx].to(device), margin[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def preference_accuracy(model, tokenizer, examples: Sequence[PreferenceExample], *, max_len: int | None = None,
                        batch_size: int = 32) -> dict[str, float]:
    """Held-out accuracy: share of preferred (non-tie) pairs with P(a ≻ b) > ½, overall and per
    strength level, plus the mean BCE (ties included) — pairs too long for ``max_len`` are counted
    in ``dropped``, not scored."""
    _, _, kept = encode_examples(tokenizer, examples, max_len)
    ex = [examples[i] for i in kept]
    if not ex:
        raise ValueError("preference_accuracy: no example fits max_len")
    p = preference_probs(model, tokenizer, [e.prompt for e in ex], [e.a for e in ex], [e.b for e in ex],
                         max_len=max_len, batch_size=batch_size)
    t = torch.tensor([e.target for e in ex])
    z = torch.logit(p.clamp(1e-6, 1 - 1e-6))
    out = {"pairs": float((t == 1.0).sum()), "ties": float((t == 0.5).sum()), "dropped": float(len(examples) - len(ex)),
           "loss": float(preference_loss(z, t))}
    win = t == 1.0
    if win.any():
        out["accuracy"] = float((p[win] > 0.5).float().mean())
    for s in range(4):
        sel = win & torch.tensor([e.strength == s for e in ex])
        if sel.any():
            out[f"accuracy_strength{s}"] = float((p[sel] > 0.5).float().mean())
    return out
