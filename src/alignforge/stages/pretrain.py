"""``alignforge pretrain``: a causal LM on text records, packed into fixed blocks.

Read top to bottom: records → tokenizer → packed blocks → model → the loop (gradient
accumulation, clipping, schedule, held-out bits per byte, checkpoints, resume, time budget) →
``model/`` + ``config.yaml`` + ``DONE``. Under ``torchrun`` each rank trains on its contiguous
shard of every global batch (DDP averages the gradients, so the step equals a 1-process step on
the whole batch). Shared pieces live in :mod:`alignforge.train`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from alignforge.cli import run_stage
from alignforge.config import ConfigError, PretrainConfig, save_config
from alignforge.data.records import ReadReport, read_records
from alignforge.data.text import document_texts
from alignforge.io import atomic_write_text
from alignforge.models.load import build_model, matmul_params
from alignforge.perf import Throughput, measure_matmul_peak
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist
from alignforge.train.loop import (EpochSampler, autocast, compute_dtype, bits_per_byte, heldout_nats,
                                  lm_loss, make_optimizer, make_scheduler, optimizer_step, pack_blocks,
                                  pack_stream, seed_everything, start_stage)
from alignforge.train.tracking import MetricsLogger


def _read_records(path: str, cfg: PretrainConfig, limit: int | None = None) -> list:
    report = ReadReport(str(path))
    records = read_records(path, kind="text", on_bad=cfg.data.on_bad_record, report=report)
    if report.skipped and dist.is_main():
        print(report.summary())
    return records[:limit] if limit is not None else records


def _strip_special(text: str, tokenizer) -> str:
    for special in tokenizer.all_special_tokens:
        text = text.replace(special, "")
    return text


def _model_and_tokenizer(cfg: PretrainConfig, texts: list[str], out: Path):
    """Continue from model.init (its tokenizer unless model.tokenizer is set), or a fresh preset
    (+ model.overrides, seeded) with model.tokenizer, or a BPE trained here on the training text
    (saved in <out>/tokenizer, so a resumed run reuses it rather than retraining)."""
    from alignforge.models.load import load_causal_lm, quiet_transformers
    from alignforge.models.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    try:
        if cfg.model.init:
            return load_causal_lm(cfg.model.init, device="cpu", tokenizer=cfg.model.tokenizer)
        if cfg.model.tokenizer:
            tok = load_tokenizer(cfg.model.tokenizer)
    except FileNotFoundError as e:  # a wrong path in the config: one clear line, not a traceback
        raise ConfigError(f"model.init={cfg.model.init!r} / model.tokenizer={cfg.model.tokenizer!r}: {e}") from None
    if not cfg.model.tokenizer:
        saved = out / "tokenizer"
        with dist.main_first():  # rank 0 trains and saves once; the other ranks load it
            if not (saved / "tokenizer.json").is_file():
                save_tokenizer(train_tokenizer(texts, vocab_size=cfg.model.vocab_size), saved)
        tok = load_tokenizer(saved)
    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    with quiet_transformers():
        model = build_model(cfg.model.preset, len(tok), seed=cfg.seed, **{**ids, **cfg.model.overrides})
    return model, tok


def _lstm_baseline(cfg: PretrainConfig, tok, texts: list[str], eval_texts: list[str], out: Path, device
                   ) -> tuple[str, float, int, dict[str, Any]]:
    """An LSTM LM on the training text's token ids, scored as the n-gram rows are (same ids, same bytes);
    its state lives in ``<out>/rnn/`` so a killed run resumes it exactly. fp32 on the stage's device: a
    baseline row, not a model the later stages use."""
    from alignforge.classic.ngram import tokenizer_encoder
    from alignforge.classic.rnn import LSTMTrainConfig, lstm_bits_per_byte, train_lstm_lm

    encode, vocab = tokenizer_encoder(tok)
    r = cfg.rnn
    rcfg = LSTMTrainConfig(steps=r.steps, embed=r.embed, hidden=r.hidden, layers=r.layers, seq_len=r.seq_len,
                           batch_size=r.batch_size, lr=r.lr, save_every=r.save_every, max_minutes=r.max_minutes,
                           seed=cfg.seed)
    try:
        lstm, info = train_lstm_lm([encode(t) for t in texts], vocab, rcfg, state_dir=out / "rnn", log=print,
                                   device=device)
    except ValueError as e:  # a saved LSTM state from other rnn settings, or too little text
        raise ConfigError(f"pretrain rnn: {e}") from None
    name = f"tokens-lstm-{r.layers}x{r.hidden}"
    return name, lstm_bits_per_byte(lstm, eval_texts, encode), lstm.num_params(), info


def run(cfg: PretrainConfig) -> Path:
    out, device, finished = start_stage(cfg, "pretrain", clear_also=("tokenizer", "rnn"))
    if finished:
        return out
    if not cfg.data.train:
        raise ConfigError("pretrain needs data.train (text records: JSONL with a 'text' field)")
    tcfg = cfg.train

    # --- data: text → one token stream (documents joined by eos) → [n, seq_len+1] blocks ---
    records = _read_records(cfg.data.train, cfg, cfg.data.max_records)
    seed_everything(dist.rank_seed(cfg.seed))
    model, tok = _model_and_tokenizer(cfg, document_texts(records), out)  # a tokenizer trained here sees plain text
    render = tok if cfg.chat_dialogues else None
    texts = document_texts(records, render)
    eos = tok.eos_token_id
    encode = lambda ts: tok(ts, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    blocks = pack_blocks(pack_stream(encode(texts), eos), tcfg.seq_len)
    eval_texts = document_texts(_read_records(cfg.data.eval, cfg), render) if cfg.data.eval else []
    eval_stream = pack_stream(encode(eval_texts), eos) if eval_texts else None
    # Bytes of the text the scored tokens stand for: special tokens (the chat template's markers)
    # are left out of the nats (ignore_ids below), so their strings are left out of the bytes.
    eval_bytes = sum(len(_strip_special(t, tok).encode("utf-8")) for t in eval_texts)
    world = dist.world_size()
    global_batch = tcfg.batch_size * tcfg.grad_accum * world
    if len(blocks) == 0:
        raise ConfigError(f"data.train={cfg.data.train}: fewer than seq_len+1={tcfg.seq_len + 1} tokens")

    # --- optimizer, schedule; then resume if a state exists ---
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_matmul = matmul_params(model)
    model = dist.wrap_model(model, cfg.runtime, device)
    model.train()
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    sampler = EpochSampler(len(blocks), cfg.seed)
    resumed = ckpt.load_state(out, model=model, optimizer=optimizer, scheduler=scheduler)
    step = 0
    elapsed_before = 0.0
    if resumed is not None:
        step, elapsed_before = resumed.step, float(resumed.extra.get("elapsed_s", 0.0))
        sampler.load_state_dict(resumed.data)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        print(f"pretrain: {len(texts)} documents → {len(blocks)} blocks of {tcfg.seq_len}; "
              f"{n_matmul / 1e6:.2f}M matmul params; global batch {global_batch} seqs "
              f"({tcfg.batch_size}×{tcfg.grad_accum} accum×{world} procs) on {device}"
              + (f"; resuming at step {step}" if resumed else ""))
    logger = MetricsLogger(out, cfg.runtime, total_steps=tcfg.max_steps,
                           resume_offset=resumed.metrics_offset if resumed else None, description="pretrain")
    peak = measure_matmul_peak(compute_dtype(cfg.runtime, device), device=device, repeats=3) if dist.is_main() else None
    meter = Throughput(n_matmul, peak_flops=peak)
    ctx = autocast(cfg.runtime, device)
    ignore_ids = list(tok.all_special_ids)
    t_start = time.perf_counter()

    def evaluate() -> dict[str, float]:
        if eval_stream is None:
            return {}
        nats, count = heldout_nats(model, eval_stream, tcfg.seq_len, tcfg.batch_size, device,
                                   ignore_ids, ctx, shard=(dist.rank(), world))
        nats, count = dist.all_reduce_sum(nats), dist.all_reduce_sum(count)
        return {"eval_bpb": bits_per_byte(nats, eval_bytes), "eval_loss": nats / max(count, 1)}

    def save(step: int) -> None:
        meter.pause()
        ckpt.save_state(out, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        data=sampler.state_dict(), metrics_offset=logger.offset(),
                        extra={"elapsed_s": elapsed_before + time.perf_counter() - t_start})
        meter.resume()

    # --- the loop: one iteration = one optimizer step on a global batch ---
    stopped = "max_steps"
    while step < tcfg.max_steps:
        # Every rank draws the same global indices (same sampler state), then keeps its shard.
        idx = dist.shard(sampler.take(global_batch))
        loss_sum = torch.zeros((), device=device)
        for micro in range(tcfg.grad_accum):
            batch = blocks[idx[micro * tcfg.batch_size:(micro + 1) * tcfg.batch_size]].to(device)
            # DDP all-reduces gradients only on the last micro-batch of the step.
            with dist.no_sync(model, micro < tcfg.grad_accum - 1), ctx:
                # Each micro-batch's mean loss weighs 1/grad_accum: equal-length packed blocks,
                # so this is exactly the mean over the rank's shard (and DDP's mean over ranks).
                loss = lm_loss(model, batch[:, :-1], batch[:, 1:]) / tcfg.grad_accum
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = optimizer_step(model, optimizer, scheduler, tcfg.grad_clip)
        step += 1
        meter.add(global_batch * tcfg.seq_len)
        logger.progress(step)
        minutes = (elapsed_before + time.perf_counter() - t_start) / 60
        out_of_time = tcfg.max_minutes is not None and minutes >= tcfg.max_minutes
        last = step == tcfg.max_steps or out_of_time
        row: dict[str, Any] = {}  # one metrics line per step at most: train and eval together
        if step % tcfg.log_every == 0 or last:
            row.update(loss=float(dist.all_reduce_mean(loss_sum)), lr=scheduler.get_last_lr()[0],
                       grad_norm=grad_norm, tokens=step * global_batch * tcfg.seq_len,
                       epoch=sampler.epoch, **meter.window())
        if eval_stream is not None and ((tcfg.eval_every and step % tcfg.eval_every == 0) or last):
            meter.pause()
            row.update(evaluate())
            meter.resume()
        if row:
            logger.log(step, **row)
        if (tcfg.save_every and step % tcfg.save_every == 0) or last:
            save(step)
        if out_of_time:
            stopped = "max_minutes"
            break

    # --- outputs: HF model + tokenizer, resolved config, DONE ---
    logger.close()
    ckpt.save_model_dir(out / ckpt.MODEL, model, tok)
    total = meter.total()
    if dist.is_main():
        print(f"pretrain: done at step {step} ({stopped}); {total['tokens_per_s']:.0f} tokens/s"
              + (f", MFU {total['mfu']:.1%}" if "mfu" in total else "") + f" → {out / ckpt.MODEL}")
    info: dict[str, Any] = {"step": step, "stopped": stopped, **total}
    if eval_texts and (cfg.baselines or cfg.rnn.steps):
        model_bpb = evaluate().get("eval_bpb")  # every rank: the held-out pass all-reduces
    if dist.is_main() and eval_texts and (cfg.baselines or cfg.rnn.steps):
        # The same held-out text, scored by count-based models and an LSTM (design §8: bits per byte
        # compares models with different tokenizers honestly): what the transformer must beat.
        from alignforge.classic.ngram import ngram_baselines

        baselines = ngram_baselines(texts, eval_texts, tokenizer=tok, orders=cfg.baselines) if cfg.baselines else {}
        params = {"model": sum(p.numel() for p in dist.unwrap(model).parameters())}
        if cfg.rnn.steps:
            name, bpb, rnn_params, rnn_info = _lstm_baseline(cfg, tok, texts, eval_texts, out, device)
            baselines[name] = bpb
            params[name] = rnn_params
            info["rnn"] = rnn_info
        atomic_write_text(out / "baselines.json",
                          json.dumps({"model": model_bpb, **baselines, "params": params}, indent=1) + "\n")
        print("pretrain: held-out bits per byte: model " + (f"{model_bpb:.3f}" if model_bpb else "—") + "; "
              + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()))
        info["baselines"] = baselines
    ckpt.mark_done(out, info)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("pretrain", PretrainConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
