"""Count-based n-gram language models: the baselines a pretrained transformer must beat.

Over bytes (vocabulary 256, no tokenizer needed) or over the ids of any tokenizer. Two smoothings:

* **add-k** (Laplace for k = 1): ``P(w | h) = (c(h, w) + k) / (c(h) + k V)`` at the model's order
  only — simple, and badly calibrated for large n (it spends mass evenly on unseen words).
* **interpolated Kneser–Ney** (Chen & Goodman 1998): absolute discounting ``D`` at every order,
  the freed mass ``D · N1+(h •) / c(h)`` given to the next lower order; lower orders count
  *continuations* ``N1+(• h w)`` (how many different words precede ``h w``) instead of raw counts,
  so a word seen often but only after one context ("Francisco") does not get a large unigram
  probability. The lowest order interpolates with the uniform distribution, so every token has
  non-zero probability and each conditional distribution sums to exactly 1 (tested).

Documents are padded on the left with ``order - 1`` copies of a BOS symbol (id ``V``, never
predicted), so the first tokens have a context and every n-gram has a left extension.

Held-out quality is reported as **bits per byte** (design §8): total ``-log2 P`` of the held-out
tokens divided by the UTF-8 bytes of the text, which compares models with different tokenizers
(and these baselines) honestly. Only the text's own tokens are scored (no end-of-document symbol).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Literal, Optional, Sequence

import numpy as np

Smoothing = Literal["add_k", "kn"]


class NGramLM:
    """An order-``n`` n-gram LM over ids ``0 .. vocab_size-1``."""

    def __init__(self, order: int, vocab_size: int, smoothing: Smoothing = "kn", k: float = 1.0,
                 discount: Optional[float] = None):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if smoothing not in ("add_k", "kn"):
            raise ValueError(f"smoothing must be 'add_k' or 'kn', got {smoothing!r}")
        if smoothing == "add_k" and k <= 0:
            raise ValueError(f"add-k needs k > 0 (else unseen tokens get probability 0), got {k}")
        if discount is not None and not 0 < discount <= 1:
            raise ValueError(f"Kneser-Ney discount must be in (0, 1], got {discount}")
        self.order, self.V, self.smoothing, self.k = order, vocab_size, smoothing, k
        self.bos = vocab_size
        self._fixed_discount = discount
        # table[m][context of length m-1] = {w: count}; m = 1..order. For KN, orders below the
        # top hold continuation counts. totals[m][context] = (sum of counts, distinct words).
        self.table: list[dict[tuple, dict[int, int]]] = [dict() for _ in range(order + 1)]
        self.totals: list[dict[tuple, tuple[int, int]]] = [dict() for _ in range(order + 1)]
        self.discount: list[float] = [0.0] * (order + 1)

    # ---- training ------------------------------------------------------------------------------

    def fit(self, sequences: Iterable[Sequence[int]]) -> "NGramLM":
        n = self.order
        top: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for seq in sequences:
            padded = [self.bos] * (n - 1) + list(seq)
            for i in range(n - 1, len(padded)):
                w = padded[i]
                if not 0 <= w < self.V:
                    raise ValueError(f"token id {w} outside the vocabulary 0..{self.V - 1}")
                top[tuple(padded[i - n + 1:i])][w] += 1
        self.table[n] = {h: dict(ws) for h, ws in top.items()}
        if self.smoothing == "kn":
            # Continuation counts: every distinct (v, h, w) at order m+1 is one left extension of (h, w).
            for m in range(n - 1, 0, -1):
                lower: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
                for h, ws in self.table[m + 1].items():
                    for w in ws:
                        lower[h[1:]][w] += 1
                self.table[m] = {h: dict(ws) for h, ws in lower.items()}
        for m in range(1, n + 1):
            self.totals[m] = {h: (sum(ws.values()), len(ws)) for h, ws in self.table[m].items()}
            self.discount[m] = self._estimate_discount(m)
        return self

    def _estimate_discount(self, m: int) -> float:
        """Ney's estimate D = n1 / (n1 + 2 n2) from the count-of-counts at order m.

        Without singletons (n1 = 0: a corpus that repeats every n-gram, like the small world's 16
        descriptions per entity) the estimate is D = 0, which gives an unseen word in a seen context
        probability 0 — an infinite loss on held-out text. Then the usual default 0.75 is used.
        """
        if self._fixed_discount is not None:
            return self._fixed_discount
        n1 = sum(1 for ws in self.table[m].values() for c in ws.values() if c == 1)
        n2 = sum(1 for ws in self.table[m].values() for c in ws.values() if c == 2)
        return n1 / (n1 + 2 * n2) if n1 > 0 else 0.75

    # ---- probabilities -------------------------------------------------------------------------

    def _context(self, context: Sequence[int]) -> tuple:
        h = [self.bos] * (self.order - 1) + list(context)
        return tuple(h[len(h) - (self.order - 1):]) if self.order > 1 else ()

    def prob(self, context: Sequence[int], w: int) -> float:
        """P(w | the last order-1 ids of ``context``); a short context is BOS-padded."""
        h = self._context(context)
        if self.smoothing == "add_k":
            ws = self.table[self.order].get(h, {})
            total = self.totals[self.order].get(h, (0, 0))[0]
            return (ws.get(w, 0) + self.k) / (total + self.k * self.V)
        return self._kn(h, w, self.order)

    def _kn(self, h: tuple, w: int, m: int) -> float:
        lower = 1.0 / self.V if m == 1 else self._kn(h[1:], w, m - 1)
        stats = self.totals[m].get(h)
        if stats is None:  # unseen context: all mass to the lower order
            return lower
        total, distinct = stats
        D = self.discount[m]
        c = self.table[m][h].get(w, 0)
        return max(c - D, 0.0) / total + D * distinct / total * lower

    def dist(self, context: Sequence[int]) -> np.ndarray:
        """The whole conditional distribution over the vocabulary (float64, sums to 1)."""
        h = self._context(context)
        if self.smoothing == "add_k":
            p = np.full(self.V, self.k, dtype=np.float64)
            for w, c in self.table[self.order].get(h, {}).items():
                p[w] += c
            return p / p.sum()
        return self._kn_dist(h, self.order)

    def _kn_dist(self, h: tuple, m: int) -> np.ndarray:
        lower = np.full(self.V, 1.0 / self.V) if m == 1 else self._kn_dist(h[1:], m - 1)
        stats = self.totals[m].get(h)
        if stats is None:
            return lower
        total, distinct = stats
        D = self.discount[m]
        p = lower * (D * distinct / total)
        for w, c in self.table[m][h].items():
            p[w] += max(c - D, 0.0) / total
        return p

    def sequence_bits(self, seq: Sequence[int]) -> float:
        """-log2 P(seq) = sum over tokens of -log2 P(token | previous order-1 tokens)."""
        padded = [self.bos] * (self.order - 1) + list(seq)
        bits = 0.0
        for i in range(self.order - 1, len(padded)):
            bits -= math.log2(self.prob(padded[i - self.order + 1:i], padded[i]))
        return bits


# ---------------------------------------------------------------------------------------------
# Units and bits per byte
# ---------------------------------------------------------------------------------------------


def byte_encoder() -> tuple[Callable[[str], list[int]], int]:
    """(encode, vocab size) for byte-level models."""
    return (lambda text: list(text.encode("utf-8"))), 256


def tokenizer_encoder(tokenizer) -> tuple[Callable[[str], list[int]], int]:
    """(encode, vocab size) for models over a Hugging Face tokenizer's ids (no special tokens added)."""
    return (lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]), len(tokenizer)


def bits_per_byte(lm: NGramLM, texts: Iterable[str], encode: Callable[[str], list[int]]) -> float:
    """Total -log2 P of the held-out texts (each a document) over their total UTF-8 bytes."""
    bits, nbytes = 0.0, 0
    for text in texts:
        bits += lm.sequence_bits(encode(text))
        nbytes += len(text.encode("utf-8"))
    if nbytes == 0:
        raise ValueError("no held-out text to score")
    return bits / nbytes


def ngram_baselines(train_texts: Sequence[str], eval_texts: Sequence[str], tokenizer=None,
                    orders: Sequence[int] = (1, 3, 5), smoothing: Smoothing = "kn",
                    add_k: float = 1.0) -> dict[str, float]:
    """Bits per byte of held-out text for a unigram (add-k) and n-gram (``smoothing``) baselines.

    Keys name the model: ``"bytes-1gram-add_k"``, ``"tokens-3gram-kn"`` … Over bytes always, and
    also over the tokenizer's ids when one is given (the same units the transformer sees).
    """
    units = [("bytes", byte_encoder())]
    if tokenizer is not None:
        units.append(("tokens", tokenizer_encoder(tokenizer)))
    out: dict[str, float] = {}
    for unit, (encode, V) in units:
        train = [encode(t) for t in train_texts]
        for n in orders:
            sm: Smoothing = "add_k" if n == 1 else smoothing
            lm = NGramLM(n, V, sm, k=add_k).fit(train)
            out[f"{unit}-{n}gram-{sm}"] = bits_per_byte(lm, eval_texts, encode)
    return out
