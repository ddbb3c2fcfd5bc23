"""Training throughput and MFU of the pretrain loop (design §6, §8). Not a test: it prints numbers.

    python bench/train_throughput.py                       # tiny-4m, seq 256, batch 16, all variants
    python bench/train_throughput.py --variants baseline --steps 5 --json out.jsonl
    python bench/train_throughput.py --variants baseline --precision fp32,bf16   # does bf16 pay here?

First the machine's fp32 matmul peak (alignforge.perf.measure_matmul_peak, same threads as the
loop), then for each variant: tokens/s and MFU = 6·N·tokens/s ÷ peak (N = non-embedding matmul
params). A step is exactly the pretrain stage's: forward, causal-LM cross-entropy, backward,
clip, AdamW, schedule. Tokens are random ids (throughput does not depend on their values).

``--precision bf16`` runs the same step under ``torch.autocast("cpu", bfloat16)`` with fp32 master
weights (what ``runtime.precision: bf16`` does) and divides by the bf16 matmul peak; with
``fp32,bf16`` every variant runs at both, so the ratio of the two rows is the speed-up bf16 buys on
this CPU (``runtime.precision: auto`` picks bf16 on AMX-BF16 and AVX512-BF16 CPUs: train/loop.py).

Variants (each builds on the pieces the stage uses, changing one thing):
  baseline      HF LlamaForCausalLM (SDPA attention), full logits + F.cross_entropy, foreach AdamW
  eager-attn    attention as explicit matmul + softmax (what SDPA replaces)
  fused-adamw   AdamW(fused=True): one fused kernel for the whole update
  chunked-ce    LM head + cross-entropy in row chunks: the [B·T, V] logits never exist at once
  compile       torch.compile(model) (inductor; C++ codegen on CPU)
On a shared machine run it a couple of times and take the best: other processes steal cores.

What limits MFU here (profiled at 1 thread; rerun this script for the numbers on your machine):
- The matmuls themselves run at about the 1024³ peak, but 6·N leaves out the LM head
  (6·d·V per token: +33% FLOPs at d=256, V=4096) and attention scores (12·L·T·d per token:
  +16% at T=256), so the 6N-MFU ceiling for this shape is ~60%. Norm/RoPE/SwiGLU elementwise
  ops and the vocab softmax take most of the rest; the optimizer step is ~1%.
- eager attention, chunked CE, fused AdamW and torch.compile were within run-to-run noise
  per CPU-second (compile also costs ~2 minutes up front), so the stage keeps the plain path.
- Several threads on a machine shared with other jobs: OpenMP's default spin-waiting burns the
  cores the others need (several times the CPU-seconds per step). Use OMP_WAIT_POLICY=PASSIVE
  or --threads 1 there; on a dedicated machine use all cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from alignforge.config import TrainSection
from alignforge.models.load import build_model, matmul_params
from alignforge.perf import Throughput, cpu_flags, machine, measure_matmul_peak, train_flops
from alignforge.train.loop import lm_loss, make_optimizer, make_scheduler, optimizer_step


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = ("baseline", "eager-attn", "fused-adamw", "chunked-ce", "compile")


def chunked_lm_loss(model, inputs, targets, chunk: int = 1024):
    """LM head + CE over ``chunk`` rows at a time, each chunk recomputed in backward (checkpoint),
    so the full logits tensor is never materialised. Same value as :func:`lm_loss`."""
    from torch.utils.checkpoint import checkpoint

    hidden = model.model(input_ids=inputs).last_hidden_state
    h = hidden.reshape(-1, hidden.size(-1))
    y = targets.reshape(-1)
    head = model.lm_head

    def piece(hc, yc):
        return F.cross_entropy(head(hc).float(), yc, ignore_index=-100, reduction="sum")

    total = sum(checkpoint(piece, h[i:i + chunk], y[i:i + chunk], use_reentrant=False)
                for i in range(0, h.size(0), chunk))
    return total / (y != -100).sum()


def matmul_flops_per_cpu_second(n: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Like the peak, but per CPU-second of this process (``time.process_time``, all threads).

    On a machine shared with other jobs, wall-clock rates measure the neighbours as much as us;
    FLOPs per CPU-second of the loop over FLOPs per CPU-second of a large matmul is the
    efficiency of the work we actually got to run. (Without contention it reads higher than the
    wall-clock MFU when part of a step runs on fewer threads than the matmul.)
    """
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(4):
            torch.matmul(a, b)
        best = max(best, 4 * 2.0 * n**3 / max(time.process_time() - c0, 1e-9))
    return best


def run_variant(name: str, args, peak: float, precision: str = "fp32") -> dict:
    overrides = {"attn_implementation": "eager"} if name == "eager-attn" else {}
    model = build_model(args.preset, args.vocab, seed=0, **overrides)
    n = matmul_params(model)
    model.train()
    t = TrainSection(lr=3e-4, warmup_steps=2, max_steps=1000, batch_size=args.batch, seq_len=args.seq)
    opt = make_optimizer(model, t)
    if name == "fused-adamw":
        opt = torch.optim.AdamW(opt.param_groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=True)
    sched = make_scheduler(opt, t)
    loss_fn = chunked_lm_loss if name == "chunked-ce" else lm_loss
    fwd = torch.compile(model) if name == "compile" else model
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(fwd, batch[:, :-1], batch[:, 1:])
        loss.backward()
        optimizer_step(model, opt, sched, t.grad_clip)
        return float(loss.detach())

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # compile, allocator, thread pool warm-up: not measured
        step()
    warm_s = time.perf_counter() - t0
    meter = Throughput(n, peak_flops=peak)
    times, cpu = [], []
    for _ in range(args.steps):
        s0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - s0)
        cpu.append(time.process_time() - c0)
        meter.add(args.batch * args.seq)
    tot = meter.total()
    best = min(times)
    tokens = args.batch * args.seq
    return {"variant": name, "precision": precision, "preset": args.preset, "seq": args.seq, "batch": args.batch, "vocab": args.vocab,
            "threads": torch.get_num_threads(), "matmul_params": n, "warmup_s": round(warm_s, 2),
            "step_s_median": round(sorted(times)[len(times) // 2], 3), "step_s_best": round(best, 3),
            "tokens_per_s": round(tot["tokens_per_s"], 1), "mfu": round(tot["mfu"], 4),
            "tokens_per_s_best_step": round(tokens / best, 1),
            "mfu_best_step": round(train_flops(n, tokens) / best / peak, 4),
            # per CPU-second: robust to other processes taking cores (see cpu_peak)
            "cpu_s_per_step": round(sum(cpu) / len(cpu), 3),
            "mfu_cpu": round(train_flops(n, tokens) * len(cpu) / sum(cpu) / args.cpu_peak[precision], 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-4m")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--precision", default="fp32", help="fp32, bf16 (autocast, fp32 master weights) or fp32,bf16")
    p.add_argument("--json", default=None, help="also append the result rows to this JSONL file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    precisions = [x for x in args.precision.split(",") if x]
    if not precisions or set(precisions) - set(DTYPES):
        p.error(f"--precision: expected fp32, bf16 or fp32,bf16, got {args.precision!r}")

    # Each row's MFU divides by the matmul peak at the row's own precision, measured in this run.
    peak = {x: measure_matmul_peak(DTYPES[x], repeats=5, cache=False) for x in precisions}
    args.cpu_peak = {x: matmul_flops_per_cpu_second(dtype=DTYPES[x]) for x in precisions}
    head = {**{f"peak_gflops_{x}": round(peak[x] / 1e9, 2) for x in precisions},
            **{f"cpu_peak_gflops_per_cpu_s_{x}": round(args.cpu_peak[x] / 1e9, 2) for x in precisions},
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": machine(),
            "cpu_flags": cpu_flags()}
    print(json.dumps(head), flush=True)
    rows = [head]
    for name in names:
        for precision in precisions:
            try:
                row = run_variant(name, args, peak[precision], precision)
            except Exception as e:  # e.g. no C++ compiler for torch.compile: report, keep going
                row = {"variant": name, "precision": precision, "error": f"{type(e).__name__}: {e}"[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    # The peak again after the rows: other work on the machine shows as a gap between the two readings.
    peak_after = {x: measure_matmul_peak(DTYPES[x], repeats=5, cache=False) for x in precisions}
    tail = {f"peak_gflops_{x}_after": round(peak_after[x] / 1e9, 2) for x in precisions}
    print(json.dumps(tail), flush=True)
    rows.append(tail)
    print(f"\n{head['machine']}; {torch.get_num_threads()} threads; {head['cpu_flags']}", file=sys.stderr)
    for x in precisions:
        print(f"{x} matmul peak {peak[x] / 1e9:.1f} GFLOP/s (after: {peak_after[x] / 1e9:.1f})", file=sys.stderr)
    for r in rows[1:-1]:
        if "error" in r:
            print(f"  {r['variant']:<12} {r['precision']:<5} failed: {r['error']}", file=sys.stderr)
        else:
            print(f"  {r['variant']:<12} {r['precision']:<5} {r['tokens_per_s']:>8.0f} tok/s  MFU {r['mfu']:.1%}  "
                  f"(best step {r['tokens_per_s_best_step']:.0f} tok/s, MFU {r['mfu_best_step']:.1%}; "
                  f"per CPU-second MFU {r['mfu_cpu']:.1%})", file=sys.stderr)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
