"""KL(π ‖ π_ref) on responses sampled from π — what every policy-optimisation result reports
beside its reward (a reward gain bought with a huge KL is a different result from a cheap one).

For a response y ~ π(·|x) the sequence log-ratio ``log π(y|x) − log π_ref(y|x)`` is an unbiased
estimate of KL(π(·|x) ‖ π_ref(·|x)) (the "k1" estimator, summed over tokens). Its mean over
prompts is the KL we report; both log-probs are recomputed here by the same forward function
(``data.batching.sequence_logprobs``) at T = 1, so a policy identical to its reference gives
exactly 0. Sampling uses the shared engine at ``temperature`` (default 1, the policy itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from alignforge.data.batching import Example, collate, encode_prompt, pack, pad_id_of, sequence_logprobs
from alignforge.data.records import Prompt


@dataclass
class KLResult:
    kl: float                 # mean over prompts of the summed per-token log-ratio (nats / response)
    kl_per_token: float       # the same, divided by the mean response length
    per_prompt: list[float]
    mean_tokens: float


def response_examples(prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> list[Example]:
    """Prompt + sampled response ids as examples whose targets are the response tokens."""
    out = []
    for p, r in zip(prompt_ids, responses):
        out.append(Example(list(p) + list(r), [0] * len(p) + [1] * len(r)))
    return out


@torch.no_grad()
def response_logprobs(model, examples: Sequence[Example], pad_id: int, *, batch_size: int = 32,
                      seq_len: int | None = None) -> torch.Tensor:
    """Summed target log-probs of every example (packed forward passes, example order kept)."""
    if not examples:
        return torch.zeros(0)
    seq_len = seq_len or max(len(e) for e in examples)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.zeros(len(examples))
    # Pack in chunks so each forward stays small; collate numbers examples in row order.
    for j in range(0, len(examples), batch_size):
        chunk = list(examples[j:j + batch_size])
        rows = pack([len(e) for e in chunk], seq_len)
        lp = sequence_logprobs(model, collate(chunk, rows, pad_id).to(device)).float().cpu()
        order = torch.tensor([i for row in rows for i in row])
        out[j + order] = lp
    model.train(was_training)
    return out


def prompt_budget(model, max_new_tokens: int, max_prompt_tokens: int | None = None) -> int | None:
    """How many prompt tokens fit before ``max_new_tokens`` in the model's positions (None: no limit)."""
    from alignforge.models.load import unwrap

    cfg = unwrap(model).config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    room = None if limit is None else max(1, int(limit) - max_new_tokens)
    if max_prompt_tokens is not None:
        room = max_prompt_tokens if room is None else min(room, max_prompt_tokens)
    return room


def sampled_kl(policy, ref, tokenizer, prompts: Sequence[Prompt], *, max_new_tokens: int = 64,
               temperature: float = 1.0, seed: int = 0, batch_size: int = 32,
               responses: Sequence[Sequence[int]] | None = None,
               max_prompt_tokens: int | None = None) -> KLResult:
    """KL(π‖π_ref) estimated on one response per prompt sampled from ``policy``.

    Pass ``responses`` (token ids, e.g. from an evaluation run that already sampled) to skip the
    sampling. ``policy`` and ``ref`` must share ``tokenizer``. Prompts longer than
    ``max_prompt_tokens`` (and than the model's positions minus ``max_new_tokens``) keep their
    last tokens, as in training (``data.batching.encode_prompt``).
    """
    from alignforge.generation import SamplingParams, generate

    if not prompts:
        raise ValueError("sampled_kl: no prompts")
    budget = prompt_budget(policy, max_new_tokens, max_prompt_tokens)
    p_ids = [encode_prompt(tokenizer, p, budget) for p in prompts]
    pad = pad_id_of(tokenizer)
    if responses is None:
        was_training = policy.training
        policy.eval()
        with torch.random.fork_rng(devices=[]):
            gen = generate(policy, p_ids, SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens,
                                                         seed=seed),
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        policy.train(was_training)
        responses = gen.sequences
    examples = response_examples(p_ids, responses)
    lp_pi = response_logprobs(policy, examples, pad, batch_size=batch_size)
    lp_ref = response_logprobs(ref, examples, pad, batch_size=batch_size)
    per = (lp_pi - lp_ref).tolist()
    mean_tokens = sum(len(r) for r in responses) / len(responses)
    kl = sum(per) / len(per)
    return KLResult(kl, kl / max(mean_tokens, 1e-9), per, mean_tokens)
