"""Rollouts for online RL, shared by ``alignforge ppo``, ``reinforce`` (RLOO/GRPO) and ``nash``.

One rollout = sample responses with the one sampling engine (:func:`alignforge.generation.generate`,
KV-cached, batched) → score them with the frozen reward model (or an injected ``reward_fn``) →
log π_ref of the same tokens (one batched forward of the reference) → optionally V(s_t) (one
forward of the value model) → a :class:`Rollout` of right-aligned ``[B, L]`` tensors that the
stages turn into per-token rewards, advantages and losses (``alignforge.rl.advantages`` / ``alignforge.losses``).

Log-probs. The engine returns log π(token) at the sampling temperature *before* top-k/top-p
truncation (design §8). With ``top_k = 0`` and ``top_p = 1`` the sampled distribution is exactly
π_T, so those numbers ARE the old log-probs of PPO's ratio and of the KL: no extra forward
(``rollout.reuse_logprobs``). With truncation the behaviour policy is not π_T, so we recompute
them with a training-style forward instead (and say so in the metrics). The reference and the
policy's training forward use the same temperature, as TRL does, so at step 0 the ratio is 1 and
the KL is 0 up to float rounding (tested). Under bf16 autocast they are always recomputed: the
engine's incremental forward and the full-sequence one round differently.

Layout. Prompts are left-padded and responses right-padded, exactly as the engine returns them
(``Generation.model_inputs``): logits at columns ``P-1 … P+L-2`` predict the response tokens.
:meth:`Rollout.select` takes a minibatch and trims the all-padding columns on both sides, so a
minibatch of short answers costs only its own length.

What the RL stages do around a rollout — config checks, prompts, resume, evaluation, the step tail —
is in :mod:`alignforge.rl.stage`; loading the reward and value models in :mod:`alignforge.models.load`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from alignforge.generation import Generation, SamplingParams, fp32_head, generate
from alignforge.losses import token_logprobs

#: An injected reward: the engine's :class:`Generation` (token ids, mask, texts) → one score per row.
RewardFn = Callable[[Generation], torch.Tensor]


@dataclass
class Rollout:
    """A batch of sampled responses and everything the RL losses need, as ``[B, L]`` tensors."""

    input_ids: torch.Tensor        # [B, P+L] prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor   # [B, P+L] long
    prompt_len: int                # P
    response_ids: torch.Tensor     # [B, L]
    mask: torch.Tensor             # [B, L] float, 1 on response tokens (eos included)
    logprobs: torch.Tensor         # [B, L] old log π at the sampling temperature
    ref_logprobs: torch.Tensor     # [B, L] log π_ref at the same temperature
    scores: torch.Tensor           # [B] reward used for training (after penalty / clipping)
    raw_scores: torch.Tensor       # [B] reward model output (normalised as the RM stores it)
    finish_reason: list[str]
    texts: list[str] | None = None
    values: torch.Tensor | None = None       # [B, L] V(s_t) from the value model (PPO)
    advantages: torch.Tensor | None = None   # [B, L], filled in by the stage
    returns: torch.Tensor | None = None      # [B, L], filled in by the stage
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(1) - 1).clamp(min=0)

    def select(self, idx: torch.Tensor | Sequence[int]) -> Rollout:
        """Rows ``idx``, with the columns that are padding in every selected row cut off."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        P = self.prompt_len
        am = self.attention_mask[idx]
        first = int((am[:, :P].sum(0) > 0).nonzero()[0]) if P else 0  # leftmost real prompt column
        L = max(int(self.mask[idx].sum(1).max()), 1)
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == P + self.response_ids.shape[1]:
                out[f.name] = v[idx][:, first:P + L]
            elif isinstance(v, torch.Tensor) and v.dim() == 2:
                out[f.name] = v[idx][:, :L]
            elif isinstance(v, torch.Tensor):
                out[f.name] = v[idx]
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in idx.tolist()]
            else:
                out[f.name] = v
        out["prompt_len"] = P - first
        return Rollout(**out)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}

def response_logits(model, ro: Rollout) -> torch.Tensor:
    """``[B, L, V]`` logits that predict the response tokens (only those go through the LM head).

    Under bf16 autocast a plain Llama / Qwen2 model runs its body in bf16 and its head in fp32
    (:func:`alignforge.generation.fp32_head`), as the sampler does; other models give bf16 logits,
    upcast by the loss."""
    from alignforge.data.batching import plain_head

    L = ro.response_ids.shape[1]
    if torch.is_autocast_enabled(ro.input_ids.device.type) and plain_head(model):
        hidden = model.model(**ro.model_inputs()).last_hidden_state[:, -(L + 1):-1]
        return fp32_head(model.lm_head, hidden)
    try:  # the head runs on L+1 positions instead of P+L: the prompt's logits are never needed
        logits = model(**ro.model_inputs(), logits_to_keep=L + 1).logits
    except TypeError:  # an architecture without logits_to_keep
        logits = model(**ro.model_inputs()).logits[:, -(L + 1):]
    return logits[:, :-1]

def response_logprobs(model, ro: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(response tokens) at ``temperature`` [B, L], the logits [B, L, V])."""
    logits = response_logits(model, ro)
    return token_logprobs(logits, ro.response_ids, temperature=_train_temperature(temperature)), logits

def response_values(value_model, ro: Rollout) -> torch.Tensor:
    """``[B, L]`` V(s_t): the value head at the position that predicts response token t."""
    from alignforge.models.heads import token_scores

    v = token_scores(value_model, ro.input_ids, ro.attention_mask)[..., 0]
    L = ro.response_ids.shape[1]
    return v[:, ro.prompt_len - 1: ro.prompt_len - 1 + L].float()

def _train_temperature(t: float) -> float:
    # Greedy sampling (T = 0) reports log-probs at T = 1 (alignforge.generation); train at T = 1 then.
    return t if t > 0 else 1.0

def logprobs_reusable(params: SamplingParams) -> bool:
    """The engine's log-probs equal the behaviour policy's exactly: no truncation, not greedy."""
    return params.top_k == 0 and params.top_p == 1.0 and params.temperature > 0

def sampling_params(cfg: Any) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new_tokens=s.max_new_tokens)

def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A generator that is a pure function of (seed, step): a resumed run redraws the same rollout."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))

@torch.no_grad()
def make_rollout(policy, ref, tok, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, *,
                 generator: torch.Generator, reward_model=None, reward_head: int | None = None,
                 reward_fn: RewardFn | None = None, value_model=None, reuse_logprobs: bool = True,
                 missing_eos_penalty: float | None = None, score_clip: float | None = None,
                 batch_size: int = 64) -> Rollout:
    """Sample one response per entry of ``prompt_ids`` and compute scores, old/ref log-probs, values.

    ``no_grad`` (not ``inference_mode``): these tensors are constants in the losses, and
    inference tensors cannot be saved for backward.
    """
    from alignforge.data.batching import pad_id_of
    from alignforge.models.heads import sequence_scores
    from alignforge.models.scoring import select_reward

    if (reward_model is None) == (reward_fn is None):
        raise ValueError("make_rollout: pass exactly one of reward_model and reward_fn")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    was_training = policy.training
    policy.eval()
    gen = generate(policy, prompt_ids, params, eos_token_id=tok.eos_token_id, pad_token_id=pad_id_of(tok),
                   tokenizer=tok, generator=generator)
    timings["generate_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    inputs = gen.model_inputs()
    ro = Rollout(input_ids=inputs["input_ids"].clone(), attention_mask=inputs["attention_mask"].clone(),
                 prompt_len=gen.prompt_ids.shape[1], response_ids=gen.response_ids.clone(),
                 mask=gen.response_mask.float(), logprobs=gen.response_logprobs.clone(),
                 ref_logprobs=torch.zeros_like(gen.response_logprobs), scores=torch.zeros(len(prompt_ids)),
                 raw_scores=torch.zeros(len(prompt_ids)), finish_reason=list(gen.finish_reason), texts=gen.texts)
    # Under autocast the engine's incremental bf16 forward and the full-sequence one round differently
    # (~1e-2 per token): the behaviour log-probs must come from the pass the loss will repeat.
    recompute = not (reuse_logprobs and logprobs_reusable(params)) or torch.is_autocast_enabled(inputs["input_ids"].device.type)
    values = []
    B = len(ro)
    for j in range(0, B, batch_size):
        sub = ro.select(range(j, min(B, j + batch_size)))
        rows = slice(j, j + len(sub))
        L = sub.response_ids.shape[1]
        ro.ref_logprobs[rows, :L] = response_logprobs(ref, sub, params.temperature)[0] * sub.mask
        if recompute:
            ro.logprobs[rows, :L] = response_logprobs(policy, sub, params.temperature)[0] * sub.mask
        if reward_model is not None:
            scores = sequence_scores(reward_model, sub.input_ids, sub.attention_mask)
            ro.raw_scores[rows] = select_reward(reward_model, scores, reward_head).float()
        if value_model is not None:
            value_model.eval()
            v = torch.zeros(len(sub), ro.response_ids.shape[1])
            v[:, :L] = response_values(value_model, sub) * sub.mask
            values.append(v)
    if reward_fn is not None:
        ro.raw_scores = torch.as_tensor(reward_fn(gen), dtype=torch.float32).reshape(B).clone()
    if values:
        ro.values = torch.cat(values)
    scores = ro.raw_scores.clone()
    if missing_eos_penalty is not None:
        scores -= missing_eos_penalty * torch.tensor([r != "stop" for r in ro.finish_reason], dtype=torch.float32)
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    ro.scores = scores
    policy.train(was_training)
    timings["score_s"] = time.perf_counter() - t1
    timings["recomputed_logprobs"] = float(recompute)
    ro.timings = timings
    return ro

def rollout_stats(ro: Rollout, kl_per_token: torch.Tensor) -> dict[str, float]:
    """What every RL step logs about its samples (per response, then averaged)."""
    kl_seq = (kl_per_token * ro.mask).sum(1)
    return {"score": float(ro.raw_scores.mean()), "score_std": float(ro.raw_scores.std()) if len(ro) > 1 else 0.0,
            "kl": float(kl_seq.mean()), "response_length": float(ro.lengths.mean()),
            "eos_rate": sum(r == "stop" for r in ro.finish_reason) / len(ro)}
