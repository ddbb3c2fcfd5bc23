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
    vars: {base: null}              # optional: values "{base}" refers to; set with --var base=DIR (null = required)
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
import difflib
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
from alignforge.train.progress import RunOutput

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
PIPELINE_KEYS = {"run", "seed", "steps", "rounds", "round_steps", "vars"}
DONE_FILE = "PIPELINE_DONE"
LOG_FILE = "log.txt"  # a step's own output when the run view is on


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def run_stage_config(stage: str, cfg: Any) -> Any:
    """Run one stage on a built config object. The public way for code — a stage that runs another
    (critique fine-tunes with sft), the demo — to run a stage without importing its module: stages
    import components, never each other (tests/test_import_boundary.py)."""
    if stage not in STAGE_RUNNERS:
        raise ConfigError(f"unknown stage {stage!r}; pipeline stages: {', '.join(STAGE_RUNNERS)}")
    return _load(STAGE_RUNNERS[stage][1])(cfg)


@dataclass
class Step:
    name: str
    stage: str
    config: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None
    expected_s: float | None = None  # seconds on a reference machine: the run view's ETA (demo steps set it)


@dataclass
class Pipeline:
    run: str = "pipeline"
    seed: int = 0
    steps: list[Step] = field(default_factory=list)
    rounds: int = 0
    round_steps: list[Step] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)  # "{name}" values given by the file / --var; None = required
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
    extra = set(data) - PIPELINE_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; valid: {sorted(PIPELINE_KEYS)}")
    variables = data.get("vars") or {}
    if not isinstance(variables, dict) or not all(isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", k)
                                                  for k in variables):
        raise ConfigError(f"{where}: 'vars' must map plain names (letters, digits, _ . -) to values or null")
    steps = [_parse_step(s, f"{where}: steps[{i}]") for i, s in enumerate(data.get("steps") or [])]
    round_steps = [_parse_step(s, f"{where}: round_steps[{i}]") for i, s in enumerate(data.get("round_steps") or [])]
    names = [s.name for s in steps] + [s.name for s in round_steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: step names must be unique, got {names}")
    if set(variables) & set(names) or set(variables) & {"round", "prev_round"}:
        raise ConfigError(f"{where}: vars {sorted(set(variables) & (set(names) | {'round', 'prev_round'}))} "
                          "clash with step names (or round / prev_round)")
    rounds = int(data.get("rounds", 1 if round_steps else 0))
    if round_steps and rounds < 1:
        raise ConfigError(f"{where}: rounds must be >= 1 when round_steps are given")
    return Pipeline(run=str(data.get("run", "pipeline")), seed=int(data.get("seed", 0)), steps=steps,
                    rounds=rounds, round_steps=round_steps, vars=dict(variables), base_dir=base_dir)


def set_vars(p: Pipeline, assignments: Sequence[str]) -> None:
    """Apply ``NAME=VALUE`` assignments (``--var``) to the pipeline's declared ``vars``."""
    for text in assignments:
        name, sep, value = text.partition("=")
        if not sep:
            raise ConfigError(f"--var {text!r}: expected NAME=VALUE")
        if name not in p.vars:
            close = difflib.get_close_matches(name, list(p.vars), n=1)
            raise ConfigError(f"--var {name}: the pipeline declares no such variable"
                              + (f"; did you mean '{close[0]}'?" if close else "")
                              + f" (vars: {', '.join(sorted(p.vars)) or 'none'})")
        p.vars[name] = value


def _unset_vars(p: Pipeline, only: Sequence[str] | None) -> list[str]:
    """Declared-but-null variables that a step about to run refers to."""
    used: set[str] = set()
    for step in p.steps + p.round_steps:
        if only is None or step.name in only:
            used |= set(_REF.findall(yaml.safe_dump(step.values)))
    return sorted(n for n in used if n in p.vars and p.vars[n] is None)


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


def run_step(p: Pipeline, step: Step, out: Path, refs: dict[str, str], log: Callable[[str], None],
             output: RunOutput | None = None) -> None:
    """Run one step unless it is done with the same config. With ``output`` (the run view), the stage's
    own prints go to ``<out>/log.txt`` and the view gets started / skipped / finished with a key figure."""
    cfg = step_config(p, step, out, refs)
    resolved = yaml.safe_dump({"stage": step.stage, "config": to_dict(cfg)}, sort_keys=True)
    done = out / DONE_FILE
    if done.exists() and done.read_text() == resolved:
        if output is not None:
            output.view.step_skipped(out.name)
        else:
            log(f"pipeline: {step.name} done, skipped")
        return
    if done.exists():  # the config changed since it ran: run again from scratch
        done.unlink()
        if hasattr(cfg, "force"):
            cfg = dataclasses.replace(cfg, force=True)
    if output is None:
        log(f"pipeline: {step.name} ({step.stage}) → {out}")
        t0 = time.perf_counter()
        run_stage_config(step.stage, cfg)
        atomic_write_text(done, resolved)
        log(f"pipeline: {step.name} finished in {time.perf_counter() - t0:.0f}s")
        return
    output.view.step_started(out.name)
    try:
        with output.capture(out / LOG_FILE):
            print(f"pipeline: {step.name} ({step.stage}) → {out}")
            run_stage_config(step.stage, cfg)
    except KeyboardInterrupt:
        output.view.step_failed(out.name, "interrupted; rerun to resume from its last checkpoint", stopped=True)
        raise
    except Exception as e:
        output.view.step_failed(out.name, f"{type(e).__name__}: {e} (log: {out / LOG_FILE})")
        raise
    atomic_write_text(done, resolved)
    output.view.step_finished(out.name, step_figure(step.stage, out))


def run_pipeline(p: Pipeline, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
                 only: Sequence[str] | None = None, output: RunOutput | None = None) -> dict[str, str]:
    """Run every step in order (skipping finished ones); returns {step or alias: output folder}."""
    missing = _unset_vars(p, only)
    if missing:
        raise ConfigError("pipeline variable(s) not set: " + ", ".join(missing) + "; pass "
                          + " ".join(f"--var {n}=..." for n in missing))
    refs: dict[str, str] = {k: str(v) for k, v in p.vars.items() if v is not None}

    def one(step: Step, out: Path) -> None:
        if only is None or step.name in only:
            run_step(p, step, out, refs, log, output)
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


def _json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


def step_figure(stage: str, out: Path) -> str:
    """The figure a person wants from a finished step, read from what the stage wrote ('' if none)."""
    from alignforge.eval.verdict import gold_key
    from alignforge.train.tracking import last_value, read_metrics

    try:
        if stage == "world":
            f = _json(out / "manifest.json")["files"]
            return (f"{f['corpus']['records']} corpus documents, {f['sft']['records']} demonstrations, "
                    f"{f['prompts_train']['records']} prompts")
        if stage == "tokenizer":
            t = _json(out / "stats.json")
            return f"vocabulary {t['vocab_size']}, {t['bytes_per_token']:.2f} bytes/token"
        if stage == "collect":
            c = _json(out / "summary.json")
            labels = sum(c["train_labels"].values()) if isinstance(c.get("train_labels"), dict) else c.get("train_labels")
            agree = c.get("annotator_gold_agreement")
            return f"{labels} labels" + (f"; the labellers agree with gold {agree:.0%}" if agree is not None else "")
        if stage == "eval":
            from alignforge.eval.verdict import HEADLINE

            r = _json(out / "eval.json")
            wins = [f"{n} {r['sample'][n]['win_rate']['value']:.2f}" for n in HEADLINE
                    if n in r.get("sample", {}) and r["sample"][n].get("win_rate")]
            return f"win-rate vs {r['baseline']}: " + ", ".join(wins) if wins else f"{len(r['policies'])} policies"
        if stage == "pretrain" and (out / "baselines.json").is_file():
            b = _json(out / "baselines.json")
            grams = [v for k, v in b.items() if "gram" in k and isinstance(v, float)]
            lstm = [v for k, v in b.items() if "lstm" in k and isinstance(v, float)]
            beside = ([f"best n-gram {min(grams):.3f}"] if grams else []) + ([f"LSTM {min(lstm):.3f}"] if lstm else [])
            return f"held-out {b['model']:.3f} bits/byte" + (f" ({', '.join(beside)})" if beside else "")
        rows = read_metrics(out) if (out / "metrics.jsonl").is_file() else []
        if stage == "reward":
            gold, acc = last_value(rows, "gold_accuracy"), last_value(rows, "eval_accuracy")
            if gold is not None:
                return f"gold accuracy {gold:.3f}" + (f", held-out label accuracy {acc:.3f}" if acc is not None else "")
        gk = gold_key(rows)
        gold = last_value(rows, gk) if gk else None
        kl = next((v for v in (last_value(rows, "eval_kl"), last_value(rows, "kl")) if v is not None), None)
        if gold is not None:
            return f"gold {gold:+.2f}" + (f", KL {kl:.1f} nats" if kl is not None else "")
        for key, label in (("eval_loss", "held-out loss"), ("eval_reward_accuracy", "held-out pair accuracy"),
                           ("loss", "loss")):
            v = last_value(rows, key)
            if v is not None:
                return f"{label} {v:.3f}" + (f", KL {kl:.1f} nats" if kl is not None else "")
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        pass  # a figure is a courtesy: a stage that wrote something unexpected still finishes
    return ""


def planned_steps(p: Pipeline, only: Sequence[str] | None = None) -> list[tuple[str, str, float | None]]:
    """(name, stage, expected seconds) of every step the run will visit, rounds unrolled, for the view."""
    plan = [(s.name, s.stage, s.expected_s) for s in p.steps if only is None or s.name in only]
    for r in range(1, p.rounds + 1):
        plan += [(f"{s.name}-r{r}", s.stage, s.expected_s) for s in p.round_steps if only is None or s.name in only]
    return plan


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
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="set one of the pipeline's vars (e.g. --var base=/models/SmolLM2-135M); repeatable")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show every stage's own output (always in <step>/log.txt)")
    args = parser.parse_args(list(argv or []))
    try:
        p = load_pipeline(args.file)
        if args.run:
            p.run = args.run
        set_vars(p, args.var)
        with RunOutput(f"alignforge pipeline {p.run}", planned_steps(p, args.only), verbose=args.verbose) as output:
            refs = run_pipeline(p, only=args.only, output=output)
    except (ConfigError, RecordError) as e:
        print(f"alignforge pipeline: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignforge pipeline: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if any((Path(f) / "eval.json").exists() or (Path(f) / "metrics.jsonl").exists() for f in refs.values()):
        from alignforge.eval.report import write_report

        print(f"pipeline: report: {write_report(p.out_dir('.').resolve(), refs)}", file=sys.stderr)
    return 0
