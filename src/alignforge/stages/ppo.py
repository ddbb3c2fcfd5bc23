"""``alignforge ppo``: PPO from a reward model with a per-token KL to the SFT policy (InstructGPT).

Read top to bottom. Models: the policy (``model.init``, the SFT checkpoint), a frozen reference
(``ref.init``, default a frozen copy of the policy as loaded = SFT), the frozen reward model
(``reward.init``) and a separate value model (``value.init``, default initialised from the reward
model, as InstructGPT does). One PPO step:

1. **Rollout** (:func:`alignforge.rl.rollout.make_rollout`): ``rollout.prompts`` prompts → one
   response each from the KV-cached sampling engine → reward-model score → log π_ref and V(s_t)
   in batched forwards. The engine's log-probs are the old log-probs when exact (no top-k/top-p).
2. **Rewards**: r_t = −β·KL_t (estimator ``kl.estimator``) at every token, plus the score at the
   last token (:func:`alignforge.rl.advantages.per_token_rewards`); β fixed or adaptive (``kl.target``).
3. **Advantages**: GAE(γ, λ) on those rewards with the rollout's values, whitened over the batch.
4. **Update**: ``ppo.epochs`` passes over shuffled minibatches of ``ppo.minibatch_size``
   responses; each minibatch is one optimizer step on clipped policy loss + ``vf_coef`` × clipped
   value loss (+ ``ptx_coef`` × LM loss on pretraining text: PPO-ptx). Policy and value gradients
   are clipped separately to ``train.grad_clip`` (they are separate networks).
5. **β update**, metrics (proxy reward, KL, entropy, clip fraction, value loss, explained
   variance, response length, the time split generate / score / train), eval, checkpoint.

Dropout is off in every forward (the models are kept in eval mode; gradients flow regardless): the
old log-probs come from an eval-mode engine, so the first minibatch's ratio must be exactly 1.

Exact resume: a step's rollout and minibatch order come from generators seeded by (seed, step),
the prompt order from an ``EpochSampler`` whose position is saved, β and the ptx position too; the
policy and value weights and their optimizer share one checkpoint (``state/``).

Outputs: ``model/`` (the policy, HF format), ``value/``, ``metrics.jsonl``, ``samples.jsonl``,
``config.yaml``, ``eval.json`` (gold protocol vs SFT when ``ppo.eval_world`` is set), ``DONE``.
Data parallel under torchrun: every rank draws the same prompts and samples its shard with its
own seed; advantages are whitened with global statistics; gradients are averaged over ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignforge.cli import run_stage
from alignforge.config import ConfigError, PPOConfig, save_config
from alignforge.losses import (
    entropy_from_logits,
    masked_mean,
    ppo_policy_loss,
    value_loss,
)
from alignforge.data.text import text_blocks
from alignforge.models.load import (checkpointing_in_eval, load_policy, load_reference, load_reward, load_value,
                                    matmul_params)
from alignforge.perf import Throughput
from alignforge.rl import rollout as R
from alignforge.rl import stage as S
from alignforge.rl.advantages import explained_variance, gae, global_whiten, per_token_rewards
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist
from alignforge.train.loop import (
    EpochSampler,
    StageClock,
    autocast,
    lm_loss,
    make_scheduler,
    optimizer_step,
    param_groups,
    seed_everything,
    start_stage,
)
from alignforge.train.tracking import MetricsLogger


def make_optimizer(policy, value, cfg: PPOConfig) -> torch.optim.Optimizer:
    """One AdamW over both networks (one checkpoint, one schedule); the critic may have its own lr."""
    t = cfg.train
    groups = param_groups(policy, t.weight_decay)
    for g in param_groups(value, t.weight_decay):
        groups.append({**g, "lr": cfg.value.lr if cfg.value.lr is not None else t.lr})
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, foreach=True)


def run(cfg: PPOConfig, reward_fn: R.RewardFn | None = None) -> Path:
    """Train; ``reward_fn`` (tests, oracle ablations run from alignforge.eval) replaces reward.init."""
    out, device, finished = start_stage(cfg, "ppo")
    if finished:
        return out
    world, rank, main_rank = dist.world_size(), dist.rank(), dist.is_main()
    S.check_rl_config(cfg, "ppo")
    tcfg, pcfg, rcfg = cfg.train, cfg.ppo, cfg.rollout
    params = R.sampling_params(cfg)
    T = params.temperature if params.temperature > 0 else 1.0

    # --- models: policy (trained), reference + reward (frozen), value (trained) ---
    seed_everything(cfg.seed)
    policy, tok = load_policy(cfg)
    policy.to(device)
    ref = load_reference(cfg.ref.init, policy, device, share_base=cfg.ref.share_base, fsdp=cfg.runtime.fsdp)
    reward_model, head = (None, 0) if reward_fn is not None else load_reward(cfg, tok, device)
    value = load_value(cfg, tok, device).to(device)
    both = torch.nn.ModuleDict({"policy": policy, "value": value})  # one state for the checkpoint
    both.eval()  # dropout off everywhere (see the module docstring)

    # --- prompts (left-truncated so prompt + response fits train.seq_len) and optional ptx text ---
    prompts, prompt_ids, eval_prompts, eval_ids = S.encode_prompts(cfg, tok, params, pcfg.eval_prompts)
    ptx = (text_blocks(pcfg.ptx_data, tok, cfg.train.seq_len, chat_dialogues=pcfg.ptx_chat_dialogues,
                       on_bad=cfg.data.on_bad_record, key="ppo.ptx_data") if pcfg.ptx_coef > 0 else None)

    n_mb = math.ceil(rcfg.prompts // world / pcfg.minibatch_size)  # minibatch_size is per process
    tcfg.max_steps = pcfg.steps * pcfg.epochs * n_mb  # the lr schedule spans every optimizer step
    optimizer = make_optimizer(policy, value, cfg)
    scheduler = make_scheduler(optimizer, tcfg)
    sampler = EpochSampler(len(prompts), cfg.seed)
    kl_ctl = S.kl_controller(cfg.kl)
    resumed, step, elapsed_before = S.resume_rl(out, model=both, optimizer=optimizer, scheduler=scheduler,
                                                sampler=sampler, kl_ctl=kl_ctl)
    ptx_pos = int(resumed.data["ptx_pos"]) if resumed else 0
    out.mkdir(parents=True, exist_ok=True)
    if main_rank:
        save_config(cfg, out / "config.yaml")
    n_matmul = matmul_params(policy)
    if main_rank:
        print(f"ppo: {len(prompts)} prompts, {pcfg.steps} steps × {rcfg.prompts} rollouts × {pcfg.epochs} epochs of "
          f"{n_mb} minibatches{f' on each of {world} processes' if world > 1 else ''}; β={kl_ctl.value} ({cfg.kl.estimator}{', adaptive' if cfg.kl.target else ''}); "
          f"reward {'injected' if reward_fn else cfg.reward.init}; {n_matmul / 1e6:.2f}M matmul params on {device}"
          + (f"; resuming at step {step}" if resumed else ""))
    logger = MetricsLogger(out, cfg.runtime, total_steps=pcfg.steps,
                           resume_offset=resumed.metrics_offset if resumed else None, description="ppo")
    meter = Throughput(n_matmul)
    clock = StageClock(elapsed_before)
    meter.pause()
    rkw = {"reward_model": reward_model, "reward_head": head, "reward_fn": reward_fn, "batch_size": rcfg.batch_size}
    ctx = autocast(cfg.runtime, device)  # sampling, scoring and the losses' forwards; backward and AdamW outside

    def evaluate(final: bool) -> dict[str, Any]:  # rank 0 only; gold metrics with ppo.eval_world
        with ctx:
            return S.reward_eval(policy, ref, tok, params, final=final, name="ppo", out=out, seed=cfg.seed,
                             eval_ids=eval_ids, eval_prompts=eval_prompts, eval_world=pcfg.eval_world, **rkw)

    S.initial_eval(step, tcfg, evaluate, logger)  # the curves start at the initial (SFT) policy
    while step < pcfg.steps:
        # --- 1. rollout: sample, score, reference log-probs, values ---
        # Every rank draws the same global prompts and samples its own shard with its own seed.
        idx = dist.shard(sampler.take(rcfg.prompts).tolist())
        with ctx:
            ro = R.make_rollout(policy, ref, tok, [prompt_ids[i] for i in idx], params,
                                generator=R.step_generator(cfg.seed, step, salt=1000 * rank), value_model=value,
                                reuse_logprobs=rcfg.reuse_logprobs, missing_eos_penalty=rcfg.missing_eos_penalty,
                                score_clip=rcfg.score_clip, **rkw)
        t_train = time.perf_counter()
        meter.resume()  # the meter counts training time only (rollout and eval are paused)

        # --- 2-3. per-token rewards (score − β·KL), GAE, whitened advantages ---
        beta = kl_ctl.value
        rewards, kl = per_token_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, beta, cfg.kl.estimator)
        if rcfg.whiten_rewards:
            rewards = global_whiten(rewards, ro.mask, shift_mean=False)
        ro.advantages, ro.returns = gae(rewards, ro.values, ro.mask, gamma=pcfg.gamma, lam=pcfg.lam)
        if pcfg.whiten_advantages:
            ro.advantages = global_whiten(ro.advantages, ro.mask)

        # --- 4. PPO epochs over shuffled minibatches; one optimizer step per minibatch ---
        mb_rng = R.step_generator(cfg.seed, step, salt=1 + 1000 * rank)
        sums: dict[str, float] = {}
        n_updates, train_tokens = 0, 0
        for _ in range(pcfg.epochs):
            order = torch.randperm(len(ro), generator=mb_rng)
            for j in range(0, len(ro), pcfg.minibatch_size):
                mb = ro.select(order[j:j + pcfg.minibatch_size])
                with ctx, checkpointing_in_eval(policy, value):  # model.gradient_checkpointing, eval mode
                    lp, logits = R.response_logprobs(policy, mb, T)
                    pg_loss, pg = ppo_policy_loss(lp, mb.logprobs, mb.advantages, mb.mask, clip=pcfg.clip)
                    v = R.response_values(value, mb)
                    vf_loss, vf = value_loss(v, mb.values, mb.returns, mb.mask, clip=pcfg.value_clip)
                    loss = pg_loss + pcfg.vf_coef * vf_loss
                    if ptx is not None:  # PPO-ptx: keep the pretraining distribution's likelihood (InstructGPT)
                        rows = torch.arange(ptx_pos, ptx_pos + pcfg.ptx_batch_size) % len(ptx)
                        ptx_pos += pcfg.ptx_batch_size
                        ptx_loss = lm_loss(policy, ptx[rows, :-1].to(device), ptx[rows, 1:].to(device))
                        loss = loss + pcfg.ptx_coef * ptx_loss
                        sums["ptx_loss"] = sums.get("ptx_loss", 0.0) + float(ptx_loss.detach())
                loss.backward()
                dist.average_gradients(policy, value)
                # Separate networks, separate clipping: the critic's large early gradients must not
                # shrink the policy's step (cleanrl clips one shared network; ours are two).
                gp = torch.nn.utils.clip_grad_norm_(policy.parameters(), tcfg.grad_clip or float("inf"))
                gv = torch.nn.utils.clip_grad_norm_(value.parameters(), tcfg.grad_clip or float("inf"))
                optimizer_step(both, optimizer, scheduler, 0.0)
                with torch.no_grad():
                    ent = masked_mean(entropy_from_logits(logits.detach() / T), mb.mask)
                for k, x in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("entropy", ent), ("clip_frac", pg["clip_frac"]),
                             ("approx_kl", pg["approx_kl"]), ("ratio", pg["ratio"]), ("vf_clip_frac", vf["vf_clip_frac"]),
                             ("grad_norm", gp), ("value_grad_norm", gv)):
                    sums[k] = sums.get(k, 0.0) + float(x.detach() if torch.is_tensor(x) else x)
                n_updates += 1
                train_tokens += int(mb.attention_mask.sum())
        kl_ctl.update(float(dist.all_reduce_mean(float((kl * ro.mask).sum(1).mean()))), len(ro) * world)
        step += 1
        t_train = time.perf_counter() - t_train
        meter.pause()

        # --- 5. metrics, eval, checkpoint ---
        meter.add(train_tokens)
        logger.progress(step)
        row: dict[str, Any] = dist.gathered_mean({
            **R.rollout_stats(ro, kl), "score_shaped": float(ro.scores.mean()),
            **{k: v / n_updates for k, v in sums.items()},
            "explained_variance": explained_variance(ro.values, ro.returns, ro.mask),
            "value_mean": float(masked_mean(ro.values, ro.mask)),
            "advantage_mean": float(masked_mean(ro.advantages, ro.mask))})
        row.update({"kl_coef": beta, "lr": scheduler.get_last_lr()[0], **S.step_timings(ro, t_train, train_tokens)})
        samples = [{"step": step, "prompt": prompts[idx[i]].prompt, "response": (ro.texts or [""])[i],
                    "score": float(ro.raw_scores[i])} for i in range(min(4, len(ro)))]
        line = (f"ppo: step {step}: score {row['score']:+.3f} kl {row['kl']:.3f} β {beta:.3g} len "
                f"{row['response_length']:.1f} clip {row['clip_frac']:.3f} ev {row['explained_variance']:.2f} "
                f"({row['generate_s']:.1f}s gen, {row['score_s']:.1f}s score, {t_train:.1f}s train)")
        # eval + samples.jsonl, the line, metrics.jsonl, the checkpoint; stop when out of time
        if S.end_step("ppo", step, row, last=step == pcfg.steps, train=tcfg, out=out, logger=logger, clock=clock,
                      evaluate=evaluate, samples=samples, line=line, model=both, optimizer=optimizer,
                      scheduler=scheduler, sampler=sampler, kl_ctl=kl_ctl, data={"ptx_pos": ptx_pos}):
            break

    logger.close()
    ckpt.save_model_dir(out / ckpt.MODEL, policy, tok)
    ckpt.save_model_dir(out / "value", value, tok)
    ckpt.mark_done(out, {"step": step, "kl_coef": kl_ctl.value, **meter.total()})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("ppo", PPOConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
