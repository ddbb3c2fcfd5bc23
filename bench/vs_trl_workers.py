"""The workers of ``bench/vs_trl.py``: one library on one stage, in its own process.

Each worker returns the raw measurement — a timestamp at the end of every step and the real
(non-pad) tokens of every step — and the orchestrator turns it into the table. The baseline side
("trl" in the result's ``library`` field) is TRL's trainer where TRL has one, the plain PyTorch PPO
loop of ``bench/ppo_reference.py`` for PPO (TRL 1.16 has no PPO trainer), and transformers'
``model.generate`` for the sampling rows. The alignforge side is always the real stage
(``alignforge.stages.*.run`` built through ``alignforge.config.build_config``) or, for sampling, the
one engine (``alignforge.generation.generate``).

What a step is, and which tokens it counts (the same on both sides of a row):

* sft / dpo / reward: one optimizer step; tokens of the sequences the model runs on
  (DPO and reward: prompt+chosen and prompt+rejected);
* grpo / rloo / ppo: one rollout and its update, end to end (sampling, reference and reward
  forwards, the optimizer steps); tokens are the rollout's real prompt + completion tokens,
  counted once per rollout (PPO's two epochs do not count them twice);
* sample-BxN: one batched sampling call of B prompts × N new tokens (eos off, so every row
  generates N); tokens are the B·N generated tokens.

Precision (``precision``, the orchestrator's ``--precision``), the same on both sides of a row:

* ``fp32``: everything in fp32. alignforge gets ``runtime.precision=fp32`` explicitly (its ``auto``
  would pick bf16 autocast on a CPU with AMX-BF16); TRL's configs get ``bf16=False``.
* ``bf16``: bf16 autocast over fp32 master weights on both sides. alignforge:
  ``runtime.precision=bf16`` (the stages' ``torch.autocast("cpu", bfloat16)``; the optimizer and
  master weights stay fp32). TRL: ``bf16=True`` with ``use_cpu=True`` — transformers sets
  ``mixed_precision="bf16"``, accelerate sets ``native_amp`` on CPU and wraps ``model.forward``
  of every model it prepares (policy, reference, reward model) in ``torch.autocast("cpu",
  bfloat16)`` + ``convert_outputs_to_fp32``; the weights are not cast. The plain PPO loop and
  transformers' ``generate`` run inside ``torch.autocast("cpu", bfloat16)``, as does the engine.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

LR = 1e-5
SEQ_LEN = 256  # > the longest fixture example (~110 tokens with the chat template)
GROUP = 4  # completions per prompt (GRPO / RLOO)
NEW_TOKENS = 48  # new tokens per completion, online stages
BETA = {"grpo": 0.04, "rloo": 0.05, "ppo": 0.05}  # KL coefficients: TRL's defaults / DeepSeekMath's 0.04
PPO_EPOCHS = 2  # PPO passes over each rollout; minibatch = half the rollout → 4 optimizer steps a rollout
OFFLINE = ("sft", "reward", "dpo")
ONLINE = ("grpo", "rloo", "ppo")
PRECISIONS = ("fp32", "bf16")


def cpu_autocast(precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast("cpu", bfloat16)`` for ``"bf16"``, a no-op for ``"fp32"``: what the baselines
    without a trainer (``generate``, the plain PPO loop) and the engine row run their forwards in."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def split_stage(stage: str) -> tuple[str, str | None, tuple[int, int] | None]:
    """``"dpo-30m"`` → ("dpo", "30m", None); ``"sample-16x48"`` → ("sample", None, (16, 48))."""
    base, _, suffix = stage.partition("-")
    if base == "sample":
        b, _, n = suffix.partition("x")
        if not (b.isdigit() and n.isdigit()):
            raise ValueError(f"stage {stage!r}: expected sample-<prompts>x<new tokens>, e.g. sample-16x48")
        return base, None, (int(b), int(n))
    return base, suffix or None, None


def _non_pad_tokens(batch) -> float:
    if "attention_mask" in batch:
        return float(batch["attention_mask"].sum())
    return float(batch["input_ids"].numel())  # padding-free collation: every position is real


def _model_dir(fixture: Path, scale: str | None) -> Path:
    if scale is None:
        return fixture / "model"
    import fixture as fixture_mod  # bench/ is on sys.path (vs_trl.py puts it there)

    return fixture_mod.ensure_scale(fixture, scale)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------
# Baselines: TRL's trainers, the plain PPO loop, transformers' generate
# ---------------------------------------------------------------------------------------------


def trl_worker(stage: str, fixture: Path, steps: int, batch: int, seed: int, stamp: Callable[[], None],
               defaults: bool = False, precision: str = "fp32") -> dict:
    """Train with TRL's own trainer for ``steps`` steps (or run the baseline of a non-TRL row).

    TRL at its best unless ``defaults``: gradient checkpointing off (TRL 1.16 turns it on in every
    trainer config; alignforge does not recompute activations, so leaving it on charges TRL for
    memory it does not need here) and, for DPO, ``precompute_ref_log_probs=True`` (alignforge caches
    its reference log-probs too). ``defaults`` keeps TRL's own settings: the second baseline row.
    ``precision``: see the module docstring (``bf16`` → ``bf16=True`` in TRL's config).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    base, scale, shape = split_stage(stage)
    if base == "sample":
        return _generate_baseline(fixture, shape, steps, seed, stamp, precision)
    if base == "ppo":
        import ppo_reference
        import torch

        # The whole loop inside autocast: it recasts only matmul-family ops (the forwards and
        # ``generate``); the backward replays the forward's dtypes and AdamW has no such ops, so this
        # is the same as autocasting the forwards alone (alignforge's and accelerate's way).
        with cpu_autocast(precision):
            tokens = ppo_reference.run(fixture, steps=steps, batch=batch, seed=seed, lr=LR, beta=BETA["ppo"],
                                       epochs=PPO_EPOCHS, minibatch=max(1, batch // 2), new_tokens=NEW_TOKENS,
                                       on_step=lambda n: stamp())
        return {"step_tokens": tokens, "version": f"plain PyTorch PPO (torch {torch.__version__})"}

    import datasets
    import transformers
    import trl
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )

    datasets.disable_progress_bars()
    model_dir = _model_dir(fixture, scale)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tokens: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamp()

    common = {"output_dir": tempfile.mkdtemp(prefix="trl-"), "per_device_train_batch_size": batch,
              "gradient_accumulation_steps": 1, "max_steps": steps, "learning_rate": LR,
              "lr_scheduler_type": "constant", "logging_steps": steps, "save_strategy": "no",
              "report_to": "none", "use_cpu": True, "seed": seed, "dataloader_num_workers": 0,
              # bf16=True on CPU: accelerate's autocast to bf16 around each prepared model's forward,
              # fp32 weights (module docstring); the orchestrator also pins ACCELERATE_MIXED_PRECISION.
              "disable_tqdm": True, "bf16": precision == "bf16"}
    if not defaults:
        common["gradient_checkpointing"] = False
    kw = {"processing_class": tok, "callbacks": [Stamp()]}
    if base in ("sft", "dpo"):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        rows = _rows(fixture / ("sft.jsonl" if base == "sft" else "pref.jsonl"))
        if base == "sft":
            # Messages, so TRL applies the same chat template as alignforge; loss on the answer only.
            ds = datasets.Dataset.from_list([{"prompt": _user(r["prompt"]), "completion": _assistant(r["response"])}
                                             for r in rows])
            trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common, max_length=SEQ_LEN),
                                     train_dataset=ds, **kw)
        else:
            ds = datasets.Dataset.from_list([{"prompt": _user(r["prompt"]), "chosen": _assistant(r["chosen"]),
                                              "rejected": _assistant(r["rejected"])} for r in rows])
            best = {} if defaults else {"precompute_ref_log_probs": True}
            trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common, max_length=SEQ_LEN, beta=0.1, **best),
                                     train_dataset=ds, **kw)
    elif base == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1,
                                                                   pad_token_id=tok.pad_token_id)
        ds = datasets.Dataset.from_list([{"prompt": _user(r["prompt"]), "chosen": _assistant(r["chosen"]),
                                          "rejected": _assistant(r["rejected"])} for r in _rows(fixture / "pref.jsonl")])
        trainer = trl.RewardTrainer(model=model, args=trl.RewardConfig(**common, max_length=SEQ_LEN),
                                    train_dataset=ds, **kw)
    elif base in ("grpo", "rloo"):
        # ``batch`` completions a step = batch // GROUP prompts × GROUP; one generation per optimizer
        # step (steps_per_generation = 1), one pass (num_iterations = 1), KL to a reference (β > 0).
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        rm = AutoModelForSequenceClassification.from_pretrained(fixture / "reward")
        ds = datasets.Dataset.from_list([{"prompt": _user(r["prompt"])} for r in _rows(fixture / "prompts.jsonl")])
        online = {**common, "num_generations": GROUP, "max_completion_length": NEW_TOKENS, "beta": BETA[base],
                  "temperature": 1.0, "top_p": 1.0, "top_k": 0, "steps_per_generation": 1, "num_iterations": 1}
        cls, cfg_cls = (trl.GRPOTrainer, trl.GRPOConfig) if base == "grpo" else (trl.RLOOTrainer, trl.RLOOConfig)
        trainer = cls(model=model, reward_funcs=rm, args=cfg_cls(**online), train_dataset=ds,
                      reward_processing_classes=tok, **kw)
        generate_and_score = trainer._generate_and_score_completions

        def counted(inputs):  # one call per step: count its real prompt + completion tokens
            out = generate_and_score(inputs)
            tokens.append(float(out["prompt_mask"].sum() + out["completion_mask"].sum()))
            return out

        trainer._generate_and_score_completions = counted
    else:
        raise ValueError(f"stage {stage!r}: the TRL worker knows sft, reward, dpo, grpo, rloo, ppo, sample-BxN")
    if base in OFFLINE:
        collate = trainer.data_collator

        def counting_collator(examples):
            out = collate(examples)
            tokens.append(_non_pad_tokens(out))
            return out

        trainer.data_collator = counting_collator
    trainer.train()
    # The dataloader may collate one batch ahead of the last step; the orchestrator keeps one
    # count per step.
    settings = "defaults" if defaults else "no grad. checkpointing" + (", precomputed ref" if base == "dpo" else "")
    return {"step_tokens": tokens,
            "version": f"trl {trl.__version__} {settings} (transformers {transformers.__version__})"}


def _prompt_ids(fixture: Path, tok, n: int) -> list[list[int]]:
    from alignforge.data.batching import encode_prompt

    rows = _rows(fixture / "prompts.jsonl")
    return [encode_prompt(tok, rows[i % len(rows)]["prompt"]) for i in range(n)]


def _generate_baseline(fixture: Path, shape: tuple[int, int], steps: int, seed: int, stamp,
                       precision: str = "fp32") -> dict:
    """transformers ``model.generate`` (sampling, T = 1, no top-k/top-p, eos off) on the fixture model,
    inside bf16 autocast when ``precision`` is ``"bf16"`` (the weights stay fp32)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    B, N = shape
    tok = AutoTokenizer.from_pretrained(fixture / "model")
    model = AutoModelForCausalLM.from_pretrained(fixture / "model").eval()
    model.generation_config.eos_token_id = None  # every row generates N tokens, as in the engine's row
    model.generation_config.top_k = None
    ids = _prompt_ids(fixture, tok, B)
    P = max(len(p) for p in ids)
    inp = torch.full((B, P), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros(B, P, dtype=torch.long)
    for i, p in enumerate(ids):  # left padding, as generate expects for a decoder-only model
        inp[i, P - len(p):] = torch.tensor(p)
        att[i, P - len(p):] = 1
    torch.manual_seed(seed)
    for _ in range(steps):
        with torch.inference_mode(), cpu_autocast(precision):
            out = model.generate(input_ids=inp, attention_mask=att, do_sample=True, max_new_tokens=N,
                                 temperature=1.0, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
        if out.shape[1] != P + N:
            raise RuntimeError(f"generate returned {out.shape[1] - P} new tokens, expected {N}")
        stamp()
    return {"step_tokens": [float(B * N)] * steps, "version": f"transformers {transformers.__version__} generate"}


# ---------------------------------------------------------------------------------------------
# alignforge: the real stages and the engine
# ---------------------------------------------------------------------------------------------


def alignforge_worker(stage: str, fixture: Path, steps: int, batch: int, seed: int, stamp: Callable[[], None],
                      precision: str = "fp32") -> dict:
    """Run the real alignforge stage for ``steps`` steps (or the engine for a sample row) at
    ``precision`` (``runtime.precision``, set explicitly so ``auto`` never decides)."""
    import alignforge

    from alignforge.rl import rollout  # the stages call R.make_rollout with R = this module
    from alignforge.config import (
        DPOConfig,
        PPOConfig,
        ReinforceConfig,
        RewardConfig,
        SFTConfig,
        build_config,
    )
    from alignforge.train import tracking

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    base, scale, shape = split_stage(stage)
    version = f"alignforge {alignforge.__version__}"
    if base == "sample":
        return {**_engine(fixture, shape, steps, seed, stamp, precision), "version": f"{version} engine"}
    seen: set[int] = set()
    log = tracking.MetricsLogger.log

    def stamped_log(self, step, *a, **kw):  # one stamp per step (a final row may log the same step)
        if step not in seen:
            seen.add(step)
            stamp()
        return log(self, step, *a, **kw)

    tracking.MetricsLogger.log = stamped_log
    rollout_tokens: list[float] = []
    make_rollout = rollout.make_rollout

    def counted_rollout(*a, **kw):  # the stages call R.make_rollout: count each rollout's real tokens
        ro = make_rollout(*a, **kw)
        rollout_tokens.append(float(ro.attention_mask.sum()))
        return ro

    rollout.make_rollout = counted_rollout
    out = Path(tempfile.mkdtemp(prefix="af-")) / stage
    common = {"model.init": str(_model_dir(fixture, scale)), "out": str(out), "seed": seed, "train.lr": LR,
              "train.max_steps": steps, "train.log_every": 1, "train.eval_every": 0, "train.save_every": 0,
              "train.warmup_steps": 0, "train.schedule": "constant", "train.seq_len": SEQ_LEN,
              "runtime.device": "cpu", "runtime.progress": False,
              # Explicit: auto would pick bf16 autocast on a CPU with AMX-BF16 while TRL runs fp32.
              "runtime.precision": precision}
    online = {"reward.init": str(fixture / "reward"), "data.train": str(fixture / "prompts.jsonl"),
              "sampling.max_new_tokens": NEW_TOKENS, "sampling.temperature": 1.0}
    # Threads: worker_main already set torch's, and runtime.threads unset leaves them as they are.
    if base == "sft":
        from alignforge.stages import sft
        # ``batch`` examples per step: a packed row of SEQ_LEN holds SEQ_LEN // 110 whole fixture
        # examples (~107 tokens each with the template), so ask for the rows that hold ``batch``
        # of them (tok/step in the table shows how close the two sides are).
        rows = max(1, -(-batch // max(1, SEQ_LEN // 110)))
        sft.run(build_config(SFTConfig, None, {**common, "data.train": str(fixture / "sft.jsonl"),
                                               "train.batch_size": rows, "sft.samples": 0, "sft.eval_fraction": 0.0}))
    elif base == "dpo":
        from alignforge.stages import dpo
        dpo.run(build_config(DPOConfig, None, {**common, "data.train": str(fixture / "pref.jsonl"),
                                               "train.batch_size": batch, "dpo.beta": 0.1, "dpo.ref_cache": "memory",
                                               "dpo.eval_fraction": 0.0, "dpo.kl_prompts": 0}))
    elif base == "reward":
        from alignforge.stages import reward
        reward.run(build_config(RewardConfig, None, {**common, "data.train": str(fixture / "pref.jsonl"),
                                                     "train.batch_size": batch, "reward.eval_fraction": 0.0}))
    elif base in ("grpo", "rloo"):
        from alignforge.stages import reinforce
        reinforce.run(build_config(ReinforceConfig, None, {
            **common, **online, "reinforce.algorithm": base, "reinforce.k": GROUP, "reinforce.steps": steps,
            "reinforce.epochs": 1, "reinforce.minibatch_size": batch, "reinforce.eval_prompts": 0,
            "rollout.prompts": max(1, batch // GROUP), "rollout.batch_size": batch,
            # The KL each trainer uses: GRPO k3 in the loss, RLOO k1 in the reward (as TRL does).
            "kl.coef": BETA[base], "kl.estimator": "k3" if base == "grpo" else "k1"}))
    elif base == "ppo":
        from alignforge.stages import ppo
        ppo.run(build_config(PPOConfig, None, {
            **common, **online, "ppo.steps": steps, "ppo.epochs": PPO_EPOCHS, "ppo.minibatch_size": max(1, batch // 2),
            "ppo.eval_prompts": 0, "rollout.prompts": batch, "rollout.batch_size": batch, "kl.coef": BETA["ppo"],
            "kl.estimator": "k1"}))
    else:
        raise ValueError(f"stage {stage!r}: the alignforge worker knows sft, reward, dpo, grpo, rloo, ppo, sample-BxN")
    if base in ONLINE:
        return {"step_tokens": rollout_tokens, "version": version}
    done = json.loads((out / "DONE").read_text())
    # Offline stages count their real tokens over the run (packing leaves almost no padding).
    return {"step_tokens": [float(done["tokens"]) / done["step"]] * len(seen), "version": version}


def _engine(fixture: Path, shape: tuple[int, int], steps: int, seed: int, stamp, precision: str = "fp32") -> dict:
    """``alignforge.generation.generate`` on the same prompts, sampling and lengths as the baseline,
    inside bf16 autocast when ``precision`` is ``"bf16"`` (as the stages sample under
    ``runtime.precision=bf16``; the engine keeps its LM head in fp32 there)."""
    import torch

    from alignforge.generation import SamplingParams, generate
    from alignforge.models.load import load_causal_lm

    B, N = shape
    model, tok = load_causal_lm(fixture / "model")
    model.eval()
    ids = _prompt_ids(fixture, tok, B)
    params = SamplingParams(temperature=1.0, max_new_tokens=N)
    for i in range(steps):
        with cpu_autocast(precision):
            g = generate(model, ids, params, eos_token_id=None, pad_token_id=tok.pad_token_id,
                         generator=torch.Generator().manual_seed(seed + i))
        if int(g.response_mask.sum()) != B * N:
            raise RuntimeError(f"the engine returned {int(g.response_mask.sum())} tokens, expected {B * N}")
        stamp()
    return {"step_tokens": [float(B * N)] * steps}


def matmul_params_of(fixture: Path, stage: str) -> int:
    """Non-embedding matmul parameters of the policy (or, for reward, the scorer) the row trains."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignforge.models.load import matmul_params

    _, scale, _ = split_stage(stage)
    cfg = AutoConfig.from_pretrained(_model_dir(fixture, scale))
    with torch.device("meta"):  # sizes only: no weights are read or initialised
        model = AutoModelForCausalLM.from_config(cfg)
    return matmul_params(model)
