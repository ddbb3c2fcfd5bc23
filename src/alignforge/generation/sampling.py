"""One sampling step: :class:`SamplingParams`, :func:`truncate_logits` (top-k, then top-p), and the draw
with its log-prob under ``log_softmax(logits / T)`` taken before truncation (design §8).

Most of the engine's gain over ``model.generate`` besides the KV cache is the sampler here: one
uniform per row and a binary search over the CDF instead of ``torch.multinomial``'s exponential
draw per vocabulary entry. Measured numbers: ``bench/sampling.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
