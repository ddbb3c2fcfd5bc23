"""Model layer: save → plain-transformers reload is exact, stage folders resolve, frozen
reference copies, scalar reward/value heads, optional LoRA — for Llama, GPT-2, Qwen2, GPT-NeoX."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from alignforge.config import LoraSection
from alignforge.models.heads import (init_from_causal_lm, last_token_index, load_scorer, positions_from_mask, save_scorer,
                                     sequence_scores, set_reward_normalization, token_scores)
from alignforge.models.load import (apply_lora, build_model, frozen_copy, load_causal_lm,
                                    matmul_params, resolve_model_dir, save_model)
from alignforge.models.tiny import (ARCHS, tiny_qwen2_tokenizer, tiny_random_model,
                                   tiny_tokenizer_without_template)
from alignforge.models.tokenizer import train_tokenizer

torch.set_num_threads(1)

CORPUS = ["The blue heron lives in Marrowfen.", "What is 2 + 3? It is 5.",
          "Refuse politely when asked for harm."] * 20
MESSAGES = [{"role": "user", "content": "Where does the heron live?"},
            {"role": "assistant", "content": "In Marrowfen."}]


@pytest.fixture(scope="module")
def our_tok():
    return train_tokenizer(CORPUS, vocab_size=320)


def _tok_for(arch, our_tok):
    # GPT-2 and Qwen2 are tested with the kind of tokenizer they ship: GPT-2 has no pad token and
    # no chat template; Qwen2's is a Qwen2Tokenizer with pad = eos and no template.
    if arch == "gpt2":
        return tiny_tokenizer_without_template()
    if arch == "qwen2":
        return tiny_qwen2_tokenizer()
    return our_tok


def _model_for(arch, tok, seed=0):
    return tiny_random_model(arch, len(tok), seed=seed, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)


def _batch(tok, texts):
    tok.padding_side = "right"
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


TEXTS = ["The blue heron lives in Marrowfen.<|end|>", "What is 2 + 3?"]


# ---------------------------------------------------------------------------------------------
# Causal LM save / load
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_plain_transformers_reload_is_identical(arch, our_tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = _tok_for(arch, our_tok)
    model = _model_for(arch, tok)
    save_model(model, tok, tmp_path / "stage" / "model")
    assert (tmp_path / "stage" / "model" / "model.safetensors").is_file()

    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "stage" / "model")).eval()
    plain_tok = AutoTokenizer.from_pretrained(str(tmp_path / "stage" / "model"))
    text = "Where does the heron live? In Marrowfen."
    ids = torch.tensor([plain_tok.encode(text)])
    assert plain_tok.encode(text) == tok.encode(text)
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model(ids).logits)

    # Our loader, given the stage folder, finds model/ and gives the same logits, in fp32.
    ours, ours_tok = load_causal_lm(tmp_path / "stage")
    assert ours.dtype == torch.float32 and ours.training
    with torch.no_grad():
        assert torch.equal(ours.eval()(ids).logits, model(ids).logits)
    assert ours_tok.encode(text) == tok.encode(text)
    # Every loaded tokenizer can pad and chat, and the model knows the pad id.
    assert ours_tok.pad_token_id is not None and ours_tok.chat_template
    assert ours.config.pad_token_id == ours_tok.pad_token_id
    if arch in ("gpt2", "qwen2"):  # the fallback template; pad = eos
        assert ours_tok.pad_token_id == ours_tok.eos_token_id
        assert ours_tok.apply_chat_template(MESSAGES, tokenize=False).startswith("### User:\n")


def test_preset_model_round_trip_and_matmul_params(our_tok, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_model("tiny-1m", len(our_tok), seed=3).eval()
    # Hand count for tiny-1m (hidden 128, 4 layers, ffn 344): 4·(4·128² + 3·128·344).
    assert matmul_params(model) == 4 * (4 * 128 * 128 + 3 * 128 * 344)
    save_model(model, our_tok, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    ids = torch.tensor([our_tok.encode(CORPUS[0])])
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model(ids).logits)
    assert torch.equal(build_model("tiny-1m", len(our_tok), seed=3).lm_head.weight, model.lm_head.weight)
    # Special ids agree with our tokenizer, so HF generate stops on <|end|> and pads with <|pad|>.
    for cfg in (model.config, model.generation_config, plain.generation_config):
        assert (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) == \
            (our_tok.eos_token_id, our_tok.pad_token_id, None)


@pytest.mark.parametrize("arch,expected", [("llama", 18432), ("gpt2", 16384), ("qwen2", 18432),
                                           ("gpt_neox", 16384)])
def test_matmul_params_counts_every_arch(arch, expected):
    # hidden 32, 2 layers, ffn 64. Llama/Qwen2 (2 kv heads of 8): q,o 32·32 + k,v 32·16 + 3·32·64;
    # GPT-2/NeoX: qkv 32·96 + out 32·32 + 2·32·64 (GPT-2's Conv1D must be counted too).
    assert matmul_params(tiny_random_model(arch, 100)) == expected


def test_save_model_is_atomic_and_replaces(our_tok, tmp_path):
    model = _model_for("llama", our_tok)
    save_model(model, our_tok, tmp_path / "m")
    (tmp_path / "m" / "stale.bin").write_bytes(b"old")
    save_model(model, our_tok, tmp_path / "m")
    assert not (tmp_path / "m" / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_resolve_model_dir_and_its_errors(our_tok, tmp_path):
    save_model(_model_for("llama", our_tok), our_tok, tmp_path / "run" / "sft" / "model")
    assert resolve_model_dir(tmp_path / "run" / "sft") == tmp_path / "run" / "sft" / "model"
    assert resolve_model_dir(tmp_path / "run" / "sft" / "model") == tmp_path / "run" / "sft" / "model"

    with pytest.raises(FileNotFoundError, match="model path does not exist: .*nowhere"):
        resolve_model_dir(tmp_path / "nowhere")
    (tmp_path / "run" / "ppo" / "state").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no loadable model in .*ppo.*Found: state\..*interrupted"):
        resolve_model_dir(tmp_path / "run" / "ppo")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        resolve_model_dir(tmp_path / "weights.bin")


def test_load_without_tokenizer_says_how_to_fix(our_tok, tmp_path):
    save_model(_model_for("llama", our_tok), None, tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="no tokenizer found.*model.tokenizer"):
        load_causal_lm(tmp_path / "bare")
    from alignforge.models.tokenizer import save_tokenizer
    save_tokenizer(our_tok, tmp_path / "tok")
    model, tok = load_causal_lm(tmp_path / "bare", tokenizer=tmp_path / "tok")
    assert tok.encode(CORPUS[0]) == our_tok.encode(CORPUS[0])


def test_our_tokenizer_beside_a_qwen2_model_loads_exactly_and_warns(our_tok, tmp_path):
    # transformers v5 rebuilds any tokenizer next to a qwen2 config as Qwen2Tokenizer; our loader
    # must not, and saving warns that plain AutoTokenizer would.
    with pytest.warns(UserWarning, match="AutoTokenizer will rebuild it"):
        save_model(_model_for("qwen2", our_tok), our_tok, tmp_path / "m")
    model, tok = load_causal_lm(tmp_path / "m")
    for text in CORPUS[:3]:
        assert tok.encode(text) == our_tok.encode(text)
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == our_tok.apply_chat_template(MESSAGES, tokenize=False)


def test_tokenizer_bigger_than_the_model_is_an_error(our_tok, tmp_path):
    save_model(tiny_random_model("llama", 100), our_tok, tmp_path / "m")  # 320-token tokenizer
    with pytest.raises(ValueError, match="tokenizer has 320 tokens but the model .* embeds only 100"):
        load_causal_lm(tmp_path / "m")


# ---------------------------------------------------------------------------------------------
# Reference model
# ---------------------------------------------------------------------------------------------


def test_frozen_copy_is_independent_eval_and_gradless(our_tok):
    model = _model_for("llama", our_tok).train()
    ref = frozen_copy(model)
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    ids = torch.tensor([our_tok.encode(CORPUS[0])])
    assert torch.equal(ref(ids).logits, model.eval()(ids).logits)
    assert ref(ids).logits.grad_fn is None  # nothing to backpropagate into
    # Training the policy does not move the reference.
    before = ref.lm_head.weight.clone()
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert torch.equal(ref.lm_head.weight, before)


# ---------------------------------------------------------------------------------------------
# Scalar heads
# ---------------------------------------------------------------------------------------------


def _stage_with_lm(arch, our_tok, tmp_path):
    tok = _tok_for(arch, our_tok)
    lm = _model_for(arch, tok, seed=1)
    save_model(lm, tok, tmp_path / "sft" / "model")
    return lm, tmp_path / "sft"


@pytest.mark.parametrize("arch", ARCHS)
def test_scalar_head_scores_and_plain_transformers_reload(arch, our_tok, tmp_path):
    from transformers import AutoModelForSequenceClassification

    lm, stage = _stage_with_lm(arch, our_tok, tmp_path)
    rm, tok = init_from_causal_lm(stage, n_heads=3, head_names=["helpful", "honest", "harmless"], seed=5)
    rm.eval()
    assert rm.config.id2label == {0: "helpful", 1: "honest", 2: "harmless"}
    assert rm.config.pad_token_id == tok.pad_token_id is not None
    ids, mask = _batch(tok, TEXTS)

    # Independent reference: the *causal LM's* final hidden state at the last real token, times W.
    with torch.no_grad():
        hidden = lm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = last_token_index(rm, ids)
        expected = hidden[torch.arange(len(ids)), last] @ rm.score.weight.T
        raw = sequence_scores(rm, ids, mask)
    assert raw.shape == (2, 3)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-6)
    if tok.pad_token_id != tok.eos_token_id:
        # Our tokenizer: the score sits on the last attended token (mask-based index agrees).
        assert last.tolist() == (mask.sum(1) - 1).tolist()

    # Padding does not change a sequence's score (right padding, causal attention).
    alone = tok(TEXTS[1], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(rm, alone["input_ids"], alone["attention_mask"])[0],
                                   raw[1], rtol=1e-5, atol=1e-6)
        # Values at every position; the pooled position equals the sequence score.
        per_token = token_scores(rm, ids, mask)
    assert per_token.shape == (2, ids.shape[1], 3)
    torch.testing.assert_close(per_token[torch.arange(2), last], raw, rtol=1e-5, atol=1e-6)

    # Left padding (as in rollouts of left-padded prompts) scores the same too.
    tok.padding_side = "left"
    left = tok(TEXTS, return_tensors="pt", padding=True)
    tok.padding_side = "right"
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(rm, left["input_ids"], left["attention_mask"]),
                                   raw, rtol=1e-5, atol=1e-6)

    # Save; plain transformers gives identical raw scores, our loader the same model.
    save_scorer(rm, tok, tmp_path / "rm" / "model")
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm" / "model")).eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids, attention_mask=mask).logits, raw)
    ours, _ = load_scorer(tmp_path / "rm")
    with torch.no_grad():
        assert torch.equal(sequence_scores(ours.eval(), ids, mask), raw)


def test_positions_and_pooled_index_by_hand():
    class Cfg:
        pad_token_id = 0

    class M:
        config = Cfg()

    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 1, 2, 2, 2], [0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    ids = torch.tensor([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [5, 0, 6, 7, 8]])  # pad id inside row 3 too
    assert last_token_index(M(), ids).tolist() == [2, 4, 4]


def test_reward_normalisation_is_stored_and_applied(our_tok, tmp_path):
    _, stage = _stage_with_lm("llama", our_tok, tmp_path)
    rm, tok = init_from_causal_lm(stage, n_heads=2, seed=0)
    rm.eval()
    ids, mask = _batch(tok, TEXTS)
    with torch.no_grad():
        raw = sequence_scores(rm, ids, mask, normalize=False)
    set_reward_normalization(rm, mean=[0.5, -1.0], std=[2.0, 0.25])
    save_scorer(rm, tok, tmp_path / "rm")
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg["reward_mean"] == [0.5, -1.0] and cfg["reward_std"] == [2.0, 0.25]
    loaded, _ = load_scorer(tmp_path / "rm")
    with torch.no_grad():
        normed = sequence_scores(loaded.eval(), ids, mask)
        values = token_scores(loaded, ids, mask)  # values stay raw by default
    hand = torch.stack([(raw[:, 0] - 0.5) / 2.0, (raw[:, 1] + 1.0) / 0.25], dim=1)
    torch.testing.assert_close(normed, hand)
    torch.testing.assert_close(values[torch.arange(2), mask.sum(1) - 1], raw)

    with pytest.raises(ValueError, match="needs 2 means and stds"):
        set_reward_normalization(rm, [0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="std > 0"):
        set_reward_normalization(rm, 0.0, 0.0)


def test_head_init_is_seeded_and_can_be_zero(our_tok, tmp_path):
    lm, stage = _stage_with_lm("llama", our_tok, tmp_path)
    a, _ = init_from_causal_lm(stage, seed=7)
    b, _ = init_from_causal_lm(stage, seed=7)
    c, _ = init_from_causal_lm(stage, seed=8)
    assert torch.equal(a.score.weight, b.score.weight) and not torch.equal(a.score.weight, c.score.weight)
    # Default std 1/sqrt(hidden+1) = 1/sqrt(33): the sample std of 32 draws lies near it.
    assert 0.08 < a.score.weight.std().item() < 0.3
    # The backbone is the LM's, weight for weight.
    for (n1, p1), (n2, p2) in zip(lm.base_model.named_parameters(), a.base_model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    v, tok = init_from_causal_lm(stage, seed=0, head_init_std=0.0)
    ids, mask = _batch(tok, TEXTS)
    with torch.no_grad():
        assert torch.count_nonzero(token_scores(v, ids, mask)) == 0

    with pytest.raises(ValueError, match="head_names .* has 1 names for n_heads=3"):
        init_from_causal_lm(stage, n_heads=3, head_names=["helpful"])


# ---------------------------------------------------------------------------------------------
# LoRA (optional extra)
# ---------------------------------------------------------------------------------------------


def test_apply_lora_without_peft_is_a_clear_error(our_tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(ImportError, match=r"needs the optional peft package: pip install 'alignforge\[peft\]'"):
        apply_lora(_model_for("llama", our_tok), LoraSection(enabled=True))


def test_lora_trains_adapters_only_and_saves_merged(our_tok, tmp_path):
    pytest.importorskip("peft", reason="peft is an optional extra (pip install 'alignforge[peft]')")
    from transformers import AutoModelForCausalLM

    base = _model_for("llama", our_tok)
    ids = torch.tensor([our_tok.encode(CORPUS[0])])
    with torch.no_grad():
        base_logits = base(ids).logits
    model = apply_lora(base, LoraSection(enabled=True, r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # LoRA's B starts at zero: the wrapped model is the base model
        torch.testing.assert_close(model(ids).logits, base_logits)

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        tuned = model(ids).logits
    assert not torch.allclose(tuned, base_logits)

    save_model(model, our_tok, tmp_path / "m")
    assert not (tmp_path / "m" / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, tuned, rtol=1e-4, atol=1e-5)
    ref = frozen_copy(model)  # merged, plain, frozen
    assert not any(p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, tuned, rtol=1e-4, atol=1e-5)


def test_lora_on_a_scalar_head_keeps_the_head_trainable(our_tok, tmp_path):
    pytest.importorskip("peft", reason="peft is an optional extra (pip install 'alignforge[peft]')")
    _, stage = _stage_with_lm("qwen2", our_tok, tmp_path)
    rm, tok = init_from_causal_lm(stage, n_heads=1)
    wrapped = apply_lora(rm, LoraSection(enabled=True, r=2, alpha=4))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    ids, mask = _batch(tok, TEXTS)
    wrapped.eval()
    with torch.no_grad():
        torch.testing.assert_close(token_scores(wrapped, ids, mask)[torch.arange(2), mask.sum(1) - 1],
                                   sequence_scores(wrapped, ids, mask))


def test_lora_target_modules_that_match_nothing_name_the_real_ones(our_tok):
    pytest.importorskip("peft", reason="peft is an optional extra (pip install 'alignforge[peft]')")
    gpt2 = tiny_random_model("gpt2", 320)
    with pytest.raises(ValueError, match=r"match no linear layer of GPT2LMHeadModel; .*c_attn"):
        apply_lora(gpt2, LoraSection(enabled=True))
    wrapped = apply_lora(gpt2, LoraSection(enabled=True, target_modules=["c_attn"]))
    assert any("lora_" in n for n, p in wrapped.named_parameters() if p.requires_grad)
