"""``alignforge world generate|judge|examples``.

* ``generate [--config F] [--seed N] [--out DIR] [key=value ...]`` writes the world's records:
  corpus, held-out text, SFT demonstrations, train/test prompts, world.json and manifest.json.
* ``judge FILE [--world DIR | --config F | --seed N | key=value ...] [--scores OUT]`` scores a
  file of (prompt, response) records with the gold judge and prints per-category means. The world
  is rebuilt from ``DIR/manifest.json`` (or from the config given); it must be the world the
  prompts came from.
* ``examples [--seed N]`` prints a Markdown table of example prompts and responses with their gold
  scores (docs/world.md embeds its output rather than hand-typed numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

USAGE = """usage: alignforge world generate [--config FILE] [--seed N] [--out DIR] [key=value ...]
       alignforge world judge FILE [--world DIR] [--config FILE] [--seed N] [key=value ...] [--scores OUT]
       alignforge world examples [--seed N]

The embedded synthetic assistant world. `alignforge world generate --help` lists every config key."""


def generate(cfg) -> None:
    from alignforge.config import save_config
    from alignforge.world.core import build_world
    from alignforge.world.judging import FILE_STEM, judge_examples

    out = cfg.out_dir()
    world = build_world(cfg)
    manifest = world.write(out, extra={"judge_train": (FILE_STEM, judge_examples(world))})
    # Without `out`: the folder a world was written to is not part of the world, and leaving it
    # out keeps two generations with one seed byte-identical wherever they are written.
    save_config(dataclasses.replace(cfg, out=None), out / "config.yaml")
    counts = ", ".join(f"{k} {v['records']}" for k, v in manifest["files"].items() if "records" in v)
    print(f"world (seed {cfg.seed}) written to {out}: {counts}")


def _world_for(args, overrides: list[str]):
    from alignforge.config import load_config
    from alignforge.world.config import WorldConfig
    from alignforge.world.core import build_world, load_world_config

    if args.world:
        if args.config or overrides or args.seed is not None:
            raise SystemExit("alignforge world judge: give either --world DIR or a config, not both")
        cfg = load_world_config(args.world)
    else:
        extra = [f"seed={args.seed}"] if args.seed is not None else []
        cfg = load_config(WorldConfig, args.config, overrides + extra)
    return build_world(cfg, corpus=False, demos=False)


def _judge(argv: Sequence[str]) -> int:
    from alignforge.config import ConfigError
    from alignforge.data.records import Candidates, Comparison, Ranking, RecordError, read_records, write_records
    from alignforge.world.judge import category_means, judge_batch

    parser = argparse.ArgumentParser(prog="alignforge world judge",
                                     description="score (prompt, response) records with the gold judge")
    parser.add_argument("file", help="records with prompt+response (demonstration/rating), or comparisons, "
                                     "rankings, candidates (every response is scored)")
    parser.add_argument("--world", default=None, help="a folder written by `alignforge world generate`")
    parser.add_argument("--config", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--scores", default=None, help="also write per-record scores (JSONL) here")
    parser.add_argument("overrides", nargs="*", help="world config key=value")
    args = parser.parse_args(list(argv))
    try:
        world = _world_for(args, args.overrides)
        records = read_records(args.file)
        prompts, responses = [], []
        for rec in records:
            if isinstance(rec, Comparison):
                pairs = [(rec.prompt, rec.chosen), (rec.prompt, rec.rejected)]
            elif isinstance(rec, (Candidates, Ranking)):
                pairs = [(rec.prompt, r) for r in rec.responses]
            elif hasattr(rec, "response"):
                pairs = [(rec.prompt, rec.response)]
            else:
                raise RecordError(f"a {rec.kind} record has no response to score", path=args.file)
            for p, r in pairs:
                prompts.append(p)
                responses.append(r)
        try:
            scores = judge_batch(prompts, responses, world)
        except ValueError as e:
            raise RecordError(f"{e} (was the file made with another world config or seed?)", path=args.file)
    except (ConfigError, RecordError) as e:
        print(f"alignforge world judge: error: {e}", file=sys.stderr)
        return 2
    table = category_means(scores)
    print(f"{'category':<12}{'n':>7}{'reward':>9}{'helpful':>9}{'honest':>9}{'harmless':>10}")
    for cat, row in table.items():
        print(f"{cat:<12}{row['n']:>7}{row['reward']:>9.3f}{row['helpful']:>9.2f}{row['honest']:>9.2f}"
              f"{row['harmless']:>10.2f}")
    if args.scores:
        write_records(args.scores, [{"prompt": p, "response": r, "category": s.category, "reward": s.reward,
                                     "helpful": s.helpful, "honest": s.honest, "harmless": s.harmless,
                                     "flags": s.raised()}
                                    for p, r, s in zip(prompts, responses, scores)])
    return 0


def _examples(argv: Sequence[str]) -> int:
    from alignforge.world.config import WorldConfig
    from alignforge.world.core import build_world
    from alignforge.world.examples import example_table

    parser = argparse.ArgumentParser(prog="alignforge world examples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    print(example_table(build_world(WorldConfig(seed=args.seed), corpus=False, demos=False)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from alignforge.cli import run_stage
    from alignforge.world.config import WorldConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "generate":
        return run_stage("world generate", WorldConfig, generate, rest)
    if cmd == "judge":
        return _judge(rest)
    if cmd == "examples":
        return _examples(rest)
    print(f"alignforge world: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2
