"""``alignforge rsft``: rejection-sampling (best-of-n) fine-tuning, Llama-2 style.

One round, read top to bottom: draw ``rsft.prompts_per_round`` training prompts → sample
``rsft.n`` responses to each from the *current* policy with the shared sampling engine
(:func:`alignforge.eval.scorers.sample_and_score`) → score them with the reward model
(``reward.init``) → keep the best response per prompt (optionally only if it reaches
``rsft.min_score``) → fine-tune on the kept (prompt, best response) pairs with the SFT loss
(response-only, packed, token-weighted like ``alignforge sft``) for ``rsft.epochs`` passes. Then
the next round samples from the improved policy. ``rsft.accumulate`` trains each round on the
best responses of all rounds so far (Llama-2 kept the top samples across iterations).

Scorers: the stage uses a learned reward model. The gold judge is never imported here (design
§8): the oracle ablation "RSFT with a perfect reward" runs through the evaluation component,
``python -m alignforge.eval.oracle rsft --world DIR ...``, which builds the gold scorer and passes
it to :func:`run` as ``scorer=`` (see ``docs/rsft.md``).

Outputs: ``round<r>.jsonl`` (the kept demonstrations, with provenance: policy, round, sampling,
score), ``metrics.jsonl`` (per step: loss, lr; per round: mean / best score, kept, length),
``model/``, ``config.yaml``, ``DONE``. A checkpoint is written after every round; a resumed run
continues at the next round with the saved model, optimizer and RNG states (a round interrupted
midway is redone, identically, since its prompts and sampling seed derive from (seed, round)).

Distributed: prompts of a round are split over ranks for sampling and scoring, the kept
demonstrations are all-gathered, so every rank builds the same SFT batches and trains its shard
of every step's micro-batches under DDP.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from alignforge.cli import run_stage
from alignforge.config import ConfigError, RSFTConfig, save_config
from alignforge.data.batching import EncodeStats, encode_example, lm_loss, make_batches, pad_id_of
from alignforge.data.records import Demonstration, Prompt, ReadReport, RecordError, read_records, write_records
from alignforge.eval.scorers import RewardModelScorer, Scorer, sample_and_score
from alignforge.models.load import load_policy, matmul_params
from alignforge.perf import Throughput
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist
from alignforge.train.loop import (EpochSampler, autocast, make_optimizer, make_scheduler,
                                  optimizer_step, seed_everything, start_stage)
from alignforge.train.tracking import MetricsLogger


def read_prompts(cfg: RSFTConfig) -> list[Prompt]:
    """The prompts of ``data.train``: prompt records, or the prompt of any record that has one."""
    from alignforge.data.formats import load_data_section

    report = ReadReport(str(cfg.data.train))
    records = load_data_section(cfg.data, "train", report=report)
    prompts = [r.prompt for r in records if getattr(r, "prompt", None)]
    if not prompts:
        raise RecordError("no prompts found (expected prompt records, or records with a prompt field)",
                          path=str(cfg.data.train))
    return prompts


def reward_scorer(cfg: RSFTConfig, device: torch.device) -> Scorer:
    """The learned scorer from ``reward.init`` (the gold oracle is injected, never built here)."""
    if cfg.rsft.scorer == "gold":
        raise ConfigError("rsft.scorer=gold is an oracle ablation: training code never reads the gold judge, so run "
                          "it through the evaluation component: python -m alignforge.eval.oracle rsft "
                          "--world <world dir> [--config FILE] [key=value ...]")
    if not cfg.reward.init:
        raise ConfigError("rsft needs reward.init (a `alignforge reward` stage folder or scalar-head HF dir)")
    try:
        return RewardModelScorer(cfg.reward.init, device=str(device), batch_size=cfg.reward.batch_size,
                                 head=cfg.reward.head)
    except FileNotFoundError as e:
        raise ConfigError(f"reward.init={cfg.reward.init}: {e}") from None
    except ValueError as e:  # reward.head names no head of this model
        raise ConfigError(f"config key 'reward.head': {e}") from None


def round_prompts(prompts: Sequence[Prompt], k: int, seed: int, rnd: int) -> list[Prompt]:
    """``k`` prompts for round ``rnd`` (without replacement; a pure function of seed and round)."""
    idx = list(range(len(prompts)))
    random.Random(f"{seed}:rsft:{rnd}").shuffle(idx)
    return [prompts[i] for i in idx[:min(k, len(prompts))]]


def run(cfg: RSFTConfig, scorer: Scorer | None = None) -> Path:
    # The memory check measures the longest prompt: best-of-n samples prompts cut only to the model's
    # positions, not to train.seq_len, so their length is not in the config.
    measured = (lambda: read_prompts(cfg)) if cfg.model.init and cfg.data.train else None
    out, device, finished = start_stage(cfg, "rsft", prompts=measured)
    if finished:
        return out
    if scorer is None and cfg.rsft.scorer == "gold":
        reward_scorer(cfg, device)  # raises: the oracle is injected by alignforge.eval.oracle, never built here
    if not cfg.data.train:
        raise ConfigError("rsft needs data.train (prompts)")
    if not cfg.model.init:
        raise ConfigError("rsft needs model.init (an SFT stage folder or a local HF model directory)")
    tcfg, rcfg, scfg = cfg.train, cfg.rsft, cfg.sampling
    world, rank = dist.world_size(), dist.rank()

    seed_everything(dist.rank_seed(cfg.seed))
    model, tok = load_policy(cfg)
    scorer = scorer if scorer is not None else reward_scorer(cfg, device)
    prompts = read_prompts(cfg)
    n_matmul = matmul_params(model)
    pad = pad_id_of(tok)
    micro_per_step = tcfg.grad_accum * world
    # The schedule spans an upper bound of the run: a packed batch holds >= batch_size examples.
    per_round = math.ceil(rcfg.epochs * math.ceil(min(rcfg.prompts_per_round, len(prompts)) / tcfg.batch_size)
                          / micro_per_step)
    tcfg.max_steps = max(1, rcfg.rounds * per_round)

    model = dist.wrap_model(model, cfg.runtime, device)
    model.train()
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    resumed = ckpt.load_state(out, model=model, optimizer=optimizer, scheduler=scheduler)
    step, start_round, elapsed_before = 0, 0, 0.0
    if resumed is not None:
        step, start_round = resumed.step, int(resumed.data.get("round", 0))
        elapsed_before = float(resumed.extra.get("elapsed_s", 0.0))
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        print(f"rsft: {len(prompts)} prompts; {rcfg.rounds} rounds × {rcfg.prompts_per_round} prompts × n={rcfg.n}; "
              f"scorer {getattr(scorer, 'name', type(scorer).__name__)}; {n_matmul / 1e6:.2f}M matmul params on "
              f"{device}" + (f"; resuming at round {start_round}" if resumed else ""))
    logger = MetricsLogger(out, cfg.runtime, total_steps=tcfg.max_steps,
                           resume_offset=resumed.metrics_offset if resumed else None, description="rsft")
    meter = Throughput(n_matmul)
    ctx = autocast(cfg.runtime, device)
    t_start = time.perf_counter()
    kept_all: list[Demonstration] = []
    rounds_done = start_round
    for r in range(start_round):  # accumulate: earlier rounds' kept responses come from their files
        if rcfg.accumulate and (out / f"round{r}.jsonl").is_file():
            kept_all += read_records(out / f"round{r}.jsonl", kind="demonstration")

    for rnd in range(start_round, rcfg.rounds):
        # --- 1. sample n per prompt from the current policy, score, keep the best (this rank's share) ---
        meter.pause()
        chosen = round_prompts(prompts, rcfg.prompts_per_round, cfg.seed, rnd)
        mine = chosen[len(chosen) * rank // world: len(chosen) * (rank + 1) // world]
        inner = dist.unwrap(model)
        with torch.random.fork_rng(devices=[]), ctx:
            samples = sample_and_score(inner, tok, mine, scorer, rcfg.n, temperature=scfg.temperature,
                                       top_p=scfg.top_p, max_new_tokens=scfg.max_new_tokens,
                                       seed=cfg.seed * 1_000_003 + rnd * 1009 + rank,
                                       batch_size=rcfg.sample_batch_size)
        sampling = {"temperature": scfg.temperature, "top_p": scfg.top_p, "max_new_tokens": scfg.max_new_tokens,
                    "n": rcfg.n}
        demos, all_scores, best_scores, lengths = [], [], [], []
        for i, k in enumerate(samples.best()):
            s = samples.scores[i]
            all_scores += s
            best_scores.append(s[k])
            lengths.append(len(samples.token_ids[i][k]))
            if rcfg.min_score is not None and s[k] < rcfg.min_score:
                continue
            demos.append(Demonstration(prompt=samples.prompts[i], response=samples.texts[i][k], source="rsft",
                                       policy=f"rsft/round{rnd}" if rnd else str(cfg.model.init), round=rnd,
                                       sampling=sampling, meta={"score": s[k], "mean_score": sum(s) / len(s)}))
        gathered = dist.all_gather_object((demos, all_scores, best_scores, lengths))
        demos = [d for g in gathered for d in g[0]]
        all_scores = [x for g in gathered for x in g[1]]
        best_scores = [x for g in gathered for x in g[2]]
        lengths = [x for g in gathered for x in g[3]]
        if dist.is_main():
            write_records(out / f"round{rnd}.jsonl", demos)
        kept_all = kept_all + demos if rcfg.accumulate else demos
        round_row = {"round": rnd, "score_mean": sum(all_scores) / len(all_scores),
                     "score_best_mean": sum(best_scores) / len(best_scores), "kept": len(demos),
                     "best_tokens_mean": sum(lengths) / len(lengths)}

        # --- 2. SFT on the kept (prompt, best response) pairs ---
        stats = EncodeStats()
        examples = [e for e in (encode_example(tok, d.prompt, d.response, max_len=tcfg.seq_len, stats=stats)
                                for d in kept_all) if e is not None]
        if not examples:
            if dist.is_main():
                print(f"rsft: round {rnd}: nothing kept (min_score={rcfg.min_score}); no update this round")
            logger.log(step, **round_row)
        else:
            plan = make_batches(examples, seq_len=tcfg.seq_len, batch_size=tcfg.batch_size, pad_id=pad,
                                mode=rcfg.batching, seed=cfg.seed + rnd)
            sampler = EpochSampler(len(plan.batches), cfg.seed + rnd)
            steps = max(1, math.ceil(rcfg.epochs * len(plan.batches) / micro_per_step))
            meter.resume()
            for s in range(steps):
                global_idx = sampler.take(micro_per_step).tolist()
                step_loss_tokens = sum(plan.batches[i].loss_tokens for i in global_idx)
                local = dist.shard(global_idx)
                loss_sum = 0.0
                for m, i in enumerate(local):
                    batch = plan.batches[i].to(device)
                    with dist.no_sync(model, m < len(local) - 1), ctx:
                        nll, _ = lm_loss(model, batch)
                        # every response token of the step weighs the same (see stages/sft.py)
                        loss = nll * (world / max(step_loss_tokens, 1))
                    loss.backward()
                    loss_sum += float(nll.detach())
                grad_norm = optimizer_step(model, optimizer, scheduler, tcfg.grad_clip)
                step += 1
                meter.add(sum(plan.batches[i].real_tokens for i in global_idx))
                logger.progress(step)
                row: dict[str, Any] = {}
                if step % tcfg.log_every == 0 or s == steps - 1:
                    row.update(loss=float(dist.all_reduce_sum(loss_sum)) / max(step_loss_tokens, 1),
                               lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, **meter.window())
                if s == steps - 1:
                    row.update(round_row, round_examples=len(examples), round_steps=steps)
                if row:
                    logger.log(step, **row)
        if dist.is_main():
            print(f"rsft: round {rnd}: score mean {round_row['score_mean']:+.3f}, best-of-{rcfg.n} "
                  f"{round_row['score_best_mean']:+.3f}; kept {len(demos)}; step {step}")
        meter.pause()
        rounds_done = rnd + 1
        ckpt.save_state(out, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        data={"round": rnd + 1}, metrics_offset=logger.offset(),
                        extra={"elapsed_s": elapsed_before + time.perf_counter() - t_start})
        minutes = (elapsed_before + time.perf_counter() - t_start) / 60
        if tcfg.max_minutes is not None and minutes >= tcfg.max_minutes and rnd + 1 < rcfg.rounds:
            if dist.is_main():
                print(f"rsft: out of time after round {rnd} (train.max_minutes={tcfg.max_minutes})")
            break

    logger.close()
    ckpt.save_model_dir(out / ckpt.MODEL, model, tok)
    ckpt.mark_done(out, {"step": step, "rounds": rounds_done, **meter.total()})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("rsft", RSFTConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
