"""Tokenisation with the chat template, response-only loss masks, packing, and log-prob helpers.

This is the one place where text meets token ids (design §8). Everything a stage trains on goes
through :func:`encode_example` (SFT, RSFT, the pretraining mix) or :func:`encode_pair` (reward
model, DPO), and everything that needs per-example log-probs calls :func:`sequence_logprobs`.

**Boundaries are computed on token ids.** ``tok(p) + tok(r)`` is not ``tok(p + r)`` for BPE (a
merge can straddle the boundary), so we never tokenise the concatenated text. The prompt is the
chat template with the generation header (``add_generation_prompt=True``) as ids; the response is
``tok(response) + [eos]``; the example is their concatenation. That is exactly the sequence the
sampling engine produces at generation time (prompt ids, then sampled ids until EOS), so training
and sampling agree token for token.

**Loss mask convention.** ``loss_mask[i] == 1`` means token ``i`` is a *target*: its log-prob
(predicted from positions ``< i``) is trained / summed. The first response token and the EOS are
targets; prompt tokens are not (unless ``train_on_prompt``).

**Packing never lets one example attend to another.** Several examples share a row of
``seq_len`` tokens; each restarts its ``position_ids`` at 0, and the attention mask is
block-diagonal causal. Two ways to give that to a Hugging Face model are supported:

* ``attention="mask"`` (default): an explicit 4D additive float mask ``(B, 1, L, L)``. Every
  model that builds its mask with ``transformers.masking_utils.create_causal_mask`` returns a 4D
  mask as-is, and both the eager path (``scores + mask``) and SDPA (float ``attn_mask``) apply it.
  (A boolean 4D mask would be wrong on the eager path, which *adds* the mask.)
* ``attention="position_ids"``: no mask at all, only the restarting ``position_ids`` and
  ``use_cache=False``. transformers 5 then detects the packed format itself
  (``find_packed_sequence_indices``: a position that is not previous + 1 starts a new sequence)
  — but only when no 2D mask and no cache are passed, hence ``use_cache=False``. This is the form
  flash-attention varlen kernels want on GPU.

Both are tested to give per-example losses equal to running each example on its own, for Llama,
Qwen2 and GPT-2 (learned absolute positions, which is why position ids must restart).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from alignforge.data.records import Prompt, as_messages

Attention = Literal["mask", "position_ids"]


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


class Example(NamedTuple):
    """One tokenised training example: ids and the targets that carry loss (1) or not (0)."""

    input_ids: list[int]
    loss_mask: list[int]

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.input_ids)

    @property
    def n_loss(self) -> int:
        return sum(self.loss_mask)


@dataclass
class EncodeStats:
    """What encoding did: nothing is dropped or cut without being counted here."""

    examples: int = 0          # encoded (kept) examples
    truncated: int = 0         # kept, with the prompt cut from the left to fit max_len
    dropped: int = 0           # response alone did not fit: dropped
    prompt_tokens: int = 0
    response_tokens: int = 0   # including the EOS

    def summary(self) -> str:
        s = f"{self.examples} examples ({self.prompt_tokens} prompt + {self.response_tokens} response tokens)"
        if self.truncated or self.dropped:
            s += f"; {self.truncated} prompts truncated from the left, {self.dropped} dropped (response too long)"
        return s


def _eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token; set one (our tokenizers use '<|end|>')")
    return int(eos)


def pad_id_of(tokenizer) -> int:
    """The id used to fill padding. Padding is never attended to nor trained on, so a tokenizer
    without a pad token (GPT-2) can pad with EOS."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else _eos_id(tokenizer)


def _ensure_template(tokenizer) -> None:
    if getattr(tokenizer, "chat_template", None):
        return
    try:
        from alignforge.models.tokenizer import ensure_chat_template
    except ImportError as e:  # pragma: no cover - models/tokenizer.py is part of the package
        raise ValueError("tokenizer has no chat template and alignforge.models.tokenizer is unavailable") from e
    ensure_chat_template(tokenizer)


def prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """The chat-template ids of a prompt, ending with the assistant header (what generation continues)."""
    _ensure_template(tokenizer)
    ids = tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # older transformers returned a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def response_ids(tokenizer, response: str) -> list[int]:
    """``tok(response) + [eos]``, without BOS or other special tokens."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids] + [_eos_id(tokenizer)]


def shot_blocks(tokenizer, solved: Sequence[tuple[Prompt, str]]) -> list[list[int]]:
    """Solved examples for few-shot prompting, one id block each: the prompt's chat-template ids,
    the answer and eos — exactly the layout SFT trains on, so a prompted model sees finished
    dialogues in the format its open question then continues."""
    return [prompt_ids(tokenizer, prompt) + response_ids(tokenizer, answer) for prompt, answer in solved]


def _fit(p_ids: list[int], r_ids: list[int], max_len: Optional[int], min_prompt_tokens: int,
         stats: Optional[EncodeStats]) -> Optional[list[int]]:
    """Cut the prompt from the left so prompt+response fits ``max_len`` (``None`` = drop).

    The response is kept whole: a truncated response would teach the model to stop mid-answer
    (its EOS would be gone) or to answer something it never saw. The prompt keeps its *last*
    tokens, which hold the question and the assistant header that generation continues from.
    """
    if max_len is None or len(p_ids) + len(r_ids) <= max_len:
        return p_ids
    room = max_len - len(r_ids)
    if room < min(min_prompt_tokens, len(p_ids)) or room <= 0:
        if stats is not None:
            stats.dropped += 1
        return None
    if stats is not None:
        stats.truncated += 1
    return p_ids[-room:]


def encode_example(tokenizer, prompt: Prompt, response: str, *, max_len: Optional[int] = None,
                   train_on_prompt: bool = False, min_prompt_tokens: int = 8,
                   stats: Optional[EncodeStats] = None) -> Optional[Example]:
    """(prompt, response) → :class:`Example` ``(input_ids, loss_mask)``; ``None`` if it cannot fit.

    ``max_len``: the prompt is cut from the left when needed; an example whose response leaves
    fewer than ``min_prompt_tokens`` prompt tokens is dropped (and counted in ``stats``).
    ``train_on_prompt``: also put loss on the prompt tokens (prompt masking off).
    """
    r_ids = response_ids(tokenizer, response)
    p_ids = _fit(prompt_ids(tokenizer, prompt), r_ids, max_len, min_prompt_tokens, stats)
    if p_ids is None:
        return None
    # The very first token is never a target (nothing predicts it).
    mask = [0] + [int(train_on_prompt)] * (len(p_ids) - 1) + [1] * len(r_ids)
    if stats is not None:
        stats.examples += 1
        stats.prompt_tokens += len(p_ids)
        stats.response_tokens += len(r_ids)
    return Example(p_ids + r_ids, mask)


def encode_prompt(tokenizer, prompt: Prompt, max_len: Optional[int] = None) -> list[int]:
    """Prompt ids for generation (left-truncated to ``max_len``, keeping the assistant header)."""
    ids = prompt_ids(tokenizer, prompt)
    return ids[-max_len:] if max_len is not None and len(ids) > max_len else ids


def encode_pair(tokenizer, prompt: Prompt, chosen: str, rejected: str, *, max_len: Optional[int] = None,
                min_prompt_tokens: int = 8, stats: Optional[EncodeStats] = None
                ) -> Optional[tuple[Example, Example]]:
    """(prompt, chosen, rejected) → two examples sharing the same prompt ids (``None``: dropped).

    The prompt is cut for the *longer* response so chosen and rejected see the identical prompt —
    otherwise a log-ratio would compare answers to different questions.
    """
    p_ids = prompt_ids(tokenizer, prompt)
    c_ids, r_ids = response_ids(tokenizer, chosen), response_ids(tokenizer, rejected)
    longer = c_ids if len(c_ids) >= len(r_ids) else r_ids
    p_ids = _fit(p_ids, longer, max_len, min_prompt_tokens, stats)
    if p_ids is None:
        return None
    if stats is not None:
        stats.examples += 1
        stats.prompt_tokens += len(p_ids)
        stats.response_tokens += len(c_ids) + len(r_ids)
    pm = [0] * len(p_ids)
    return Example(p_ids + c_ids, pm + [1] * len(c_ids)), Example(p_ids + r_ids, pm + [1] * len(r_ids))


def encode_examples(tokenizer, pairs: Iterable[tuple[Prompt, str]], *, max_len: Optional[int] = None,
                    train_on_prompt: bool = False, min_prompt_tokens: int = 8
                    ) -> tuple[list[Example], EncodeStats]:
    """Encode many (prompt, response) pairs; dropped ones are counted in the returned stats."""
    stats = EncodeStats()
    out = []
    for prompt, response in pairs:
        ex = encode_example(tokenizer, prompt, response, max_len=max_len, train_on_prompt=train_on_prompt,
                            min_prompt_tokens=min_prompt_tokens, stats=stats)
        if ex is not None:
            out.append(ex)
    return out, stats


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Rows of one or more examples. ``segment_ids[b, t]`` is the index (into this batch's
    examples, ``0 .. n_examples-1``) of the example token ``t`` of row ``b`` belongs to, or -1
    for padding. Padding sits at the end of a row. ``example_ids[s]`` is the index, in the list
    given to :func:`collate` / :func:`make_batches`, of the example with segment id ``s`` — how
    per-example outputs of a packed, shuffled batch map back to the data (e.g. DPO pairs)."""

    input_ids: torch.Tensor      # (B, L) long
    loss_mask: torch.Tensor      # (B, L) bool: token is a trained target
    position_ids: torch.Tensor   # (B, L) long, restarting at 0 for every example (and the padding tail)
    segment_ids: torch.Tensor    # (B, L) long
    n_examples: int
    example_ids: list[int] = field(default_factory=list)

    @property
    def real_tokens(self) -> int:
        return int((self.segment_ids >= 0).sum())

    @property
    def pad_tokens(self) -> int:
        return int((self.segment_ids < 0).sum())

    @property
    def loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: Any) -> "Batch":
        return Batch(self.input_ids.to(device), self.loss_mask.to(device), self.position_ids.to(device),
                     self.segment_ids.to(device), self.n_examples, self.example_ids)

    def attention_mask_4d(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Block-diagonal causal additive mask (B, 1, L, L): 0 where allowed, dtype-min elsewhere.

        The padding tail is its own block (so no query row is fully masked, which would give NaN
        in softmax); it is never a target, so what it attends to does not matter.
        """
        B, L = self.segment_ids.shape
        block = torch.where(self.segment_ids >= 0, self.segment_ids, torch.full_like(self.segment_ids, -1))
        same = block[:, :, None] == block[:, None, :]
        causal = torch.ones(L, L, dtype=torch.bool, device=block.device).tril()
        allowed = same & causal
        mask = torch.zeros(B, 1, L, L, dtype=dtype, device=block.device)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        return mask

    def model_inputs(self, attention: Attention = "mask", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        """Keyword arguments for a Hugging Face causal LM ``forward``."""
        kw: dict[str, Any] = dict(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=False)
        if attention == "mask":
            kw["attention_mask"] = self.attention_mask_4d(dtype)
        elif attention != "position_ids":
            raise ValueError(f"attention must be 'mask' or 'position_ids', got {attention!r}")
        return kw


def collate(examples: Sequence[Example], rows: Sequence[Sequence[int]], pad_id: int,
            length: Optional[int] = None) -> Batch:
    """Build a :class:`Batch`: ``rows[b]`` lists the indices (into ``examples``) packed in row ``b``.

    ``length``: the row length (default: the longest row). Example ``rows[b][j]`` gets segment id
    = its position in the flattened ``rows`` order, so ``sequence_logprobs`` returns examples in
    that order.
    """
    lens = [sum(len(examples[i]) for i in row) for row in rows]
    L = length if length is not None else max(lens)
    if max(lens) > L:
        raise ValueError(f"a row holds {max(lens)} tokens, more than the row length {L}")
    B = len(rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.bool)
    pos = torch.zeros((B, L), dtype=torch.long)
    seg = torch.full((B, L), -1, dtype=torch.long)
    k = 0
    for b, row in enumerate(rows):
        t = 0
        for i in row:
            ex = examples[i]
            n = len(ex)
            ids[b, t:t + n] = torch.tensor(ex.input_ids)
            mask[b, t:t + n] = torch.tensor(ex.loss_mask, dtype=torch.bool)
            pos[b, t:t + n] = torch.arange(n)
            seg[b, t:t + n] = k
            k += 1
            t += n
        pos[b, t:] = torch.arange(L - t)  # the padding tail: its own sequence (see attention_mask_4d)
    return Batch(ids, mask, pos, seg, k, [i for row in rows for i in row])


def pack(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices grouped into rows of at most ``seq_len`` tokens.

    Longest first, each into the row with the least room that still fits it (a sorted list of
    (room, row) pairs, so O(n log n) comparisons). Rows come out in creation order.
    """
    for i, n in enumerate(lengths):
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens, more than seq_len={seq_len} (encode with max_len)")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            room, r = free.pop(j)
        else:
            room, r = seq_len, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(free, (room - n, r))
    return rows


@dataclass
class BatchPlan:
    """Batches for one pass over the data, and how much padding they carry."""

    batches: list[Batch] = field(default_factory=list)
    real_tokens: int = 0
    pad_tokens: int = 0
    rows: int = 0

    @property
    def pad_fraction(self) -> float:
        total = self.real_tokens + self.pad_tokens
        return self.pad_tokens / total if total else 0.0

    def summary(self) -> str:
        return (f"{len(self.batches)} batches, {self.rows} rows, {self.real_tokens} real tokens, "
                f"{self.pad_tokens} padding ({100 * self.pad_fraction:.1f}%)")


def make_batches(examples: Sequence[Example], *, seq_len: int, batch_size: int, pad_id: int,
                 mode: Literal["pack", "sorted", "pad"] = "pack", seed: int = 0,
                 shuffle: bool = True) -> BatchPlan:
    """Group examples into batches.

    * ``pack``: best-fit packing into rows of ``seq_len``, ``batch_size`` rows a batch; each
      batch is trimmed to its longest row.
    * ``sorted``: one example a row, examples sorted by length so a batch pads little (the
      padding-free-ish alternative to packing; simpler attention, more rows).
    * ``pad``: one example a row in (shuffled) data order, padded to the longest in the batch
      (the naive baseline, kept to measure what the others save).

    Every mode fills the same token budget, ``batch_size × seq_len`` positions a batch (for
    ``sorted``/``pad``: as many rows as fit once padded to the batch's longest), so a step costs
    about the same compute whatever the mode and tokens/s compare honestly. ``shuffle`` shuffles
    the data (``pad``) and the order of batches (all modes) with ``seed``.
    """
    rng = random.Random(seed)
    idx = list(range(len(examples)))
    if mode == "pack":
        packed = pack([len(e) for e in examples], seq_len)
        # Shuffle which rows share a batch (rows from best-fit come out roughly by length).
        if shuffle:
            rng.shuffle(packed)
        groups = [packed[i:i + batch_size] for i in range(0, len(packed), batch_size)]
    elif mode in ("sorted", "pad"):
        if mode == "sorted":
            idx.sort(key=lambda i: len(examples[i]))
        elif shuffle:
            rng.shuffle(idx)
        budget = batch_size * seq_len
        groups, group, longest = [], [], 0
        for i in idx:
            n = len(examples[i])
            if n > seq_len:
                raise ValueError(f"example {i} has {n} tokens, more than seq_len={seq_len}")
            if group and (len(group) + 1) * max(longest, n) > budget:
                groups.append(group)
                group, longest = [], 0
            group.append([i])
            longest = max(longest, n)
        if group:
            groups.append(group)
    else:
        raise ValueError(f"batching mode must be 'pack', 'sorted' or 'pad', got {mode!r}")
    if shuffle:
        rng.shuffle(groups)
    plan = BatchPlan()
    for rows in groups:
        batch = collate(examples, rows, pad_id)
        plan.batches.append(batch)
        plan.real_tokens += batch.real_tokens
        plan.pad_tokens += batch.pad_tokens
        plan.rows += len(rows)
    return plan


def batch_pairs(pairs: Sequence[tuple[Example, Example]], pad_id: int) -> Batch:
    """Chosen and rejected in one forward: rows ``[c_0 … c_{n-1}, r_0 … r_{n-1}]``, so
    ``sequence_logprobs(...)[:n]`` are the chosen and ``[n:]`` the rejected log-probs."""
    examples = [c for c, _ in pairs] + [r for _, r in pairs]
    return collate(examples, [[i] for i in range(len(examples))], pad_id)


# ---------------------------------------------------------------------------------------------
# Log-probs and losses
# ---------------------------------------------------------------------------------------------


# Causal LMs whose logits are exactly ``lm_head(model(...).last_hidden_state)`` (no logit scaling or
# soft-capping), so the head may run on a subset of positions.
_PLAIN_HEAD = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def plain_head(model) -> bool:
    """A Llama / Qwen2 model called directly (``model.model`` body, ``model.lm_head`` head): callers may
    run the two separately. A wrapped model (DDP, peft) is not: its forward hooks must see the call."""
    # The LoRA policy's base serving as the reference (models.load.AdaptersOffReference) is called the same way.
    return type(getattr(model, "plain_base", model)).__name__ in _PLAIN_HEAD


def token_logprobs(model, batch: Batch, attention: Attention = "mask", targets_only: bool = False) -> torch.Tensor:
    """(B, L) log p(token t | tokens < t of its own example); 0 at t = 0 and where nothing predicts.

    ``targets_only``: compute only the positions of ``batch.loss_mask`` (0 elsewhere). For a Llama /
    Qwen2 model called directly, the LM head and the log-softmax then run on the target tokens alone
    (sliced cross-entropy: SFT and DPO train on the answer, about half of the tokens, and the
    vocabulary-sized head is a quarter of a small model's matmuls). A wrapped model (DDP, peft) takes
    the full path: its forward hooks must see the call.
    """
    dtype = next(model.parameters()).dtype
    if targets_only and plain_head(model):
        from alignforge.generation import fp32_head

        hidden = model.model(**batch.model_inputs(attention, dtype)).last_hidden_state
        tgt = batch.loss_mask[:, 1:]  # position t-1 predicts target t
        logits = fp32_head(model.lm_head, hidden[:, :-1][tgt])  # fp32 under bf16 autocast: DPO's log-ratios
        nll = F.cross_entropy(logits.float(), batch.input_ids[:, 1:][tgt], reduction="none")
        lp = torch.zeros(tgt.shape, dtype=nll.dtype, device=nll.device).masked_scatter(tgt, -nll)
        return F.pad(lp, (1, 0))
    logits = model(**batch.model_inputs(attention, dtype)).logits
    # fp32: bf16 log-probs are too coarse for ratios and KL. cross_entropy never materialises a
    # second (B, L, V) log-softmax tensor, which matters for 150k-token vocabularies.
    B, L, V = logits.shape
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), batch.input_ids[:, 1:].reshape(-1),
                          reduction="none").view(B, L - 1)
    return F.pad(-nll, (1, 0))


def sequence_logprobs(model, batch: Batch, attention: Attention = "mask") -> torch.Tensor:
    """Sum of the log-probs of each example's target (response) tokens → ``(n_examples,)``.

    The loss mask of an example's first token is always 0, so a target never reads across an
    example boundary (packing) — and the mask makes sure it never attends across one either.
    """
    lp = token_logprobs(model, batch, attention, targets_only=True)
    return per_example_sum(lp, batch)


def per_example_sum(values: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Sum ``values`` (B, L) over each example's target tokens → ``(n_examples,)``."""
    w = values * batch.loss_mask
    seg = batch.segment_ids.clamp(min=0)
    out = torch.zeros(batch.n_examples, dtype=values.dtype, device=values.device)
    return out.index_add(0, seg.flatten(), w.flatten())


def lm_loss(model, batch: Batch, attention: Attention = "mask") -> tuple[torch.Tensor, int]:
    """(sum of target-token NLL, number of target tokens). Divide by the token count of the whole
    optimizer step (all micro-batches, all ranks) so every token weighs the same."""
    lp = token_logprobs(model, batch, attention, targets_only=True)
    return -(lp * batch.loss_mask).sum(), batch.loss_tokens
