"""The Hugging Face recipes in ``configs/hf`` (issue 19 §4): every file loads strictly, and the recipe
pipeline (SFT → reward → DPO → PPO → GRPO, LoRA, gradient checkpointing, the shared reference, a LoRA
value model) runs two steps of every stage on a tiny random model of each architecture family the
recipes are sized for — Llama (SmolLM2, Llama-3.2) and Qwen2 (Qwen2.5) — on data in the HH-RLHF
schema (the shared harmless-base file) and the UltraFeedback-binarized schema (rows written here),
through the pipeline file itself, with overrides that only shrink it. Every output reloads with
plain transformers. Nothing is downloaded.

Also: ``docs/recipes.md``'s memory tables are what ``scripts/recipe_memory.py`` computes from these
configs, and the parameter counts behind them equal transformers' own for the three real shapes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from alignforge.config import (ConfigError, DPOConfig, PPOConfig, ReinforceConfig, RewardConfig, SFTConfig,
                               load_config)
from alignforge.stages import pipeline as P

pytest.importorskip("peft")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
HF = REPO / "configs" / "hf"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"
needs_hh = pytest.mark.skipif(not HH.exists(), reason=f"shared data not found: {HH} (clone with shared/ beside the repo)")

STAGE_CONFIGS = {"sft-": SFTConfig, "reward-": RewardConfig, "dpo-": DPOConfig, "ppo-": PPOConfig,
                 "grpo-": ReinforceConfig}


def _stage_class(path: Path):
    for prefix, cls in STAGE_CONFIGS.items():
        if path.name.startswith(prefix):
            return cls
    return None


def test_every_hf_config_loads_strictly_and_the_recipe_wires_every_step():
    files = sorted(HF.glob("*.yaml"))
    assert {f.name for f in files} >= {"sft-self-instruct.yaml", "reward-hh.yaml", "reward-lora.yaml",
                                       "dpo-hh.yaml", "ppo-lora.yaml", "grpo-lora.yaml", "recipe.yaml"}
    for f in files:
        if f.name == "recipe.yaml":
            continue
        cls = _stage_class(f)
        assert cls is not None, f"{f.name}: no stage for this file name (add it to STAGE_CONFIGS)"
        cfg = load_config(cls, f)  # strict: an unknown or mistyped key is an error
        assert cfg.data.train
    p = P.load_pipeline(HF / "recipe.yaml")
    assert [s.name for s in p.steps] == ["sft", "reward", "dpo", "ppo", "grpo"]
    assert p.vars["base"] is None
    with pytest.raises(ConfigError, match="not set: base; pass --var base="):
        P.run_pipeline(p, log=lambda s: None)
    with pytest.raises(ConfigError, match="did you mean 'base'"):
        P.set_vars(p, ["bse=/x"])
    P.set_vars(p, ["base=/models/m"])
    refs = {k: str(v) for k, v in p.vars.items()}
    for step in p.steps:
        refs[step.name] = f"runs/hf/{step.name}"
        cfg = P.step_config(p, step, Path("runs/hf") / step.name, refs)
        if step.stage != "sft":
            assert cfg.model.lora.enabled and cfg.model.gradient_checkpointing
        if step.stage in ("dpo", "ppo", "reinforce"):
            assert cfg.ref.share_base and cfg.ref.init is None
        if step.stage in ("ppo", "reinforce"):
            assert cfg.reward.init == "runs/hf/reward" and cfg.model.init == "runs/hf/sft"
        if step.stage == "ppo":
            assert cfg.value.lora and cfg.value.init is None  # value model = the reward model + LoRA
    assert P.step_config(p, p.steps[0], Path("o"), refs).model.init == "/models/m"


# ---------------------------------------------------------------------------------------------
# Two steps of every stage, through the pipeline file, on tiny models of each family
# ---------------------------------------------------------------------------------------------

UF_ROWS = [
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have six legs."),
    ("Write a one-line slogan for a bakery.", "Fresh from our oven to your table.", "Bread. Buy it."),
    ("Translate 'good morning' into German.", "Guten Morgen.", "Bonjour."),
    ("What is the capital of France?", "Paris is the capital of France.", "London, I believe."),
    ("Name a prime number.", "Seven is prime.", "Nine is prime."),
    ("Is water wet?", "Water makes things wet.", "No."),
    ("Give me a synonym for happy.", "Joyful.", "Sad."),
    ("What colour is the sky on a clear day?", "Blue.", "Green, usually."),
]


def _write_ultrafeedback_binarized(path: Path, repeat: int = 2) -> Path:
    """Rows in UltraFeedback-binarized's schema (prompt string, chosen/rejected conversations that
    repeat the user turn, messages, scores, prompt_id), as the hub's train_prefs split ships them."""
    rows = []
    for k in range(repeat):
        for i, (prompt, good, bad) in enumerate(UF_ROWS):
            q = prompt if k == 0 else f"{prompt} (again {k})"
            user = {"role": "user", "content": q}
            rows.append({"prompt": q, "prompt_id": f"{k:02d}{i:062d}",
                         "chosen": [user, {"role": "assistant", "content": good}],
                         "rejected": [user, {"role": "assistant", "content": bad}],
                         "messages": [user, {"role": "assistant", "content": good}],
                         "score_chosen": 8.0, "score_rejected": 3.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tiny_base(arch: str, root: Path) -> Path:
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    tok = tiny_tokenizer(arch)
    model = tiny_random_model(arch, len(tok), seed=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                              max_positions=512)
    save_model(model, tok, root / f"{arch}-base")
    return root / f"{arch}-base"


def _shrink(step: P.Step) -> dict:
    """Overrides that only make a recipe step small: two optimizer steps / rollouts, short sequences."""
    common = {"runtime.threads": 1, "runtime.progress": False, "runtime.device": "cpu", "train.seq_len": 192,
              "train.warmup_steps": 0, "train.log_every": 1, "train.eval_every": 0, "train.save_every": 0,
              "data.max_records": 16}
    by_stage = {
        "sft": {"sft.epochs": None, "train.max_steps": 2, "train.batch_size": 2, "train.grad_accum": 1,
                "sft.samples": 0, "sft.eval_fraction": 0.2},
        "reward": {"reward.epochs": None, "train.max_steps": 2, "train.batch_size": 2, "train.grad_accum": 1,
                   "reward.eval_fraction": 0.25, "reward.max_norm_samples": 8},
        "dpo": {"dpo.epochs": None, "train.max_steps": 2, "train.batch_size": 2, "train.grad_accum": 1,
                "dpo.kl_prompts": 2, "dpo.kl_max_new_tokens": 4, "dpo.eval_fraction": 0.25},
        "ppo": {"ppo.steps": 2, "ppo.epochs": 1, "ppo.minibatch_size": 2, "rollout.prompts": 4,
                "rollout.batch_size": 4, "sampling.max_new_tokens": 8, "ppo.eval_prompts": 0},
        "reinforce": {"reinforce.steps": 2, "reinforce.k": 2, "reinforce.minibatch_size": 4, "rollout.prompts": 2,
                      "rollout.batch_size": 4, "sampling.max_new_tokens": 8, "reinforce.eval_prompts": 0},
    }
    return {**common, **by_stage[step.stage]}


def _run_recipe(tmp_path: Path, base: Path, data_vars: list[str]) -> dict[str, str]:
    p = P.load_pipeline(HF / "recipe.yaml")
    P.set_vars(p, [f"base={base}", *data_vars])
    p.out_root = tmp_path / "runs"
    for step in p.steps:
        step.values.update(_shrink(step))
    return P.run_pipeline(p, log=lambda s: None)


def _check_outputs(refs: dict[str, str]) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    for name in ("sft", "dpo", "ppo", "grpo"):
        out = Path(refs[name])
        assert (out / "DONE").is_file() and (out / "PIPELINE_DONE").is_file(), name
        m = AutoModelForCausalLM.from_pretrained(out / "model")  # plain transformers, LoRA merged
        assert not any("lora" in k for k in m.state_dict()), name
    for d in (Path(refs["reward"]) / "model", Path(refs["ppo"]) / "value"):
        rm = AutoModelForSequenceClassification.from_pretrained(d)
        assert rm.config.num_labels == 1 and not any("lora" in k for k in rm.state_dict())
    for name in ("dpo", "ppo", "grpo"):  # the recipe's memory options reached the stages
        cfg = (Path(refs[name]) / "config.yaml").read_text()
        assert "share_base: true" in cfg and "gradient_checkpointing: true" in cfg
    steps = lambda n: [json.loads(x)["step"] for x in (Path(refs[n]) / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert max(steps("dpo")) == 2 and max(steps("ppo")) == 2 and max(steps("grpo")) == 2


@needs_hh
def test_recipe_runs_every_stage_on_a_tiny_llama_with_hh_rlhf(tmp_path):
    base = _tiny_base("llama", tmp_path)
    refs = _run_recipe(tmp_path, base, [f"prefs={HH}", "prefs_format=hh-rlhf"])
    _check_outputs(refs)


def test_recipe_runs_every_stage_on_a_tiny_qwen2_with_ultrafeedback_binarized(tmp_path):
    base = _tiny_base("qwen2", tmp_path)
    uf = _write_ultrafeedback_binarized(tmp_path / "ultrafeedback_binarized.jsonl")
    refs = _run_recipe(tmp_path, base, [f"prefs={uf}", f"sft_data={uf}", "sft_format=ultrafeedback-binarized"])
    _check_outputs(refs)


# ---------------------------------------------------------------------------------------------
# Memory: the docs' tables are computed from these configs; the shapes' parameter counts are right
# ---------------------------------------------------------------------------------------------


def _script():
    spec = importlib.util.spec_from_file_location("recipe_memory", REPO / "scripts" / "recipe_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_docs_memory_tables_are_the_ones_computed_from_the_recipe_configs():
    text = (REPO / "docs" / "recipes.md").read_text()
    body = _script().tables()
    start, end = "<!-- recipe-memory:start -->", "<!-- recipe-memory:end -->"
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == body.strip(), \
        "docs/recipes.md is stale: run python scripts/recipe_memory.py"


@pytest.mark.parametrize("name", ["SmolLM2-135M", "Qwen2.5-0.5B", "Llama-3.2-1B"])
def test_shape_parameter_counts_equal_transformers_models_built_on_the_meta_device(name):
    import transformers as tf

    from alignforge.config import LoraSection
    from alignforge.models import memory as M
    from alignforge.models.load import apply_lora

    s = M.SHAPES[name]
    cls = tf.Qwen2Config if s.qkv_bias else tf.LlamaConfig
    cfg = cls(hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
              num_key_value_heads=s.kv_heads, intermediate_size=s.intermediate, vocab_size=s.vocab,
              tie_word_embeddings=s.tied, pad_token_id=0)
    with torch.device("meta"):
        lm = tf.AutoModelForCausalLM.from_config(cfg)
        rm = tf.AutoModelForSequenceClassification.from_config(cfg)  # num_labels 2 by default
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 - tied weights are one Parameter
    assert n(lm) == M.lm_params(s)
    assert n(rm) == M.scorer_params(s, heads=2)
    assert {"SmolLM2-135M": 134_515_008, "Qwen2.5-0.5B": 494_032_768, "Llama-3.2-1B": 1_235_814_400}[name] == n(lm)
    with torch.device("meta"):
        peft_lm = apply_lora(lm, LoraSection(enabled=True, r=16, alpha=32))
    assert sum(p.numel() for p in peft_lm.parameters() if p.requires_grad) == M.lora_params(s, 16)
