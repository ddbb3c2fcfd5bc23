"""The memory check every training stage opens with (issue 19 §4, ``alignforge.train.memcheck``).

A stage prints its estimate (weights, gradients, AdamW, activations, KV cache, peak) beside the
memory available; a run whose estimate does not fit is refused before any model is loaded, with
overrides that do fit (checked here against the same estimator); ``runtime.memory_check=false``
runs anyway. The model directories are a real shape's ``config.json`` (SmolLM2-135M) and a tiny
tokenizer, no weights: a stage that got as far as loading would fail on them — and loading is
booby-trapped as well. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from alignforge.config import (ConfigError, DPOConfig, PPOConfig, PretrainConfig, ReinforceConfig, RewardConfig,
                               RSFTConfig, SFTConfig, load_config)
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
    keys = [f"model.init={model_dir}", f"out={out}", "data.train=/nonexistent.jsonl", "runtime.device=cpu",
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
    mem = memcheck.estimate(cfg, shapes)
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
    assert memcheck.estimate(fixed, memcheck.shapes_of(fixed)).peak <= memcheck.SUGGEST_WITHIN * budget
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
