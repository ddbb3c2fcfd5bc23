"""Chat-template encoding, loss masks, truncation, packing and per-example log-probs.

The central check: per-example log-probs of packed rows equal those of each example run alone
(Llama, Qwen2, GPT-2 — GPT-2 has learned absolute positions and no pad token), with both ways of
telling the model about the packing (4D mask, position ids).
"""

from __future__ import annotations

import pytest
import torch

from alignforge.data.batching import (
    EncodeStats,
    Example,
    batch_pairs,
    collate,
    encode_example,
    encode_examples,
    encode_pair,
    encode_prompt,
    lm_loss,
    make_batches,
    pack,
    pad_id_of,
    sequence_logprobs,
)
from alignforge.models.tokenizer import train_tokenizer

torch.set_num_threads(1)

CORPUS = [
    "Hello world. The cat sat on the mat.\n\nA dog ran to the park.",
    "What is 2+3? It is 5.\n\n\nOK. The sky is blue and the grass is green.",
    "Name three colours: red, green, blue. Answer in one word: yes.",
] * 40


def tiny_tokenizer(vocab_size: int = 320):
    """Our byte-level BPE with the chat template (ids 0-4 special), trained in milliseconds."""
    return train_tokenizer(CORPUS, vocab_size=vocab_size, min_frequency=2)


def gpt2_style_tokenizer():
    """A tokenizer like GPT-2's: byte-level BPE, eos '<|endoftext|>', no pad, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_model(arch: str, vocab_size: int, seed: int = 0, eos_id: int = 1):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                         bos_token_id=eos_id, eos_token_id=eos_id)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    return model.eval()


DEMOS = [
    ("What is 2+3?", "It is 5."),
    ("Name three colours.", "red, green, blue"),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}], "Hello."),
    ("Where did the dog run?", "\n\nA dog ran to the park."),  # BPE merges across the boundary
    ("Say yes", "yes"),
]


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def test_encode_example_layout_and_mask():
    tok = tiny_tokenizer()
    ex = encode_example(tok, "What is 2+3?", "It is 5.")
    p = encode_prompt(tok, "What is 2+3?")
    assert tok.decode(p) == "<|user|>\nWhat is 2+3?<|end|>\n<|assistant|>\n"
    r = tok("It is 5.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.input_ids == p + r
    assert ex.loss_mask == [0] * len(p) + [1] * len(r)
    assert tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m]) == "It is 5.<|end|>"
    # prompt masking off: every token but the first (nothing predicts it) is a target
    ex2 = encode_example(tok, "What is 2+3?", "It is 5.", train_on_prompt=True)
    assert ex2.loss_mask == [0] + [1] * (len(ex2.input_ids) - 1)


def test_boundary_is_computed_on_token_ids():
    """tok(p) + tok(r) != tok(p + r) here ("\\n" + "\\n\\n" merges); training must match generation."""
    tok = tiny_tokenizer()
    prompt, response = "Where did the dog run?", "\n\nA dog ran."
    p = encode_prompt(tok, prompt)
    joined = tok(tok.decode(p) + response, add_special_tokens=False)["input_ids"]
    separate = p + tok(response, add_special_tokens=False)["input_ids"]
    assert joined != separate, "the corpus no longer produces a straddling merge; pick another example"
    ex = encode_example(tok, prompt, response)
    # the prompt part is exactly what the sampling engine is given, the rest exactly tok(response)+eos
    assert ex.input_ids[:len(p)] == p
    assert ex.input_ids[len(p):] == tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ex.input_ids[len(p):-1]) == response


def test_tokenizer_without_template_or_pad_gets_the_fallback():
    tok = gpt2_style_tokenizer()
    assert tok.chat_template is None and tok.pad_token is None
    ex = encode_example(tok, "Say yes", "yes")
    text = tok.decode(ex.input_ids)
    assert text == "### User:\nSay yes<|endoftext|>\n### Assistant:\nyes<|endoftext|>"
    assert pad_id_of(tok) == tok.eos_token_id


def test_truncation_keeps_response_and_counts():
    tok = tiny_tokenizer()
    long_prompt = "The cat sat on the mat. " * 20
    full = encode_example(tok, long_prompt, "It is 5.")
    n_resp = sum(full.loss_mask)
    stats = EncodeStats()
    ex = encode_example(tok, long_prompt, "It is 5.", max_len=n_resp + 10, stats=stats)
    assert len(ex.input_ids) == n_resp + 10
    assert ex.input_ids[-n_resp:] == full.input_ids[-n_resp:]          # the response is whole
    assert ex.input_ids[:10] == full.input_ids[len(full.input_ids) - n_resp - 10:-n_resp]  # prompt's tail kept
    assert (stats.truncated, stats.dropped, stats.examples) == (1, 0, 1)
    # too little room left for the prompt: dropped, and counted
    assert encode_example(tok, long_prompt, "It is 5.", max_len=n_resp + 3, stats=stats) is None
    assert (stats.truncated, stats.dropped, stats.examples) == (1, 1, 1)
    exs, st = encode_examples(tok, [(long_prompt, "It is 5."), ("Say yes", "yes"), ("Say yes", long_prompt)],
                              max_len=n_resp + 10)
    assert len(exs) == 2 and (st.truncated, st.dropped) == (1, 1) and "1 dropped" in st.summary()


def test_encode_pair_shares_the_prompt():
    tok = tiny_tokenizer()
    c, r = encode_pair(tok, "Say yes", "yes", "no, the sky is blue")
    p = encode_prompt(tok, "Say yes")
    assert c.input_ids[:len(p)] == p and r.input_ids[:len(p)] == p
    assert c == encode_example(tok, "Say yes", "yes") and r == encode_example(tok, "Say yes", "no, the sky is blue")


# ---------------------------------------------------------------------------------------------
# Packing and masks
# ---------------------------------------------------------------------------------------------


def test_pack_best_fit_decreasing_by_hand():
    # 5 -> new row0 (room 1); 4 -> new row1 (room 2); 3 -> new row2 (room 3);
    # 2 -> tightest fit is row1 (room 2 -> 0); 1 -> row0 (room 1 -> 0)
    assert pack([5, 4, 3, 2, 1], 6) == [[0, 4], [1, 3], [2]]
    rows = pack([3, 7, 2, 2, 9, 1, 4], 10)
    assert sorted(i for r in rows for i in r) == list(range(7))
    assert all(sum([3, 7, 2, 2, 9, 1, 4][i] for i in r) <= 10 for r in rows)
    with pytest.raises(ValueError, match="more than seq_len"):
        pack([11], 10)


def test_collate_and_4d_mask_by_hand():
    a = Example([10, 11, 12], [0, 1, 1])
    b = Example([20, 21], [0, 1])
    batch = collate([a, b], [[0, 1]], pad_id=0, length=6)
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert batch.segment_ids.tolist() == [[0, 0, 0, 1, 1, -1]]
    assert batch.loss_mask.tolist() == [[False, True, True, False, True, False]]
    assert (batch.real_tokens, batch.pad_tokens, batch.loss_tokens, batch.n_examples) == (5, 1, 3, 2)
    assert collate([a, b], [[1], [0]], pad_id=0).example_ids == [1, 0]
    allowed = (batch.attention_mask_4d()[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],   # example b starts: it cannot see example a
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],   # padding sees only itself (never a fully masked row -> no NaN)
    ]


def test_make_batches_modes_and_padding_accounting():
    lengths = [5, 30, 8, 17, 3, 25, 12, 9, 40, 2, 6, 14]
    examples = [Example(list(range(1, n + 1)), [0] + [1] * (n - 1)) for n in lengths]
    total = sum(lengths)
    plans = {m: make_batches(examples, seq_len=48, batch_size=2, pad_id=0, mode=m, seed=1)
             for m in ("pack", "sorted", "pad")}
    for mode, plan in plans.items():
        assert plan.real_tokens == total, mode
        seen = sorted(len(b.input_ids[b.segment_ids == s]) for b in plan.batches for s in range(b.n_examples))
        assert seen == sorted(lengths), mode   # every example exactly once
    # naive padding wastes the most; packing and length-sorting much less
    assert plans["pack"].pad_tokens < plans["pad"].pad_tokens
    assert plans["sorted"].pad_tokens < plans["pad"].pad_tokens
    assert plans["pack"].rows < plans["sorted"].rows
    assert "padding" in plans["pack"].summary()


# ---------------------------------------------------------------------------------------------
# Packed == unpacked, against independent references
# ---------------------------------------------------------------------------------------------


def _alone(model, ex: Example) -> float:
    """Reference: one example, no mask, no packing; sum of target log-probs by hand."""
    ids = torch.tensor([ex.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    lp = torch.log_softmax(logits.double(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float((lp * torch.tensor(ex.loss_mask[1:], dtype=torch.float64)).sum())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attention", ["mask", "position_ids"])
def test_packed_logprobs_equal_unpacked(arch, attention):
    tok = gpt2_style_tokenizer() if arch == "gpt2" else tiny_tokenizer()
    model = tiny_model(arch, len(tok), eos_id=tok.eos_token_id)
    examples, _ = encode_examples(tok, DEMOS)
    ref = torch.tensor([_alone(model, ex) for ex in examples], dtype=torch.float64)
    plan = make_batches(examples, seq_len=96, batch_size=2, pad_id=pad_id_of(tok), mode="pack", seed=3)
    assert any(b.n_examples > b.input_ids.shape[0] for b in plan.batches), "nothing was packed"
    packed = torch.zeros(len(examples), dtype=torch.float64)
    with torch.no_grad():
        for batch in plan.batches:
            lp = sequence_logprobs(model, batch, attention)
            for s, i in enumerate(batch.example_ids):  # segment s of this batch is examples[i]
                assert batch.input_ids[batch.segment_ids == s].tolist() == examples[i].input_ids
                packed[i] = float(lp[s])
    torch.testing.assert_close(packed, ref, rtol=1e-5, atol=1e-4)


def test_packing_mask_is_needed():
    """Sanity of the test above: without the block mask, packed examples *do* see each other."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    examples, _ = encode_examples(tok, DEMOS[:2])
    batch = collate(examples, [[0, 1]], pad_id_of(tok))
    with torch.no_grad():
        leaky = model(input_ids=batch.input_ids).logits  # plain causal mask, positions 0..L-1
        ok = sequence_logprobs(model, batch)
    second = batch.segment_ids[0] == 1
    lp = torch.log_softmax(leaky[0, :-1], -1).gather(-1, batch.input_ids[0, 1:, None]).squeeze(-1)
    leaky_second = float((lp * batch.loss_mask[0, 1:] * second[1:]).sum())
    assert abs(leaky_second - float(ok[1])) > 1e-3
    assert abs(float(ok[1]) - _alone(model, examples[1])) < 1e-4


def test_pairs_in_one_forward_and_lm_loss_matches_hf_labels():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    pairs = [encode_pair(tok, "Say yes", "yes", "no"), encode_pair(tok, "What is 2+3?", "It is 5.", "It is 6.")]
    batch = batch_pairs(pairs, pad_id_of(tok))
    with torch.no_grad():
        lp = sequence_logprobs(model, batch)
    ref = [_alone(model, c) for c, _ in pairs] + [_alone(model, r) for _, r in pairs]
    torch.testing.assert_close(lp.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-4)

    # lm_loss (sum, count) against transformers' own label loss (mean over labels != -100)
    ex = pairs[1][0]
    one = collate([ex], [[0]], pad_id_of(tok))
    labels = torch.tensor([[t if m else -100 for t, m in zip(ex.input_ids, ex.loss_mask)]])
    with torch.no_grad():
        hf = model(input_ids=one.input_ids, labels=labels).loss
        total, n = lm_loss(model, one)
    assert n == sum(ex.loss_mask)
    torch.testing.assert_close(total / n, hf, rtol=1e-5, atol=1e-6)


def test_targets_only_logprobs_equal_the_full_head_with_the_same_gradients():
    """The sliced LM head (``token_logprobs(..., targets_only=True)``, what lm_loss and
    sequence_logprobs use) gives the full path's log-probs at every target and 0 elsewhere, and the
    same gradients; a wrapped model (not called directly) takes the full path."""
    from alignforge.data.batching import token_logprobs

    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    examples = [encode_example(tok, "Say yes", "yes"), encode_example(tok, "What is 2+3?", "It is 5."),
                encode_example(tok, "Name a colour", "Blue.")]
    batch = collate(examples, [[0, 1], [2]], pad_id_of(tok))
    full = token_logprobs(model, batch)
    (-(full * batch.loss_mask).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    sliced = token_logprobs(model, batch, targets_only=True)
    (-(sliced * batch.loss_mask).sum()).backward()
    torch.testing.assert_close(sliced, full * batch.loss_mask, rtol=1e-5, atol=1e-6)
    assert bool((sliced[~batch.loss_mask] == 0).all())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)

    class Wrapped(torch.nn.Module):  # stands for DDP: only its own forward may be called
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    with torch.no_grad():
        torch.testing.assert_close(token_logprobs(Wrapped(model), batch, targets_only=True), full.detach())
