"""A deliberately plain PyTorch PPO loop: the baseline of ``bench/vs_trl.py``'s PPO row.

TRL 1.16 has no PPO trainer (it was removed in 1.0), so the PPO row compares ``alignforge ppo``
with this: the InstructGPT recipe written the obvious way, with nothing from alignforge, short
enough to review in one sitting. Same models and hyper-parameters as the alignforge side:

* policy = the fixture's causal LM; reference = a frozen second copy; reward model = the fixture's
  scalar-head model (frozen); value model = a second copy of the reward model (trained), as
  ``alignforge ppo`` initialises it (``value.init`` → ``reward.init``).

One step on ``batch`` prompts:

1. sample one response each with ``model.generate`` (T = 1, no top-k/top-p, stop at eos) from
   left-padded prompts;
2. no-grad forwards of the whole sequences: old log-probs (policy), reference log-probs, values
   V(s_t) and the reward-model score (read at the last real token);
3. per-token rewards r_t = −β·(log π − log π_ref), plus the score on the last response token;
4. GAE(γ, λ) by a backward loop over time, returns = A + V, advantages whitened over the batch;
5. ``epochs`` passes over shuffled minibatches: clipped policy loss + ``vf_coef`` × clipped value
   loss, each network's gradient clipped to 1, one AdamW step.

Layout: prompt columns ``0 … P-1`` (left-padded), response columns ``P … P+L-1``; the logits at
column ``P-1+t`` predict response token ``t``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch


def response_logprobs(model, ids, mask, pos, L: int) -> torch.Tensor:
    """[B, L] log π(response token t) from one forward of the whole sequence."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -L - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -L:, None]).squeeze(-1)


def response_values(value_model, ids, mask, pos, L: int) -> torch.Tensor:
    """[B, L] V(s_t): the value head on the hidden state that predicts response token t."""
    hidden = value_model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    return value_model.score(hidden[:, -L - 1:-1]).squeeze(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Advantages A_t = Σ_k (γλ)^k δ_{t+k}, δ_t = r_t + γ V_{t+1} − V_t, with rewards and values
    already zero after each response's end (so nothing flows back from padding)."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0])
    L = rewards.shape[1]
    for t in reversed(range(L)):
        next_v = values[:, t + 1] if t + 1 < L else torch.zeros_like(last)
        last = rewards[:, t] + gamma * next_v - values[:, t] + gamma * lam * last
        adv[:, t] = last
    return adv


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp(min=1)


def ppo_losses(new_lp, old_lp, adv, v, old_v, returns, m, clip: float, vclip: float):
    """(clipped policy loss, clipped value loss), means over response tokens (cleanrl's form)."""
    ratio = torch.exp(new_lp - old_lp)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    v_clipped = old_v + (v - old_v).clamp(-vclip, vclip)
    vf = 0.5 * torch.max((v - returns) ** 2, (v_clipped - returns) ** 2)
    return masked_mean(pg, m), masked_mean(vf, m)


def run(fixture: Path, *, steps: int, batch: int, seed: int, lr: float, beta: float, epochs: int, minibatch: int,
        new_tokens: int, clip: float = 0.2, vclip: float = 0.2, vf_coef: float = 0.1, gamma: float = 1.0,
        lam: float = 0.95, on_step: Callable[[float], None] = lambda n: None) -> list[float]:
    """``steps`` PPO steps; returns each step's real prompt + response tokens (``on_step`` gets it too)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(fixture / "model")
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(fixture / "model").eval()  # eval: dropout off
    ref = AutoModelForCausalLM.from_pretrained(fixture / "model").eval().requires_grad_(False)
    rm = AutoModelForSequenceClassification.from_pretrained(fixture / "reward").eval().requires_grad_(False)
    value = AutoModelForSequenceClassification.from_pretrained(fixture / "reward").eval()
    opt = torch.optim.AdamW(list(policy.parameters()) + list(value.parameters()), lr=lr)
    prompts = [json.loads(line)["prompt"] for line in (fixture / "prompts.jsonl").read_text().splitlines()]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    order = torch.randperm(len(texts))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    counts = []
    for step in range(steps):
        idx = order[(torch.arange(batch) + step * batch) % len(texts)]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        P = enc["input_ids"].shape[1]
        # --- 1. sample ---
        with torch.no_grad():
            seq = policy.generate(**enc, do_sample=True, max_new_tokens=new_tokens, temperature=1.0, top_k=0,
                                  top_p=1.0, eos_token_id=eos, pad_token_id=pad)
        resp = seq[:, P:]
        L = resp.shape[1]
        is_eos = (resp == eos).long()
        m = ((is_eos.cumsum(1) - is_eos) == 0).float()  # response tokens up to and including the first eos
        mask = torch.cat([enc["attention_mask"], m.long()], 1)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        # --- 2. old log-probs, reference log-probs, values, score ---
        with torch.no_grad():
            old_lp = response_logprobs(policy, seq, mask, pos, L) * m
            ref_lp = response_logprobs(ref, seq, mask, pos, L) * m
            old_v = response_values(value, seq, mask, pos, L) * m
            last = (m.sum(1) - 1).long()  # index of each response's last real token
            score = rm.score(rm.base_model(input_ids=seq, attention_mask=mask, position_ids=pos)
                             .last_hidden_state[torch.arange(batch), P + last]).squeeze(-1)
            # --- 3. rewards; 4. GAE, returns, whitening ---
            rewards = -beta * (old_lp - ref_lp)
            rewards[torch.arange(batch), last] += score
            adv = gae(rewards * m, old_v, gamma, lam)
            returns = adv + old_v
            mean = masked_mean(adv, m)
            std = masked_mean((adv - mean) ** 2, m).sqrt()
            adv = (adv - mean) / (std + 1e-8) * m
        # --- 5. PPO epochs over shuffled minibatches ---
        for _ in range(epochs):
            for mb in torch.randperm(batch).split(minibatch):
                new_lp = response_logprobs(policy, seq[mb], mask[mb], pos[mb], L)
                v = response_values(value, seq[mb], mask[mb], pos[mb], L)
                pg_loss, vf_loss = ppo_losses(new_lp, old_lp[mb], adv[mb], v, old_v[mb], returns[mb], m[mb],
                                              clip, vclip)
                (pg_loss + vf_coef * vf_loss).backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                torch.nn.utils.clip_grad_norm_(value.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        counts.append(float(mask.sum()))
        on_step(counts[-1])
    return counts

