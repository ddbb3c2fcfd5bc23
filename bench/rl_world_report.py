"""Markdown for docs/ppo.md and docs/reinforce.md from world RL run folders (numbers are generated, never typed).

    python bench/rl_world_report.py runs/world/ppo runs/world/grpo runs/world/rloo \
        --curves runs/world/ppo-hack runs/world/ppo-hack-kl

For every run with an ``eval.json`` (the gold protocol vs SFT written at the end of ``ppo`` /
``reinforce``): the per-category table of ``alignforge.eval.protocol.markdown`` plus the paired gold
difference vs SFT with its 95% CI and the run's length. For ``--curves`` runs (e.g. the reward-
hacking pair): proxy score, response length and KL at step 1, at every eval step (with its gold
reward) and at the last step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def run_table(run: Path) -> str:
    from alignforge.eval.protocol import markdown

    report = json.loads((run / "eval.json").read_text())
    name = [p for p in report["policies"] if p != "sft"][0]
    d = report["sample"][name]["reward_diff"]
    w = report["sample"][name]["win_rate"]
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train_s" in r]
    tps = sorted(r["train_tokens_per_s"] for r in rows)[len(rows) // 2]
    seconds = sum(r["generate_s"] + r["score_s"] + r["train_s"] for r in rows)
    head = (f"**{run}** ({name}, {len(rows)} steps, {report['prompts']} test prompts, one T = 1 sample each): "
            f"gold reward − SFT = {d['value']:+.3f} [95% CI {d['lo']:+.3f}, {d['hi']:+.3f}], win-rate "
            f"{w['value']:.3f} [{w['lo']:.3f}, {w['hi']:.3f}], KL(π‖π_SFT) = {report['kl'][name]['kl']:.2f} nats "
            f"per response; {seconds / 60:.1f} min of steps (median training {tps:.0f} tokens/s)")
    return head + "\n\n" + markdown(report, "sample") + "\n"


def curves(run: Path) -> str:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    beta = rows[-1].get("kl_coef", 0.0)
    out = [f"**{run}** (β = {beta}): proxy = RM score of the rollout; gold on the eval prompts", "",
           "| step | proxy score | response tokens | KL (nats) | gold (eval) | eval words |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        if not ("gold_all" in r or r.get("step") == 1 or i == len(rows) - 1):
            continue  # the eval steps (every train.eval_every), the first and the last step
        gold = f"{r['gold_all']:+.3f}" if "gold_all" in r else ""
        words = f"{r['gold_words']:.1f}" if "gold_words" in r else ""
        if "score" not in r:  # the step-0 eval row of the initial policy
            out.append(f"| 0 (SFT) | | | | {gold} | {words} |")
            continue
        out.append(f"| {r['step']} | {r['score']:+.3f} | {r['response_length']:.1f} | {r['kl']:.2f} | {gold} | {words} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--curves", nargs="*", type=Path, default=[])
    args = ap.parse_args(argv)
    for run in args.runs:
        print(run_table(run))
    for run in args.curves:
        print(curves(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
