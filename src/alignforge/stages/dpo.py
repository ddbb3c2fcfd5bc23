"""``alignforge dpo``: direct preference optimisation (DPO, IPO, conservative DPO, SLiC hinge).

Read top to bottom: preference records (comparisons, rankings, ratings — ours, or HH-RLHF and
the other adapters in :mod:`alignforge.data.formats`) → weighted pairs
(:func:`alignforge.data.preferences.expand_preferences`; ties dropped and counted) → token ids
(:func:`alignforge.data.batching.encode_pair`: chosen and rejected share the identical prompt
ids) → policy (``model.init``, full or LoRA) and reference (``ref.init``, default the policy's
init) → the reference pre-pass (:mod:`alignforge.train.refcache`: log π_ref of every pair once,
cached in memory or on disk) → the loop → ``model/`` + ``config.yaml`` + ``DONE``.

One optimizer step = ``train.batch_size × train.grad_accum × processes`` pairs. Every micro-batch
runs chosen and rejected of its pairs in ONE forward, packed into rows of ``train.seq_len`` with a
block-diagonal mask (``refcache.pair_logprobs``). The loss of the step is the weighted mean
Σ wᵢ ℓᵢ / Σ wᵢ over all its pairs (w = 1 for a comparison, 1/C(K,2) for each pair of a K-way
ranking), so gradient accumulation is exactly a big batch (tested) and every rank sees the same
normaliser (known up front: all ranks draw the same global pair indices).

``dpo.ref_cache=off`` is the naive path (a reference forward on every micro-batch); it gives the
same numbers and exists to measure what the cache saves (``bench/dpo_throughput.py``).

Metrics (``metrics.jsonl``): loss, implicit rewards β·(log π − log π_ref) of chosen / rejected,
their margin and accuracy, the policy's log-probs of chosen / rejected (both should not collapse),
and at eval the same on held-out pairs plus KL(π‖π_ref) on responses sampled at T = 1 from
held-out prompts (:func:`alignforge.eval.kl.sampled_kl`). Throughput counts the pre-pass: the
final ``pairs_per_s`` and ``mfu`` divide by the wall time including it (design §8).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from alignforge.cli import run_stage
from alignforge.config import ConfigError, DPOConfig, save_config
from alignforge.data.batching import EncodeStats, Example, encode_pair, pad_id_of
from alignforge.data.preferences import PairStats, PreferencePair, expand_preferences
from alignforge.data.records import ReadReport, RecordError
from alignforge.data.splits import split_eval
from alignforge.eval.kl import sampled_kl
from alignforge.losses import dpo_loss
from alignforge.perf import forward_flops, measure_matmul_peak, train_flops
from alignforge.models.load import load_policy, load_reference, matmul_params
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist
from alignforge.train.loop import (EpochSampler, autocast, compute_dtype, make_optimizer, make_scheduler,
                                  optimizer_step, seed_everything, start_stage)
from alignforge.train.refcache import pair_logprobs, reference_logprobs
from alignforge.train.tracking import MetricsLogger

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def read_pairs(cfg: DPOConfig, split: str) -> tuple[list[PreferencePair], PairStats]:
    """Weighted preference pairs of ``data.train`` / ``data.eval`` (ties dropped and counted)."""
    from alignforge.data.formats import load_data_section

    kinds = set(cfg.dpo.kinds)
    bad = kinds - {"comparison", "ranking", "rating"}
    if bad:
        raise ConfigError(f"config key 'dpo.kinds': unknown kind(s) {sorted(bad)}; expected comparison, ranking, rating")
    report = ReadReport(str(getattr(cfg.data, split)))
    records = load_data_section(cfg.data, split, kind=kinds, report=report)
    stats = PairStats()
    pairs = expand_preferences(records, stats, use_ratings="rating" in kinds, min_strength=cfg.dpo.min_strength)
    if dist.is_main() and (report.skipped or getattr(report, "dropped", None)):
        print(f"dpo: {report.summary()}")
    if not pairs:
        raise RecordError(f"no preference pairs (kinds {sorted(kinds)}; {stats.as_dict()})",
                          path=str(getattr(cfg.data, split)))
    return pairs, stats


def encode_pairs(tok, pairs: Sequence[PreferencePair], seq_len: int
                 ) -> tuple[list[tuple[Example, Example]], list[float], list[PreferencePair], EncodeStats]:
    """(encoded pairs, weights, the pairs kept, stats); a pair whose longer answer cannot fit is dropped."""
    stats = EncodeStats()
    enc, weights, kept = [], [], []
    for p in pairs:
        e = encode_pair(tok, p.prompt, p.chosen, p.rejected, max_len=seq_len, stats=stats)
        if e is not None:
            enc.append(e)
            weights.append(float(p.weight))
            kept.append(p)
    return enc, weights, kept, stats


def split_by_prompt(pairs: Sequence[PreferencePair], fraction: float, seed: int
                    ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Hold out a seeded share of the *prompts* (all their pairs): no held-out prompt is trained on."""
    keys = sorted({repr(p.prompt) for p in pairs})
    held = set(split_eval(keys, fraction, seed)[1])
    return [p for p in pairs if repr(p.prompt) not in held], [p for p in pairs if repr(p.prompt) in held]



def pair_losses(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor | None, rr: torch.Tensor | None,
                cfg: DPOConfig) -> torch.Tensor:
    """Per-pair losses of :func:`alignforge.losses.dpo_loss` (it returns the mean; weights need each)."""
    d = cfg.dpo
    return torch.stack([dpo_loss(pc[i:i + 1], pr[i:i + 1], None if rc is None else rc[i:i + 1],
                                 None if rr is None else rr[i:i + 1], beta=d.beta, loss_type=d.loss,
                                 label_smoothing=d.label_smoothing)[0] for i in range(len(pc))])


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def run(cfg: DPOConfig) -> Path:
    out, device, finished = start_stage(cfg, "dpo")
    if finished:
        return out
    if not cfg.data.train:
        raise ConfigError("dpo needs data.train (comparisons / rankings / ratings, or an HH-RLHF file)")
    if not cfg.model.init:
        raise ConfigError("dpo needs model.init (an SFT stage folder or a local HF model directory)")
    tcfg, dcfg = cfg.train, cfg.dpo
    world = dist.world_size()
    t_begin = time.perf_counter()

    # --- policy (its tokenizer encodes the data) and the frozen reference ---
    seed_everything(dist.rank_seed(cfg.seed))
    model, tok = load_policy(cfg)
    model.to(device)  # before the reference: with ref.share_base it IS the policy's base weights
    n_matmul = matmul_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need_ref_model = not dcfg.reference_free or dcfg.kl_prompts > 0
    ref = (load_reference(cfg.ref.init, model, device, share_base=cfg.ref.share_base, fsdp=cfg.runtime.fsdp)
           if need_ref_model else None)

    # --- data: records → weighted pairs → token ids; held-out pairs for eval ---
    pairs, pair_stats = read_pairs(cfg, "train")
    if cfg.data.eval:
        train_pairs, eval_pairs = pairs, read_pairs(cfg, "eval")[0]
    else:
        train_pairs, eval_pairs = split_by_prompt(pairs, dcfg.eval_fraction, cfg.seed)
    eval_pairs = eval_pairs[:dcfg.max_eval_pairs]
    train_enc, weights, _, enc_stats = encode_pairs(tok, train_pairs, tcfg.seq_len)
    eval_enc, _, eval_kept, _ = encode_pairs(tok, eval_pairs, tcfg.seq_len)
    if not train_enc:
        raise RecordError(f"no pair fits train.seq_len={tcfg.seq_len} ({enc_stats.summary()})", path=str(cfg.data.train))
    pad = pad_id_of(tok)
    w_all = torch.tensor(weights)
    pairs_per_step = tcfg.batch_size * tcfg.grad_accum * world
    steps_per_epoch = max(1, len(train_enc) // pairs_per_step)
    max_steps = math.ceil(dcfg.epochs * steps_per_epoch) if dcfg.epochs is not None else tcfg.max_steps
    tcfg.max_steps = max_steps  # the schedule spans the real run length

    # --- the reference pre-pass: log π_ref of every train and eval pair, once ---
    use_cache = not dcfg.reference_free and dcfg.ref_cache != "off"
    ref_tokens = 0
    ref_c = ref_r = ev_rc = ev_rr = None
    cache_info: dict[str, Any] = {}
    if use_cache:
        from alignforge.train.refcache import model_fingerprint

        cache_dir = None if dcfg.ref_cache == "memory" else (dcfg.cache_dir or out / "ref_cache")
        fp = model_fingerprint(ref)
        kw = dict(pad_id=pad, cache_dir=cache_dir, batch_size=tcfg.batch_size, seq_len=tcfg.seq_len,
                  attention=dcfg.attention, device=device, ref_fingerprint=fp)
        ref_c, ref_r, cache_info = reference_logprobs(ref, train_enc, **kw)
        if eval_enc:
            ev_rc, ev_rr, _ = reference_logprobs(ref, eval_enc, **kw)
        if not cache_info["hit"]:
            ref_tokens = sum(len(c) + len(r) for c, r in train_enc + eval_enc)
        if not dcfg.kl_prompts:
            ref = None  # everything it was needed for is cached: free its memory for training
    t_prepass = time.perf_counter() - t_begin

    # --- optimizer, schedule; then resume if a state exists ---
    model = dist.wrap_model(model, cfg.runtime, device)
    model.train()
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    sampler = EpochSampler(len(train_enc), cfg.seed)
    resumed = ckpt.load_state(out, model=model, optimizer=optimizer, scheduler=scheduler)
    step, elapsed_before = 0, 0.0
    if resumed is not None:
        step, elapsed_before = resumed.step, float(resumed.extra.get("elapsed_s", 0.0))
        sampler.load_state_dict(resumed.data)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        print(f"dpo: {pair_stats.as_dict()}; {enc_stats.summary()}; {len(eval_enc)} held-out pairs")
        print(f"dpo: {dcfg.loss} β={dcfg.beta}" + (" reference-free" if dcfg.reference_free else
                                                   f", reference cache {dcfg.ref_cache}")
              + (", reference = the policy's base (adapters off)" if cfg.ref.share_base else "")
              + (f" ({'hit' if cache_info.get('hit') else 'computed'} in {cache_info['seconds']:.1f}s)"
                 if cache_info else "")
              + f"; {steps_per_epoch} steps/epoch, {max_steps} steps of {pairs_per_step} pairs; "
              f"{n_matmul / 1e6:.2f}M matmul params ({trainable / 1e6:.2f}M trainable"
              f"{', LoRA' if cfg.model.lora.enabled else ''}) on {device}"
              + (f"; resuming at step {step}" if resumed else ""))
    logger = MetricsLogger(out, cfg.runtime, total_steps=max_steps,
                           resume_offset=resumed.metrics_offset if resumed else None, description="dpo")
    peak = measure_matmul_peak(compute_dtype(cfg.runtime, device), device=device, repeats=3) if dist.is_main() else None
    ctx = autocast(cfg.runtime, device)
    t_start = time.perf_counter()
    eval_seconds = 0.0
    train_tokens = naive_ref_tokens = pairs_done = 0

    def forward(pairs_idx: list[int], enc: list, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with ctx:
            return pair_logprobs(model, [enc[i] for i in pairs_idx], pad, seq_len=tcfg.seq_len,
                                 attention=dcfg.attention, packed=dcfg.packing, device=device)

    def ref_for(idx: list[int], enc: list, cached: tuple | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Reference log-probs of these pairs: from the cache, a live forward (naive path), or none."""
        nonlocal naive_ref_tokens
        if dcfg.reference_free:
            return None, None
        if cached is not None and cached[0] is not None:
            return cached[0][idx].to(device), cached[1][idx].to(device)
        naive_ref_tokens += sum(len(enc[i][0]) + len(enc[i][1]) for i in idx)
        with torch.no_grad(), ctx:
            c, r = pair_logprobs(ref, [enc[i] for i in idx], pad, seq_len=tcfg.seq_len, attention=dcfg.attention,
                                 packed=dcfg.packing, device=device)
        return c.float(), r.float()

    def stats_of(pc, pr, rc, rr) -> dict[str, torch.Tensor]:
        """Sums (over pairs) of the logged quantities; divided by the pair count when logged."""
        cr = dcfg.beta * (pc.detach() - (0 if rc is None else rc))
        rj = dcfg.beta * (pr.detach() - (0 if rr is None else rr))
        return {"reward_chosen": cr.sum(), "reward_rejected": rj.sum(), "reward_margin": (cr - rj).sum(),
                "reward_accuracy": (cr > rj).float().sum(), "logp_chosen": pc.detach().sum(),
                "logp_rejected": pr.detach().sum()}

    def evaluate() -> dict[str, float]:
        row: dict[str, float] = {}
        inner = dist.unwrap(model)
        was_training = inner.training
        inner.eval()
        if eval_enc:
            sums: dict[str, float] = {}
            loss_sum, n = 0.0, 0
            with torch.no_grad():
                idx_all = list(range(dist.rank(), len(eval_enc), world))
                for j in range(0, len(idx_all), tcfg.batch_size):
                    idx = idx_all[j:j + tcfg.batch_size]
                    pc, pr = forward(idx, eval_enc, False)
                    rc, rr = ref_for(idx, eval_enc, (ev_rc, ev_rr))
                    loss_sum += float(pair_losses(pc.float(), pr.float(), rc, rr, cfg).sum())
                    for k, v in stats_of(pc.float(), pr.float(), rc, rr).items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    n += len(idx)
            n = dist.all_reduce_sum(n)
            row["eval_loss"] = dist.all_reduce_sum(loss_sum) / max(n, 1)
            row.update({f"eval_{k}": dist.all_reduce_sum(v) / max(n, 1) for k, v in sums.items()})
        if dcfg.kl_prompts and ref is not None and eval_kept and dist.is_main():
            prompts, seen = [], set()
            for p in eval_kept:  # distinct held-out prompts, in order
                key = repr(p.prompt)
                if key not in seen:
                    seen.add(key)
                    prompts.append(p.prompt)
            prompts = prompts[:dcfg.kl_prompts]
            res = sampled_kl(inner, ref, tok, prompts, max_new_tokens=dcfg.kl_max_new_tokens, seed=cfg.seed,
                             max_prompt_tokens=max(1, tcfg.seq_len - dcfg.kl_max_new_tokens))
            row.update(eval_kl=res.kl, eval_kl_per_token=res.kl_per_token, eval_sample_tokens=res.mean_tokens)
        inner.train(was_training)
        return row

    def save(step: int) -> None:
        ckpt.save_state(out, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        data=sampler.state_dict(), metrics_offset=logger.offset(),
                        extra={"elapsed_s": elapsed_before + time.perf_counter() - t_start})

    # --- the loop: one iteration = one optimizer step on pairs_per_step pairs ---
    stopped = "max_steps"
    window: dict[str, float] = {}
    window_pairs, window_loss, window_weight, t_window = 0, 0.0, 0.0, time.perf_counter()
    while step < max_steps:
        # Every rank draws the same global indices (so the weight normaliser is global), keeps its shard.
        global_idx = sampler.take(pairs_per_step).tolist()
        w_step = float(w_all[global_idx].sum())
        local = dist.shard(global_idx)
        micro = [local[j:j + tcfg.batch_size] for j in range(0, len(local), tcfg.batch_size)]
        for m, idx in enumerate(micro):
            rc, rr = ref_for(idx, train_enc, (ref_c, ref_r))
            with dist.no_sync(model, m < len(micro) - 1):
                pc, pr = forward(idx, train_enc, True)
                losses = pair_losses(pc.float(), pr.float(), rc, rr, cfg)
                w = w_all[idx].to(losses.device)
                loss = (losses * w).sum() * (world / w_step)
                loss.backward()
            window_loss += float((losses.detach() * w).sum())
            window_weight += float(w.sum())
            for k, v in stats_of(pc.float(), pr.float(), rc, rr).items():
                window[k] = window.get(k, 0.0) + float(v)
            window_pairs += len(idx)
            train_tokens += sum(len(train_enc[i][0]) + len(train_enc[i][1]) for i in idx)
        grad_norm = optimizer_step(model, optimizer, scheduler, tcfg.grad_clip)
        step += 1
        pairs_done += len(local)
        logger.progress(step)
        minutes = (elapsed_before + time.perf_counter() - t_start) / 60
        out_of_time = tcfg.max_minutes is not None and minutes >= tcfg.max_minutes
        last = step == max_steps or out_of_time
        row: dict[str, Any] = {}
        if step % tcfg.log_every == 0 or last:
            n = max(dist.all_reduce_sum(window_pairs), 1)
            dt = time.perf_counter() - t_window
            row.update(loss=dist.all_reduce_sum(window_loss) / max(dist.all_reduce_sum(window_weight), 1e-12),
                       **{k: dist.all_reduce_sum(v) / n for k, v in window.items()},
                       lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, epoch=sampler.epoch,
                       pairs_per_s=n / max(dt, 1e-9))
            window, window_pairs, window_loss, window_weight = {}, 0, 0.0, 0.0
        if (tcfg.eval_every and step % tcfg.eval_every == 0) or last:
            t_eval = time.perf_counter()
            row.update(evaluate())
            eval_seconds += time.perf_counter() - t_eval
        if row:
            logger.log(step, **row)
            t_window = time.perf_counter()
        if (tcfg.save_every and step % tcfg.save_every == 0) or last:
            save(step)
        if out_of_time:
            stopped = "max_minutes"
            break

    # --- outputs: HF model (LoRA merged) + tokenizer, resolved config, DONE with throughput ---
    logger.close()
    ckpt.save_model_dir(out / ckpt.MODEL, model, tok)
    # Wall time of the work itself: setup (load, encode, reference pre-pass) + training steps; evaluation
    # excluded (design §8: any pre-pass counts).
    seconds = t_prepass + (time.perf_counter() - t_start) - eval_seconds
    pairs_total = dist.all_reduce_sum(pairs_done)
    flops = (train_flops(n_matmul, dist.all_reduce_sum(train_tokens))
             + forward_flops(n_matmul, ref_tokens + dist.all_reduce_sum(naive_ref_tokens)))
    total = {"pairs_per_s": pairs_total / max(seconds, 1e-9), "seconds": seconds, "setup_s": t_prepass,
             "ref_prepass_s": float(cache_info.get("seconds", 0.0)),
             "tokens": dist.all_reduce_sum(train_tokens), "flops_per_s": flops / max(seconds, 1e-9)}
    if peak:
        total["mfu"] = total["flops_per_s"] / peak
    if dist.is_main():
        print(f"dpo: done at step {step} ({stopped}); {total['pairs_per_s']:.1f} pairs/s incl. "
              f"{t_prepass:.1f}s of loading, encoding and reference pre-pass" + (f", MFU {total['mfu']:.1%}" if "mfu" in total else "")
              + f" → {out / ckpt.MODEL}")
    ckpt.mark_done(out, {"step": step, "stopped": stopped, "pairs": len(train_enc), "ref_cache": dcfg.ref_cache,
                         "cache_hit": bool(cache_info.get("hit")), **pair_stats.as_dict(),
                         "truncated": enc_stats.truncated, "dropped": enc_stats.dropped, **total})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("dpo", DPOConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
