"""The memory check every stage that loads an HF-size model opens with (issue 19 §4, ``alignforge.train.memcheck``).

A stage prints its estimate (weights, gradients, AdamW, activations, KV cache, peak) beside the
memory available; a run whose estimate does not fit is refused before any model is loaded, with
overrides that do fit (checked here against the same estimator); ``runtime.memory_check=false``
runs anyway. The training stages, and the ones that mostly sample (nash, critique, collect, eval:
issue 19's gap), whose estimate also measures their longest prompt (and rsft's). PPO / REINFORCE
sample all of a step's prompts (× k) in one engine call: the rollout is counted so, by hand here,
and the fix named for it is fewer prompts, not a smaller rollout.batch_size. The model directories are a
real shape's ``config.json`` (SmolLM2-135M) and a tiny tokenizer, no weights: a stage that got as
far as loading would fail on them — and loading is booby-trapped as well. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from alignforge.config import (CollectConfig, ConfigError, CritiqueConfig, DPOConfig, EvalConfig, NashConfig,
                               PPOConfig, PretrainConfig, ReinforceConfig, RewardConfig, RSFTConfig, SFTConfig,
                               load_config)
from alignforge.models import memory as M
from alignforge.train import memcheck
from alignforge.train.loop import start_stage

GIB = 1024 ** 3
SMOL = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
        "tie_word_embeddings": True, "max_position_embeddings": 8192}


class Loaded(Exception):
    """Raised by the booby-trapped from_pretrained: a stage got as far as loading a model."""


@pytest.fixture
def no_loading(monkeypatch):
    from transformers import PreTrainedModel

    def trap(cls, *a, **k):
        raise Loaded(f"{cls.__name__}.from_pretrained")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(trap))


@pytest.fixture
def smol(tmp_path) -> Path:
    """A SmolLM2-135M-shaped model directory without weights (config.json and a tokenizer)."""
    from alignforge.models.tiny import tiny_tokenizer

    d = tmp_path / "smol"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(SMOL))
    tiny_tokenizer("llama").save_pretrained(d)
    return d


def _available(monkeypatch, n_bytes: int) -> None:
    monkeypatch.setattr(memcheck, "available_memory", lambda device: (n_bytes, "available (test)"))


STAGES = {  # stage module, config class, overrides that make it a full fine-tune with no memory options on
    "sft": ("sft", SFTConfig, []),
    "reward": ("reward", RewardConfig, []),
    "dpo": ("dpo", DPOConfig, []),
    "ppo": ("ppo", PPOConfig, []),
    "reinforce": ("reinforce", ReinforceConfig, []),
    "rsft": ("rsft", RSFTConfig, []),
    "pretrain": ("pretrain", PretrainConfig, []),
}


def _cfg(name: str, model_dir: Path, out: Path, *more: str):
    _, cls, extra = STAGES[name]
    # rsft hands its prompts to the check (their length is in no config): a real prompts file.
    data = _prompts_file(out.parent) if name == "rsft" else "/nonexistent.jsonl"
    keys = [f"model.init={model_dir}", f"out={out}", f"data.train={data}", "runtime.device=cpu",
            "runtime.progress=false", *extra, *more]
    if name in ("ppo", "reinforce", "rsft"):
        keys.append(f"reward.init={model_dir}")
    return load_config(cls, None, keys)


def test_the_stage_prints_its_estimate_and_the_memory_available(smol, tmp_path, monkeypatch, capsys):
    _available(monkeypatch, 64 * GIB)
    cfg = _cfg("sft", smol, tmp_path / "sft")
    out, device, finished = start_stage(cfg, "sft")
    assert not finished and device.type == "cpu"
    line = next(x for x in capsys.readouterr().out.splitlines() if "memory estimate" in x)
    mem = M.stage_memory("sft", cfg, M.Shape.from_config(SMOL))
    for part in ("weights", "grads", "AdamW", "activations", "KV cache", "peak", "64.00 GiB available (test)"):
        assert part in line, line
    assert memcheck.fmt_bytes(mem.peak) in line and memcheck.fmt_bytes(mem.weights) in line


def test_a_tiny_preset_trivially_fits_the_real_device(tmp_path, capsys):
    """What the embedded world's stages see: a preset's config, this machine's real free memory."""
    cfg = load_config(PretrainConfig, None, [f"out={tmp_path}", "runtime.device=cpu"])
    mem = memcheck.check_memory(cfg, torch.device("cpu"))
    assert mem is not None and mem.peak < GIB  # ≈ 0.4 GiB, mostly the logits of 16 × 256 tokens
    assert "pretrain: memory estimate (full; no checkpointing)" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(STAGES))
def test_a_run_that_cannot_fit_is_refused_before_loading_naming_what_would(name, smol, tmp_path, monkeypatch,
                                                                          no_loading):
    cfg = _cfg(name, smol, tmp_path / name)
    shapes = memcheck.shapes_of(cfg)
    n_prompt = memcheck.measure_prompts(cfg, shapes, PROMPTS)  # rsft's longest prompt; None for the others
    assert (n_prompt is None) == (name != "rsft")
    mem = memcheck.estimate(cfg, shapes, n_prompt)
    # Less than a full fine-tune's weights + gradients + AdamW: only LoRA brings it under (pretrain, which has
    # no LoRA: less than half its peak, which checkpointing and smaller micro-batches bring it under).
    budget = int(0.45 * mem.peak) if name == "pretrain" else int(0.9 * (mem.weights + mem.grads + mem.adam))
    _available(monkeypatch, budget)
    stage = importlib.import_module(f"alignforge.stages.{STAGES[name][0]}")
    with pytest.raises(ConfigError) as e:
        stage.run(cfg)
    msg = str(e.value)
    assert f"{name}: this run does not fit" in msg and "runtime.memory_check=false" in msg
    assert "Would fit: " in msg, msg
    assert not (tmp_path / name).exists()  # nothing written either
    # The overrides it names do fit, by the same estimator (and they are real config keys).
    overrides = msg.split("Would fit: ", 1)[1].split(" — ", 1)[0].split()
    fixed = load_config(type(cfg), None, [f"model.init={smol}", f"out={tmp_path / name}", "data.train=/x.jsonl",
                                          *([f"reward.init={smol}"] if name in ("ppo", "reinforce", "rsft") else []),
                                          *overrides])
    assert memcheck.estimate(fixed, memcheck.shapes_of(fixed), n_prompt).peak <= memcheck.SUGGEST_WITHIN * budget
    if name != "pretrain":
        assert "model.lora.enabled=true" in overrides


def test_the_least_intrusive_fix_comes_first(smol, tmp_path, monkeypatch):
    """Checkpointing (only slower) before smaller micro-batches, before LoRA, before shorter sequences."""
    cfg = _cfg("sft", smol, tmp_path / "sft")
    shapes = memcheck.shapes_of(cfg)
    with_ckpt = memcheck.estimate(memcheck._with(cfg, (("model.gradient_checkpointing", True),)), shapes).peak
    budget = with_ckpt + 1
    assert budget < memcheck.estimate(cfg, shapes).peak
    (best, *rest) = memcheck.what_fits(cfg, shapes, budget)
    assert best.overrides() == "model.gradient_checkpointing=true"
    assert rest and "model.lora.enabled=true" in rest[0].overrides()  # the LoRA alternative
    # No combination fits a budget below the frozen weights: the message says so and names FSDP.
    _available(monkeypatch, 64 * 1024 ** 2)
    with pytest.raises(ConfigError, match="No combination .* fits: use a smaller model, or shard it with "
                                          "runtime.fsdp=true"):
        start_stage(cfg, "sft")


def test_memory_check_false_runs_anyway(smol, tmp_path, monkeypatch, no_loading, capsys):
    from alignforge.stages import sft

    _available(monkeypatch, 1024 ** 2)
    cfg = _cfg("sft", smol, tmp_path / "sft", "runtime.memory_check=false")
    with pytest.raises(Loaded):  # past the check, the stage loads its model
        sft.run(cfg)
    assert "does NOT fit; running anyway (runtime.memory_check=false)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="'runtime.memory_check': expected bool"):
        load_config(SFTConfig, None, ["runtime.memory_check=maybe"])


def test_fsdp_and_processes_sharing_a_host(smol, tmp_path):
    """FSDP divides the trained model, its gradients and AdamW state over the processes; the RL stages
    keep whole replicas."""
    cfg = _cfg("sft", smol, tmp_path / "sft", "runtime.fsdp=true")
    shapes = memcheck.shapes_of(cfg)
    mem = memcheck.estimate(cfg, shapes)
    assert memcheck.need_bytes(cfg, mem, shapes, world=1) == mem.peak
    sharded = mem.weights + mem.grads + mem.adam
    assert memcheck.need_bytes(cfg, mem, shapes, world=4) == mem.peak - sharded + -(-sharded // 4)
    ppo = _cfg("ppo", smol, tmp_path / "ppo", "runtime.fsdp=true")
    ppo_mem = memcheck.estimate(ppo, memcheck.shapes_of(ppo))
    assert memcheck.need_bytes(ppo, ppo_mem, memcheck.shapes_of(ppo), world=4) == ppo_mem.peak


def test_reward_and_value_models_of_another_shape(smol, tmp_path):
    """PPO's reward / value models are read from reward.init / value.init, not assumed the policy's shape."""
    small = tmp_path / "small"
    small.mkdir()
    (small / "config.json").write_text(json.dumps({**SMOL, "num_hidden_layers": 2, "hidden_size": 64,
                                                   "intermediate_size": 128, "num_attention_heads": 4,
                                                   "num_key_value_heads": 2}))
    same = _cfg("ppo", smol, tmp_path / "a")
    other = load_config(PPOConfig, None, [f"model.init={smol}", f"reward.init={small}", f"out={tmp_path / 'b'}"])
    shapes = memcheck.shapes_of(other)
    assert shapes["reward"].layers == 2 and shapes["value"] is shapes["reward"]
    assert memcheck.estimate(other, shapes).weights < memcheck.estimate(same, memcheck.shapes_of(same)).weights


# ---------------------------------------------------------------------------------------------
# The stages that mostly sample: nash, critique, collect, eval (issue 19: they passed unchecked)
# ---------------------------------------------------------------------------------------------

PROMPTS = ["Write a short poem about the sea and the wind over the harbour at night.", "Hi!",
           "Explain how a bicycle stays upright."]

SAMPLING = {  # config class, keys beside out/runtime (model dir = {m}, prompts file = {p})
    "nash": (NashConfig, ["model.init={m}", "preference.init={m}", "data.train={p}"]),
    "critique": (CritiqueConfig, ["model.init={m}", "data.train={p}"]),
    "collect": (CollectConfig, ["model.init={m}", "data.train={p}", "collect.world=/nonexistent"]),
    "eval": (EvalConfig, ["eval.checkpoints=[{m}]", "eval.judge=reward", "reward.init={m}", "eval.prompts={p}"]),
}


def _prompts_file(tmp_path: Path) -> Path:
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return f


def _sampling_keys(name: str, model_dir: Path, prompts: Path, *more: str) -> list[str]:
    return [k.format(m=model_dir, p=prompts) for k in SAMPLING[name][1]] + ["runtime.device=cpu",
                                                                             "runtime.progress=false", *more]


@pytest.mark.parametrize("name", list(SAMPLING))
def test_the_sampling_stages_are_refused_before_loading_and_pass_when_they_fit(name, smol, tmp_path, monkeypatch,
                                                                              no_loading, capsys):
    cls = SAMPLING[name][0]
    keys = _sampling_keys(name, smol, _prompts_file(tmp_path))
    cfg = load_config(cls, None, [f"out={tmp_path / name}", *keys])
    shapes = memcheck.shapes_of(cfg)
    n_prompt = memcheck.measure_prompts(cfg, shapes, PROMPTS)
    assert (n_prompt is None) == (name == "nash")  # nash cuts its prompts to train.seq_len − max_new_tokens
    mem = memcheck.estimate(cfg, shapes, n_prompt)
    assert mem.kv_cache > 0  # the sampling engine's KV cache is counted
    stage = importlib.import_module(f"alignforge.stages.{name}")
    # Between the weights and the peak: a smaller batch (sampling, scoring, micro-batch) or LoRA brings it under.
    budget = int(mem.weights + 0.5 * (mem.peak - mem.weights))
    _available(monkeypatch, budget)
    with pytest.raises(ConfigError) as e:
        stage.run(cfg)
    msg = str(e.value)
    assert f"{name}: this run does not fit: the memory estimate is {memcheck.fmt_bytes(mem.peak)}" in msg, msg
    assert "KV cache/rollout" in msg and "runtime.memory_check=false" in msg
    assert "Would fit: " in msg, msg
    assert not (tmp_path / name).exists()  # refused before anything was written
    overrides = msg.split("Would fit: ", 1)[1].split(" — ", 1)[0].split()
    fixed = load_config(cls, None, [f"out={tmp_path / name}", *keys, *overrides])
    assert memcheck.estimate(fixed, memcheck.shapes_of(fixed), n_prompt).peak <= memcheck.SUGGEST_WITHIN * budget
    if name in ("collect", "critique"):  # inference: only the sampling batch is left to change
        assert overrides[0].startswith(f"{name}.batch_size=")

    # With room, the same run passes the check, prints its estimate, and goes on to load its models.
    capsys.readouterr()
    _available(monkeypatch, 64 * GIB)
    if name == "collect":
        monkeypatch.setattr(stage, "load_world", lambda cfg: None)  # no world here; the annotators come later
    with pytest.raises(Loaded):
        stage.run(load_config(cls, None, [f"out={tmp_path / (name + '-fits')}", *keys]))
    line = next(x for x in capsys.readouterr().out.splitlines() if "memory estimate" in x)
    assert line.startswith(f"{name}: memory estimate (") and f"peak {memcheck.fmt_bytes(mem.peak)}" in line, line
    assert "64.00 GiB available (test)" in line


def test_an_inference_estimate_by_hand(smol, tmp_path):
    """collect on the SmolLM2-135M shape: the fp32 weights plus one engine call's KV cache, logits and prefill."""
    cfg = load_config(CollectConfig, None, [f"model.init={smol}", "collect.batch_size=8", "collect.k=2",
                                            "sampling.max_new_tokens=28"])
    mem = M.stage_memory("collect", cfg, M.Shape.from_config(SMOL), prompt_tokens=100)
    # Parameters: embedding 49152·576 = 28,311,552; a layer: q 576·576 + k, v 2·576·192 + o 576·576 + gate,
    # up, down 3·576·1536 + 2 norms 2·576 = 3,540,096, × 30 = 106,202,880; final norm 576; LM head tied.
    n = 28_311_552 + 106_202_880 + 576
    assert n == 134_515_008 and mem.weights == 4 * n == 538_060_032
    # KV cache: 2 (k, v) · 30 layers · 192 (3 KV heads · 64) · 2 B = 23,040 B per token, for 8 prompts × K=2
    # rows of 100 prompt + 28 new tokens; one step's logits, 16 rows · 10 B · 49152; the prefill of the 8
    # distinct prompts, one layer's 16·576 + 4·192 + 8·1536 = 22,272 B per token.
    kv, logits, prefill = 16 * 128 * 23_040, 16 * 10 * 49_152, 8 * 100 * 22_272
    assert (kv, logits, prefill) == (47_185_920, 7_864_320, 17_817_600)
    assert mem.kv_cache == kv + logits + prefill
    assert (mem.grads, mem.adam, mem.activations) == (0, 0, 0)
    assert mem.peak == 538_060_032 + 72_867_840 == 610_927_872


def test_the_longest_prompt_is_measured_as_the_engine_gets_it(smol, tmp_path):
    """Chat template included, cut to the model's positions minus the new tokens, as the stages cut it."""
    from alignforge.data.batching import encode_prompt
    from alignforge.models.tokenizer import load_tokenizer

    tok = load_tokenizer(smol)
    longest = max(len(encode_prompt(tok, p)) for p in PROMPTS)
    assert memcheck.longest_prompt(smol, PROMPTS, 64, positions=8192) == longest
    assert memcheck.longest_prompt(smol, PROMPTS, 64, positions=64 + 10) == 10
    messages = [[{"role": "user", "content": "hello " * 40}]]  # a conversation counts with its template
    assert memcheck.longest_prompt(smol, messages, 8, positions=None) == len(encode_prompt(tok, messages[0]))


def test_nash_counts_the_preference_fit_only_when_it_fits_here(smol, tmp_path):
    """Fitting the preference model (nash.preference_data) runs before the policy has gradients or AdamW
    state: a phase of its own, counted while no fitted model is saved in <out>/preference."""
    keys = _sampling_keys("nash", smol, _prompts_file(tmp_path), "nash.preference_data=/x.jsonl",
                          f"out={tmp_path / 'nash'}")
    cfg = load_config(NashConfig, None, keys)
    mem = memcheck.estimate(cfg, memcheck.shapes_of(cfg))
    fit = mem.apart["preference fit"]
    assert mem.peak == mem.weights + max(mem.grads + mem.adam + max(mem.activations, mem.kv_cache), fit)
    (tmp_path / "nash" / "preference").mkdir(parents=True)
    (tmp_path / "nash" / "preference" / "config.json").write_text(json.dumps(SMOL))
    assert not memcheck.estimate(cfg, memcheck.shapes_of(cfg)).apart  # a rerun reuses it
    forced = load_config(NashConfig, None, [*keys, "force=true"])
    assert memcheck.estimate(forced, memcheck.shapes_of(forced)).apart == {"preference fit": fit}


def test_critique_samples_then_fine_tunes_like_sft(smol, tmp_path):
    """critique.finetune: SFT's estimate for the fine-tune, and the sampling as a phase before it (its
    model is freed first), not on top of the fine-tune's gradients and AdamW state."""
    prompts = _prompts_file(tmp_path)
    plain = load_config(CritiqueConfig, None, _sampling_keys("critique", smol, prompts))
    tuned = load_config(CritiqueConfig, None, _sampling_keys("critique", smol, prompts, "critique.finetune=true"))
    shapes = memcheck.shapes_of(tuned)
    n_prompt = memcheck.measure_prompts(tuned, shapes, PROMPTS)
    sampling = memcheck.estimate(plain, shapes, n_prompt)
    mem = memcheck.estimate(tuned, shapes, n_prompt)
    sft = M.stage_memory("sft", tuned, shapes["policy"])
    assert (mem.weights, mem.grads, mem.adam, mem.activations) == (sft.weights, sft.grads, sft.adam, sft.activations)
    assert mem.apart == {"sampling before the fine-tune": sampling.kv_cache}
    assert mem.peak == max(sft.peak, sampling.peak)
    # Under FSDP the fine-tune's weights, gradients and AdamW state are sharded (it is sft); the sampling's are not.
    fsdp = load_config(CritiqueConfig, None, _sampling_keys("critique", smol, prompts, "critique.finetune=true",
                                                             "runtime.fsdp=true"))
    state = sft.weights + sft.grads + sft.adam
    assert memcheck.need_bytes(fsdp, memcheck.estimate(fsdp, shapes, n_prompt), shapes, world=64) == max(
        sft.activations + -(-state // 64), sampling.peak)


def test_eval_counts_every_checkpoint_at_once_and_says_when_nothing_fits(smol, tmp_path, monkeypatch, no_loading):
    keys = _sampling_keys("eval", smol, _prompts_file(tmp_path))
    one = load_config(EvalConfig, None, keys)
    two = load_config(EvalConfig, None, [*keys, f"eval.checkpoints=[{smol},{smol / '.'}]", "eval.names=[a,b]"])
    m1 = memcheck.estimate(one, memcheck.shapes_of(one), 20)
    m2 = memcheck.estimate(two, memcheck.shapes_of(two), 20)
    assert m2.weights - m1.weights == 4 * M.lm_params(M.Shape.from_config(SMOL))  # all loaded before sampling
    _available(monkeypatch, m2.weights // 2)  # not even the weights: no batch size helps
    from alignforge.stages import eval as eval_stage

    with pytest.raises(ConfigError, match="No smaller sampling or scoring batch fits: the weights alone are .*: use a "
                                          "smaller model or evaluate fewer checkpoints per run"):
        eval_stage.run(two)


# ---------------------------------------------------------------------------------------------
# PPO / REINFORCE: one engine call samples all of a step's prompts (× k); rsft's prompts are measured
# ---------------------------------------------------------------------------------------------

# The SmolLM2-135M shape's numbers (see test_an_inference_estimate_by_hand): KV cache 23,040 B per token;
# one layer's A_layer = 22,272 B per token; an LM head's logits 10 · 49152 = 491,520 B per token.
KV, A_LAYER, HEAD = 23_040, 22_272, 491_520
RL_KEYS = ["train.seq_len=128", "sampling.max_new_tokens=28", "rollout.batch_size=4"]


def test_a_reinforce_rollout_by_hand(smol, tmp_path):
    """rollout.prompts × reinforce.k rows in one generate call (rl.rollout.make_rollout; the engine does
    not split it), not rollout.batch_size rows: GRPO with 8 prompts × k = 4 and rollout.batch_size = 4."""
    cfg = load_config(ReinforceConfig, None, [f"model.init={smol}", f"reward.init={smol}", "rollout.prompts=8",
                                              "reinforce.k=4", "reinforce.minibatch_size=8", *RL_KEYS])
    s = M.Shape.from_config(SMOL)
    assert (s.hd, s.d_kv, M.kv_bytes_per_token(s), M.layer_activation_bytes(s)) == (64, 192, KV, A_LAYER)
    # Sampling: 8 · 4 = 32 rows of 128 tokens (prompts cut to 128 − 28 = 100, + 28 new) of KV cache; one
    # step's logits for 32 rows; the prefill of the 8 distinct prompts (the k copies share it).
    sampling = 32 * 128 * KV + 32 * HEAD + 8 * 100 * A_LAYER
    assert sampling == 94_371_840 + 15_728_640 + 17_817_600 == 127_918_080
    # Then chunks of rollout.batch_size = 4 rows: the log-prob forward (A_layer per token, the head on the
    # 28 + 1 response positions), the reward model's forward (no LM head).
    logprob, reward = 4 * 128 * A_LAYER + 4 * 29 * HEAD, 4 * 128 * A_LAYER
    assert (logprob, reward) == (68_419_584, 11_403_264)
    assert M.rl_rollout_bytes(cfg, "reinforce", s, s, None) == {"sampling": sampling, "forwards": logprob}
    mem = M.stage_memory("reinforce", cfg, s)
    assert mem.kv_cache == 127_918_080
    # The former estimate, rollout.batch_size rows of KV cache plus the logits: 68,812,800 B, about half.
    assert 4 * 128 * KV + 4 * 29 * HEAD == 68_812_800 < mem.kv_cache
    # Under torchrun each process samples its share of the prompts (whole groups): 4 prompts × 4.
    halves = M.rl_rollout_bytes(cfg, "reinforce", s, s, None, world=2)["sampling"]
    assert halves == 16 * 128 * KV + 16 * HEAD + 4 * 100 * A_LAYER == 63_959_040
    # With data.eval, rank 0's proxy evaluation samples its eval_prompts at once too (64 distinct prompts).
    ev = load_config(ReinforceConfig, None, [f"model.init={smol}", "rollout.prompts=8", "reinforce.k=4",
                                             "reinforce.minibatch_size=8", "data.eval=/x.jsonl",
                                             "reinforce.eval_prompts=64", *RL_KEYS])
    assert M.stage_memory("reinforce", ev, s).kv_cache == 64 * 128 * KV + 64 * HEAD + 64 * 100 * A_LAYER == 362_741_760


def test_a_ppo_rollout_by_hand(smol, tmp_path):
    """PPO: rollout.prompts rows, one sample each, in one generate call; then the chunks of
    rollout.batch_size through the policy / reference, the reward model and the value model."""
    cfg = load_config(PPOConfig, None, [f"model.init={smol}", f"reward.init={smol}", "rollout.prompts=16",
                                        "ppo.minibatch_size=4", *RL_KEYS])
    s = M.Shape.from_config(SMOL)
    sampling = 16 * 128 * KV + 16 * HEAD + 16 * 100 * A_LAYER
    assert sampling == 47_185_920 + 7_864_320 + 35_635_200 == 90_685_440
    logprob = 4 * 128 * A_LAYER + 4 * 29 * HEAD  # the value and reward models' forwards (11,403,264 B) are smaller
    assert logprob == 68_419_584
    assert M.rl_rollout_bytes(cfg, "ppo", s, s, s) == {"sampling": sampling, "forwards": logprob}
    mem = memcheck.estimate(cfg, memcheck.shapes_of(cfg))
    assert mem.kv_cache == 90_685_440
    assert mem.peak == mem.weights + mem.grads + mem.adam + max(mem.activations, 90_685_440)
    # A minibatch is at most the rollout: 64 > 16 rows counts 16 rows' activations.
    big = load_config(PPOConfig, None, [f"model.init={smol}", "rollout.prompts=16", "ppo.minibatch_size=64",
                                        *RL_KEYS])
    assert M.stage_memory("ppo", big, s).activations == M.stage_memory("ppo", cfg, s).activations * 4


def test_a_rollout_that_does_not_fit_is_told_fewer_prompts_not_a_smaller_rollout_batch(smol, tmp_path, monkeypatch,
                                                                                    no_loading):
    """GRPO whose sampling (64 prompts × k = 4 in one engine call) is the peak: rollout.batch_size only
    chunks the forwards after it, so the fix named is fewer rollout.prompts — and it does fit."""
    from alignforge.stages import reinforce

    keys = [f"model.init={smol}", f"reward.init={smol}", "data.train=/nonexistent.jsonl", "runtime.device=cpu",
            "runtime.progress=false", "model.lora.enabled=true", "ref.share_base=true",
            "model.gradient_checkpointing=true", "train.seq_len=256", "sampling.max_new_tokens=128",
            "rollout.prompts=64", "reinforce.k=4", "reinforce.minibatch_size=4", "rollout.batch_size=8"]
    cfg = load_config(ReinforceConfig, None, [f"out={tmp_path / 'grpo'}", *keys])
    shapes = memcheck.shapes_of(cfg)
    mem = memcheck.estimate(cfg, shapes)
    parts = M.rl_rollout_bytes(cfg, "reinforce", shapes["policy"], shapes["reward"], None)
    assert mem.kv_cache == parts["sampling"] > max(parts["forwards"], mem.activations)  # the sampling is the peak
    budget = int(mem.peak - 0.3 * mem.kv_cache)
    _available(monkeypatch, budget)
    with pytest.raises(ConfigError) as e:
        reinforce.run(cfg)
    msg = str(e.value)
    overrides = msg.split("Would fit: ", 1)[1].split(" — ", 1)[0].split()
    assert "rollout.prompts=32" in overrides, msg
    fixed = load_config(ReinforceConfig, None, [*keys, *overrides])
    assert memcheck.estimate(fixed, memcheck.shapes_of(fixed)).peak <= memcheck.SUGGEST_WITHIN * budget
    # The former advice does nothing for the sampling: rollout.batch_size=1 leaves the peak where it was.
    tiny_chunks = load_config(ReinforceConfig, None, [*keys, "rollout.batch_size=1"])
    assert memcheck.estimate(tiny_chunks, shapes).peak == mem.peak > budget
    # Under torchrun each process samples its share: 2 processes halve the rows, and a fix keeps
    # rollout.prompts divisible by the processes (198 over 3: 99, then 48, not 49).
    half = memcheck.estimate(cfg, shapes, world=2)
    assert half.kv_cache == M.rl_rollout_bytes(cfg, "reinforce", shapes["policy"], shapes["reward"], None,
                                               world=2)["sampling"] < mem.kv_cache
    odd = memcheck._with(cfg, (("rollout.prompts", 198),))

    def need(n: int) -> int:
        return memcheck.estimate(memcheck._with(odd, (("rollout.prompts", n),)), shapes, world=3).peak

    assert need(48) < need(99) < need(198)
    assert ("rollout.prompts", 48) in memcheck.what_fits(odd, shapes, need(48), world=3)[0].changes


def _rsft_keys(smol: Path, prompts: Path, *more: str) -> list[str]:
    return [f"model.init={smol}", f"reward.init={smol}", f"data.train={prompts}", "runtime.device=cpu",
            "runtime.progress=false", "model.lora.enabled=true", "model.gradient_checkpointing=true",
            "train.batch_size=1", "sampling.max_new_tokens=32", *more]


def test_rsft_sizes_its_sampling_by_its_measured_prompts_not_train_seq_len(smol, tmp_path, monkeypatch, no_loading,
                                                                          capsys):
    """Nothing cuts RSFT's prompts to train.seq_len: the check measures the longest (the stage hands its
    prompts over), and a shorter seq_len is never named as a fix for the sampling."""
    from alignforge.stages import rsft

    long_prompt = "Describe, step by step and with every detail you can, " + "the harbour at night " * 80
    f = tmp_path / "long.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [*PROMPTS, long_prompt]))
    keys = _rsft_keys(smol, f, "train.seq_len=64", "rsft.sample_batch_size=64", "rsft.n=4")
    cfg = load_config(RSFTConfig, None, [f"out={tmp_path / 'rsft'}", *keys])
    shapes = memcheck.shapes_of(cfg)
    P = memcheck.measure_prompts(cfg, shapes, rsft.read_prompts(cfg))
    assert P == memcheck.longest_prompt(smol, [long_prompt], 32, 8192) > 64  # longer than train.seq_len itself
    mem = memcheck.estimate(cfg, shapes, P)
    # 64 rows of P + 32 tokens; a batch of 64 rows holds at most 17 distinct prompts (n = 4, it may start
    # in the middle of one prompt's copies); the reward model's forward, 8 rows (reward.batch_size) of P + 32.
    sampling = 64 * (P + 32) * KV + 64 * HEAD + 17 * P * A_LAYER
    assert mem.kv_cache == max(sampling, 8 * (P + 32) * A_LAYER) == sampling
    assert f"prompts up to {P} tokens" in mem.notes
    # train.seq_len does not change it; the prompts do.
    assert memcheck.estimate(memcheck._with(cfg, (("train.seq_len", 32),)), shapes, P).kv_cache == mem.kv_cache
    assert memcheck.estimate(cfg, shapes, 10).kv_cache < mem.kv_cache

    # Refused, with a smaller sampling batch as the fix (no train.seq_len), which fits by the same estimate.
    budget = int(mem.peak - 0.5 * mem.kv_cache)
    _available(monkeypatch, budget)
    with pytest.raises(ConfigError) as e:
        rsft.run(cfg)
    msg = str(e.value)
    assert f"prompts up to {P} tokens" in msg
    overrides = msg.split("Would fit: ", 1)[1].split(" — ", 1)[0].split()
    assert any(o.startswith("rsft.sample_batch_size=") for o in overrides), msg
    assert "train.seq_len" not in msg.split("Would fit: ", 1)[1].split("The estimate", 1)[0], msg
    fixed = load_config(RSFTConfig, None, [*keys, *overrides])
    assert memcheck.estimate(fixed, shapes, P).peak <= memcheck.SUGGEST_WITHIN * budget
    assert not (tmp_path / "rsft").exists()

    # With room, it prints the estimate with the measured prompt and goes on to load.
    capsys.readouterr()
    _available(monkeypatch, 64 * GIB)
    with pytest.raises(Loaded):
        rsft.run(load_config(RSFTConfig, None, [f"out={tmp_path / 'rsft-fits'}", *keys]))
    line = next(x for x in capsys.readouterr().out.splitlines() if "memory estimate" in x)
    assert f"prompts up to {P} tokens" in line and f"peak {memcheck.fmt_bytes(mem.peak)}" in line, line
