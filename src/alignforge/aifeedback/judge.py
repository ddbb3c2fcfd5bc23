"""The AI judge of RLAIF / Constitutional AI: which of two responses is better under a principle?

The question is :func:`alignforge.aifeedback.constitution.judge_prompt` (the one renderer: the world's judging
demonstrations use it too); the judge answers ``(A)`` or ``(B)``. Two backends give the
probability that it answers ``(A)``:

* :class:`LocalJudge` — any alignforge / local Hugging Face causal LM, scored, never sampled: the
  question goes through the chat template as a user turn (:mod:`alignforge.data.batching`, token
  ids), and the log-probs of the answer tokens ``(A)`` and ``(B)`` after the assistant header are
  read in one batched forward (2 rows per question). ``P(A) = e^{ℓ_A} / (e^{ℓ_A} + e^{ℓ_B})``: the
  soft preference of the CAI paper's feedback model (normalised choice probabilities).
* :class:`EndpointJudge` — any OpenAI-compatible ``/v1/chat/completions`` endpoint (``alignforge
  serve``, vLLM, a hosted model) through stdlib ``urllib``: temperature 0, and the reply parsed by
  :func:`parse_verdict` to 1 (A), 0 (B) or ``None`` (unparsable → the judge abstains, counted).

**Position bias is removed by asking both orders.** For the pair (x, y) the judge is asked once
with x as (A) and once with x as (B)::

    p_ab = P(answer (A) | x shown first)      p_ba = P(answer (B) | x shown second)
    p(x ≻ y) = ½ (p_ab + p_ba)

If the two orders disagree (one prefers x, the other y — or either is exactly ½) the verdict is a
**tie** (``tie: true``), counted as position-inconsistent: a judge that always says "(A)" gives
p_ab = 1, p_ba = 0, p = ½ and only ties. With several principles at once (``ensemble``) p_ab and
p_ba are each the mean over the principles' answers (an abstaining answer is left out of its mean;
an order with no answer at all abstains the pair).

**Strength** (design §8: 0 negligibly … 3 significantly better) comes from the confidence
``c = |2p − 1|`` of a consistent verdict: ``c < 0.2`` → 0, ``< 0.5`` → 1, ``< 0.8`` → 2, else 3
(:data:`STRENGTH_CUTS`). An endpoint's hard verdicts that agree in both orders are p = 1: strength 3.

Nothing here reads the gold judge (``tests/test_import_boundary.py``): the judge is training code.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from alignforge.aifeedback.constitution import JUDGE_CHOICES, Principle, judge_prompt
from alignforge.data.records import Comparison, Prompt

#: Confidence |2p − 1| cut points for strength 1, 2, 3 (below the first: strength 0).
STRENGTH_CUTS = (0.2, 0.5, 0.8)


class JudgeError(RuntimeError):
    """The judge could not be asked at all (endpoint unreachable, HTTP error): not an abstention."""


# ---------------------------------------------------------------------------------------------
# Verdicts: both orders → one preference
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The judge's preference between x and y, from both presentation orders.

    ``p``: P(x ≻ y) = ½(p_ab + p_ba) (None when abstained); ``p_ab``: P(x) with x shown first;
    ``p_ba``: P(x) with x shown second; ``consistent``: both orders prefer the same response;
    ``tie``: not consistent (or abstained) — the label carries no preference.
    """

    p: float | None
    p_ab: float | None
    p_ba: float | None
    consistent: bool
    abstained: bool

    @property
    def tie(self) -> bool:
        return not self.consistent

    @property
    def x_wins(self) -> bool:
        return self.consistent and self.p is not None and self.p > 0.5


def combine_orders(p_ab: float | None, p_ba: float | None) -> Verdict:
    """One verdict from P(x) in each order (None = that order abstained)."""
    if p_ab is None or p_ba is None:
        return Verdict(None, p_ab, p_ba, consistent=False, abstained=True)
    # Each order decides on its own; an exact ½ decides nothing, so it cannot agree with the other.
    consistent = (p_ab > 0.5 and p_ba > 0.5) or (p_ab < 0.5 and p_ba < 0.5)
    return Verdict(0.5 * (p_ab + p_ba), p_ab, p_ba, consistent=consistent, abstained=False)


def strength_of(p: float, cuts: Sequence[float] = STRENGTH_CUTS) -> int:
    """Strength 0..3 of a preference with probability ``p`` for the winner (or loser): |2p − 1| vs cuts."""
    c = round(abs(2.0 * p - 1.0), 9)  # 2 × 0.6 − 1 is 0.1999…: a cut point must not move by float error
    return sum(c >= cut for cut in cuts)


# ---------------------------------------------------------------------------------------------
# Backends: P(the judge answers "(A)") for each question
# ---------------------------------------------------------------------------------------------


class Judge(Protocol):
    id: str

    def first_probs(self, questions: Sequence[str]) -> list[float | None]:
        """P(answer = (A)) for each judge question (None: abstained)."""


class LocalJudge:
    """A causal LM scored on the answer tokens: P(A) = softmax(ℓ_A, ℓ_B)[0], no sampling.

    ``ℓ_X`` = Σ log p(answer tokens of X | chat-templated question), the answer tokenised on its
    own (no EOS): what a model SFT'd on ``question → "(A)"`` demonstrations puts its mass on.
    Questions longer than ``max_len`` minus the answer are cut from the left (the options and
    "The answer is:" sit at the end) and counted in ``truncated``.
    """

    def __init__(self, model, tokenizer, *, judge_id: str = "local", batch_size: int = 32,
                 max_len: int | None = None):
        from alignforge.data.batching import pad_id_of

        self.model, self.tok, self.id = model, tokenizer, judge_id
        self.batch_size = max(1, int(batch_size))
        ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.max_len = int(max_len or ctx or 1024)
        self.pad_id = pad_id_of(tokenizer)
        self.answers = [[int(i) for i in tokenizer(a, add_special_tokens=False)["input_ids"]] for a in JUDGE_CHOICES]
        if not all(self.answers) or self.answers[0] == self.answers[1]:
            raise ValueError(f"the tokenizer cannot tell the answers {JUDGE_CHOICES} apart: {self.answers}")
        self.truncated = 0

    def examples(self, question: str):
        """The two scored sequences (question + "(A)", question + "(B)") as batching Examples."""
        from alignforge.data.batching import Example, prompt_ids

        p_ids = prompt_ids(self.tok, question)
        room = self.max_len - max(len(a) for a in self.answers)
        if len(p_ids) > room:
            p_ids = p_ids[-room:]
            self.truncated += 1
        return [Example(p_ids + a, [0] * len(p_ids) + [1] * len(a)) for a in self.answers]

    def first_probs(self, questions: Sequence[str]) -> list[float | None]:
        import torch

        from alignforge.data.batching import collate, sequence_logprobs

        pairs = [self.examples(q) for q in questions]
        # Longest first, so each forward pads little; results go back to question order.
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
        out: list[float | None] = [None] * len(pairs)
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                examples = [ex for i in idx for ex in pairs[i]]
                batch = collate(examples, [[j] for j in range(len(examples))], self.pad_id).to(device)
                lp = sequence_logprobs(self.model, batch).view(len(idx), 2).double()
                p_a = torch.softmax(lp, dim=-1)[:, 0]
                for i, p in zip(idx, p_a.tolist()):
                    out[i] = float(p)
        self.model.train(was_training)
        return out


_CHOICE = re.compile(r"\(([AB])\)")
_BARE = re.compile(r"^\W*([AB])\W*$")


def parse_verdict(text: str) -> float | None:
    """An endpoint's reply → 1.0 ("(A)"), 0.0 ("(B)") or None (abstain).

    The reply must name exactly one of the options as ``(A)``/``(B)`` (any number of times), or be
    a bare ``A``/``B``; a reply naming both, or neither, is unparsable.
    """
    found = set(_CHOICE.findall(text))
    if not found:
        bare = _BARE.match(text.strip())
        found = {bare.group(1)} if bare else set()
    if len(found) != 1:
        return None
    return 1.0 if found == {"A"} else 0.0


class EndpointJudge:
    """An OpenAI-compatible chat-completions endpoint, asked at temperature 0 (stdlib ``urllib``).

    ``api_key_env``: the name of an environment variable holding the key, sent as a Bearer token
    (never a key in a config file). Requests run ``concurrency`` at a time (``alignforge serve``
    batches concurrent requests). Replies are kept in ``replies`` (the last call's) for audit.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 60.0,
                 max_tokens: int = 8, concurrency: int = 4, judge_id: str | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.max_tokens = model, float(timeout_s), int(max_tokens)
        self.concurrency = max(1, int(concurrency))
        self.id = judge_id or f"{model}@{base_url.rstrip('/')}"
        self.key = None
        if api_key_env:
            self.key = os.environ.get(api_key_env)
            if not self.key:
                raise JudgeError(f"judge.api_key_env={api_key_env!r}: that environment variable is not set")
        self.replies: list[str] = []

    def ask(self, question: str) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": question}],
                "temperature": 0, "max_tokens": self.max_tokens}
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            raise JudgeError(f"judge endpoint {self.url} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise JudgeError(f"judge endpoint {self.url} unreachable: {getattr(e, 'reason', e)}") from None
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.url}: not a chat completion: {json.dumps(data)[:300]}") from None

    def first_probs(self, questions: Sequence[str]) -> list[float | None]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            self.replies = list(pool.map(self.ask, questions))
        return [parse_verdict(r) for r in self.replies]


def load_judge(section: Any, device: str = "cpu") -> Judge:
    """The judge of a config's ``judge`` section: ``init`` (local model) or ``base_url`` + ``model``."""
    if section.init:
        from alignforge.models.load import load_causal_lm

        model, tok = load_causal_lm(section.init, device=device, tokenizer=getattr(section, "tokenizer", None))
        return LocalJudge(model, tok, judge_id=str(section.init), batch_size=section.batch_size,
                          max_len=section.max_len)
    return EndpointJudge(section.base_url, section.model, api_key_env=section.api_key_env,
                         timeout_s=section.timeout_s, max_tokens=section.max_tokens,
                         concurrency=section.concurrency)


# ---------------------------------------------------------------------------------------------
# Pairs → verdicts → comparison records
# ---------------------------------------------------------------------------------------------


@dataclass
class PairQuestion:
    """One pair to judge under one or more principles (several = the ensemble mean)."""

    prompt: Prompt
    x: str
    y: str
    principles: list[Principle]
    meta: dict[str, Any] = field(default_factory=dict)


def judge_pairs(judge: Judge, pairs: Sequence[PairQuestion]) -> list[Verdict]:
    """Ask ``judge`` every pair in both orders (one backend call for all questions)."""
    questions: list[str] = []
    for q in pairs:
        for pr in q.principles:
            questions.append(judge_prompt(pr, q.prompt, q.x, q.y))
            questions.append(judge_prompt(pr, q.prompt, q.y, q.x))
    probs = judge.first_probs(questions) if questions else []
    out, k = [], 0
    for q in pairs:
        ab, ba = [], []
        for _ in q.principles:
            a, b = probs[k], probs[k + 1]
            k += 2
            if a is not None:
                ab.append(a)
            if b is not None:
                ba.append(1.0 - b)  # x is shown second: the judge prefers x when it answers (B)
        out.append(combine_orders(sum(ab) / len(ab) if ab else None, sum(ba) / len(ba) if ba else None))
    return out


def to_comparison(q: PairQuestion, v: Verdict, judge_id: str, principle: str, **provenance: Any) -> Comparison:
    """The comparison record of a (non-abstained) verdict: ``annotator="ai:<judge id>"``,
    ``source="rlaif"``, ``meta.principle``, ``meta.p`` = P(chosen ≻ rejected), ``meta.consistent``."""
    if v.abstained or v.p is None:
        raise ValueError("an abstained verdict has no comparison record (count it instead)")
    x_first = v.p >= 0.5 if v.tie else v.x_wins
    chosen, rejected = (q.x, q.y) if x_first else (q.y, q.x)
    p = v.p if x_first else 1.0 - v.p
    meta = {"principle": principle, "p": round(p, 6), "consistent": v.consistent,
            "p_orders": [round(v.p_ab, 6), round(v.p_ba, 6)], **q.meta}
    return Comparison(prompt=q.prompt, chosen=chosen, rejected=rejected, tie=v.tie,
                      strength=None if v.tie else strength_of(p), annotator=f"ai:{judge_id}", source="rlaif",
                      meta=meta, **provenance)

