#!/usr/bin/env python
"""The numbers of ``docs/rlaif.md``'s critique → revision section, generated (design §8: numbers
are generated from eval output, never typed by hand).

    python scripts/critique_numbers.py runs/critique/eval/eval.json runs/critique/critique [--doc docs/rlaif.md]
        [--block critique-numbers]

Prints two Markdown tables — the policies on the world's test prompts (from ``alignforge eval``'s
eval.json) and the initial vs revised answers on the red-team prompts (from the critique stage's
``gold.json`` / ``summary.json``) — and with ``--doc`` replaces the block between
``<!-- <block>:start -->`` and ``<!-- <block>:end -->`` (``--block``, default ``critique-numbers``) with them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignforge.io import replace_marked_block

START, END = "<!-- critique-numbers:start -->", "<!-- critique-numbers:end -->"  # the default --block's markers
HARM = ("harmful_advice", "violent", "sexual", "denigrates_protected_class")


def _ci(r: dict) -> str:
    return f"{r['value']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]"


def policy_table(report: dict, mode: str = "sample") -> str:
    sec = report[mode]
    names = [n for n in report["policies"] if n in sec]
    lines = [f"| policy ({mode}) | gold reward, all | harmful: reward | harmful: harm flags | unknown: reward | "
             f"unknown: hallucination | benign: reward | fact: reward | win-rate vs {report['baseline']} | KL (nats) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    kl = report.get("kl") or {}
    for n in names:
        s = sec[n]["summary"]
        harm = sum(s["harmful"]["flags"][f] for f in HARM) if "harmful" in s else float("nan")
        w = sec[n].get("win_rate")
        lines.append(f"| {n} | {_ci(s['all']['reward'])} | {_ci(s['harmful']['reward'])} | {harm:.2f} | "
                     f"{_ci(s['unknown']['reward'])} | {s['unknown']['flags']['hallucination']:.2f} | "
                     f"{_ci(s['benign']['reward'])} | {_ci(s['fact']['reward'])} | "
                     + (f"{w['value']:.2f} [{w['lo']:.2f}, {w['hi']:.2f}]" if w else "—") + " | "
                     + (f"{kl[n]['kl']:.2f}" if n in kl and mode == "sample" else "—") + " |")
    return "\n".join(lines)


def revision_table(stage_dir: Path) -> str:
    gold = json.loads((stage_dir / "gold.json").read_text())
    lines = ["| red-team category | n | revised ≠ initial | gold initial → revised | difference [95% CI] | "
             "harm flags | hallucination |", "|---|---|---|---|---|---|---|"]
    for cat, g in gold.items():
        lines.append(f"| {cat} | {g['n']} | {g['changed']:.0%} | {g['gold_initial']:+.2f} → {g['gold_revised']:+.2f} | "
                     f"{g['gold_diff']:+.2f} [{g['gold_diff_lo']:+.2f}, {g['gold_diff_hi']:+.2f}] | "
                     f"{g['harm_initial']:.2f} → {g['harm_revised']:.2f} | "
                     f"{g['hallucination_initial']:.2f} → {g['hallucination_revised']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_json")
    ap.add_argument("critique_dir")
    ap.add_argument("--doc", default=None)
    ap.add_argument("--block", default="critique-numbers", help="marker name of the block --doc replaces")
    args = ap.parse_args(argv)
    report = json.loads(Path(args.eval_json).read_text())
    text = "\n\n".join([policy_table(report, "sample"), policy_table(report, "greedy"),
                        revision_table(Path(args.critique_dir))])
    print(text)
    if args.doc:
        try:
            replace_marked_block(args.doc, args.block, text)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
