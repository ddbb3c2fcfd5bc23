"""``alignforge sft``: supervised fine-tuning on demonstrations, loss on the response only.

Read top to bottom: demonstrations (our records, or HH/Alpaca/Dolly/OASST/self-instruct/messages
through :mod:`alignforge.data.formats`) → :mod:`alignforge.data.batching` (chat template on token
ids, response-only loss mask, packing with a block-diagonal mask so no example attends to another)
→ model (``model.init`` = a stage folder such as ``runs/w/pretrain`` or any local HF model; full
or LoRA) → the loop (gradient accumulation, clipping, schedule, held-out loss, greedy samples,
checkpoints + exact resume, time budget) → ``model/`` + ``config.yaml`` + ``DONE``.

Loss normalisation: packed micro-batches hold different numbers of response tokens, so each
micro-batch's *summed* NLL is divided by the response-token count of the whole optimizer step
(all micro-batches of all ranks, known up front because every rank draws the same global batch
indices). Every response token then weighs the same — a plain mean per micro-batch would
up-weight tokens that happen to sit in sparse batches. Under DDP (which averages gradients over
ranks) the local loss is multiplied by the world size to keep that global sum.

Data order: examples are packed once (deterministically, by seed) into micro-batches, and an
:class:`~alignforge.train.loop.EpochSampler` shuffles micro-batches each epoch. Its state (epoch,
offset) is the data position a checkpoint stores, which makes resume exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignforge.cli import run_stage
from alignforge.config import ConfigError, SFTConfig, save_config
from alignforge.data.batching import (
    EncodeStats,
    Example,
    encode_example,
    encode_prompt,
    lm_loss,
    make_batches,
    pad_id_of,
)
from alignforge.data.records import Demonstration, ReadReport, RecordError
from alignforge.data.splits import split_eval
from alignforge.data.text import text_blocks
from alignforge.models.load import load_policy, matmul_params
from alignforge.perf import Throughput, measure_matmul_peak
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist
from alignforge.train.loop import (
    EpochSampler,
    StageClock,
    autocast,
    compute_dtype,
    lm_loss as next_token_loss,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    seed_everything,
    start_stage,
)
from alignforge.train.loop import out_of_time as stage_out_of_time
from alignforge.train.tracking import MetricsLogger

LN2 = math.log(2)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def read_demonstrations(path: str, cfg: SFTConfig, limit: int | None = None) -> list[Demonstration]:
    """Demonstrations from any supported format; other record kinds are counted and left out."""
    from alignforge.data.formats import FORMATS, load_dataset_records

    if cfg.data.format != "auto" and cfg.data.format not in FORMATS:
        raise ConfigError(f"data.format={cfg.data.format!r}: expected auto or one of {', '.join(FORMATS)}")
    report = ReadReport(str(path))
    records = load_dataset_records(path, format=cfg.data.format, on_bad=cfg.data.on_bad_record, report=report,
                                   kind="demonstration", max_records=limit)
    if dist.is_main() and (report.skipped or getattr(report, "dropped", None)):
        print(f"sft: {report.summary()}" + (f"; left out: {report.dropped}" if getattr(report, "dropped", None)
                                            else ""))
    if not records:
        raise RecordError("no demonstrations (prompt + response) found", path=str(path))
    return records  # type: ignore[return-value]


def encode_all(tok, records: Sequence[Demonstration], cfg: SFTConfig) -> tuple[list[Example], list, EncodeStats, int]:
    """(examples, the records kept, stats, UTF-8 bytes of the kept responses)."""
    stats = EncodeStats()
    examples, kept, n_bytes = [], [], 0
    for rec in records:
        ex = encode_example(tok, rec.prompt, rec.response, max_len=cfg.train.seq_len,
                            train_on_prompt=cfg.sft.train_on_prompt, stats=stats)
        if ex is not None:
            examples.append(ex)
            kept.append(rec)
            n_bytes += len(rec.response.encode("utf-8"))
    return examples, kept, stats, n_bytes


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def run(cfg: SFTConfig) -> Path:
    out, device, finished = start_stage(cfg, "sft")
    if finished:
        return out
    if not cfg.data.train:
        raise ConfigError("sft needs data.train (demonstrations: prompt + response, or a supported dataset)")
    tcfg, scfg = cfg.train, cfg.sft
    world = dist.world_size()

    # --- model first (its tokenizer encodes the data), seeded per rank ---
    seed_everything(dist.rank_seed(cfg.seed))
    model, tok = load_policy(cfg)
    n_matmul = matmul_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # --- data: records → examples → packed micro-batches (fixed), shuffled per epoch ---
    records = read_demonstrations(cfg.data.train, cfg, cfg.data.max_records)
    if cfg.data.eval:
        train_recs, eval_recs = records, read_demonstrations(cfg.data.eval, cfg)
    else:
        train_recs, eval_recs = split_eval(records, scfg.eval_fraction, cfg.seed, scfg.max_eval_examples)
    eval_recs = eval_recs[:scfg.max_eval_examples]
    train_ex, _, train_stats, _ = encode_all(tok, train_recs, cfg)
    eval_ex, eval_kept, _, eval_bytes = encode_all(tok, eval_recs, cfg)
    pad = pad_id_of(tok)
    plan = make_batches(train_ex, seq_len=tcfg.seq_len, batch_size=tcfg.batch_size, pad_id=pad,
                        mode=scfg.batching, seed=cfg.seed)
    eval_plan = make_batches(eval_ex, seq_len=tcfg.seq_len, batch_size=tcfg.batch_size, pad_id=pad,
                             mode="pack" if scfg.batching == "pack" else "sorted", shuffle=False) if eval_ex else None
    # SFT-ptx: pretraining text mixed into every step. Demonstrations never name most of a world's
    # entities, so plain SFT pushes those names' (tied) embeddings away and the model stops retrieving
    # what pretraining stored about them; a little pretraining loss keeps them (docs/world.md).
    ptx = (text_blocks(scfg.ptx_data, tok, tcfg.seq_len, chat_dialogues=scfg.ptx_chat_dialogues,
                       on_bad=cfg.data.on_bad_record, key="sft.ptx_data") if scfg.ptx_coef > 0 else None)
    micro_per_step = tcfg.grad_accum * world
    if len(plan.batches) < micro_per_step:
        raise ConfigError(f"only {len(plan.batches)} micro-batches of data, fewer than one optimizer step needs "
                          f"({tcfg.grad_accum} accum × {world} procs): lower train.batch_size or grad_accum")
    steps_per_epoch = len(plan.batches) // micro_per_step
    max_steps = math.ceil(scfg.epochs * steps_per_epoch) if scfg.epochs is not None else tcfg.max_steps
    if max_steps != tcfg.max_steps:
        tcfg.max_steps = max_steps  # the schedule (cosine/linear) spans the real run length

    # --- optimizer, schedule; then resume if a state exists ---
    model = dist.wrap_model(model, cfg.runtime, device)
    model.train()
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    sampler = EpochSampler(len(plan.batches), cfg.seed)
    resumed = ckpt.load_state(out, model=model, optimizer=optimizer, scheduler=scheduler)
    step, elapsed_before, ptx_pos = 0, 0.0, 0
    if resumed is not None:
        step, elapsed_before = resumed.step, float(resumed.extra.get("elapsed_s", 0.0))
        sampler.load_state_dict(resumed.data)
        ptx_pos = int(resumed.data.get("ptx_pos", 0))
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        print(f"sft: {train_stats.summary()}; {len(eval_ex)} held-out")
        print(f"sft: {scfg.batching}: {plan.summary()}; {steps_per_epoch} steps/epoch, {max_steps} steps; "
              f"{n_matmul / 1e6:.2f}M matmul params ({trainable / 1e6:.2f}M trainable"
              f"{', LoRA' if cfg.model.lora.enabled else ''}) on {device}"
              + (f"; resuming at step {step}" if resumed else ""))
        if ptx is not None:
            print(f"sft: ptx: {len(ptx)} blocks of {tcfg.seq_len} from {scfg.ptx_data}, {scfg.ptx_batch_size} "
                  f"per step per process, weight {scfg.ptx_coef}")
    logger = MetricsLogger(out, cfg.runtime, total_steps=max_steps,
                           resume_offset=resumed.metrics_offset if resumed else None, description="sft")
    if dist.is_main() and resumed is None:
        (out / "samples.jsonl").unlink(missing_ok=True)
    peak = measure_matmul_peak(compute_dtype(cfg.runtime, device), device=device, repeats=3) if dist.is_main() else None
    meter = Throughput(n_matmul, peak_flops=peak)
    ctx = autocast(cfg.runtime, device)
    attention = scfg.attention
    clock = StageClock(elapsed_before)

    def evaluate() -> dict[str, float]:
        if eval_plan is None:
            return {}
        # The unwrapped model: a DDP forward may sync buffers with the other ranks, and ranks
        # score different numbers of eval batches, so that would deadlock.
        inner = dist.unwrap(model)
        was_training = inner.training
        inner.eval()
        nll, count = 0.0, 0
        with torch.no_grad():
            for i in range(dist.rank(), len(eval_plan.batches), world):
                with ctx:
                    s, n = lm_loss(inner, eval_plan.batches[i].to(device), attention)
                nll, count = nll + float(s), count + n
        inner.train(was_training)
        nll, count = dist.all_reduce_sum(nll), dist.all_reduce_sum(count)
        loss = nll / max(count, 1)
        # bits per byte of the held-out responses (the EOS target counts, it stands for no bytes)
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_bpb": nll / LN2 / max(eval_bytes, 1)}

    def log_samples(step: int) -> None:
        """Greedy answers to the first held-out prompts → samples.jsonl (rank 0)."""
        if not scfg.samples or not eval_kept or not dist.is_main():
            return
        try:
            from alignforge.generation import SamplingParams, generate
        except ImportError:  # the engine is optional for this stage
            return
        recs = eval_kept[:scfg.samples]
        inner = dist.unwrap(model)
        was_training = inner.training
        inner.eval()
        # Greedy uses no randomness, but fork anyway so the training RNG stream (and resume) is untouched.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            gen = generate(inner, [encode_prompt(tok, r.prompt, tcfg.seq_len) for r in recs],
                           SamplingParams(temperature=0.0, max_new_tokens=scfg.sample_max_new_tokens),
                           eos_token_id=tok.eos_token_id, pad_token_id=pad, tokenizer=tok)
        inner.train(was_training)
        with open(out / "samples.jsonl", "a", encoding="utf-8") as f:
            f.writelines(json.dumps({"step": step, "prompt": rec.prompt, "response": text, "finish": why,
                                    "reference": rec.response}, ensure_ascii=False) + "\n"
                         for rec, text, why in zip(recs, gen.texts or [], gen.finish_reason))

    def save(step: int) -> None:
        meter.pause()
        ckpt.save_state(out, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        data={**sampler.state_dict(), "ptx_pos": ptx_pos}, metrics_offset=logger.offset(),
                        extra={"elapsed_s": clock.elapsed_s()})
        meter.resume()

    # --- the loop: one iteration = one optimizer step on a global batch of micro-batches ---
    stopped = "max_steps"
    while step < max_steps:
        # Every rank draws the same global indices (same sampler state), then keeps its shard.
        global_idx = sampler.take(micro_per_step).tolist()
        step_loss_tokens = sum(plan.batches[i].loss_tokens for i in global_idx)
        step_real_tokens = sum(plan.batches[i].real_tokens for i in global_idx)
        local = dist.shard(global_idx)
        loss_sum, ptx_sum = 0.0, None
        if ptx is not None:  # its own backward, before the micro-batches whose last one syncs gradients
            rows = (ptx_pos + dist.rank() * scfg.ptx_batch_size + torch.arange(scfg.ptx_batch_size)) % len(ptx)
            ptx_pos += scfg.ptx_batch_size * world
            block = ptx[rows].to(device)
            with dist.no_sync(model, True), ctx:
                ptx_loss = next_token_loss(model, block[:, :-1], block[:, 1:])
            (scfg.ptx_coef * ptx_loss).backward()
            ptx_sum = float(ptx_loss.detach())
        for micro, i in enumerate(local):
            batch = plan.batches[i].to(device)
            with dist.no_sync(model, micro < len(local) - 1), ctx:
                nll, _ = lm_loss(model, batch, attention)
                loss = nll * (world / max(step_loss_tokens, 1))
            loss.backward()
            loss_sum += float(nll.detach())
        grad_norm = optimizer_step(model, optimizer, scheduler, tcfg.grad_clip)
        step += 1
        meter.add(step_real_tokens)
        logger.progress(step)
        out_of_time = stage_out_of_time(tcfg, clock)  # rank 0 decides, so every process stops together
        last = step == max_steps or out_of_time
        row: dict[str, Any] = {}
        if step % tcfg.log_every == 0 or last:
            row.update(loss=float(dist.all_reduce_sum(loss_sum)) / max(step_loss_tokens, 1),
                       lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, loss_tokens=step_loss_tokens,
                       epoch=sampler.epoch, **meter.window())
            if ptx_sum is not None:
                row["ptx_loss"] = dist.all_reduce_sum(ptx_sum) / world
        if (tcfg.eval_every and step % tcfg.eval_every == 0) or last:
            meter.pause()
            row.update(evaluate())
            log_samples(step)
            meter.resume()
        if row:
            logger.log(step, **row)
        if (tcfg.save_every and step % tcfg.save_every == 0) or last:
            save(step)
        if out_of_time:
            stopped = "max_minutes"
            break

    # --- outputs: HF model (LoRA merged) + tokenizer, resolved config, DONE ---
    logger.close()
    total = meter.total()  # before saving the model: throughput is training time only
    ckpt.save_model_dir(out / ckpt.MODEL, model, tok)
    if dist.is_main():
        print(f"sft: done at step {step} ({stopped}); {total['tokens_per_s']:.0f} tokens/s"
              + (f", MFU {total['mfu']:.1%}" if "mfu" in total else "") + f" → {out / ckpt.MODEL}")
    ckpt.mark_done(out, {"step": step, "stopped": stopped, "examples": train_stats.examples,
                         "truncated": train_stats.truncated, "dropped": train_stats.dropped,
                         "pad_fraction": plan.pad_fraction, **total})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("sft", SFTConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
