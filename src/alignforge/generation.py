"""The one sampling engine: batched, KV-cached, temperature / top-k / top-p, token log-probs.

Every stage that samples (SFT eval, collect, PPO/GRPO/RLOO rollouts, RSFT, eval, chat, serve,
Nash-MD) calls :func:`generate` (token ids in) or :func:`generate_text` (strings / chat messages
in). What it guarantees:

* **Log-probs** (design §8): ``log_softmax(logits / T)`` of the token actually sampled, taken
  *before* top-k/top-p truncation, so PPO/GRPO ratios and KL see the model's own distribution.
  Greedy decoding (``temperature=0`` or ``top_k=1``) reports log-probs at ``T = 1``.
* **Padding never changes results**: prompts are left-padded, every row gets its own position ids
  and a key mask, so a prompt decodes the same alone or in a batch.
* **One forward per step for the whole batch**, and finished rows stop costing compute: when at
  most half of the rows in the batch are still running, the batch (and its KV cache) is compacted.
  Repeated prompts (k samples per prompt) are prefilled once and their KV rows copied.
* **Deterministic** for a ``torch.Generator`` or ``SamplingParams.seed``.

Two interchangeable backends do the forward passes:

* ``_FastDecoder`` for Llama-family models (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, also
  wrapped in peft): the decoder layers run from their own sub-modules (so LoRA layers, biases,
  RMSNorm and activation stay exactly Hugging Face's) with a preallocated KV cache and
  ``scaled_dot_product_attention``. Writing K/V into a fixed buffer instead of concatenating a
  growing cache every step is what pays on long responses (32 x 256 tokens: ~1.2x the HF-forward
  path, ~1.5x ``model.generate``); it also skips HF's per-step mask building. Tests check it
  against the plain HF forward.

Most of the rest of the gain over ``model.generate`` is the sampler: one uniform per row and a
binary search over the CDF instead of ``torch.multinomial``'s exponential draw per vocabulary
entry. Measured numbers: ``bench/sampling.py``.
* ``_HFDecoder`` for any other causal LM (GPT-2, GPT-NeoX, ...): the model's own forward with a
  ``DynamicCache``, explicit position ids and a 2-D key mask.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "SamplingParams",
    "Generation",
    "generate",
    "generate_text",
    "encode_prompts",
    "truncate_logits",
]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature=0`` or ``top_k=1`` is greedy; ``top_k=0``/``top_p=1`` disable."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        # Lists from YAML configs become tuples so the params stay hashable and immutable.
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(str(s) for s in self.stop_strings))
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"SamplingParams.temperature: expected a number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"SamplingParams.top_k: expected an integer >= 0 (0 = off), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"SamplingParams.top_p: expected a number in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"SamplingParams.max_new_tokens: expected an integer >= 1, got {self.max_new_tokens!r}")
        if any(s == "" for s in self.stop_strings):
            raise ValueError("SamplingParams.stop_strings: the empty string would stop immediately")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def provenance(self) -> dict:
        """The ``sampling`` field generated records carry (design §8)."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}


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


# ---------------------------------------------------------------------------------- sampling step


def truncate_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, then outside the top-p nucleus.

    The nucleus is the smallest set of most likely tokens whose probability (after top-k, as in
    HF) is >= ``top_p``: a token is dropped when the tokens ranked above it already reach ``top_p``.
    One ``topk`` (when ``top_k`` is set) or one full sort serves both filters.
    """
    vocab = logits.shape[-1]
    use_k = 0 < top_k < vocab
    if not use_k and top_p >= 1.0:
        return logits
    if use_k:
        vals, idx = logits.topk(top_k, dim=-1)  # sorted, descending
    else:
        vals, idx = logits.sort(dim=-1, descending=True)
    if top_p < 1.0:
        probs = vals.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        vals = vals.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, idx, vals)


def _sample_next(logits: torch.Tensor, params: SamplingParams, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row and its log-prob under log_softmax(logits / T) (pre-truncation)."""
    logits = logits.float()
    if params.greedy:
        logp = logits.log_softmax(-1)
        tok = logits.argmax(-1)
    else:
        logp = (logits if params.temperature == 1 else logits / params.temperature).log_softmax(-1)
        kept = truncate_logits(logp, params.top_k, params.top_p)
        # exp, not softmax: the sampler inverts an unnormalised CDF, and exp(-inf) = 0.
        tok = _sample_categorical(kept.exp(), generator)
    lp = logp.gather(1, tok[:, None]).squeeze(1)
    # NaN/inf logits make every log-prob of the row NaN; the sampler would then return an
    # arbitrary token silently, so stop here (one check of B numbers per step).
    if torch.isnan(lp).any():
        bad = torch.nonzero(torch.isnan(lp)).flatten().tolist()
        raise FloatingPointError(f"generate: the model produced NaN/inf logits (batch rows {bad[:8]})")
    return tok, lp


def fp32_head(lm_head, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head in fp32 even inside bf16 autocast: the body's matmuls are where bf16 pays, while
    log-probs need the logits finer than bf16's spacing (1/16 at |logit| 8-16), because PPO's ratio and
    the KL to the reference are differences of log-probs a few hundredths apart. The sampler and the
    rollout's log-prob pass (rollout.response_logits) both use it, so they see one distribution."""
    dev = hidden.device.type
    if not torch.is_autocast_enabled(dev):
        return lm_head(hidden)
    with torch.autocast(dev, enabled=False):
        return lm_head(hidden.float())


def _sample_categorical(probs: torch.Tensor, generator) -> torch.Tensor:
    """One draw per row by inverting the CDF: one uniform per row and a binary search.

    ``torch.multinomial`` draws an exponential variate for *every* vocabulary entry (2.7 ms for
    32 x 4096 on one core, a fifth of a tiny model's decode step); this draws 32 numbers. A token
    of probability 0 is never chosen: its CDF step is empty, and ``right=True`` finds the first
    entry whose CDF exceeds the uniform.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


# ---------------------------------------------------------------------------------- backends


def _unwrap(model):
    """The transformers model inside a peft wrapper (LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _rope_is_static(config) -> bool:
    # Dynamic NTK rope recomputes frequencies from the sequence length; a precomputed table
    # would be wrong for it, so such models take the HF path.
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_type", "default") in ("default", "linear", "llama3")


def _fast_path_supported(model) -> bool:
    base = _unwrap(model)
    if type(base).__name__ not in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        return False
    # Qwen2 may give only its upper layers a sliding window: check every layer.
    windowed = any(getattr(layer.self_attn, "sliding_window", None) is not None for layer in base.model.layers)
    return not windowed and _rope_is_static(base.config)


class _FastDecoder:
    """Llama-family decoder with a preallocated KV cache; one call = one forward for the batch."""

    def __init__(self, model, batch: int, max_len: int):
        base = _unwrap(model)
        cfg = base.config
        self.layers = list(base.model.layers)
        self.embed, self.norm, self.lm_head = base.model.embed_tokens, base.model.norm, base.lm_head
        self.apply_rope = sys.modules[type(base.model.layers[0].self_attn).__module__].apply_rotary_pos_emb
        attn = self.layers[0].self_attn
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim
        w = self.embed.weight
        # RoPE cos/sin for every position we can reach, computed once by the model's own module.
        pos = torch.arange(max_len, device=w.device)[None]
        cos, sin = base.model.rotary_emb(w[:1][None], pos)
        self.cos, self.sin = cos[0], sin[0]
        shape = (batch, self.n_kv, max_len, self.head_dim)
        # Under autocast the projections emit bf16: a bf16 cache stores them as they are (half the
        # memory, no cast on every write and read).
        dev = w.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else w.dtype
        self.k = [torch.zeros(shape, dtype=dtype, device=w.device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=w.device) for _ in self.layers]
        self.key_ok = torch.zeros(batch, max_len, dtype=torch.bool, device=w.device)
        self.length = 0  # cache slots filled (the same for every row: padding is on the left)
        self.padded = False

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
        """Append ``ids`` [B, T] (valid where ``key_ok``) at rope ``positions``; last-token logits."""
        B, T = ids.shape
        start, end = self.length, self.length + T
        self.key_ok[:, start:end] = key_ok
        self.padded = self.padded or not bool(key_ok.all())
        if not self.padded:
            # No padding anywhere: SDPA's fastest kernels. is_causal aligns queries to the top
            # left, which is right only for the prefill (start == 0); a decode step has T == 1.
            mask, causal = None, T > 1
        else:
            mask = self.key_ok[:, None, None, :end]
            if T > 1:
                q = torch.arange(start, end, device=ids.device)[:, None]
                k = torch.arange(end, device=ids.device)[None]
                # A pad query sees only itself, so no softmax row is empty (NaN); pad keys are
                # hidden from every real query.
                mask = (mask & (k <= q)) | (k == q)
            causal = False
        cos, sin = self.cos[positions], self.sin[positions]
        x = self.embed(ids)
        gqa = self.n_kv != self.n_heads
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            q = att.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            k = att.k_proj(h).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            v = att.v_proj(h).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self.apply_rope(q, k, cos, sin)
            self.k[i][:, :, start:end] = k
            self.v[i][:, :, start:end] = v
            o = F.scaled_dot_product_attention(
                q, self.k[i][:, :, :end], self.v[i][:, :, :end], attn_mask=mask,
                is_causal=causal, scale=att.scaling, enable_gqa=gqa,
            )
            x = x + att.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.length = end
        return fp32_head(self.lm_head, self.norm(x[:, -1]))

    def select(self, rows: torch.Tensor) -> None:
        self.k = [c.index_select(0, rows) for c in self.k]
        self.v = [c.index_select(0, rows) for c in self.v]
        self.key_ok = self.key_ok.index_select(0, rows)


class _HFDecoder:
    """Any HF causal LM through its own forward, with a DynamicCache, explicit position ids and a
    2-D key mask. The model builds its own 4-D mask from it each step, which costs a little
    (5-15% on tiny-4m) but keeps whatever the architecture needs (sliding windows, its own
    handling of all-padding query rows) exactly as in training."""

    def __init__(self, model, batch: int, max_len: int):
        import inspect

        from transformers import DynamicCache

        base = _unwrap(model)
        self.model = model
        self.key_ok = torch.zeros(batch, max_len, dtype=torch.bool, device=next(model.parameters()).device)
        self.length = 0
        fwd = inspect.signature(base.forward).parameters
        self.kw = {"logits_to_keep": 1} if "logits_to_keep" in fwd else {}
        # transformers 5 calls the cache argument ``cache``; 4.x called it ``past_key_values``.
        self.cache_arg = "cache" if "cache" in fwd else "past_key_values"
        try:
            self.cache = DynamicCache(config=base.config)
        except TypeError:  # transformers 4.x
            self.cache = DynamicCache()

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
        end = self.length + ids.shape[1]
        self.key_ok[:, self.length : end] = key_ok
        out = self.model(input_ids=ids, attention_mask=self.key_ok[:, :end].long(), position_ids=positions,
                         use_cache=True, **{self.cache_arg: self.cache}, **self.kw)
        self.length = end
        return out.logits[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.key_ok = self.key_ok.index_select(0, rows)


def _decoder(model, batch: int, max_len: int, backend: str):
    if backend not in ("auto", "fast", "hf"):
        raise ValueError(f"generate(backend=...): expected 'auto', 'fast' or 'hf', got {backend!r}")
    fast = _fast_path_supported(model)
    if backend == "fast" and not fast:
        raise ValueError(f"generate(backend='fast'): {type(_unwrap(model)).__name__} is not a supported "
                         "Llama-family model (Llama, Qwen2 without sliding window); use 'auto' or 'hf'")
    if backend == "fast" or (backend == "auto" and fast):
        return _FastDecoder(model, batch, max_len)
    return _HFDecoder(model, batch, max_len)


# ---------------------------------------------------------------------------------- the loop


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
