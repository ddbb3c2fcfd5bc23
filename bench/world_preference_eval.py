"""Gold evaluation of world policies with the shared protocol (``alignforge.eval.protocol``).

    python bench/world_preference_eval.py --world runs/world/world --sft runs/world/sft \
        dpo-b0.1=runs/world/dpo-b0.1 rsft=runs/world/rsft --out runs/world/eval-prefs

Evaluates the SFT policy, every NAME=STAGE_DIR policy and the world's oracle on the test prompts
(one T = 1 sample per prompt + greedy), with KL to the SFT policy on the T = 1 samples, and
writes ``eval.json`` (everything ``compare`` reports) and ``table.md`` (per-category gold reward
with 95% bootstrap CIs, win-rate vs SFT, SFT→oracle gap closed, length-controlled reward, KL).
The tables in docs/dpo.md and docs/rsft.md are this script's output, not typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, help="world folder (alignforge world generate)")
    ap.add_argument("--sft", required=True, help="the SFT stage folder (baseline and KL reference)")
    ap.add_argument("policies", nargs="*", help="NAME=STAGE_DIR")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", type=int, default=None, help="use the first N test prompts (default all)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from alignforge.eval.oracle import load_world
    from alignforge.eval.protocol import compare, evaluate_policy, evaluate_reference, markdown
    from alignforge.io import atomic_write_text
    from alignforge.models.load import load_causal_lm

    world = load_world(args.world)
    prompts = world.prompts["test"][: args.prompts]
    sft, tok = load_causal_lm(args.sft)
    sft.eval().requires_grad_(False)
    kw = dict(judge=world, max_new_tokens=args.max_new_tokens, seed=args.seed, ref=sft)
    evals = []
    t0 = time.perf_counter()
    evals.append(evaluate_policy(sft, tok, prompts, name="sft", **kw))
    for spec in args.policies:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"policy {spec!r}: expected NAME=STAGE_DIR")
        model, _ = load_causal_lm(path)
        evals.append(evaluate_policy(model.eval(), tok, prompts, name=name, **kw))
        print(f"evaluated {name} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    evals.append(evaluate_reference(world.oracle, prompts, judge=world, name="oracle"))
    report = compare(evals, baseline="sft", oracle="oracle")
    report["prompts"] = len(prompts)
    report["meta"] = {e.name: e.meta for e in evals}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(report, indent=1, default=str) + "\n")
    table = "\n\n".join(markdown(report, mode) for mode in ("sample", "greedy"))
    atomic_write_text(out / "table.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
