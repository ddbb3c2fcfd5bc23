"""The sampling engine against independent references.

References are written here from scratch: a full forward over the whole (unpadded) sequence at
every step — no cache, no padding, one prompt at a time — and log-softmax of those logits. Models
are tiny random Llama / Qwen2 / GPT-2 / GPT-NeoX (vocab 100, hidden 32), re-initialised with larger
weights so next-token distributions are peaked and greedy choices are not float-noise ties.
"""

from __future__ import annotations

import pytest
import torch

from alignforge.generation import (
    Generation,
    SamplingParams,
    encode_prompts,
    generate,
    generate_text,
    truncate_logits,
)
from alignforge.generation.decoders import _fast_path_supported
from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

torch.set_num_threads(1)

V, PAD = 100, 0
# (architecture, engine backend): the fast Llama-family path and the generic HF path.
CASES = [("llama", "fast"), ("llama", "hf"), ("qwen2", "fast"), ("qwen2", "hf"), ("gpt2", "hf"),
         ("gpt_neox", "hf")]


def peaked(model, seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


_MODELS: dict = {}


def model_for(arch, seed=0):
    if (arch, seed) not in _MODELS:
        _MODELS[arch, seed] = peaked(tiny_random_model(arch, vocab_size=V, seed=seed), seed)
    return _MODELS[arch, seed]


def prompts(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    lens = [3, 9, 5, 1, 7, 4, 8, 2][:n]
    return [torch.randint(3, V, (k,), generator=g).tolist() for k in lens]


@torch.no_grad()
def full_logits(model, seq):
    """Logits at every position of one unpadded sequence, no cache."""
    return model(input_ids=torch.tensor([seq]), use_cache=False).logits[0].float()


def ref_greedy(model, prompt, n, stops=()):
    seq, out = list(prompt), []
    for _ in range(n):
        tok = int(full_logits(model, seq)[-1].argmax())
        out.append(tok)
        seq.append(tok)
        if tok in stops:
            break
    return out


def ref_logprobs(model, prompt, response, temperature=1.0):
    logits = full_logits(model, prompt + response)[len(prompt) - 1 : -1]
    return (logits / temperature).log_softmax(-1).gather(1, torch.tensor(response)[:, None]).squeeze(1)


# ------------------------------------------------------------------------------ top-k / top-p filter


def kept(logits):
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    assert kept(truncate_logits(logits, top_p=0.45)) == {1}  # 0.5 alone reaches 0.45
    assert kept(truncate_logits(logits, top_p=0.6)) == {1, 3}  # 0.5 < 0.6 <= 0.8
    assert kept(truncate_logits(logits, top_p=0.85)) == {1, 3, 2}  # 0.8 < 0.85 <= 0.95
    assert kept(truncate_logits(logits, top_p=0.97)) == {0, 1, 2, 3}
    assert torch.equal(truncate_logits(logits), logits)  # both filters off: untouched
    # kept logits are unchanged, so renormalising gives the nucleus distribution
    out = truncate_logits(logits, top_p=0.6)
    assert torch.allclose(out.softmax(-1), torch.tensor([[0, 0.5 / 0.8, 0, 0.3 / 0.8]]))


def test_top_k_then_top_p_on_renormalised_mass():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    assert kept(truncate_logits(logits, top_k=2)) == {1, 3}
    assert kept(truncate_logits(logits, top_k=1)) == {1}
    # Without top-k the mass before token 2 is 0.8 < 0.83, so it stays; after top-k=3 the kept
    # mass is renormalised (0.8 / 0.95 = 0.842 >= 0.83) and token 2 goes, as in HF's order.
    assert kept(truncate_logits(logits, top_p=0.83)) == {1, 3, 2}
    assert kept(truncate_logits(logits, top_k=3, top_p=0.83)) == {1, 3}


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    sp = SamplingParams(stop_token_ids=[5, 6], stop_strings=["x"])
    assert sp.stop_token_ids == (5, 6) and sp.stop_strings == ("x",)
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    assert not SamplingParams().greedy


# ------------------------------------------------------------------------------ engine vs references


def test_backend_selection():
    assert _fast_path_supported(model_for("llama")) and _fast_path_supported(model_for("qwen2"))
    assert not _fast_path_supported(model_for("gpt2")) and not _fast_path_supported(model_for("gpt_neox"))
    with pytest.raises(ValueError, match="not a supported Llama-family"):
        generate(model_for("gpt2"), [[5]], eos_token_id=None, pad_token_id=PAD, backend="fast")


@pytest.mark.parametrize("arch,backend", CASES)
def test_greedy_cached_batch_equals_uncached_one_by_one(arch, backend):
    """Cache ≡ no cache, and left padding changes nothing: the batch is padded, the reference is not."""
    model, ps = model_for(arch), prompts()
    gen = generate(model, ps, SamplingParams(temperature=0, max_new_tokens=12), eos_token_id=None,
                   pad_token_id=PAD, backend=backend)
    for i, p in enumerate(ps):
        ref = ref_greedy(model, p, 12)
        assert gen.sequences[i] == ref, f"prompt {i}"
        assert torch.allclose(gen.logprobs[i], ref_logprobs(model, p, ref), atol=1e-4)
    assert gen.finish_reason == ["length"] * len(ps)
    assert gen.prompt_lengths == [len(p) for p in ps]


@pytest.mark.parametrize("arch,backend", CASES)
def test_batch_equals_one_by_one_through_the_engine(arch, backend):
    model, ps = model_for(arch), prompts()
    sp = SamplingParams(temperature=0, max_new_tokens=8)
    batch = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD, backend=backend)
    for i, p in enumerate(ps):
        one = generate(model, [p], sp, eos_token_id=None, pad_token_id=PAD, backend=backend)
        assert one.sequences[0] == batch.sequences[i]
        assert torch.allclose(one.logprobs[0], batch.logprobs[i], atol=1e-5)


SAMPLING = [
    SamplingParams(temperature=1.0, max_new_tokens=10, seed=3),
    SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=10, seed=4),
    SamplingParams(temperature=1.3, top_k=5, max_new_tokens=10, seed=5),
    SamplingParams(temperature=0.8, top_k=10, top_p=0.8, max_new_tokens=10, seed=6),
]


@pytest.mark.parametrize("arch,backend", CASES)
@pytest.mark.parametrize("sp", SAMPLING, ids=["T1", "T0.7-p0.9", "T1.3-k5", "T0.8-k10-p0.8"])
def test_logprobs_equal_fresh_forward_at_sampling_temperature(arch, backend, sp):
    """Design §8: log_softmax(logits / T) of the sampled token, before top-k/top-p truncation."""
    model, ps = model_for(arch), prompts()
    gen = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD, backend=backend)
    for i, p in enumerate(ps):
        ref = ref_logprobs(model, p, gen.sequences[i], sp.temperature)
        assert torch.allclose(gen.logprobs[i], ref, atol=1e-4), f"prompt {i}"
        if sp.top_p < 1 or sp.top_k:  # truncated tokens are never sampled
            logits = full_logits(model, p + gen.sequences[i])[len(p) - 1 : -1] / sp.temperature
            allowed = torch.isfinite(truncate_logits(logits.log_softmax(-1), sp.top_k, sp.top_p))
            assert allowed.gather(1, torch.tensor(gen.sequences[i])[:, None]).all()


def test_top_k_1_is_greedy_with_t1_logprobs():
    model, ps = model_for("llama"), prompts()
    greedy = generate(model, ps, SamplingParams(temperature=0, max_new_tokens=8), eos_token_id=None,
                      pad_token_id=PAD)
    topk1 = generate(model, ps, SamplingParams(temperature=0.5, top_k=1, max_new_tokens=8, seed=1),
                     eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(greedy.response_ids, topk1.response_ids)
    assert torch.allclose(greedy.response_logprobs, topk1.response_logprobs)
    p, r = ps[0], topk1.sequences[0]
    assert torch.allclose(topk1.logprobs[0], ref_logprobs(model, p, r, 1.0), atol=1e-4)


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_seeded_sampling_is_deterministic(backend):
    model, ps = model_for("llama"), prompts()
    sp = SamplingParams(temperature=1.0, max_new_tokens=10, seed=11)
    a = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD, backend=backend)
    b = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD, backend=backend)
    c = generate(model, ps, SamplingParams(temperature=1.0, max_new_tokens=10), eos_token_id=None,
                 pad_token_id=PAD, backend=backend, generator=torch.Generator().manual_seed(11))
    d = generate(model, ps, SamplingParams(temperature=1.0, max_new_tokens=10, seed=12), eos_token_id=None,
                 pad_token_id=PAD, backend=backend)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_ids, c.response_ids)
    assert not torch.equal(a.response_ids, d.response_ids)


def test_sampled_frequencies_match_the_truncated_distribution():
    """The inverse-CDF sampler draws from softmax(truncated logits): chi-square-free check on
    one fixed distribution with many rows (each row one draw)."""
    from alignforge.generation.sampling import _sample_next

    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    tok, lp = _sample_next(logits, SamplingParams(top_p=0.85), g)  # keeps {1, 3, 2}, mass 0.95
    freq = torch.bincount(tok, minlength=4).float() / len(tok)
    assert freq[0] == 0
    assert torch.allclose(freq, torch.tensor([0, 0.5, 0.15, 0.3]) / 0.95, atol=0.015)
    assert torch.allclose(lp, probs.log()[tok])  # pre-truncation log-probs


# ------------------------------------------------------------------------------ stopping, compaction


@pytest.mark.parametrize("arch,backend", [("llama", "fast"), ("gpt2", "hf")])
def test_stop_tokens_end_rows_and_compaction_changes_nothing(arch, backend):
    model, ps = model_for(arch), prompts(8)
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    free = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD, backend=backend)
    # Stop ids: the 3rd token of prompt 0 (eos) and the 6th of prompt 1 (a stop_token_id).
    eos, extra = free.sequences[0][2], free.sequences[1][5]
    stops = {eos, extra}
    runs = [generate(model, ps, SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=(extra,)),
                     eos_token_id=eos, pad_token_id=PAD, backend=backend, compact_below=c)
            for c in (0.0, 0.5, 1.0)]  # never / at half / as soon as any row finishes
    for gen in runs:
        for i, p in enumerate(ps):
            ref = ref_greedy(model, p, 12, stops)
            assert gen.sequences[i] == ref
            assert gen.finish_reason[i] == ("stop" if ref[-1] in stops else "length")
            assert torch.allclose(gen.logprobs[i], ref_logprobs(model, p, ref), atol=1e-4)
        n = gen.response_mask.sum(1)
        assert torch.all(gen.response_ids[~gen.response_mask] == PAD)
        assert torch.all(gen.response_logprobs[~gen.response_mask] == 0)
        assert gen.response_ids.shape[1] == int(n.max())
    assert runs[0].finish_reason[0] == "stop" and len(runs[0].sequences[0]) <= 3


def char_tokenizer():
    """Characters as tokens (decode = concatenation), so stop strings span several tokens."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|pad|>": 0, "<|end|>": 1, "<|unk|>": 2, " ": 3}
    for c in range(33, 33 + V - 4):
        vocab[chr(c)] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<|pad|>",
                                   unk_token="<|unk|>")


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_stop_strings_cut_tokens_and_text(backend):
    tok, model, ps = char_tokenizer(), model_for("llama"), prompts(3)
    free = generate(model, ps, SamplingParams(temperature=0, max_new_tokens=16), eos_token_id=None,
                    pad_token_id=PAD, tokenizer=tok, backend=backend)
    text0 = free.texts[0]
    assert text0 == tok.decode(free.sequences[0])
    stop = text0[4:7]  # three characters = three tokens, completed by token index 6 (or earlier)
    end = text0.find(stop) + len(stop)
    gen = generate(model, ps, SamplingParams(temperature=0, max_new_tokens=16, stop_strings=(stop,)),
                   eos_token_id=None, pad_token_id=PAD, tokenizer=tok, backend=backend)
    assert gen.sequences[0] == free.sequences[0][:end]  # tokens end at the completing token
    assert gen.texts[0] == text0[: text0.find(stop)]  # text ends before the stop string
    assert gen.finish_reason[0] == "stop"
    for i in (1, 2):  # other rows run on unless their own text contains the stop string
        t = free.texts[i]
        if stop in t:
            assert gen.sequences[i] == free.sequences[i][: t.find(stop) + len(stop)]
        else:
            assert gen.sequences[i] == free.sequences[i] and gen.finish_reason[i] == "length"
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, ps, SamplingParams(stop_strings=("x",)), eos_token_id=None, pad_token_id=PAD)


def test_bad_inputs_are_named():
    model = model_for("llama")
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        generate(model, [[4], []], eos_token_id=None, pad_token_id=PAD)
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        generate(model, [[4] * 100], SamplingParams(max_new_tokens=40), eos_token_id=None, pad_token_id=PAD)
    with pytest.raises(ValueError, match="beta"):
        generate(model, [[4]], eos_token_id=None, pad_token_id=PAD, mixture=(model, 1.5))


# ------------------------------------------------------------------------------ Nash-MD mixture


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_geometric_mixture_matches_direct_computation(backend):
    pi, ref, ps, beta = model_for("llama", 0), model_for("llama", 7), prompts(4), 0.3

    def mixed_logp(seq_p, resp, T):
        lp = full_logits(pi, seq_p + resp).log_softmax(-1)
        lr = full_logits(ref, seq_p + resp).log_softmax(-1)
        m = ((1 - beta) * lp + beta * lr)[len(seq_p) - 1 :]
        return (m / T).log_softmax(-1)

    greedy = generate(pi, ps, SamplingParams(temperature=0, max_new_tokens=8), eos_token_id=None,
                      pad_token_id=PAD, mixture=(ref, beta), backend=backend)
    for i, p in enumerate(ps):
        seq = []
        for _ in range(8):  # reference greedy decoding of the mixture, no cache
            seq.append(int(mixed_logp(p, seq, 1.0)[-1].argmax()))
        assert greedy.sequences[i] == seq
    sp = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=8, seed=2)
    sampled = generate(pi, ps, sp, eos_token_id=None, pad_token_id=PAD, mixture=(ref, beta), backend=backend)
    plain = generate(pi, ps, sp, eos_token_id=None, pad_token_id=PAD, backend=backend)
    assert not torch.equal(sampled.response_ids, plain.response_ids)
    for i, p in enumerate(ps):
        r = sampled.sequences[i]
        ref_lp = mixed_logp(p, r, sp.temperature)[:-1].gather(1, torch.tensor(r)[:, None]).squeeze(1)
        assert torch.allclose(sampled.logprobs[i], ref_lp, atol=1e-4)
    # beta = 0 is the policy alone, beta = 1 the reference alone
    g0 = generate(pi, ps, SamplingParams(temperature=0, max_new_tokens=6), eos_token_id=None,
                  pad_token_id=PAD, mixture=(ref, 0.0), backend=backend)
    g1 = generate(pi, ps, SamplingParams(temperature=0, max_new_tokens=6), eos_token_id=None,
                  pad_token_id=PAD, mixture=(ref, 1.0), backend=backend)
    assert g0.sequences == [ref_greedy(pi, p, 6) for p in ps]
    assert g1.sequences == [ref_greedy(ref, p, 6) for p in ps]


# ------------------------------------------------------------------------------ text in, text out


def test_generate_text_applies_chat_template_and_stops_at_eos():
    import copy

    tok = tiny_tokenizer("llama")  # alignforge's tokenizer: eos <|end|>, pad <|pad|>, chat template
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    model = peaked(tiny_random_model("llama", vocab_size=len(tok), seed=3), 3)
    prompts_ = ["Where does the heron live?", [{"role": "user", "content": "two plus two?"}]]
    ids = encode_prompts(tok, prompts_)
    direct = tok.apply_chat_template([{"role": "user", "content": prompts_[0]}], add_generation_prompt=True,
                                     tokenize=True)
    assert ids[0] == list(direct["input_ids"] if hasattr(direct, "keys") else direct)
    assert tok.decode(ids[1]).endswith("<|assistant|>\n")  # the generation prompt is there
    free = generate(model, ids, SamplingParams(temperature=0, max_new_tokens=10), eos_token_id=None,
                    pad_token_id=tok.pad_token_id)
    # A random model never says <|end|>; give a copy of the tokenizer, as its eos, the token the
    # model does say 4th in answer 0 (the template writes '<|end|>' literally, so the prompt
    # ids do not change) and check generate_text stops on the tokenizer's eos and drops it.
    stop = free.sequences[0][3]
    tok2 = copy.deepcopy(tok)
    tok2.eos_token = tok.convert_ids_to_tokens(stop)
    assert encode_prompts(tok2, prompts_) == ids
    gen = generate_text(model, tok2, prompts_, SamplingParams(temperature=0, max_new_tokens=10))
    assert isinstance(gen, Generation)
    cut = free.sequences[0].index(stop) + 1
    assert gen.sequences[0] == free.sequences[0][:cut] and gen.finish_reason[0] == "stop"
    assert gen.texts[0] == tok2.decode(free.sequences[0][: cut - 1], skip_special_tokens=True)
    assert len(gen.texts) == 2 and gen.prompt_lengths == [len(i) for i in ids]


def test_generate_text_without_template_uses_the_training_encoding():
    from alignforge.data.batching import encode_prompt

    tok = tiny_tokenizer("gpt2")  # no pad, no chat template: the fallback template, as SFT trains
    model = tiny_random_model("gpt2", vocab_size=len(tok), seed=0)
    gen = generate_text(model, tok, ["The quick brown fox"], SamplingParams(max_new_tokens=5, seed=0))
    assert gen.prompt_lengths == [len(encode_prompt(tok, "The quick brown fox"))]
    assert len(gen.sequences[0]) <= 5 and gen.texts is not None
    msgs = [[{"role": "user", "content": "hi"}]]
    assert encode_prompts(tok, msgs) == [encode_prompt(tok, msgs[0])]


# ------------------------------------------------------------------------------ wrappers and modes


def test_lora_wrapped_llama_takes_fast_path_and_matches_its_forward():
    peft = pytest.importorskip("peft", reason="peft extra not installed")
    base = tiny_random_model("llama", vocab_size=V, seed=5)
    peaked(base, 5)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       lora_dropout=0.0))
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    assert _fast_path_supported(model)
    ps = prompts()
    gen = generate(model, ps, SamplingParams(temperature=0.9, max_new_tokens=8, seed=0), eos_token_id=None,
                   pad_token_id=PAD, backend="fast")
    for i, p in enumerate(ps):
        assert torch.allclose(gen.logprobs[i], ref_logprobs(model, p, gen.sequences[i], 0.9), atol=1e-4)


def test_dropout_off_while_sampling_and_mode_restored():
    model = tiny_random_model("gpt2", vocab_size=V, seed=2)  # GPT-2 has dropout 0.1 in train mode
    peaked(model, 2)
    ps, sp = prompts(), SamplingParams(temperature=0, max_new_tokens=6)
    ref = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD)
    model.train()
    gen = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD)
    assert model.training
    assert torch.equal(gen.response_ids, ref.response_ids)
    assert not gen.response_logprobs.is_inference()  # usable in autograd code afterwards


def test_eos_as_list_or_tensor_and_prompts_as_tensors():
    model, ps = model_for("llama"), prompts(4)
    sp = SamplingParams(temperature=0, max_new_tokens=10)
    free = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD)
    stops = [free.sequences[0][1], free.sequences[2][3]]
    a = generate(model, ps, sp, eos_token_id=stops, pad_token_id=PAD)
    b = generate(model, [torch.tensor(p) for p in ps], sp, eos_token_id=torch.tensor(stops), pad_token_id=PAD)
    c = generate(model, ps, sp, eos_token_id=torch.tensor(stops[0]), pad_token_id=PAD)
    assert a.sequences == b.sequences
    assert a.finish_reason[0] == "stop" and a.finish_reason[2] == "stop"
    assert c.sequences[0] == free.sequences[0][: free.sequences[0].index(stops[0]) + 1]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_model_inputs_reproduce_logprobs_in_one_padded_forward(arch):
    """What PPO does with a rollout: one batched forward over prompt + response (left padded,
    response padding after finished rows) gives back the sampler's log-probs."""
    model, ps = model_for(arch), prompts(6)
    sp = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=9, seed=1)
    free = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD)
    # Same seed with eos = the 4th token row 1 sampled: the draws are identical until then, so
    # row 1 (at least) now finishes early and the response side gets padding too.
    eos = free.sequences[1][3]
    gen = generate(model, ps, sp, eos_token_id=eos, pad_token_id=PAD)
    assert gen.finish_reason[1] == "stop" and gen.lengths[1] <= 4 < gen.response_ids.shape[1]
    batch = gen.model_inputs()
    P = gen.prompt_ids.shape[1]
    assert batch["input_ids"].shape == (len(ps), P + gen.response_ids.shape[1])
    with torch.no_grad():
        logits = model(**batch).logits[:, P - 1 : -1].float()
    lp = (logits / sp.temperature).log_softmax(-1).gather(2, gen.response_ids[..., None]).squeeze(2)
    m = gen.response_mask
    assert torch.allclose(lp[m], gen.response_logprobs[m], atol=1e-4)


def test_mixture_and_pad_errors_are_clear():
    model = model_for("llama")
    other = tiny_random_model("llama", vocab_size=V + 8, seed=1)
    with pytest.raises(ValueError, match="vocabularies differ"):
        generate(model, [[4, 5]], eos_token_id=None, pad_token_id=PAD, mixture=(other, 0.5))
    with pytest.raises(ValueError, match="pad_token_id must be a token id"):
        generate(model, [[4, 5]], eos_token_id=None, pad_token_id=None)


def test_nan_logits_raise_instead_of_sampling_garbage():
    from alignforge.generation.sampling import _sample_next

    logits = torch.zeros(3, 5)
    logits[1, 2] = float("nan")
    for sp in (SamplingParams(), SamplingParams(temperature=0)):
        with pytest.raises(FloatingPointError, match=r"rows \[1\]"):
            _sample_next(logits, sp, torch.Generator().manual_seed(0))


def test_sliding_window_qwen2_takes_hf_path_and_keeps_its_window():
    """Qwen2 with a sliding window on its upper layer: not the fast path (which has no windows),
    and the generic path lets the model build its own windowed masks — checked against the
    uncached forward, with sequences much longer than the window of 4."""
    import transformers as tf

    cfg = tf.Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         use_sliding_window=True, sliding_window=4, max_window_layers=1)
    torch.manual_seed(0)
    model = peaked(tf.Qwen2ForCausalLM(cfg).eval(), 4)
    assert not _fast_path_supported(model)
    ps = prompts(4)
    gen = generate(model, ps, SamplingParams(temperature=0, max_new_tokens=10), eos_token_id=None, pad_token_id=PAD)
    for i, p in enumerate(ps):
        ref = ref_greedy(model, p, 10)
        assert gen.sequences[i] == ref
        assert torch.allclose(gen.logprobs[i], ref_logprobs(model, p, ref), atol=1e-4)


@pytest.mark.parametrize("arch,backend", CASES)
def test_repeated_prompts_share_one_prefill_and_match_fresh_forwards(arch, backend):
    """k samples per prompt (GRPO/RLOO): each distinct prompt is prefilled once and its KV rows are
    copied. Every row must still sample on its own (copies differ) and report the log-probs of a
    fresh uncached forward of its own prompt + response; greedy copies are identical."""
    model = model_for(arch)
    a, b = prompts(2)
    ps = [a, a, b, a, b, b]  # not contiguous: the copy map must follow the rows
    sp = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
    gen = generate(model, ps, sp, eos_token_id=None, pad_token_id=PAD, backend=backend)
    for i, p in enumerate(ps):
        ref = ref_logprobs(model, p, gen.sequences[i], 1.0)
        assert torch.allclose(gen.logprobs[i], ref, atol=1e-4), f"row {i}"
    assert len({tuple(s) for s in gen.sequences}) > 2  # copies sampled independently
    greedy = generate(model, ps, SamplingParams(temperature=0, max_new_tokens=8), eos_token_id=None,
                      pad_token_id=PAD, backend=backend)
    alone = generate(model, [a, b], SamplingParams(temperature=0, max_new_tokens=8), eos_token_id=None,
                     pad_token_id=PAD, backend=backend)
    assert greedy.sequences == [alone.sequences[j] for j in (0, 0, 1, 0, 1, 1)]
