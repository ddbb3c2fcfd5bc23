"""``alignforge pipeline FILE``: run a YAML list of stages, resumably.

    run: world                      # outputs under runs/<run>/<step name>
    seed: 0                         # every step's seed unless its own `set` says otherwise
    steps:
      - name: world                 # a step's name is how later steps refer to it: "{world}"
      - name: tokenizer
        config: tokenizer.yaml      # optional: a stage config file (relative to this file, then cwd)
        set: {data.train: "{world}/corpus.jsonl"}
      - name: sft
        stage: sft                  # default: the name
        set: {model.init: "{pretrain}", data.train: "{world}/sft.jsonl"}
        as: policy                  # also reachable as "{policy}" (the latest step that says so)
    rounds: 3                       # optional: round_steps run this many times (InstructGPT's "repeat")
    round_steps:                    # a round step writes to runs/<run>/<name>-r<k>
      - {name: collect, set: {model.init: "{policy}", round: ...}}

Steps get config *objects* (``config.build_config``), never argument strings. A finished step
is recorded by a ``PIPELINE_DONE`` file holding its resolved config; rerunning the pipeline skips
it if the config is unchanged, and an interrupted step resumes from its own checkpoint (every
training stage keeps ``state/``). ``{name}`` references resolve to the step's output folder, and
``{round}`` / ``{prev_round}`` to the round number inside ``round_steps``. At the end,
``runs/<run>/report.html`` is (re)written from the steps' folders (``eval/report.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from alignforge.config import ConfigError, build_config, load_yaml, to_dict
from alignforge.io import atomic_write_text

# stage → (config class, run function). Each run(cfg) does the whole stage and returns.
STAGE_RUNNERS: dict[str, tuple[str, str]] = {
    "world": ("alignforge.world.config:WorldConfig", "alignforge.world.cli:generate"),
    "tokenizer": ("alignforge.config:TokenizerConfig", "alignforge.stages.tokenizer:run"),
    "pretrain": ("alignforge.config:PretrainConfig", "alignforge.stages.pretrain:run"),
    "sft": ("alignforge.config:SFTConfig", "alignforge.stages.sft:run"),
    "collect": ("alignforge.config:CollectConfig", "alignforge.stages.collect:run"),
    "reward": ("alignforge.config:RewardConfig", "alignforge.stages.reward:run"),
    "dpo": ("alignforge.config:DPOConfig", "alignforge.stages.dpo:run"),
    "rsft": ("alignforge.config:RSFTConfig", "alignforge.stages.rsft:run"),
    "ppo": ("alignforge.config:PPOConfig", "alignforge.stages.ppo:run"),
    "reinforce": ("alignforge.config:ReinforceConfig", "alignforge.stages.reinforce:run"),
    "nash": ("alignforge.config:NashConfig", "alignforge.stages.nash:run"),
    "rlaif": ("alignforge.config:RlaifConfig", "alignforge.stages.rlaif:run"),
    "critique": ("alignforge.config:CritiqueConfig", "alignforge.stages.critique:run"),
    "eval": ("alignforge.config:EvalConfig", "alignforge.stages.eval:run"),
}
STEP_KEYS = {"name", "stage", "config", "set", "as"}
DONE_FILE = "PIPELINE_DONE"


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class Step:
    name: str
    stage: str
    config: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None


@dataclass
class Pipeline:
    run: str = "pipeline"
    seed: int = 0
    steps: list[Step] = field(default_factory=list)
    rounds: int = 0
    round_steps: list[Step] = field(default_factory=list)
    base_dir: Path = Path(".")
    out_root: Path | None = None

    def out_dir(self, name: str) -> Path:
        return (self.out_root or Path("runs") / self.run) / name


def _parse_step(raw: Any, where: str) -> Step:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a step must be a mapping with 'name' (and 'stage', 'config', 'set', 'as')")
    extra = set(raw) - STEP_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown step key(s) {sorted(extra)}; valid: {sorted(STEP_KEYS)}")
    if "name" not in raw or not isinstance(raw["name"], str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", raw["name"]):
        raise ConfigError(f"{where}: 'name' must be a plain string (letters, digits, _ . -), got {raw.get('name')!r}")
    stage = raw.get("stage", raw["name"])
    if stage not in STAGE_RUNNERS:
        raise ConfigError(f"{where}: unknown stage {stage!r}; pipeline stages: {', '.join(STAGE_RUNNERS)}")
    values = raw.get("set") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: 'set' must map dotted config keys to values")
    return Step(raw["name"], stage, raw.get("config"), dict(values), raw.get("as"))


def parse_pipeline(data: dict[str, Any], base_dir: Path = Path("."), where: str = "pipeline") -> Pipeline:
    allowed = {"run", "seed", "steps", "rounds", "round_steps"}
    extra = set(data) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; valid: {sorted(allowed)}")
    steps = [_parse_step(s, f"{where}: steps[{i}]") for i, s in enumerate(data.get("steps") or [])]
    round_steps = [_parse_step(s, f"{where}: round_steps[{i}]") for i, s in enumerate(data.get("round_steps") or [])]
    names = [s.name for s in steps] + [s.name for s in round_steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: step names must be unique, got {names}")
    rounds = int(data.get("rounds", 1 if round_steps else 0))
    if round_steps and rounds < 1:
        raise ConfigError(f"{where}: rounds must be >= 1 when round_steps are given")
    return Pipeline(run=str(data.get("run", "pipeline")), seed=int(data.get("seed", 0)), steps=steps,
                    rounds=rounds, round_steps=round_steps, base_dir=base_dir)


_REF = re.compile(r"\{([A-Za-z0-9_.-]+)\}")


def _resolve(value: Any, refs: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole and whole.group(1) in ("round", "prev_round") and whole.group(1) in refs:
            return int(refs[whole.group(1)])  # a round number is an int config value (e.g. collect.round)

        def sub(m: re.Match) -> str:
            if m.group(1) not in refs:
                raise ConfigError(f"{where}: '{{{m.group(1)}}}' refers to no earlier step; known: {sorted(refs)}")
            return refs[m.group(1)]

        return _REF.sub(sub, value)
    if isinstance(value, list):
        return [_resolve(v, refs, where) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, refs, where) for k, v in value.items()}
    return value


def _config_path(p: Pipeline, path: str | None) -> str | None:
    if path is None:
        return None
    for cand in (p.base_dir / path, Path(path)):
        if cand.exists():
            return str(cand)
    raise ConfigError(f"step config {path!r} not found (looked in {p.base_dir} and the current directory)")


def step_config(p: Pipeline, step: Step, out: Path, refs: dict[str, str]) -> Any:
    cls = _load(STAGE_RUNNERS[step.stage][0])
    values = {"seed": p.seed, "run": p.run, **_resolve(step.values, refs, f"step {step.name}"), "out": str(out)}
    try:
        return build_config(cls, _config_path(p, step.config), values)
    except ConfigError as e:
        raise ConfigError(f"step {step.name} ({step.stage}): {e}") from None


def run_step(p: Pipeline, step: Step, out: Path, refs: dict[str, str], log: Callable[[str], None]) -> None:
    cfg = step_config(p, step, out, refs)
    resolved = yaml.safe_dump({"stage": step.stage, "config": to_dict(cfg)}, sort_keys=True)
    done = out / DONE_FILE
    if done.exists() and done.read_text() == resolved:
        log(f"pipeline: {step.name} done, skipped")
        return
    if done.exists():  # the config changed since it ran: run again from scratch
        done.unlink()
        if hasattr(cfg, "force"):
            cfg = dataclasses.replace(cfg, force=True)
    log(f"pipeline: {step.name} ({step.stage}) → {out}")
    t0 = time.perf_counter()
    _load(STAGE_RUNNERS[step.stage][1])(cfg)
    atomic_write_text(done, resolved)
    log(f"pipeline: {step.name} finished in {time.perf_counter() - t0:.0f}s")


def run_pipeline(p: Pipeline, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
                 only: Sequence[str] | None = None) -> dict[str, str]:
    """Run every step in order (skipping finished ones); returns {step or alias: output folder}."""
    refs: dict[str, str] = {}

    def one(step: Step, out: Path) -> None:
        if only is None or step.name in only:
            run_step(p, step, out, refs, log)
        refs[step.name] = str(out)
        if step.alias:
            refs[step.alias] = str(out)

    for step in p.steps:
        one(step, p.out_dir(step.name))
    for r in range(1, p.rounds + 1):
        refs["round"], refs["prev_round"] = str(r), str(r - 1)
        for step in p.round_steps:
            one(step, p.out_dir(f"{step.name}-r{r}"))
            refs[f"{step.name}-r{r}"] = refs[step.name]
    return refs


def load_pipeline(path: str | Path) -> Pipeline:
    path = Path(path)
    data = load_yaml(path)
    return parse_pipeline(data, base_dir=path.parent, where=str(path))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from alignforge.data.records import RecordError

    parser = argparse.ArgumentParser(prog="alignforge pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="pipeline YAML")
    parser.add_argument("--run", default=None, help="override the pipeline's run name")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps (the others must be done)")
    args = parser.parse_args(list(argv or []))
    try:
        p = load_pipeline(args.file)
        if args.run:
            p.run = args.run
        refs = run_pipeline(p, only=args.only)
    except (ConfigError, RecordError) as e:
        print(f"alignforge pipeline: error: {e}", file=sys.stderr)
        return 2
    if any((Path(f) / "eval.json").exists() or (Path(f) / "metrics.jsonl").exists() for f in refs.values()):
        from alignforge.eval.report import write_report

        print(f"pipeline: report: {write_report(p.out_dir('.').resolve(), refs)}", file=sys.stderr)
    return 0
