"""``ref.share_base``: the reference is the LoRA policy's own base model with its adapters disabled.

Proved here on tiny random models of the Llama, Qwen2 and GPT-2 families (nothing downloaded):
its log-probs equal a separately loaded base model's *exactly* (DPO's packed pair log-probs, the RL
rollout's response log-probs in fp32 and under bf16 autocast, greedy generation, the DPO cache key)
even after the adapters have moved away from zero; the policy keeps its adapters, mode and trainable
flags; it holds one copy of the weights (the default reference holds two); DPO and GRPO runs with it
equal runs with a separately loaded reference and resume exactly; gradient checkpointing, which the
RL stages' eval-mode forward used to skip silently, now recomputes and gives the same gradients.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from alignforge.config import ConfigError, DPOConfig, LoraSection, ReinforceConfig, load_config  # noqa: E402
from alignforge.data.batching import encode_pair, encode_prompt, pad_id_of  # noqa: E402
from alignforge.generation import SamplingParams, generate  # noqa: E402
from alignforge.models.load import (AdaptersOffReference, apply_lora, checkpointing_in_eval,  # noqa: E402
                                    load_causal_lm, load_reference, save_model)
from alignforge.models.tiny import tiny_random_model, tiny_tokenizer  # noqa: E402
from alignforge.rl import rollout as R  # noqa: E402
from alignforge.train import refcache  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_helpers import crash_after_save, crash_on_call  # noqa: E402
from rl_helpers import bandit_fixture, best_arm_reward, rl_config  # noqa: E402

torch.set_num_threads(1)

ARCHS = ("llama", "qwen2", "gpt2")
LORA_TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "qwen2": ["q_proj", "k_proj", "up_proj"],
                "gpt2": ["c_attn", "c_fc"]}
PAIRS = [("What is 2+3?", "It is 5.", "It is 7, I think."), ("Say yes.", "yes", "no no no"),
         ("Where does the heron live?", "In Marrowfen.", "Nowhere at all, sorry.")]


@pytest.fixture(scope="module", params=ARCHS)
def family(request, tmp_path_factory):
    """(dir of a tiny base model, its tokenizer, arch) — saved so it can be loaded twice."""
    arch = request.param
    tok = tiny_tokenizer(arch)
    model = tiny_random_model(arch, len(tok), seed=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    d = tmp_path_factory.mktemp(f"shared_ref_{arch}") / "base"
    save_model(model, tok, d)
    return d, arch


def _lora_policy(d, arch, seed=0):
    """The base loaded, LoRA applied, and the adapters moved off zero (as after some training)."""
    model, tok = load_causal_lm(d)
    lora = LoraSection(enabled=True, r=4, alpha=8, target_modules=LORA_TARGETS[arch])
    policy = apply_lora(model, lora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return policy, tok


def _rollout(policy, ref, tok):
    ids = [encode_prompt(tok, "Pick one please"), encode_prompt(tok, "The quick brown fox")]
    return R.make_rollout(policy, ref, tok, ids * 2, SamplingParams(temperature=0.9, max_new_tokens=6),
                          generator=torch.Generator().manual_seed(0), reward_fn=lambda g: g.response_mask.sum(1).float(),
                          reuse_logprobs=False)


def test_adapters_off_reference_equals_a_separately_loaded_base_exactly(family):
    d, arch = family
    policy, tok = _lora_policy(d, arch)
    policy.train()
    flags = {n: p.requires_grad for n, p in policy.named_parameters()}
    shared = load_reference(None, policy, "cpu", share_base=True)
    assert isinstance(shared, AdaptersOffReference)
    base, _ = load_causal_lm(d)
    base.eval().requires_grad_(False)
    pairs = [encode_pair(tok, p, c, r) for p, c, r in PAIRS]
    pad = pad_id_of(tok)

    # DPO: packed pair log-probs (the sliced-head path for Llama/Qwen2, the full forward for GPT-2).
    with torch.inference_mode():
        c_s, r_s = refcache.pair_logprobs(shared, pairs, pad, seq_len=128)
        c_b, r_b = refcache.pair_logprobs(base, pairs, pad, seq_len=128)
        c_p, _ = refcache.pair_logprobs(policy.eval(), pairs, pad, seq_len=128)
    policy.train()
    assert torch.equal(c_s, c_b) and torch.equal(r_s, r_b)
    assert not torch.allclose(c_p, c_b)  # the adapters are live in the policy: it is not the base
    # The DPO cache key (weights hashed under their plain names) is the base model's.
    assert refcache.model_fingerprint(shared) == refcache.model_fingerprint(base)

    # RL: response log-probs of the reference in a rollout, fp32 and bf16 autocast (fp32 head path).
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ro = _rollout(policy, shared, tok)
            lp_b = R.response_logprobs(base, ro, 0.9)[0] * ro.mask
        assert torch.equal(ro.ref_logprobs, lp_b), (arch, autocast)
        assert not torch.allclose(ro.logprobs, ro.ref_logprobs)

    # Generation from the reference (the gold eval's "sft" answers) is the base model's.
    ids = [encode_prompt(tok, "Where does the heron live?")]
    kw = dict(eos_token_id=tok.eos_token_id, pad_token_id=pad_id_of(tok))
    g_s = generate(shared, ids, SamplingParams(temperature=0.0, max_new_tokens=8), **kw)
    g_b = generate(base, ids, SamplingParams(temperature=0.0, max_new_tokens=8), **kw)
    assert g_s.sequences == g_b.sequences

    # The policy is left as it was: train mode, adapters on, the same trainable flags.
    assert policy.training and all(not m.disable_adapters for m in shared._layers)
    assert {n: p.requires_grad for n, p in policy.named_parameters()} == flags


def test_shared_reference_holds_one_copy_of_the_weights(family):
    d, arch = family
    policy, _ = _lora_policy(d, arch)

    def storages(*models):
        return {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}

    def nbytes(*models):
        seen, total = set(), 0
        for m in models:
            for p in m.parameters():
                if p.untyped_storage().data_ptr() not in seen:
                    seen.add(p.untyped_storage().data_ptr())
                    total += p.untyped_storage().nbytes()
        return total

    shared = load_reference(None, policy, "cpu", share_base=True)
    copy = load_reference(None, policy, "cpu")
    assert storages(shared) <= storages(policy)            # every reference weight IS a policy weight
    assert not storages(copy) & storages(policy)           # the default: a second copy
    base_bytes = sum(p.numel() * p.element_size() for p in shared.parameters())
    assert nbytes(policy, shared) == nbytes(policy)
    assert nbytes(policy, copy) >= nbytes(policy) + base_bytes * 0.99


def test_share_base_refuses_what_it_cannot_be():
    tok = tiny_tokenizer("llama")
    plain = tiny_random_model("llama", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with pytest.raises(ConfigError, match="needs a LoRA policy"):
        load_reference(None, plain, "cpu", share_base=True)
    lora = apply_lora(plain, LoraSection(enabled=True, r=2, alpha=4))
    with pytest.raises(ConfigError, match="cannot be combined with ref.init"):
        load_reference("some/dir", lora, "cpu", share_base=True)
    with pytest.raises(ConfigError, match="runtime.fsdp"):
        load_reference(None, lora, "cpu", share_base=True, fsdp=True)


# ---------------------------------------------------------------------------------------------
# Stages: the same runs as with a separately loaded reference; exact resume
# ---------------------------------------------------------------------------------------------


DPO_ROWS = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS] * 3


def _dpo_cfg(d, data, out, **kw):
    base = {"model.init": d, "data.train": data, "out": out, "runtime.threads": 1, "runtime.progress": False,
            "runtime.device": "cpu", "train.seq_len": 96, "train.batch_size": 2, "train.max_steps": 4,
            "train.warmup_steps": 1, "train.log_every": 1, "train.eval_every": 0, "train.save_every": 0,
            "train.lr": 5e-3, "dpo.kl_prompts": 0, "dpo.eval_fraction": 0.0, "dpo.ref_cache": "off",
            "model.lora.enabled": True, "model.lora.r": 4, "model.lora.alpha": 8,
            "model.lora.target_modules": "[q_proj, v_proj, down_proj]"}
    base.update(kw)
    return load_config(DPOConfig, None, [f"{k}={v}" for k, v in base.items()])


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    tok = tiny_tokenizer("llama")
    model = tiny_random_model("llama", len(tok), seed=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    d = tmp_path_factory.mktemp("shared_ref_dpo") / "base"
    save_model(model, tok, d)
    return d


def test_dpo_with_the_shared_base_equals_a_separate_reference_and_resumes_exactly(llama_dir, tmp_path, monkeypatch):
    """ref_cache=off: the reference runs live at every step, after the adapters have moved."""
    from alignforge.stages import dpo

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DPO_ROWS))
    separate = dpo.run(_dpo_cfg(llama_dir, data, tmp_path / "separate"))
    shared = dpo.run(_dpo_cfg(llama_dir, data, tmp_path / "shared", **{"ref.share_base": True}))
    a, b = _weights(separate), _weights(shared)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda o: [json.loads(x) for x in (o / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    for ra, rb in zip(rows(separate), rows(shared)):
        assert ra["loss"] == rb["loss"] and ra["reward_margin"] == rb["reward_margin"]
    assert rows(shared)[-1]["reward_margin"] != 0.0  # the policy moved away from its reference

    kw = {"ref.share_base": True, "train.save_every": 2}
    with crash_after_save(monkeypatch, dpo.ckpt):
        dpo.run(_dpo_cfg(llama_dir, data, tmp_path / "crash", **kw))
    resumed = dpo.run(_dpo_cfg(llama_dir, data, tmp_path / "crash", **kw))
    c = _weights(resumed)
    assert all(torch.equal(b[k], c[k]) for k in b)


bandit = bandit_fixture("shared_ref_bandit")

# The RL runs here: two-token answers, a LoRA policy, a KL penalty.
RL_LORA = {"sampling.max_new_tokens": 2, "train.lr": 2e-2, "kl.coef": 0.1, "model.lora.enabled": True,
           "model.lora.r": 4, "model.lora.alpha": 8}


def _grpo_cfg(bandit, out, **kw):
    return rl_config(ReinforceConfig, bandit, out, {**RL_LORA, "rollout.prompts": 4, "reinforce.algorithm": "grpo",
                                                    "reinforce.k": 4, "reinforce.minibatch_size": 8,
                                                    "reinforce.steps": 4, "kl.estimator": "k3"}, **kw)


def test_grpo_with_the_shared_base_equals_a_separate_reference_and_resumes_exactly(bandit, tmp_path):
    from alignforge.stages import reinforce

    good = best_arm_reward(bandit)
    separate = reinforce.run(_grpo_cfg(bandit, tmp_path / "separate"), reward_fn=good)
    shared = reinforce.run(_grpo_cfg(bandit, tmp_path / "shared", **{"ref.share_base": True}), reward_fn=good)
    a, b = _weights(separate), _weights(shared)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ka = [json.loads(x)["kl"] for x in (separate / "metrics.jsonl").read_text().splitlines()]
    kb = [json.loads(x)["kl"] for x in (shared / "metrics.jsonl").read_text().splitlines()]
    assert ka == kb and kb[-1] != 0.0

    kw = {"ref.share_base": True, "train.save_every": 2}
    with pytest.raises(KeyboardInterrupt):
        reinforce.run(_grpo_cfg(bandit, tmp_path / "crash", **kw),
                      reward_fn=crash_on_call(good, 3, "killed during step 3"))
    resumed = reinforce.run(_grpo_cfg(bandit, tmp_path / "crash", **kw), reward_fn=good)
    c = _weights(resumed)
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_gradient_checkpointing_recomputes_in_the_rl_stages_eval_mode_forward(bandit):
    """The RL stages keep models in eval mode; transformers only checkpoints layers in training mode.
    Inside checkpointing_in_eval the layers recompute in backward, with the same gradients."""
    model, tok = load_causal_lm(bandit["policy"])
    model.eval()
    ids = torch.tensor([encode_prompt(tok, "Pick one Pick one")])

    def grads(in_context: bool = True):
        model.zero_grad()
        calls = {"n": 0}
        mlp = model.model.layers[0].mlp
        forward = mlp.forward

        def counting(x):  # (torch runs the recompute without module hooks: count the forward itself)
            calls["n"] += 1
            return forward(x)

        mlp.forward = counting
        with checkpointing_in_eval(model) if in_context else contextlib.nullcontext():
            loss = model(input_ids=ids).logits.float().pow(2).mean()
        loss.backward()
        del mlp.forward
        return {n: p.grad.clone() for n, p in model.named_parameters()}, calls["n"]

    plain, n_plain = grads()
    model.activation_checkpointing_enable()
    assert grads(in_context=False)[1] == 1  # eval mode alone: transformers does not checkpoint
    ckpt, n_ckpt = grads()
    assert n_plain == 1 and n_ckpt == 2  # the layer ran again in backward: its activations were not kept
    assert not model.training and not model.model.layers[0].training  # the context restores eval mode
    for n in plain:
        torch.testing.assert_close(plain[n], ckpt[n], rtol=0, atol=0)


def test_ppo_with_lora_value_and_shared_base_resumes_exactly(bandit, tmp_path):
    """PPO with the recipe's memory options (LoRA policy, ref.share_base, value.lora, checkpointing):
    stopped after the step-2 checkpoint, the resumed run ends with the full run's policy and value."""
    from alignforge.config import PPOConfig
    from alignforge.stages import ppo

    def cfg(out):
        return rl_config(PPOConfig, bandit, out, {**RL_LORA, "train.save_every": 2, "rollout.prompts": 8,
                                                  "ppo.minibatch_size": 4, "ppo.epochs": 1, "ppo.steps": 4,
                                                  "ref.share_base": True, "value.lora": True,
                                                  "model.gradient_checkpointing": True})

    good = best_arm_reward(bandit)
    full = ppo.run(cfg(tmp_path / "full"), reward_fn=good)
    with pytest.raises(KeyboardInterrupt):
        ppo.run(cfg(tmp_path / "crash"), reward_fn=crash_on_call(good, 3, "killed during step 3"))
    resumed = ppo.run(cfg(tmp_path / "crash"), reward_fn=good)
    from safetensors.torch import load_file

    for sub in ("model", "value"):
        a = load_file(str(full / sub / "model.safetensors"))
        b = load_file(str(resumed / sub / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    va = load_file(str(full / "value" / "model.safetensors"))
    assert not any("lora" in k for k in va) and float(va["score.weight"].abs().sum()) > 0  # head trained, merged
