"""``alignforge nash``: Nash-MD (Munos et al. 2023, "Nash Learning from Human Feedback") — policy
gradient on a *pairwise* preference model against a geometric mixture of the policy and the reference.

Read top to bottom. Models: the policy π_θ (``model.init``, SFT, trained), the frozen reference
π_ref (``ref.init``, default a frozen copy of the policy as loaded) and the frozen preference model
P(y ≻ y' | x) (``preference.init``, :mod:`alignforge.models.preference`; or fitted here first on
``nash.preference_data`` comparison records, ties as ½, and saved to ``<out>/preference``). One step:

1. **Two players per prompt.** y ~ π_θ (the rollout: log π and log π_ref per token), and the
   opponent y' ~ π^β_mix ∝ π_θ^(1−β)·π_ref^β, the geometric mixture *per token* with
   β = ``nash.mixture_beta`` (the sampling engine's ``mixture=(ref, β)``). β = 0 is self-play
   against the current policy; larger β pulls the opponent toward the reference, which is what makes
   the iteration converge to the regularised Nash equilibrium instead of cycling.
2. **Reward** r(y) = P(y ≻ y' | x) − ½ (0 for a draw), then the KL penalty with a *separate*
   β_KL = ``kl.coef``: R = r − β_KL·Σ_t KL_t(π‖π_ref) (``kl.estimator``, fixed or adaptive).
3. **Update** (the mirror-descent step done by stochastic policy gradient, as in TRL's
   NashMDTrainer): advantage A_i = R_i − mean of the other responses' R in the rollout (a
   leave-one-out baseline: it does not depend on y_i, so the gradient stays unbiased), given to every
   token of y_i; one on-policy pass of the surrogate −A·log π (``losses.ppo_policy_loss`` with ratio
   1) over minibatches of ``train.batch_size`` responses.

Metrics per step: ``win_rate`` = mean P(y ≻ y') — the preference model's win-rate of the current
policy against the mixture —, ``kl`` (Σ_t k1 per response), score/length/eos; with
``nash.eval_world`` (through ``alignforge.eval``, never the judge itself) the gold reward and
``gold_win_rate_vs_sft`` / ``gold_win_rate_vs_prev`` (with ``_lo``/``_hi``, a paired-bootstrap 95% CI),
the gold win-rate of the policy against SFT and against the previous evaluation's policy (the issue's
"win-rate against past checkpoints"; the previous one is not carried over a resume). With
``nash.preference_eval_data`` the preference model's held-out accuracy goes to
``preference_eval.json``. Exact resume: the
rollout generators are seeded by (seed, step); the prompt sampler and β_KL are saved with the weights.

Outputs: ``model/``, ``preference/`` (when fitted here), ``eval.json`` (gold protocol vs SFT,
with ``nash.eval_world``), ``metrics.jsonl``, ``samples.jsonl``, ``config.yaml``, ``DONE``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignforge.cli import run_stage
from alignforge.config import ConfigError, NashConfig, save_config
from alignforge.data.batching import pad_id_of
from alignforge.generation import Generation, generate
from alignforge.io import atomic_write_text
from alignforge.losses import (
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    ppo_policy_loss,
)
from alignforge.models.load import load_policy, load_reference, matmul_params
from alignforge.perf import Throughput
from alignforge.rl import rollout as R
from alignforge.rl import stage as S
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

#: An injected preference (tests, oracle ablations): (prompts, policy generation, mixture generation)
#: → P(policy response ≻ mixture response) per row.
PreferenceFn = Callable[[Sequence[Any], Generation, Generation], torch.Tensor]


def loo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = R_i − mean_{j≠i} R_j over the rollout (zeros for a single response)."""
    n = rewards.numel()
    if n < 2:
        return torch.zeros_like(rewards)
    return rewards - (rewards.sum() - rewards) / (n - 1)


def model_preference(model, tok, max_len: int, batch_size: int) -> PreferenceFn:
    """A :data:`PreferenceFn` from a trained preference model (scored on text, so the preference
    model may use another tokenizer than the policy)."""
    from alignforge.models.preference import preference_probs

    def fn(prompts, gen_a: Generation, gen_b: Generation) -> torch.Tensor:
        return preference_probs(model, tok, list(prompts), gen_a.texts, gen_b.texts, max_len=max_len,
                                batch_size=batch_size)

    return fn


def preference_model(cfg: NashConfig, out: Path, device: torch.device):
    """``(model, tokenizer)``: ``preference.init`` as saved, or — with ``nash.preference_data`` — a
    fresh head on the backbone ``preference.init or model.init`` fitted on those records (saved to
    ``<out>/preference`` once, so a resumed run reuses it instead of refitting)."""
    from alignforge.data.records import read_records
    from alignforge.models.heads import init_from_causal_lm, load_scorer, save_scorer
    from alignforge.models.preference import (
        fit_preference_model,
        preference_accuracy,
        preference_examples,
    )

    ncfg = cfg.nash
    fitted = False
    if not ncfg.preference_data:
        pm, pm_tok = load_scorer(cfg.preference.init, device=str(device))
    else:
        saved = out / "preference"
        # Rank 0 decides (and fits) alone; the others wait, then every rank loads the same files.
        fitted = dist.broadcast_object(not (saved / "config.json").exists())
        if fitted:
            if dist.is_main():
                pm, pm_tok = init_from_causal_lm(cfg.preference.init or cfg.model.init, n_heads=1,
                                                 head_names=["preference"], seed=cfg.seed, device=str(device))
                examples = preference_examples(read_records(ncfg.preference_data))
                t0 = time.perf_counter()
                losses = fit_preference_model(pm, pm_tok, examples, steps=ncfg.preference_steps, lr=ncfg.preference_lr,
                                              batch_size=ncfg.preference_batch_size, max_len=ncfg.preference_max_len,
                                              seed=cfg.seed, warmup_steps=ncfg.preference_warmup,
                                              margins=ncfg.preference_margins)
                k = max(1, min(20, len(losses) // 5))
                print(f"nash: preference model fitted on {len(examples)} pairs from {ncfg.preference_data} in "
                      f"{time.perf_counter() - t0:.0f}s: loss {sum(losses[:k]) / k:.4f} (first {k} steps) → "
                      f"{sum(losses[-k:]) / k:.4f} (last {k})")
                save_scorer(pm, pm_tok, saved)
            dist.barrier()
        pm, pm_tok = load_scorer(saved, device=str(device))
    if ncfg.preference_eval_data and dist.is_main() and (fitted or not (out / "preference_eval.json").exists()):
        # Held-out accuracy, comparable with the reward stage's eval_accuracy on the same file.
        acc = preference_accuracy(pm.eval(), pm_tok, preference_examples(read_records(ncfg.preference_eval_data)),
                                  max_len=ncfg.preference_max_len, batch_size=cfg.preference.batch_size)
        acc["data"] = str(ncfg.preference_eval_data)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "preference_eval.json", json.dumps(acc, indent=1))
        print(f"nash: preference model held-out accuracy {acc.get('accuracy', float('nan')):.3f} on "
              f"{int(acc['pairs'])} pairs of {ncfg.preference_eval_data} (loss {acc['loss']:.4f})")
    return pm, pm_tok


def run(cfg: NashConfig, preference_fn: PreferenceFn | None = None) -> Path:
    """Train; ``preference_fn`` replaces ``preference.init`` (tests, oracle ablations)."""
    out, device, finished = start_stage(cfg, "nash", clear_also=("preference",))  # force refits it
    if finished:
        return out
    rank, main_rank = dist.rank(), dist.is_main()
    S.check_rl_config(cfg, "nash")
    if preference_fn is None and not cfg.preference.init and not cfg.nash.preference_data:
        raise ConfigError("nash needs preference.init (a preference model saved by alignforge.models.preference) "
                          "or nash.preference_data (comparison records to fit one on)")
    tcfg, ncfg, rcfg = cfg.train, cfg.nash, cfg.rollout
    params = R.sampling_params(cfg)
    T = params.temperature if params.temperature > 0 else 1.0

    # --- models: policy (trained), reference + preference model (frozen) ---
    seed_everything(cfg.seed)
    policy, tok = load_policy(cfg)
    policy.to(device).eval()  # dropout off: the engine's log-probs come from an eval-mode forward
    ref = load_reference(cfg.ref.init, policy, device, share_base=cfg.ref.share_base, fsdp=cfg.runtime.fsdp)
    injected = preference_fn is not None
    if preference_fn is None:
        pm, pm_tok = preference_model(cfg, out, device)
        pm.eval().requires_grad_(False)
        preference_fn = model_preference(pm, pm_tok, ncfg.preference_max_len, cfg.preference.batch_size)

    # --- prompts ---
    prompts, prompt_ids, eval_prompts, eval_ids = S.encode_prompts(cfg, tok, params, ncfg.eval_prompts)

    n = rcfg.prompts // dist.world_size()
    mb_size = max(1, min(tcfg.batch_size, n))
    tcfg.max_steps = ncfg.steps * -(-n // mb_size)
    optimizer = make_optimizer(policy, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    sampler = EpochSampler(len(prompts), cfg.seed)
    kl_ctl = S.kl_controller(cfg.kl)
    resumed, step, elapsed_before = S.resume_rl(out, model=policy, optimizer=optimizer, scheduler=scheduler,
                                                sampler=sampler, kl_ctl=kl_ctl)
    out.mkdir(parents=True, exist_ok=True)
    if main_rank:
        save_config(cfg, out / "config.yaml")
    n_matmul = matmul_params(policy)
    if main_rank:
        print(f"nash: {len(prompts)} prompts, {ncfg.steps} steps × {rcfg.prompts} prompts; mixture β="
              f"{ncfg.mixture_beta}, KL β={kl_ctl.value} ({cfg.kl.estimator}); preference "
              f"{'injected' if injected else out / 'preference' if ncfg.preference_data else cfg.preference.init}; {n_matmul / 1e6:.2f}M matmul "
              f"params on {device}" + (f"; resuming at step {step}" if resumed else ""))
    logger = MetricsLogger(out, cfg.runtime, total_steps=ncfg.steps,
                           resume_offset=resumed.metrics_offset if resumed else None, description="nash")
    meter = Throughput(n_matmul)
    clock = StageClock(elapsed_before)
    meter.pause()

    ctx = autocast(cfg.runtime, device)  # sampling, scoring and the loss's forward; backward and AdamW outside

    def play(ids: list[list[int]], texts: list, generator: torch.Generator):
        """One rollout of the policy against the mixture: (rollout with raw_scores = P(y ≻ y'), P)."""
        probs: dict[str, torch.Tensor] = {}

        def score(gen: Generation) -> torch.Tensor:
            # The opponent is sampled inside the scoring call, after the policy's sample, from the
            # same generator: the pair is reproducible from (seed, step) alone.
            with torch.no_grad():
                opp = generate(policy, ids, params, eos_token_id=tok.eos_token_id, pad_token_id=pad_id_of(tok),
                               tokenizer=tok, generator=generator, mixture=(ref, ncfg.mixture_beta))
            p = torch.as_tensor(preference_fn(texts, gen, opp), dtype=torch.float32).reshape(len(ids))
            if not torch.isfinite(p).all() or (p < 0).any() or (p > 1).any():
                raise ValueError(f"nash: the preference model returned values outside [0, 1]: {p.tolist()}")
            probs["p"], probs["opp"] = p, opp
            return p

        with ctx:
            ro = R.make_rollout(policy, ref, tok, ids, params, generator=generator, reward_fn=score,
                                reuse_logprobs=rcfg.reuse_logprobs, batch_size=rcfg.batch_size)
        return ro, probs["p"], probs["opp"]

    previous: dict[str, Any] = {}  # the last gold evaluation, for the win-rate against past checkpoints

    def evaluate(final: bool) -> dict[str, Any]:
        with ctx:  # the evaluation samples at the training precision
            return evaluate_at(final)

    def evaluate_at(final: bool) -> dict[str, Any]:
        if not main_rank or not eval_ids:  # evaluation runs on rank 0 only (no collectives inside)
            return {}
        ro, p, _ = play(eval_ids, [q.prompt for q in eval_prompts], R.step_generator(cfg.seed, 0, salt=17))
        kl = ((ro.logprobs - ro.ref_logprobs) * ro.mask).sum(1)
        row = {"eval_win_rate": float(p.mean()), "eval_kl": float(kl.mean()),
               "eval_response_length": float(ro.lengths.mean())}
        if ncfg.eval_world:
            from alignforge.eval.metrics import win_rate

            kw = {"max_new_tokens": params.max_new_tokens, "seed": cfg.seed}
            ev = S.gold_eval(policy, tok, eval_prompts, ncfg.eval_world, name=f"step{step}", ref=ref, **kw)
            row.update(S.gold_metrics(ev))
            if "sft" not in previous:  # the initial policy's evaluation (step 0), or the reference's after a resume
                previous["sft"] = ev if step == 0 else S.gold_eval(ref, tok, eval_prompts, ncfg.eval_world, name="sft",
                                                                   ref=ref, **kw)
            # Nash-MD should not lose to its own past: gold win-rate (ties = ½, paired bootstrap 95% CI
            # over the same prompts, same sampling seed) against SFT and against the previous evaluation.
            for key, past in (("sft", previous["sft"]), ("prev", previous.get("ev"))):
                if past is not None and step > 0:
                    w = win_rate(ev.values("sample"), past.values("sample"), n_boot=1000, seed=cfg.seed)
                    row.update({f"gold_win_rate_vs_{key}": w.value, f"gold_win_rate_vs_{key}_lo": w.lo,
                                f"gold_win_rate_vs_{key}_hi": w.hi})
            previous["ev"] = ev
            if final:
                report, _ = S.final_report(policy, ref, tok, eval_prompts, ncfg.eval_world, name="nash", **kw)
                atomic_write_text(out / "eval.json", json.dumps(report, indent=1))
        return row

    S.initial_eval(step, tcfg, evaluate, logger)  # the curves start at the initial (SFT) policy
    while step < ncfg.steps:
        # --- 1. the policy's sample y and the mixture's sample y' for each prompt ---
        idx = dist.shard(sampler.take(rcfg.prompts).tolist())
        ro, p_win, opp = play([prompt_ids[i] for i in idx], [prompts[i].prompt for i in idx],
                              R.step_generator(cfg.seed, step, salt=1000 * rank))
        t_train = time.perf_counter()
        meter.resume()

        # --- 2. reward P(y ≻ y') − ½ minus β_KL·KL(y), leave-one-out advantage on every token ---
        beta = kl_ctl.value
        kl_tok = kl_estimate(ro.logprobs, ro.ref_logprobs, cfg.kl.estimator) * ro.mask
        rewards = (p_win - 0.5) - beta * kl_tok.sum(1)
        adv = loo_advantages(rewards)
        ro.advantages = adv[:, None] * ro.mask

        # --- 3. one on-policy pass: −A·log π, mean over response tokens, per minibatch ---
        sums: dict[str, float] = {}
        n_updates, train_tokens = 0, 0
        order = torch.randperm(len(ro), generator=R.step_generator(cfg.seed, step, salt=1 + 1000 * rank))
        for j in range(0, len(ro), mb_size):
            mb = ro.select(order[j:j + mb_size])
            with ctx:
                lp, logits = R.response_logprobs(policy, mb, T)
                pg_loss, pg = ppo_policy_loss(lp, mb.logprobs, mb.advantages, mb.mask, clip=0.2)
            pg_loss.backward()
            dist.average_gradients(policy)
            grad_norm = optimizer_step(policy, optimizer, scheduler, tcfg.grad_clip)
            with torch.no_grad():
                ent = masked_mean(entropy_from_logits(logits.detach() / T), mb.mask)
            for key, x in (("pg_loss", pg_loss), ("entropy", ent), ("ratio", pg["ratio"]), ("grad_norm", grad_norm)):
                sums[key] = sums.get(key, 0.0) + float(x.detach() if torch.is_tensor(x) else x)
            n_updates += 1
            train_tokens += int(mb.attention_mask.sum())
        kl_ctl.update(float(dist.all_reduce_mean(float(kl_tok.sum(1).mean()))), len(ro) * dist.world_size())
        step += 1
        t_train = time.perf_counter() - t_train
        meter.pause()

        # --- 4. metrics, samples, checkpoint ---
        meter.add(train_tokens)
        logger.progress(step)
        row: dict[str, Any] = dist.gathered_mean({
            **R.rollout_stats(ro, kl_tok), "win_rate": float(p_win.mean()), "reward": float(rewards.mean()),
            "opponent_length": float(opp.response_mask.float().sum(1).mean()),
            **{key: v / n_updates for key, v in sums.items()}})
        row.update({"kl_coef": beta, "mixture_beta": ncfg.mixture_beta, "lr": scheduler.get_last_lr()[0],
                    "generate_score_s": ro.timings["generate_s"] + ro.timings["score_s"], "train_s": t_train})
        samples = [{"step": step, "prompt": prompts[idx[i]].prompt, "response": (ro.texts or [""])[i],
                    "opponent": (opp.texts or [""])[i], "p_win": float(p_win[i])} for i in range(min(4, len(ro)))]
        line = (f"nash: step {step}: win-rate vs mixture {row['win_rate']:.3f} kl {row['kl']:.3f} β_KL {beta:.3g} "
                f"len {row['response_length']:.1f} ({row['generate_score_s']:.1f}s play, {t_train:.1f}s train)")
        # eval + samples.jsonl, the line, metrics.jsonl, the checkpoint; stop when out of time
        if S.end_step("nash", step, row, last=step == ncfg.steps, train=tcfg, out=out, logger=logger, clock=clock,
                      evaluate=evaluate, samples=samples, line=line, model=policy, optimizer=optimizer,
                      scheduler=scheduler, sampler=sampler, kl_ctl=kl_ctl):
            break

    logger.close()
    ckpt.save_model_dir(out / ckpt.MODEL, policy, tok)
    ckpt.mark_done(out, {"step": step, "mixture_beta": ncfg.mixture_beta, "kl_coef": kl_ctl.value, **meter.total()})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("nash", NashConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
