"""``alignforge demo``: the whole pipeline on the embedded world, measured by the gold judge.

    world → tokenizer → pretrain → SFT → collect (default pool, and a length-biased pool)
          → reward models → PPO, DPO, RSFT, and PPO at β = 0 on the length-biased reward model
          → eval (gold judge) → report.html

It is a pipeline (``stages/pipeline.py``) built in code, so it runs from any directory and needs
no config files; sizes are chosen for 2 CPU cores (``--quick``: a seconds-per-stage smoke run for
CI). Killed at any moment and rerun, it resumes: finished steps are skipped, an interrupted one
continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from alignforge.stages.pipeline import Pipeline, Step, planned_steps, run_pipeline
from alignforge.train.progress import RunOutput, fmt_seconds


#: ``--world small``: the default world's rules, gold judge, annotators and demonstrator (design §8's
#: frozen defaults), but small enough for the demo's pretraining to *store* it — 46 entities instead of
#: 260, each described 16 times instead of 4, and the arithmetic of numbers up to 10 written out for
#: every sum (a test-split sum, like a test-split entity, is stated; only its *question* is held out) —
#: with the world's dialogues pretrained in the chat template (pretrain.chat_dialogues), 1800
#: pretraining steps of 8 blocks, a tokenizer that has also seen the demonstrations (else a refusal is
#: spelled in byte tokens the pretraining never trained, and SFT at T = 1 misspells it), SFT twice as
#: long with the pretraining loss mixed in (SFT-ptx: the facts the pretraining stored survive; PPO-ptx
#: likewise), and reward-model data with right and wrong answers to each prompt.
#: Measured over seeds in docs/world.md "The small world" (issue 17).
SMALL_WORLD = {"size.people": 20, "size.places": 12, "size.creatures": 14, "size.max_number": 10,
               "text.corpus_repeats": 16, "text.arithmetic_sums": "all"}


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:  # ~1-2 minutes on 2 cores: every stage runs, nothing converges
        # Step-bounded (not time-bounded) so a loaded CI machine runs the same thing, only slower.
        return dict(preset="tiny-1m", vocab=512, pre_steps=40, pre_batch=16, pre_min=10.0, sft_steps=30, sft_min=10.0, prompts=48,
                    eval_prompts=32, rm_min=10.0, rm_steps=15, biased_rm_steps=15, dpo_min=10.0, dpo_steps=15,
                    ppo_steps=2, hack_steps=2, ppo_prompts=16, rsft_prompts=16, rsft_n=2, eval_n=32, new_tokens=24,
                    seq=128)
    # Step-bounded too (steps calibrated to ~8½ minutes on an idle 2-core CPU: 506 s measured), so the same seed gives
    # the same models on any machine; max_minutes is only a safety cap.
    return dict(preset="tiny-4m", vocab=2048, pre_steps=400, pre_batch=16, pre_min=10.0, sft_steps=180, sft_min=10.0, prompts=400,
                eval_prompts=150, rm_min=10.0, rm_steps=200, biased_rm_steps=120, dpo_min=10.0, dpo_steps=150,
                ppo_steps=18, hack_steps=12, ppo_prompts=32, rsft_prompts=128, rsft_n=4, eval_n=300, new_tokens=40,
                seq=256)


def demo_pipeline(run: str = "demo", quick: bool = False, seed: int = 0, beta: float = 0.05,
                  out_root: str | None = None, full: bool = False, threads: int = 2,
                  time_cap: float | None = None, world: str = "default", vs_big: bool = False) -> Pipeline:
    """The demo's steps; ``full`` adds the β frontiers, RLOO/GRPO, best-of-n and two iterate rounds
    at the same sizes (same run folder, so the demo's finished steps are reused, not rerun).
    ``time_cap`` (minutes) replaces every training stage's safety cap — the stages are
    step-bounded, so raising it on a slow machine changes nothing but how long they may take.
    ``world="small"``: :data:`SMALL_WORLD`, dialogues pretrained in the chat template, and (full
    size) 1800 pretraining steps of 8 blocks, so the pretrained model stores the world.
    ``vs_big``: InstructGPT's 1.3 B PPO-ptx against 175 B GPT-3, at toy scale — a model with ~4× the
    non-embedding parameters (small-12m beside tiny-4m; quick: tiny-4m beside tiny-1m) pretrained and
    SFT'd with the same data and steps, and ``eval-big``: every policy against that SFT model."""
    if world not in ("default", "small"):
        raise ValueError(f"demo: world must be 'default' or 'small', got {world!r}")
    s = _sizes(quick)
    small_collect: dict[str, Any] = {}
    small_tokenizer: dict[str, Any] = {}
    small_sft: dict[str, Any] = {}
    small_ppo: dict[str, Any] = {}
    if world == "small":
        # The refusals, "I do not know" and the styles of the demonstrations are not in the corpus: a
        # vocabulary trained on the corpus alone spells them in bytes (docs/world.md).
        small_tokenizer = {"tokenizer.also_train_on": ["{world}/sft.jsonl"]}
        # The pretraining loss on the corpus (dialogues in the chat template) mixed into a stage's steps.
        ptx = lambda section: {f"{section}.ptx_coef": 1.0, f"{section}.ptx_data": "{world}/corpus.jsonl",  # noqa: E731
                               f"{section}.ptx_chat_dialogues": True}
        # SFT-ptx (InstructGPT's PPO-ptx, in SFT): without it SFT overwrites the facts pretraining stored.
        small_sft = ptx("sft")
        # PPO-ptx (InstructGPT) for the same reason; not in the β = 0 hack run, which shows what an unchecked
        # proxy does. Seeds 0 / 1 / 2 (chosen on 0-1, 2 confirming): PPO gold +1.43 / +1.07 / +1.32 without,
        # +1.47 / +1.34 / +1.46 with (docs/world.md).
        small_ppo = ptx("ppo")
    if world == "small" and not quick:
        # Storing a fact so that a *question* retrieves it takes optimizer steps more than tokens
        # (docs/world.md: 1000 × 8 blocks beat 1000 × 16).
        # A reward model that can tell right from wrong needs pairs that differ in correctness: the
        # demonstrator's and the noisy policy's answers beside SFT's samples, on 4× the prompts, and
        # the steps to see them once (seed 0: gold accuracy 0.534 → 0.629; docs/world.md).
        # SFT 360 steps (~11 epochs of the 3,000 demonstrations with SFT-ptx), chosen on seed 0's pretrained
        # model: sampled gold +1.32 against +1.13 at 180 steps, +1.18 at lr 2e-3 × 180, +1.04 at 3e-4 × 360;
        # 12,000 demonstrations × 360 steps: +1.30 (docs/world.md).
        s.update(pre_steps=1800, pre_batch=8, rm_steps=800, sft_steps=360)
        small_collect = {"collect.reference_policies": ["demonstrator", "noisy"], "collect.prompts": 4 * s["prompts"]}
    if time_cap is not None:
        s.update({k: float(time_cap) for k in ("pre_min", "sft_min", "rm_min", "dpo_min")})
    threads = {"runtime.threads": threads, "runtime.progress": False}
    save_every = 10 if quick else 50  # quick: a checkpoint early enough that a kill lands mid-stage
    train = lambda minutes, steps=100000: {"train.max_minutes": minutes, "train.max_steps": steps,  # noqa: E731
                                           "train.eval_every": 0, "train.save_every": save_every,
                                           "train.log_every": 5}
    world_files = lambda name: "{world}/" + name  # noqa: E731
    collect = lambda pool: {"model.init": "{sft}", "data.train": world_files("prompts_train.jsonl"),  # noqa: E731
                            "data.eval": world_files("prompts_test.jsonl"), "collect.pool": pool,
                            "collect.prompts": s["prompts"], "collect.eval_prompts": s["eval_prompts"],
                            "sampling.max_new_tokens": s["new_tokens"], **threads}
    reward = lambda c, steps=s["rm_steps"]: {"model.init": "{sft}", "data.train": "{%s}/train.jsonl" % c,  # noqa: E731
                        "data.eval": "{%s}/eval.jsonl" % c, "reward.gold_eval": "{%s}/gold_eval.jsonl" % c,
                        "reward.length_probe": "{%s}/length_probe.jsonl" % c,
                        "reward.normalize_on": "{%s}/candidates.jsonl" % c, "train.lr": 1e-4, "train.warmup_steps": 30,
                        # Llama-2 margins: measured over 3 seeds, gold accuracy 0.65/0.67/0.65 vs 0.64/0.63/0.63 without
                        "reward.margins": [0.0, 0.33, 0.67, 1.0],
                        "reward.epochs": None,  # train.max_steps bounds it (one epoch would be ~310 steps)
                        "train.seq_len": 192, **train(s["rm_min"], steps), **threads}
    # PPO: lr 1e-4 measured best at this size (seed 0: 3e-4 reached KL 8 and unlearned refusals, gold −0.4
    # vs 1e-4; 3e-5 barely moved in 12 steps); 18 steps, not 12: over 3 seeds (400 test prompts) win-rate vs
    # SFT 0.64/0.66/0.61 against 0.61/0.60/0.59 at 12 steps, same reward models.
    ppo = lambda rm, kl, ptx=True: {"model.init": "{sft}", "reward.init": "{%s}" % rm,  # noqa: E731
                          "data.train": world_files("prompts_train.jsonl"), "data.eval": world_files("prompts_test.jsonl"),
                          "kl.coef": kl, "ppo.steps": s["ppo_steps"], "rollout.prompts": s["ppo_prompts"],
                          "sampling.max_new_tokens": s["new_tokens"], "ppo.eval_world": "{world}",
                          "ppo.eval_prompts": s["eval_prompts"] // 2, "train.lr": 1e-4,
                          **(small_ppo if ptx else {}), **threads}
    # The hack: β = 0, a larger step and room to pad, gold measured every few steps so the report's
    # panel shows proxy up while gold does not follow.
    hack = {**ppo("reward-biased", 0.0, ptx=False), "train.lr": 3e-4, "sampling.max_new_tokens": s["new_tokens"] * 3 // 2,
            "ppo.steps": s["hack_steps"], "train.eval_every": max(1, s["hack_steps"] // 3)}
    dpo = lambda b: {"model.init": "{sft}", "data.train": "{collect}/train.jsonl",  # noqa: E731
                     "data.eval": "{collect}/eval.jsonl", "dpo.beta": b, "train.lr": 5e-5,
                     # Clean pairs only: comparisons and Likert-derived pairs labelled at least "better"
                     # (strength ≥ 2; 69-95% agree with gold where gold decides, strength 0: 37-51%). Over 3
                     # seeds (400 test prompts) win-rate vs SFT 0.62/0.57/0.57 against 0.58/0.55/0.50 on
                     # comparisons + rankings.
                     "dpo.kinds": ["comparison", "rating"], "dpo.min_strength": 2,
                     **train(s["dpo_min"], s["dpo_steps"]), **threads}
    reinforce = lambda algorithm: {"model.init": "{sft}", "reward.init": "{reward}",  # noqa: E731
                                   "data.train": world_files("prompts_train.jsonl"),
                                   "data.eval": world_files("prompts_test.jsonl"), "kl.coef": beta,
                                   "kl.estimator": "k3" if algorithm == "grpo" else "k1",
                                   "reinforce.algorithm": algorithm, "reinforce.k": 4, "reinforce.epochs": 2,
                                   "reinforce.minibatch_size": 16, "reinforce.steps": s["ppo_steps"],
                                   "rollout.prompts": s["ppo_prompts"] // 4, "rollout.missing_eos_penalty": 1.0,
                                   "sampling.max_new_tokens": s["new_tokens"], "train.lr": 2e-5,
                                   "reinforce.eval_world": "{world}", "reinforce.eval_prompts": s["eval_prompts"] // 2,
                                   **threads}
    steps = [
        Step("world", "world", values=dict(SMALL_WORLD) if world == "small" else {}),
        Step("tokenizer", "tokenizer", values={"data.train": world_files("corpus.jsonl"),
                                               "tokenizer.vocab_size": s["vocab"], **small_tokenizer}),
        Step("pretrain", "pretrain", values={"model.preset": s["preset"], "model.tokenizer": "{tokenizer}",
                                             "data.train": world_files("corpus.jsonl"),
                                             "data.eval": world_files("heldout.jsonl"), "train.lr": 2e-3,
                                             "chat_dialogues": world == "small",
                                             "train.seq_len": 128, "train.batch_size": s["pre_batch"], "train.warmup_steps": 20,
                                             **train(s["pre_min"], s["pre_steps"]), **threads}),
        Step("sft", "sft", values={"model.init": "{pretrain}", "data.train": world_files("sft.jsonl"), "train.lr": 1e-3,
                                   "train.weight_decay": 0.0, "train.batch_size": 8, "train.seq_len": s["seq"],
                                   "train.warmup_steps": 10, **train(s["sft_min"], s["sft_steps"]), **small_sft,
                                   **threads},
             alias="policy"),
        Step("collect", "collect", values={**collect("default"), **small_collect}),
        Step("collect-biased", "collect", values=collect("length_biased")),
        Step("reward", "reward", values=reward("collect")),
        # Fewer steps than `reward`: the length bias is learnt first (length-probe 1.00 at 120 steps), and over
        # seeds 0 and 1 the hack run then shows gold falling (0.44 → 0.34, 0.66 → 0.57) as the proxy climbs.
        Step("reward-biased", "reward", values=reward("collect-biased", s["biased_rm_steps"])),
        Step("ppo", "ppo", values=ppo("reward", beta)),
        Step("ppo-hack", "ppo", values=hack),
        Step("dpo", "dpo", values=dpo(0.1)),
        Step("rsft", "rsft", values={"model.init": "{sft}", "reward.init": "{reward}",
                                     "data.train": world_files("prompts_train.jsonl"), "rsft.rounds": 1,
                                     "rsft.n": s["rsft_n"], "rsft.prompts_per_round": s["rsft_prompts"],
                                     "rsft.epochs": 2.0, "train.batch_size": 2,
                                     "sampling.max_new_tokens": s["new_tokens"], "train.max_minutes": s["dpo_min"],
                                     **threads}),
        Step("eval", "eval", values={"eval.checkpoints": ["{pretrain}", "{sft}", "{ppo}", "{dpo}", "{rsft}",
                                                          "{ppo-hack}"],
                                     "eval.names": ["pretrain", "sft", "ppo", "dpo", "rsft", "ppo-hack"],
                                     "eval.baseline": "sft", "eval.world": "{world}", "eval.max_prompts": s["eval_n"],
                                     "eval.max_new_tokens": s["new_tokens"], "reward.init": "{reward}",
                                     "eval.fewshot": 4, "eval.probe_questions": 80 if not quick else 8,
                                     **threads}),
    ]
    eval_values = steps[-1].values  # the demo's eval settings (`full` replaces the step itself)
    rounds, round_steps = 0, []
    if full:
        # The frontiers: PPO at three KL β (the demo's β is the middle one), DPO at three β, best-of-n
        # of SFT inside the eval; RLOO and GRPO at PPO's β and rollout size; then InstructGPT's "repeat".
        names = ["pretrain", "sft", "ppo", "ppo-b0.01", "ppo-b0.2", "dpo", "dpo-b0.03", "dpo-b0.3", "rloo", "grpo",
                 "rsft", "ppo-hack"]
        eval_step = steps.pop()  # replaced by eval-full (an eval of everything), same settings
        steps += [Step("ppo-b0.01", "ppo", values=ppo("reward", 0.01)),
                  Step("ppo-b0.2", "ppo", values=ppo("reward", 0.2)),
                  Step("dpo-b0.03", "dpo", values=dpo(0.03)), Step("dpo-b0.3", "dpo", values=dpo(0.3)),
                  Step("rloo", "reinforce", values=reinforce("rloo")),
                  Step("grpo", "reinforce", values=reinforce("grpo"))]
        steps.append(Step("eval-full", "eval", values={**eval_step.values, "eval.names": names,
                                                        "eval.checkpoints": ["{%s}" % n for n in names],
                                                        "eval.best_of_n": [2, 4, 8, 16]}))
        rounds = 2
        round_steps = [
            Step("collect-it", "collect", values={**collect("default"), "model.init": "{policy}",
                                                  "collect.round": "{round}"}),
            Step("reward-it", "reward", values=reward("collect-it")),
            Step("ppo-it", "ppo", values={**ppo("reward-it", beta), "model.init": "{policy}", "ref.init": "{sft}",
                                          "ppo.eval_world": None}, alias="policy"),
            Step("eval-it", "eval", values={"eval.checkpoints": ["{policy}", "{sft}"],
                                            "eval.names": ["round-{round}", "sft"], "eval.baseline": "sft",
                                            "eval.world": "{world}", "eval.max_prompts": s["eval_n"],
                                            "eval.max_new_tokens": s["new_tokens"], "eval.references": [],
                                            **threads}),
        ]
    if vs_big:
        # Same data, steps and schedule; the pretraining lr ∝ 1/width as in configs/world/scale.yaml.
        big = {"tiny-1m": "tiny-4m", "tiny-4m": "small-12m"}[s["preset"]]
        width = {"tiny-1m": 128, "tiny-4m": 256, "small-12m": 384}
        pre = next(x for x in steps if x.name == "pretrain").values
        lr = pre["train.lr"] * width[s["preset"]] / width[big]
        sft = next(x for x in steps if x.name == "sft").values
        ev = eval_values
        names = ["sft-big", "sft", "ppo", "dpo", "rsft", "pretrain-big"]
        # ~4x the compute per step: a 4x safety cap (the steps, not the cap, end both runs).
        cap = {"train.max_minutes": 4 * s["pre_min"]}
        steps += [Step("pretrain-big", "pretrain", values={**pre, "model.preset": big, "train.lr": lr, "baselines": [],
                                                           **cap}),
                  Step("sft-big", "sft", values={**sft, "model.init": "{pretrain-big}", **cap}),
                  Step("eval-big", "eval", values={**ev, "eval.checkpoints": ["{%s}" % n for n in names],
                                                   "eval.names": names, "eval.baseline": "sft-big",
                                                   # GPT-3 "prompted": the larger pretrained model shown
                                                   # solved demonstrations before every prompt.
                                                   "eval.prompted": ["pretrain-big"]})]
    for step in steps + round_steps:
        step.expected_s = expected_seconds(step, s, quick)
    return Pipeline(run=run, seed=seed, steps=steps, rounds=rounds, round_steps=round_steps,
                    out_root=Path(out_root) if out_root else None)


#: Seconds per step of the default demo on the reference machine (Intel Xeon with AMX, 2 threads, fp32,
#: seed 0; `--quick`: the same machine). The run view scales them by this machine's measured rate on the
#: steps already done, so only their proportions matter. Steps not listed take their stage's entry.
EXPECTED_S = {"world": 1, "tokenizer": 1, "pretrain": 115, "sft": 47, "collect": 4, "collect-biased": 4,
              "reward": 37, "reward-biased": 21, "ppo": 42, "ppo-hack": 46, "dpo": 48, "rsft": 4, "eval": 45,
              "reinforce": 45, "eval-full": 150, "eval-it": 15}
EXPECTED_QUICK_S = {"world": 1, "tokenizer": 1, "pretrain": 3, "sft": 3, "collect": 1, "collect-biased": 1,
                    "reward": 2, "reward-biased": 2, "ppo": 2, "ppo-hack": 2, "dpo": 2, "rsft": 2, "eval": 4}


def expected_seconds(step: Step, s: dict[str, Any], quick: bool) -> float:
    """A step's size for the ETA: the reference time of its name (else its stage), scaled by the
    work the sizes ``s`` give it against the default demo's (pretraining sequences, reward steps)."""
    table = EXPECTED_QUICK_S if quick else EXPECTED_S
    base = float(table.get(step.name, table.get(step.stage, 5)))
    if quick:
        return base
    if step.stage == "pretrain":
        return base * s["pre_steps"] * s["pre_batch"] / (400 * 16)
    if step.name in ("reward", "reward-it"):
        return base * s["rm_steps"] / 200
    if step.stage == "sft":
        return base * s["sft_steps"] / 180
    return base


def main(argv: Sequence[str] | None = None) -> int:
    from alignforge.config import ConfigError
    from alignforge.data.records import RecordError

    parser = argparse.ArgumentParser(prog="alignforge demo", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run (CI)")
    parser.add_argument("--run", default=None, help="run name (default: demo, or demo-quick with --quick)")
    parser.add_argument("--out", default=None, help="output root (default runs/<run>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beta", type=float, default=0.05, help="PPO's KL coefficient")
    parser.add_argument("--full", action="store_true",
                        help="also the β frontiers, RLOO/GRPO, best-of-n and 2 iterate rounds (~+10 min idle; reuses "
                             "a finished demo in the same folder)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per stage")
    parser.add_argument("--world", choices=("default", "small"), default="default",
                        help="small: a world the pretraining stores (46 entities, ~16 min on 2 cores; docs/world.md "
                             "'The small world'): SFT about half its demonstrator's gold, every policy above "
                             "the default world's")
    parser.add_argument("--vs-big", action="store_true",
                        help="also a ~4x larger model pretrained and SFT'd on the same data and steps, and every "
                             "policy's win-rate against it (InstructGPT's 1.3B PPO vs 175B GPT-3; docs/world.md)")
    parser.add_argument("--time-cap", type=float, default=None,
                        help="safety cap per training stage in minutes (default 10; stages are step-bounded)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show every stage's own output (always in <step>/log.txt) and the eval's tables")
    args = parser.parse_args(list(argv or []))
    run = args.run or ("demo-quick" if args.quick else "demo")
    p = demo_pipeline(run, args.quick, args.seed, args.beta, args.out, full=args.full, threads=args.threads,
                      time_cap=args.time_cap, world=args.world, vs_big=args.vs_big)
    root = p.out_dir(".").resolve()
    title = f"alignforge demo · seed {args.seed}" + (" · quick" if args.quick else "") + (
        " · small world" if args.world == "small" else "")
    t0 = time.perf_counter()
    try:
        with RunOutput(title, planned_steps(p), verbose=args.verbose) as output:
            output.line(f"{title}: {len(p.steps)} steps in {root}; each step's output is in <step>/log.txt")
            refs = run_pipeline(p, output=output)
    except (ConfigError, RecordError) as e:
        print(f"alignforge demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alignforge demo: interrupted; run the same command again to resume ({root})", file=sys.stderr)
        return 130
    from alignforge.eval.report import write_report

    if "eval-full" in refs:  # the report's tables and frontier come from the eval of everything
        refs = {**refs, "eval": refs["eval-full"]}
    report = write_report(Path(refs["eval"]).parent, refs)
    print(f"\ndemo finished in {fmt_seconds(time.perf_counter() - t0)}.")
    for line in demo_verdict(refs):
        print(line)
    print(f"\nreport: {Path(report).resolve().as_uri()}")
    return 0


def demo_verdict(refs: dict[str, str]) -> list[str]:
    """The closing sentences, from the eval's eval.json and the β = 0 run's metrics (eval/verdict.py)."""
    import json

    from alignforge.eval.verdict import HACK, verdict_lines
    from alignforge.train.tracking import read_metrics

    report = json.loads((Path(refs["eval"]) / "eval.json").read_text())
    hack = Path(refs[HACK]) / "metrics.jsonl" if HACK in refs else None
    return verdict_lines(report, read_metrics(hack) if hack is not None and hack.is_file() else None)
