"""``alignforge <stage> ...``: one entry point that dispatches to the stage modules.

Each stage module exposes ``main(argv) -> int``. Config-driven stages use :func:`run_stage`,
which gives them the shared interface (design §8): ``--config FILE`` plus dotted ``key=value``
overrides, with ``--out``, ``--seed``, ``--run`` as sugar, and ``--help`` listing every field.
Modules are imported lazily so ``alignforge --help`` is instant and a stage's heavy imports
(torch, transformers, fastapi) are paid only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Any, Callable, Sequence

# name -> (module, one-line description). Listed in pipeline order.
STAGES: dict[str, tuple[str, str]] = {
    "world": ("alignforge.world.cli", "the embedded synthetic assistant world: generate data, judge responses"),
    "data": ("alignforge.data.cli", "inspect a dataset: layout, record kinds, drops, chat-template rendering, token lengths"),
    "tokenizer": ("alignforge.stages.tokenizer", "train a byte-level BPE tokenizer with a chat template"),
    "pretrain": ("alignforge.stages.pretrain", "causal LM pretraining on text records (packed blocks)"),
    "sft": ("alignforge.stages.sft", "supervised fine-tuning on demonstrations (response-only loss)"),
    "collect": ("alignforge.stages.collect", "sample K responses per prompt and label them with simulated annotators"),
    "feedback": ("alignforge.feedback.cli", "human-feedback web app: init, import, serve, export"),
    "reward": ("alignforge.stages.reward", "reward model: Bradley-Terry with margins, rankings, H/H/H heads"),
    "ppo": ("alignforge.stages.ppo", "PPO with per-token KL to the SFT policy (+ pretraining mix)"),
    "reinforce": ("alignforge.stages.reinforce", "REINFORCE / RLOO / GRPO"),
    "dpo": ("alignforge.stages.dpo", "DPO family: sigmoid, IPO, conservative, hinge"),
    "rsft": ("alignforge.stages.rsft", "rejection-sampling (best-of-n) fine-tuning"),
    "rlaif": ("alignforge.stages.rlaif", "AI feedback with a constitution (Constitutional AI)"),
    "critique": ("alignforge.stages.critique", "Constitutional AI's SL phase: self-critique → revision → SFT"),
    "nash": ("alignforge.stages.nash", "Nash-MD with a pairwise preference model"),
    "eval": ("alignforge.stages.eval", "evaluate checkpoints: gold judge, win-rates, KL, perplexity"),
    "pipeline": ("alignforge.stages.pipeline", "run a YAML list of stages, resumably"),
    "demo": ("alignforge.stages.demo", "the whole pipeline on the embedded world, with an HTML report"),
    "chat": ("alignforge.serving.chat", "terminal chat with a checkpoint"),
    "serve": ("alignforge.serving.serve", "OpenAI-compatible HTTP server"),
}


def available_stages() -> dict[str, tuple[str, str]]:
    """Stages whose module is present in this install."""
    out = {}
    for name, (module, doc) in STAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[name] = (module, doc)
    return out


def _top_help() -> str:
    lines = ["usage: alignforge <stage> [--config FILE] [key=value ...]", "",
             "The InstructGPT/ChatGPT alignment pipeline, end to end.", "", "stages:"]
    for name, (_, doc) in available_stages().items():
        lines.append(f"  {name:<11} {doc}")
    lines += ["", "`alignforge <stage> --help` lists every config key with its default."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    if argv[0] in ("-V", "--version"):
        from alignforge import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    stages = available_stages()
    if name not in stages:
        import difflib

        close = difflib.get_close_matches(name, list(stages), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"alignforge: unknown stage '{name}'.{hint}\n\n{_top_help()}", file=sys.stderr)
        return 2
    module = importlib.import_module(stages[name][0])
    return int(module.main(rest) or 0)


# ---------------------------------------------------------------------------------------------
# Shared interface of config-driven stages
# ---------------------------------------------------------------------------------------------


def stage_help(name: str, config_cls: type) -> str:
    from alignforge.config import describe

    doc = (config_cls.__doc__ or "").strip().splitlines()
    lines = [f"usage: alignforge {name} [--config FILE] [--out DIR] [--seed N] [--run NAME] [key=value ...]", ""]
    if doc:
        lines += [doc[0], ""]
    lines.append("config keys (set in the YAML file or as key=value):")
    rows = describe(config_cls)
    width = max(len(r[0]) for r in rows)
    for key, tp, default, fdoc in rows:
        lines.append(f"  {key:<{width}}  {fdoc}")
        lines.append(f"  {'':<{width}}  [{tp}; default: {default!r}]")
    return "\n".join(lines)


def parse_stage_args(name: str, config_cls: type, argv: Sequence[str],
                     positional: str | None = None) -> Any:
    """``--config FILE key=value ...`` → a validated config object (ConfigError on bad input).

    ``positional``: the config key a bare positional argument sets (e.g. ``model.init`` for
    ``alignforge chat runs/w/ppo``).
    """
    from alignforge.config import load_config

    if any(a in ("-h", "--help") for a in argv):
        print(stage_help(name, config_cls))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(prog=f"alignforge {name}", add_help=False)
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--run", default=None)
    parser.add_argument("rest", nargs="*")
    # intermixed: `key=value --out DIR key=value` (overrides on both sides of a flag) must work
    args = parser.parse_intermixed_args(list(argv))
    overrides = []
    for item in args.rest:
        if "=" in item:
            overrides.append(item)
        elif positional is not None:
            overrides.append(f"{positional}={item}")
        else:
            parser.error(f"unexpected argument '{item}' (config overrides are key=value)")
    for flag in ("out", "seed", "run"):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{flag}={value}")
    return load_config(config_cls, args.config, overrides)


def run_stage(name: str, config_cls: type, fn: Callable[[Any], Any], argv: Sequence[str],
              positional: str | None = None) -> int:
    """Parse, validate, run. Config and record errors print one clear line and exit 2."""
    from alignforge.config import ConfigError
    from alignforge.data.records import RecordError

    try:
        cfg = parse_stage_args(name, config_cls, argv, positional)
        fn(cfg)
    except (ConfigError, RecordError) as e:
        print(f"alignforge {name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        # A stage that joined a torchrun process group leaves it, error or not (only if loaded:
        # world/feedback never import torch.distributed).
        if "alignforge.train.distributed" in sys.modules:
            sys.modules["alignforge.train.distributed"].cleanup()
    return 0
