"""The sampling engine's batched loop: :func:`generate` (token ids in) and :class:`Generation` (what it
returns), and text in / text out (:func:`generate_text`, :func:`encode_prompts`). What it guarantees is
in :mod:`alignforge.generation`; the sampling step is :mod:`.sampling`, the forward passes :mod:`.decoders`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from alignforge.generation.decoders import _decoder, _unwrap
from alignforge.generation.sampling import SamplingParams, _sample_next


@dataclass
class Generation:
    """What :func:`generate` returns; the batched tensors are the primary form (RL uses them).

    ``response_ids`` [B, L] (``pad_token_id`` after each response), ``response_mask`` [B, L] bool,
    ``response_logprobs`` [B, L] float (0 where masked), with ``L`` the longest response. A stop
    token that ended a response is part of it (its log-prob too); a stop string ends the tokens at
    the token that completes it, and ``texts`` end just before the stop string.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    response_logprobs: torch.Tensor
    finish_reason: list[str]
    prompt_lengths: list[int]
    prompt_ids: torch.Tensor  # [B, P] left-padded with pad_token_id, as the engine saw them
    prompt_mask: torch.Tensor  # [B, P] bool, False on the padding
    texts: list[str] | None = None

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Prompt + response as one left-padded batch for a training forward pass (PPO/GRPO
        log-probs, values, rewards): ``input_ids``, ``attention_mask``, ``position_ids``, each
        [B, P + L]. The logits at columns ``P - 1 .. P + L - 2`` predict ``response_ids``, i.e.
        ``logits[:, P - 1 : -1]`` lines up with ``response_ids`` / ``response_mask``."""
        mask = torch.cat([self.prompt_mask, self.response_mask], 1)
        return {
            "input_ids": torch.cat([self.prompt_ids, self.response_ids], 1),
            "attention_mask": mask.long(),
            "position_ids": (mask.long().cumsum(1) - 1).clamp(min=0),
        }

    @property
    def lengths(self) -> list[int]:
        return self.response_mask.sum(1).tolist()

    @property
    def sequences(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.response_ids, self.lengths)]

    @property
    def logprobs(self) -> list[torch.Tensor]:
        return [row[:n] for row, n in zip(self.response_logprobs, self.lengths)]


def _stop_string_hits(tokenizer, out_tok, rows, live, t, stop_strings, window) -> torch.Tensor:
    """Rows whose text now contains a stop string. Checked every step, so the first hit is at the
    token that completes it; only the last ``window`` tokens are decoded (Python work per token is
    unavoidable here, and only paid when stop strings are asked for)."""
    hits = torch.zeros(len(rows), dtype=torch.bool)
    lo = max(0, t + 1 - window)
    for j in torch.nonzero(live.cpu()).flatten().tolist():
        tail = tokenizer.decode(out_tok[rows[j], lo : t + 1].tolist(), skip_special_tokens=False)
        hits[j] = any(s in tail for s in stop_strings)
    return hits.to(live.device)


@contextmanager
def _eval_mode(models):
    """Dropout off while sampling (log-probs must match an eval-mode forward, e.g. PPO's old
    log-probs); each model's train/eval mode is restored afterwards."""
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, was_training):
            m.train(mode)


def generate(
    model,
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    tokenizer=None,
    generator: torch.Generator | None = None,
    mixture: tuple[object, float] | None = None,
    backend: str = "auto",
    compact_below: float = 0.5,
) -> Generation:
    """Sample a response for every prompt (lists of token ids) in one batched, KV-cached loop.

    ``eos_token_id`` (one id, several, or None) and ``params.stop_token_ids`` end a response and
    are kept in it. ``tokenizer`` is needed for ``texts`` and for ``params.stop_strings``.
    ``mixture=(ref_model, beta)`` samples from Nash-MD's geometric mixture
    ``softmax((1 - beta) log pi + beta log pi_ref)`` (same tokenizer required); the returned
    log-probs are then those of the mixture at the sampling temperature.
    ``generator`` (else a fresh one seeded with ``params.seed``, else torch's global RNG) makes
    sampling reproducible; the draws depend on the batch (its size and when rows finish), not
    only on the prompt. ``backend``: "auto" (fast path for Llama/Qwen2, else HF), "fast", "hf".
    ``compact_below``: drop finished rows from the batch once the running share falls to it
    (0 = never); it changes cost, never greedy results.
    """
    params = params or SamplingParams()
    if not prompt_ids:
        raise ValueError("generate: prompt_ids is empty; expected at least one prompt")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} has no tokens; every prompt needs at least one (e.g. BOS)")
    if not isinstance(pad_token_id, int):
        raise ValueError(f"generate: pad_token_id must be a token id, got {pad_token_id!r} (a model without "
                         "a pad token, like GPT-2, can pad with its eos id: padding is masked anyway)")
    if params.stop_strings and tokenizer is None:
        raise ValueError("generate: SamplingParams.stop_strings needs tokenizer= to decode the text")
    models = [model]
    if mixture is not None:
        ref_model, beta = mixture
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"generate(mixture=(ref, beta)): expected beta in [0, 1], got {beta!r}")
        models.append(ref_model)

    device = next(model.parameters()).device
    B, P, N = len(prompt_ids), max(len(p) for p in prompt_ids), params.max_new_tokens
    for m in models:
        limit = getattr(_unwrap(m).config, "max_position_embeddings", None) or getattr(
            _unwrap(m).config, "n_positions", None)
        if limit is not None and P + N > limit:
            raise ValueError(f"generate: longest prompt ({P} tokens) + max_new_tokens ({N}) exceeds the "
                             f"model's {limit} positions; shorten prompts or max_new_tokens")
    ids = torch.full((B, P), pad_token_id, dtype=torch.long)
    key_ok = torch.zeros(B, P, dtype=torch.bool)
    for i, p in enumerate(prompt_ids):  # left padding: every prompt ends at column P-1
        ids[i, P - len(p):] = torch.as_tensor(p, dtype=torch.long).cpu()
        key_ok[i, P - len(p):] = True
    ids, key_ok = ids.to(device), key_ok.to(device)
    positions = (key_ok.long().cumsum(1) - 1).clamp(min=0)

    stops = set(torch.as_tensor([] if eos_token_id is None else eos_token_id).flatten().tolist())
    stop_ids = torch.tensor(sorted(stops | set(params.stop_token_ids)), dtype=torch.long, device=device)
    if generator is None and params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    window = max((len(s) for s in params.stop_strings), default=0) + 8

    out_tok = torch.full((B, N), pad_token_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(B, N, dtype=torch.float32, device=device)
    lengths = torch.full((B,), N, dtype=torch.long, device=device)  # "length" unless a stop hits
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    rows = torch.arange(B, device=device)  # original index of each row still in the batch
    live = torch.ones(B, dtype=torch.bool, device=device)  # row in the batch and not finished
    next_pos = positions[:, -1] + 1

    # GRPO / RLOO sample k answers to each prompt: prefill every distinct prompt once and copy its
    # KV-cache rows to the copies (the prefill is about half of a short rollout's matmul FLOPs).
    distinct: dict[tuple[int, ...], int] = {}
    source = [distinct.setdefault(tuple(int(t) for t in p), len(distinct)) for p in prompt_ids]
    with torch.inference_mode(), _eval_mode(models):
        if len(distinct) < B:
            first = torch.tensor([source.index(u) for u in range(len(distinct))], device=device)
            expand = torch.tensor(source, device=device)
            decoders = [_decoder(m, len(distinct), P + N, backend) for m in models]
            logits = [d.forward(ids[first], positions[first], key_ok[first])[expand] for d in decoders]
            for d in decoders:
                d.select(expand)
        else:
            decoders = [_decoder(m, B, P + N, backend) for m in models]
            logits = [d.forward(ids, positions, key_ok) for d in decoders]
        if mixture is not None and logits[0].shape[-1] != logits[1].shape[-1]:
            raise ValueError(f"generate(mixture=...): policy and reference vocabularies differ "
                             f"({logits[0].shape[-1]} vs {logits[1].shape[-1]} logits); they must share a tokenizer")
        for t in range(N):
            if mixture is None:
                mixed = logits[0]
            else:
                mixed = (1 - beta) * logits[0].float().log_softmax(-1) + beta * logits[1].float().log_softmax(-1)
            tok, lp = _sample_next(mixed, params, generator)
            out_tok[rows, t] = tok  # finished-but-not-yet-compacted rows write junk, masked below
            out_lp[rows, t] = lp
            hit = torch.isin(tok, stop_ids) if len(stop_ids) else torch.zeros_like(live)
            if params.stop_strings:
                hit |= _stop_string_hits(tokenizer, out_tok, rows, live, t, params.stop_strings, window)
            new = hit & live
            lengths[rows[new]] = t + 1
            stopped[rows[new]] = True
            live &= ~hit
            n_live = int(live.sum())
            if n_live == 0 or t == N - 1:
                break
            if n_live <= compact_below * len(rows):
                keep = torch.nonzero(live).flatten()
                for d in decoders:
                    d.select(keep)
                rows, tok, next_pos, live = rows[keep], tok[keep], next_pos[keep], live[keep]
            ones = torch.ones(len(rows), 1, dtype=torch.bool, device=device)
            logits = [d.forward(tok[:, None], next_pos[:, None], ones) for d in decoders]
            next_pos = next_pos + 1

    L = int(lengths.max())
    mask = torch.arange(L, device=device)[None] < lengths[:, None]
    gen = Generation(
        response_ids=out_tok[:, :L].masked_fill(~mask, pad_token_id),
        response_mask=mask,
        response_logprobs=out_lp[:, :L].masked_fill(~mask, 0.0),
        finish_reason=["stop" if s else "length" for s in stopped.tolist()],
        prompt_lengths=[len(p) for p in prompt_ids],
        prompt_ids=ids,
        prompt_mask=key_ok,
    )
    if tokenizer is not None:
        gen.texts = [_response_text(tokenizer, seq, set(stop_ids.tolist()), params.stop_strings)
                     for seq in gen.sequences]
    return gen


def _response_text(tokenizer, seq: list[int], stop_ids: set[int], stop_strings: tuple[str, ...]) -> str:
    if seq and seq[-1] in stop_ids:
        seq = seq[:-1]
    text = tokenizer.decode(seq, skip_special_tokens=True)
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return text[: min(cuts)] if cuts else text


# ---------------------------------------------------------------------------------- text in, text out


def encode_prompts(tokenizer, prompts: Sequence[str | list[dict]]) -> list[list[int]]:
    """Token ids for each prompt, exactly as training encodes them (``data.batching.encode_prompt``):
    the chat template with the assistant generation prompt; a tokenizer without a template gets the
    documented fallback template first, so sampling sees what SFT trained on."""
    from alignforge.data.batching import encode_prompt

    return [encode_prompt(tokenizer, p) for p in prompts]


def generate_text(model, tokenizer, prompts: Sequence[str | list[dict]], params: SamplingParams | None = None,
                  **kwargs) -> Generation:
    """:func:`generate` for strings or chat message lists; ``texts`` holds the decoded responses.

    eos / pad come from the tokenizer (a tokenizer without a pad token, like GPT-2's, pads with eos).
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise ValueError("generate_text: the tokenizer has neither a pad nor an eos token")
    kwargs.setdefault("eos_token_id", eos)
    kwargs.setdefault("pad_token_id", pad)
    return generate(model, encode_prompts(tokenizer, prompts), params, tokenizer=tokenizer, **kwargs)
