#!/usr/bin/env python
"""bf16 autocast against fp32 on the same machine, seed by seed: is bf16 quality-neutral for the demo?

    python scripts/precision_table.py --fp32 F0.json F1.json ... --bf16 B0.json B1.json ... \\
        [--seconds-fp32 417 ...] [--seconds-bf16 309 ...] [--label "..."] [--doc README.md --block precision]

Each pair is one seed's demo ``eval.json`` under ``ALIGNFORGE_AUTO_PRECISION=fp32`` and under bf16.
Per seed and headline policy (PPO, DPO): gold win-rate against that run's own SFT [95% CI] at each
precision, and whether each value lies inside the other's CI ("within each other's CIs"); then in how
many seeds each precision's CI is above ½ (eval/verdict.py's rule). Generated, never typed (design §8).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alignforge.eval.verdict import HEADLINE, beat_baseline
from alignforge.io import replace_marked_block


def _cell(w: dict) -> str:
    return f"{w['value']:.2f} [{w['lo']:.2f}, {w['hi']:.2f}]"


def precision_table(fp32: list[dict], bf16: list[dict], seeds: list[str], label: str,
                    seconds: tuple[list[float], list[float]] | None = None) -> str:
    lines = [label, "", "| seed | policy | fp32 win-rate vs SFT | bf16 win-rate vs SFT | within each other's CIs |"
             " fp32 KL | bf16 KL |", "|---|---|---|---|---|---|---|"]
    inside, above = 0, {"fp32": {}, "bf16": {}}
    names = [n for n in HEADLINE if all(n in r["sample"] for r in fp32 + bf16)]
    for seed, a, b in zip(seeds, fp32, bf16):
        for n in names:
            wa, wb = a["sample"][n]["win_rate"], b["sample"][n]["win_rate"]
            ok = wa["lo"] <= wb["value"] <= wa["hi"] and wb["lo"] <= wa["value"] <= wb["hi"]
            inside += ok
            for tag, r in (("fp32", a), ("bf16", b)):
                above[tag][n] = above[tag].get(n, 0) + beat_baseline(r, n)
            lines.append(f"| {seed} | {n} | {_cell(wa)} | {_cell(wb)} | {'yes' if ok else '**no**'} | "
                         f"{a['kl'][n]['kl']:.1f} | {b['kl'][n]['kl']:.1f} |")
    k = len(seeds)
    lines += ["", f"Within each other's 95% CIs: {inside} of {k * len(names)} (seed, policy) pairs. CI above ½: "
              + "; ".join(f"{n} fp32 {above['fp32'][n]}/{k}, bf16 {above['bf16'][n]}/{k}" for n in names) + "."]
    if seconds:
        f, bb = seconds
        lines += ["", "Wall time per seed (s): fp32 " + " / ".join(f"{x:.0f}" for x in f) + "; bf16 "
                  + " / ".join(f"{x:.0f}" for x in bb) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", nargs="+", required=True)
    ap.add_argument("--bf16", nargs="+", required=True)
    ap.add_argument("--seeds", nargs="*", default=None)
    ap.add_argument("--seconds-fp32", nargs="*", type=float, default=None)
    ap.add_argument("--seconds-bf16", nargs="*", type=float, default=None)
    ap.add_argument("--label", default="bf16 autocast against fp32, same machine, same seeds:")
    ap.add_argument("--doc", default=None)
    ap.add_argument("--block", default="precision")
    args = ap.parse_args(argv)
    if len(args.fp32) != len(args.bf16):
        print("precision_table: --fp32 and --bf16 need one eval.json per seed each, in the same order", file=sys.stderr)
        return 2
    fp32 = [json.loads(Path(p).read_text()) for p in args.fp32]
    bf16 = [json.loads(Path(p).read_text()) for p in args.bf16]
    seeds = args.seeds or [str(i) for i in range(len(fp32))]
    seconds = (args.seconds_fp32, args.seconds_bf16) if args.seconds_fp32 and args.seconds_bf16 else None
    body = precision_table(fp32, bf16, seeds, args.label, seconds)
    if args.doc:
        replace_marked_block(args.doc, args.block, body)
    else:
        print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
