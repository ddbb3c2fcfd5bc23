"""Sampling throughput: alignforge's engine vs transformers ``model.generate`` on the same model.

    python bench/sampling.py                       # tiny-4m, 16x48, 32x64, 64x64
    python bench/sampling.py --threads 1 --repeats 5 --preset tiny-1m

Same model, same left-padded prompts (lengths 8-24), same sampling (T=1, no top-k/top-p,
``do_sample=True``). Rows ``len`` run to ``max_new_tokens`` (no EOS); rows ``eos`` give both
engines the same 64 stop ids (about 1.6% chance a step) so responses end at different times, which
is where the engine's batch compaction matters; tokens/s counts real generated tokens only.
Time is the best of ``--repeats`` runs after one warm-up. ``--clock cpu`` times process CPU
time instead of wall time: with ``--threads 1`` that is the fairer number on a shared machine
(other people's jobs stretch wall time, not the CPU time a run needs). Column ``no-compact``
turns the engine's batch compaction off (rows that finished keep riding along), to measure it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from alignforge.generation import SamplingParams, generate
from alignforge.models.load import build_model


def best_time(fn, repeats: int, clock) -> tuple[float, object]:
    out = fn()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        t0 = clock()
        out = fn()
        times.append(clock() - t0)
    return min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-4m")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--shapes", default="16x48,32x64,64x64", help="prompts x new tokens, comma separated")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-eos", action="store_true", help="skip the rows with stop tokens")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--json", default=None, help="also write the rows here (for generated docs)")
    args = ap.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.preset, vocab_size=args.vocab).eval()
    # A fresh LlamaConfig has eos 2 and generation_config top_k 50: switch both off so HF
    # samples exactly what the engine samples.
    model.generation_config.eos_token_id = None
    model.generation_config.top_k = None
    pad = 0
    stop_ids = list(range(3, args.vocab, args.vocab // 64))[:64]
    print(f"model {args.preset} vocab {args.vocab}, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats} after a warm-up, {args.clock} clock; T=1, top_k=0, top_p=1; tokens/s")
    header = (f"{'shape':>8} {'stops':>5} {'engine':>8} {'no-compact':>10} {'engine(hf fwd)':>14} "
              f"{'HF generate':>11} {'speedup':>8}")
    print(header)
    print("-" * len(header))
    rng = torch.Generator().manual_seed(0)
    rows = []
    for shape in args.shapes.split(","):
        B, N = (int(x) for x in shape.split("x"))
        lens = torch.randint(8, 25, (B,), generator=rng).tolist()
        prompts = [torch.randint(3, args.vocab, (n,), generator=rng).tolist() for n in lens]
        P = max(lens)
        ids = torch.full((B, P), pad, dtype=torch.long)
        mask = torch.zeros(B, P, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.tensor(p)
            mask[i, P - len(p):] = 1
        for eos in ([None] if args.no_eos else [None, stop_ids]):
            sp = SamplingParams(max_new_tokens=N, seed=0)

            def engine(backend, compact=0.5):
                return generate(model, prompts, sp, eos_token_id=eos, pad_token_id=pad, backend=backend,
                                compact_below=compact)

            def hf():
                with torch.inference_mode():
                    return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=N,
                                          temperature=1.0, top_k=0, top_p=1.0, pad_token_id=pad,
                                          eos_token_id=eos)

            t_fast, g_fast = best_time(lambda: engine("auto"), args.repeats, clock)
            no_compact = "-"
            if eos is not None:
                t_nc, g_nc = best_time(lambda: engine("auto", compact=0.0), args.repeats, clock)
                no_compact = f"{sum(g_nc.lengths) / t_nc:.0f}"
            t_hfb, g_hfb = best_time(lambda: engine("hf"), args.repeats, clock)
            t_hf, out = best_time(hf, args.repeats, clock)
            n_fast, n_hfb = sum(g_fast.lengths), sum(g_hfb.lengths)
            resp = out[:, P:]
            if eos is None:
                n_hf = resp.numel()
            else:  # HF pads after EOS with pad_token_id; count up to and including the first stop
                hit = torch.isin(resp, torch.tensor(eos))
                first = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.full((B,), resp.shape[1]))
                n_hf = int(first.sum())
            r_fast, r_hfb, r_hf = n_fast / t_fast, n_hfb / t_hfb, n_hf / t_hf
            print(f"{shape:>8} {'64' if eos else '-':>5} {r_fast:8.0f} {no_compact:>10} {r_hfb:14.0f} "
                  f"{r_hf:11.0f} {r_fast / r_hf:7.2f}x")
            rows.append({"prompts": B, "new_tokens": N, "stop_ids": 64 if eos else 0, "engine_tok_s": r_fast,
                         "engine_no_compact_tok_s": None if no_compact == "-" else float(no_compact),
                         "engine_hf_forward_tok_s": r_hfb, "hf_generate_tok_s": r_hf,
                         "speedup": r_fast / r_hf})
    if args.json:
        from alignforge.io import atomic_write_text

        meta = {"preset": args.preset, "vocab": args.vocab, "threads": torch.get_num_threads(),
                "clock": args.clock, "repeats": args.repeats, "torch": torch.__version__}
        atomic_write_text(args.json, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
