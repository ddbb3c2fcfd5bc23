"""``alignforge reinforce``: critic-free policy gradient from a reward model — REINFORCE with a
baseline, RLOO and GRPO — on the same rollout component and sampling engine as PPO.

Read top to bottom. Models: the policy (``model.init``, SFT), a frozen reference (``ref.init``,
default a frozen copy of the policy as loaded) and the frozen reward model (``reward.init``); no
value model. One step:

1. **Rollout** (:func:`alignforge.rl.rollout.make_rollout`): ``rollout.prompts`` prompts, each
   repeated ``reinforce.k`` times (a group is contiguous), one sample per copy; RM scores, log π_ref.
2. **Advantages**, one number per response, given to every one of its tokens:

   * ``reinforce``: R = score − β·KL(y), A = R − b with b a moving average of past mean rewards
     (Williams' baseline; ``reinforce.baseline_decay``).
   * ``rloo`` (Ahmadian et al. 2024): R = score − β·KL(y), A_i = R_i − mean of the other k−1
     samples of the same prompt (:func:`alignforge.rl.advantages.rloo_advantages`): unbiased, no critic.
   * ``grpo`` (Shao et al. 2024): A_i = (score_i − mean_group) / std_group
     (:func:`alignforge.rl.advantages.grpo_advantages`; ``scale_advantages=false`` = Dr. GRPO), and the KL is
     a loss term β·KL_k(π‖π_ref) per token (``kl.estimator``, k3 in the paper) instead of a reward.

   KL(y) = Σ_t KL_t with the per-token estimator ``kl.estimator``; β fixed or adaptive.
3. **Update**: ``reinforce.epochs`` passes over minibatches of whole groups; the clipped surrogate
   of :func:`alignforge.losses.ppo_policy_loss` (with one epoch the ratio is 1 and its gradient is
   exactly REINFORCE's A·∇log π), mean over response tokens.

Exact resume as in ``ppo``: rollout and minibatch generators are seeded by (seed, step); the prompt
sampler position, β and the REINFORCE baseline are saved with the weights and optimizer.

Outputs: ``model/``, ``metrics.jsonl``, ``samples.jsonl``, ``config.yaml``, ``eval.json`` (gold
protocol vs SFT when ``reinforce.eval_world`` is set), ``DONE``. Under torchrun each rank samples
its shard of the step's prompts (whole groups) with its own seed; gradients are averaged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignforge.cli import run_stage
from alignforge.config import ConfigError, ReinforceConfig, save_config
from alignforge.losses import (
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    ppo_policy_loss,
)
from alignforge.models.load import checkpointing_in_eval, load_policy, load_reference, load_reward, matmul_params
from alignforge.perf import Throughput
from alignforge.rl import rollout as R
from alignforge.rl import stage as S
from alignforge.rl.advantages import grpo_advantages, rloo_advantages
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist
from alignforge.train.loop import (
    EpochSampler,
    StageClock,
    autocast,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    seed_everything,
    start_stage,
)
from alignforge.train.tracking import MetricsLogger


def sequence_advantages(algorithm: str, scores: torch.Tensor, kl_seq: torch.Tensor, beta: float, k: int,
                        baseline: float | None, scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage per response [N], the reward it was computed from [N]); see the module docstring."""
    if algorithm == "grpo":
        return grpo_advantages(scores, k, scale=scale), scores
    rewards = scores - beta * kl_seq
    if algorithm == "rloo":
        return rloo_advantages(rewards, k), rewards
    b = float(rewards.mean()) if baseline is None else baseline
    return rewards - b, rewards


def run(cfg: ReinforceConfig, reward_fn: R.RewardFn | None = None) -> Path:
    """Train; ``reward_fn`` (tests, oracle ablations run from alignforge.eval) replaces reward.init."""
    out, device, finished = start_stage(cfg, "reinforce")
    if finished:
        return out
    world, rank, main_rank = dist.world_size(), dist.rank(), dist.is_main()
    S.check_rl_config(cfg, "reinforce")
    tcfg, icfg, rcfg = cfg.train, cfg.reinforce, cfg.rollout
    algo, k = icfg.algorithm, icfg.k
    if icfg.minibatch_size % k:
        raise ConfigError(f"config key 'reinforce.minibatch_size' ({icfg.minibatch_size}) must be a multiple of "
                          f"reinforce.k ({k}): a group is never split across minibatches")
    params = R.sampling_params(cfg)
    T = params.temperature if params.temperature > 0 else 1.0

    # --- models: policy (trained), reference + reward (frozen) ---
    seed_everything(cfg.seed)
    policy, tok = load_policy(cfg)
    policy.to(device).eval()  # dropout off: the engine's log-probs come from an eval-mode forward
    ref = load_reference(cfg.ref.init, policy, device, share_base=cfg.ref.share_base, fsdp=cfg.runtime.fsdp)
    reward_model, head = (None, 0) if reward_fn is not None else load_reward(cfg, tok, device)

    # --- prompts ---
    prompts, prompt_ids, eval_prompts, eval_ids = S.encode_prompts(cfg, tok, params, icfg.eval_prompts)

    n = rcfg.prompts // world * k  # responses per process; minibatch_size is per process too
    n_mb = -(-n // icfg.minibatch_size)
    tcfg.max_steps = icfg.steps * icfg.epochs * n_mb
    optimizer = make_optimizer(policy, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    sampler = EpochSampler(len(prompts), cfg.seed)
    kl_ctl = S.kl_controller(cfg.kl)
    resumed, step, elapsed_before = S.resume_rl(out, model=policy, optimizer=optimizer, scheduler=scheduler,
                                                sampler=sampler, kl_ctl=kl_ctl)
    baseline: float | None = resumed.data["baseline"] if resumed else None
    out.mkdir(parents=True, exist_ok=True)
    if main_rank:
        save_config(cfg, out / "config.yaml")
    n_matmul = matmul_params(policy)
    if main_rank:
        print(f"reinforce: {algo}, {len(prompts)} prompts, {icfg.steps} steps × {rcfg.prompts} prompts × k={k}; "
          f"β={kl_ctl.value} ({cfg.kl.estimator}{' in the loss' if algo == 'grpo' else ' in the reward'}); reward "
          f"{'injected' if reward_fn else cfg.reward.init}; {n_matmul / 1e6:.2f}M matmul params on {device}"
          + (f"; resuming at step {step}" if resumed else ""))
    logger = MetricsLogger(out, cfg.runtime, total_steps=icfg.steps,
                           resume_offset=resumed.metrics_offset if resumed else None, description=algo)
    meter = Throughput(n_matmul)
    clock = StageClock(elapsed_before)
    meter.pause()
    rkw = {"reward_model": reward_model, "reward_head": head, "reward_fn": reward_fn, "batch_size": rcfg.batch_size}
    ctx = autocast(cfg.runtime, device)  # sampling, scoring and the loss's forward; backward and AdamW outside

    def evaluate(final: bool) -> dict[str, Any]:  # rank 0 only; gold metrics with reinforce.eval_world
        with ctx:
            return S.reward_eval(policy, ref, tok, params, final=final, name=algo, out=out, seed=cfg.seed,
                             eval_ids=eval_ids, eval_prompts=eval_prompts, eval_world=icfg.eval_world, **rkw)

    S.initial_eval(step, tcfg, evaluate, logger)  # the curves start at the initial (SFT) policy
    while step < icfg.steps:
        # --- 1. rollout: k samples of each prompt, contiguous groups ---
        # Same global prompts on every rank, each samples its shard: a group never spans processes.
        idx = dist.shard(sampler.take(rcfg.prompts).tolist())
        with ctx:
            ro = R.make_rollout(policy, ref, tok, [prompt_ids[i] for i in idx for _ in range(k)], params,
                                generator=R.step_generator(cfg.seed, step, salt=1000 * rank),
                                reuse_logprobs=rcfg.reuse_logprobs, missing_eos_penalty=rcfg.missing_eos_penalty,
                                score_clip=rcfg.score_clip, **rkw)
        t_train = time.perf_counter()
        meter.resume()  # the meter counts training time only (rollout and eval are paused)

        # --- 2. one advantage per response, on all of its tokens ---
        beta = kl_ctl.value
        kl_tok = kl_estimate(ro.logprobs, ro.ref_logprobs, cfg.kl.estimator) * ro.mask
        adv, rewards = sequence_advantages(algo, ro.scores, kl_tok.sum(1), beta, k, baseline, icfg.scale_advantages)
        if algo == "reinforce":
            m = float(dist.all_reduce_mean(float(rewards.mean())))  # the baseline tracks the global mean
            baseline = m if baseline is None else icfg.baseline_decay * baseline + (1 - icfg.baseline_decay) * m
        ro.advantages = adv[:, None] * ro.mask

        # --- 3. epochs over minibatches of whole groups ---
        mb_rng = R.step_generator(cfg.seed, step, salt=1 + 1000 * rank)
        sums: dict[str, float] = {}
        n_updates, train_tokens = 0, 0
        g = icfg.minibatch_size // k
        for _ in range(icfg.epochs):
            groups = torch.randperm(len(ro) // k, generator=mb_rng)
            for j in range(0, len(groups), g):
                rows = (groups[j:j + g, None] * k + torch.arange(k)).reshape(-1)
                mb = ro.select(rows)
                with ctx, checkpointing_in_eval(policy):  # model.gradient_checkpointing in eval mode
                    lp, logits = R.response_logprobs(policy, mb, T)
                    pg_loss, pg = ppo_policy_loss(lp, mb.logprobs, mb.advantages, mb.mask, clip=icfg.clip)
                    loss = pg_loss
                    if algo == "grpo" and beta > 0:  # GRPO: the KL is a loss term, not a reward
                        kl_loss = masked_mean(kl_estimate(lp, mb.ref_logprobs, cfg.kl.estimator), mb.mask)
                        loss = loss + beta * kl_loss
                        sums["kl_loss"] = sums.get("kl_loss", 0.0) + float(kl_loss.detach())
                loss.backward()
                dist.average_gradients(policy)
                grad_norm = optimizer_step(policy, optimizer, scheduler, tcfg.grad_clip)
                with torch.no_grad():
                    ent = masked_mean(entropy_from_logits(logits.detach() / T), mb.mask)
                for key, x in (("pg_loss", pg_loss), ("entropy", ent), ("clip_frac", pg["clip_frac"]),
                               ("approx_kl", pg["approx_kl"]), ("ratio", pg["ratio"]), ("grad_norm", grad_norm)):
                    sums[key] = sums.get(key, 0.0) + float(x.detach() if torch.is_tensor(x) else x)
                n_updates += 1
                train_tokens += int(mb.attention_mask.sum())
        kl_ctl.update(float(dist.all_reduce_mean(float(kl_tok.sum(1).mean()))), len(ro) * world)
        step += 1
        t_train = time.perf_counter() - t_train
        meter.pause()

        # --- 4. metrics, eval, checkpoint ---
        meter.add(train_tokens)
        logger.progress(step)
        grp = ro.raw_scores.reshape(-1, k)
        row: dict[str, Any] = dist.gathered_mean({
            **R.rollout_stats(ro, kl_tok), "reward": float(rewards.mean()),
            "advantage_std": float(adv.std()) if len(adv) > 1 else 0.0,
            "group_score_std": float(grp.std(1).mean()) if k > 1 else 0.0,
            **{key: v / n_updates for key, v in sums.items()}})
        row.update({"kl_coef": beta, "lr": scheduler.get_last_lr()[0], **S.step_timings(ro, t_train, train_tokens)})
        if baseline is not None:
            row["baseline"] = baseline
        samples = [{"step": step, "prompt": prompts[idx[i // k]].prompt, "response": (ro.texts or [""])[i],
                    "score": float(ro.raw_scores[i])} for i in range(0, min(4 * k, len(ro)), k)]
        line = (f"reinforce: step {step}: score {row['score']:+.3f} kl {row['kl']:.3f} β {beta:.3g} "
                f"len {row['response_length']:.1f} ({row['generate_s']:.1f}s gen, {row['score_s']:.1f}s score, "
                f"{t_train:.1f}s train)")
        # eval + samples.jsonl, the line, metrics.jsonl, the checkpoint; stop when out of time
        if S.end_step("reinforce", step, row, last=step == icfg.steps, train=tcfg, out=out, logger=logger,
                      clock=clock, evaluate=evaluate, samples=samples, line=line, model=policy, optimizer=optimizer,
                      scheduler=scheduler, sampler=sampler, kl_ctl=kl_ctl, data={"baseline": baseline}):
            break

    logger.close()
    ckpt.save_model_dir(out / ckpt.MODEL, policy, tok)
    ckpt.mark_done(out, {"step": step, "algorithm": algo, "kl_coef": kl_ctl.value, **meter.total()})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("reinforce", ReinforceConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
