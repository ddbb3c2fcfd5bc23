"""The forward passes of the sampling engine, with a KV cache; one call = one forward for the batch.

Two interchangeable backends (``generate(backend=...)``: "auto", "fast", "hf"):

* ``_FastDecoder`` for Llama-family models (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, also
  wrapped in peft): the decoder layers run from their own sub-modules (so LoRA layers, biases,
  RMSNorm and activation stay exactly Hugging Face's) with a preallocated KV cache and
  ``scaled_dot_product_attention``. Writing K/V into a fixed buffer instead of concatenating a
  growing cache every step is what pays on long responses (32 x 256 tokens: ~1.2x the HF-forward
  path, ~1.5x ``model.generate``); it also skips HF's per-step mask building. Tests check it
  against the plain HF forward.
* ``_HFDecoder`` for any other causal LM (GPT-2, GPT-NeoX, ...): the model's own forward with a
  ``DynamicCache``, explicit position ids and a 2-D key mask.

:func:`fp32_head` (the LM head in fp32 under autocast) is shared with the training-side log-prob pass.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


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
        # Layer by layer, in place: each old layer is freed as its selection replaces it, so compacting or
        # expanding rows holds one extra layer at a time, not a second whole cache.
        for cache in (self.k, self.v):
            for i, c in enumerate(cache):
                cache[i] = c.index_select(0, rows)
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
