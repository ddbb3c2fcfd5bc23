"""SFT throughput: tokens/s and MFU of the real ``alignforge sft`` loop, per batching mode.

    python bench/sft_throughput.py                     # world demos, tiny-4m, seq 256, 2 threads
    python bench/sft_throughput.py --steps 40 --modes pack,sorted,pad --json out.json
    python bench/sft_throughput.py --data ../shared/data/self-instruct-seed-tasks.jsonl

Runs the stage itself (``alignforge.stages.sft.run``) from a fresh ``tiny-4m`` model with a BPE
tokenizer trained on the demonstrations' text, and reads the totals it records in ``DONE``:
tokens/s counts real (non-pad) tokens over training time only (the final eval and saving are
excluded, as the stage's meter pauses for them), and MFU = 6·N_matmul·tokens/s ÷ the fp32
matmul peak measured in the same process (``alignforge.perf``). Padding is the share of
positions in the micro-batches that hold no example: the compute each mode wastes.

Numbers vary with what else the machine runs; the peak is re-measured each run for that reason.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def world_demos(path: Path, n: int, seed: int) -> Path:
    from alignforge.data.records import write_records
    from alignforge.world.config import WorldConfig
    from alignforge.world.core import build_world

    cfg = WorldConfig(seed=seed)
    cfg.prompts.sft = n
    world = build_world(cfg, corpus=False)
    write_records(path, world.demos)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="demonstrations (default: generate world demos)")
    ap.add_argument("--preset", default="tiny-4m")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="pack,sorted,pad")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from alignforge.config import load_config, SFTConfig
    from alignforge.models.tokenizer import save_tokenizer, train_tokenizer
    from alignforge.stages import sft
    from alignforge.stages.tokenizer import read_texts

    tmp = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    data = Path(args.data) if args.data else world_demos(tmp / "demos.jsonl", 3000, seed=0)
    save_tokenizer(train_tokenizer(read_texts(str(data)), vocab_size=args.vocab_size), tmp / "tok")

    results = []
    for mode in args.modes.split(","):
        cfg = load_config(SFTConfig, None, [
            f"model.tokenizer={tmp / 'tok'}", f"model.preset={args.preset}", f"data.train={data}",
            f"out={tmp / mode}", f"sft.batching={mode}", "sft.samples=0", "sft.eval_fraction=0.02",
            f"train.seq_len={args.seq_len}", f"train.batch_size={args.batch_size}",
            f"train.max_steps={args.steps}", "train.eval_every=0", "train.save_every=0",
            f"train.log_every={args.steps}", f"runtime.threads={args.threads}", "runtime.progress=false",
            "runtime.device=cpu"])
        sft.run(cfg)
        done = json.loads((tmp / mode / "DONE").read_text())
        results.append({"mode": mode, "tokens_per_s": done["tokens_per_s"], "mfu": done.get("mfu"),
                        "pad_fraction": done["pad_fraction"], "steps": done["step"], "tokens": done["tokens"]})

    print(f"\nSFT throughput, {args.preset}, seq {args.seq_len}, {args.batch_size} rows/micro-batch, "
          f"{args.threads} threads, {args.steps} steps ({data.name})")
    print(f"{'mode':<8} {'real tok/s':>11} {'MFU':>7} {'padding':>8}")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['mode']:<8} {r['tokens_per_s']:>11.0f} {mfu:>7} {100 * r['pad_fraction']:>7.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "seq_len": args.seq_len,
                                               "threads": args.threads, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
