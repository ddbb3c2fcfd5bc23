"""alignforge vs TRL, side by side in one sitting on the same fixture (issue 11).

    python bench/vs_trl.py                        # every row, 2 warm-up + 8 measured steps, batch 16
    python bench/vs_trl.py --repeats 3 --profile  # median of 3 alternating runs; profile ours once
    python bench/vs_trl.py --stages sft,dpo --scale 30m   # + the ≈30 M-parameter rows of SFT and DPO
    python bench/vs_trl.py --smoke                # 1 measured step, batch 4; does not touch RESULTS.md
    python bench/vs_trl.py --precision bf16       # every row in bf16 autocast on both sides → bench/RESULTS-bf16.md
    python bench/vs_trl.py --precision bf16 --results /tmp/r.md   # … or wherever --results says

Rows (``--stages``): sft, reward, dpo, grpo, rloo, ppo (TRL's trainers; PPO against the plain
PyTorch loop of ``bench/ppo_reference.py`` because TRL 1.16 has no PPO trainer), sample-16x48 and
sample-64x64 (the sampling engine against ``model.generate``), and with ``--scale 30m`` sft-30m and
dpo-30m. What a step and its tokens are for each row: ``bench/vs_trl_workers.py``.

Precision (``--precision``, default fp32): one precision per run, the same on both sides of every
row. ``fp32``: everything fp32 (alignforge pinned to ``runtime.precision=fp32``, TRL ``bf16=False``).
``bf16``: bf16 autocast over fp32 master weights on both sides — alignforge
``runtime.precision=bf16``, TRL ``bf16=True`` (accelerate autocasts each prepared model's forward
to bf16 on CPU; the weights stay fp32), the PPO loop, ``generate`` and the engine inside
``torch.autocast("cpu", bfloat16)``; details in ``bench/vs_trl_workers.py``. Each precision has its
own results file, so a bf16 run never overwrites the fp32 table: ``bench/RESULTS.md`` (fp32) and
``bench/RESULTS-bf16.md`` (bf16), unless ``--results`` names another; the title line of the file
says which precision it holds.

What it does, in order:

1. builds the fixture (``bench/fixture.py`` → ``bench/_fixture/``) if it is missing;
2. makes TRL's own virtual environment ``bench/.trl-venv`` (``--system-site-packages`` over this
   environment, so the same CPU torch and transformers are used; only ``trl`` and ``accelerate``
   are installed into it — never into alignforge's dependencies);
3. measures the matmul peak in the run's precision (fp32, or bf16 with ``--precision bf16``) in
   this process, with the workers' thread count, before *and*
   after the rows (:func:`alignforge.perf.measure_matmul_peak`, the design §8 routine), keeps the
   larger (other work can only lower a reading) and warns when the two are > 15% apart; prints the
   CPU model and its AMX / AVX-512 flags;
4. ``--repeats`` times: for each row runs the baseline and alignforge alternately (who goes first
   alternates between repeats), each in a fresh subprocess; the ``--scale`` rows run once;
5. with ``--profile``, runs alignforge's worker once more under ``torch.profiler`` (the measured
   steps only) for every row that misses a goal, and names the ops that take its time — beside the
   profiled step time against the row's unprofiled one, since the profiler's own cost lands between
   ops and can look like Python overhead (the reward row: +84%, its ops 97% of an unprofiled step);
6. prints one table (medians over repeats, min–max in brackets) and (unless ``--smoke``) writes it
   into the precision's results file (``bench/RESULTS.md`` / ``bench/RESULTS-bf16.md``, or
   ``--results``).

How each side is timed — the same way on both: a timestamp at the end of every step; the first
``--warmup`` steps are dropped; the measured time is from the end of the last warm-up step to the
end of the last step, so data loading, collation, the optimizer and per-step Python all count.
TRL: a ``TrainerCallback.on_step_end``. alignforge: the real stage, stamped when it logs each step
(``train.log_every=1``). Tokens are real, non-pad tokens (see the workers' docstring).

MFU = FLOPs per token × tokens/s ÷ the peak of step 3, with N = the policy's non-embedding matmul
parameters (design §8) and FLOPs per token counted from the algorithm, the same for both sides of
a row (:func:`flops_per_token`): 6N for SFT/reward/DPO (the reference forward of DPO is not
counted: TRL runs it every step, alignforge once in a pre-pass that shows in ``setup s``); 12N for
GRPO/RLOO (2N sampling + 2N reference + 2N reward model + 6N update); 8N + 12N × epochs for PPO
(sampling, reference, reward and value forwards, then policy and value fwd+bwd each epoch); 2N
for the sampling rows (generated tokens only). The reward model and value model share the policy's
backbone size. Peak RSS is the worker process's own high-water mark (``os.wait4``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from alignforge.perf import cpu_flags, machine  # noqa: F401  (cpu_flags: tests read it here)
from vs_trl_workers import (
    LR,
    PPO_EPOCHS,
    SEQ_LEN,
    _non_pad_tokens,  # noqa: F401  (tests/test_bench_table.py checks the token count)
    split_stage,
)

ROOT = BENCH.parent
VENV = BENCH / ".trl-venv"
RESULTS = BENCH / "RESULTS.md"
#: The default results file of each ``--precision``: a bf16 run never overwrites the fp32 table.
RESULTS_BY_PRECISION = {"fp32": RESULTS, "bf16": BENCH / "RESULTS-bf16.md"}
#: What each precision means on both sides of a row (the title and the precision line of the Markdown).
PRECISION_TITLE = {"fp32": "fp32", "bf16": "bf16 autocast, fp32 master weights"}
STAGES = ("sft", "reward", "dpo", "grpo", "rloo", "ppo", "sample-16x48", "sample-64x64")
SCALE_STAGES = ("sft", "dpo")  # the rows --scale adds
# Per stage: (MFU goal, tokens/s ratio to the baseline at its best), issue 18: offline rows ≥ 60% MFU
# and ≥ 2× TRL, online rows (end to end) ≥ 45% MFU and ≥ 2×, the sampling engine ≥ 2× `generate`
# (no MFU goal: decoding is bound by memory and per-token overhead, not matmuls).
GOALS = {"sft": (0.60, 2.0), "reward": (0.60, 2.0), "dpo": (0.60, 2.0),
         "grpo": (0.45, 2.0), "rloo": (0.45, 2.0), "ppo": (0.45, 2.0), "sample": (None, 2.0)}


# ---------------------------------------------------------------------------------------------
# Results and the table (pure functions; tests/test_bench_table.py covers them)
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One worker's measurement: ``stamps`` are step-end times (s), ``step_tokens`` per step."""

    library: str  # "trl" (the baseline of the row) | "alignforge"
    stage: str
    step_tokens: list[float]
    stamps: list[float]
    setup_s: float  # process start → end of the first step (loading, tokenising, pre-passes)
    matmul_params: int
    version: str
    peak_rss_bytes: int = 0
    flops_per_token: float | None = None  # None: 6 · matmul_params (a training step)

    def measured(self, warmup: int) -> tuple[float, float, int]:
        """(tokens, seconds, steps) after the warm-up: from the end of step ``warmup`` on."""
        if len(self.stamps) != len(self.step_tokens):
            raise ValueError(f"{self.library} {self.stage}: {len(self.stamps)} step stamps but "
                             f"{len(self.step_tokens)} token counts")
        if len(self.stamps) <= warmup:
            raise ValueError(f"{self.library} {self.stage}: {len(self.stamps)} steps recorded, "
                             f"need more than the {warmup} warm-up steps")
        seconds = self.stamps[-1] - self.stamps[warmup - 1] if warmup else self.stamps[-1]
        return float(sum(self.step_tokens[warmup:])), seconds, len(self.stamps) - warmup


def flops_per_token(stage: str, n: int, ppo_epochs: int = PPO_EPOCHS) -> float:
    """Model FLOPs per counted token of a row (module docstring), N = ``n`` matmul parameters."""
    base, _, _ = split_stage(stage)
    if base in ("sft", "reward", "dpo"):
        return 6.0 * n
    if base in ("grpo", "rloo"):
        return (2 + 2 + 2 + 6) * float(n)
    if base == "ppo":
        return (8 + 12 * ppo_epochs) * float(n)
    if base == "sample":
        return 2.0 * n
    raise ValueError(f"stage {stage!r}: no FLOP count for it")


def summarise(runs: list[Run], warmup: int, peak_flops: float) -> list[dict]:
    """One row per run: tokens/s, s/step, MFU (FLOPs/token · tok/s ÷ peak), RSS, alignforge/TRL ratio."""
    rows = []
    for r in runs:
        tokens, seconds, steps = r.measured(warmup)
        tps = tokens / max(seconds, 1e-12)
        fpt = r.flops_per_token if r.flops_per_token is not None else 6.0 * r.matmul_params
        rows.append({"stage": r.stage, "library": r.library, "version": r.version, "steps": steps,
                     "tok_per_step": tokens / steps, "tokens_per_s": tps, "s_per_step": seconds / steps,
                     "mfu": fpt * tps / peak_flops, "peak_rss_mb": r.peak_rss_bytes / 2**20,
                     "setup_s": r.setup_s, "ratio": None})
    trl = {row["stage"]: row for row in rows if row["library"] == "trl"}
    for row in rows:
        if row["library"] == "alignforge" and row["stage"] in trl:
            row["ratio"] = row["tokens_per_s"] / trl[row["stage"]]["tokens_per_s"]
    return rows


def aggregate(per_repeat: list[list[dict]]) -> list[dict]:
    """Rows of several alternating repeats → one row per (stage, library): medians, with the min and
    max of tokens/s and of the ratio. The ratio is the median of each repeat's own ratio (its two
    runs were neighbours in time, so they saw the same load), not a ratio of medians."""
    keys = list(dict.fromkeys((r["stage"], r["library"]) for rows in per_repeat for r in rows))
    out = []
    for key in keys:
        vals = [r for rows in per_repeat for r in rows if (r["stage"], r["library"]) == key]
        row = dict(vals[0])
        row["repeats"] = len(vals)
        for f in ("tokens_per_s", "s_per_step", "tok_per_step", "mfu", "setup_s"):
            row[f] = statistics.median(v[f] for v in vals)
        row["peak_rss_mb"] = max(v["peak_rss_mb"] for v in vals)
        row["tokens_per_s_range"] = (min(v["tokens_per_s"] for v in vals), max(v["tokens_per_s"] for v in vals))
        ratios = [v["ratio"] for v in vals if v["ratio"] is not None]
        row["ratio"] = statistics.median(ratios) if ratios else None
        row["ratio_range"] = (min(ratios), max(ratios)) if ratios else None
        out.append(row)
    return out


def format_table(rows: list[dict]) -> str:
    """A Markdown table (it also reads fine in a terminal). Aggregated rows (``repeats`` > 1) show
    the min–max over repeats in brackets after the median."""
    head = ["stage", "library", "tokens/s", "s/step", "tok/step", "MFU", "peak RSS MB", "setup s",
            "alignforge/TRL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        spread = r.get("repeats", 1) > 1
        tps = f"{r['tokens_per_s']:,.0f}"
        if spread:
            lo, hi = r["tokens_per_s_range"]
            tps += f" ({lo:,.0f}–{hi:,.0f})"
        ratio = ""
        if r["ratio"] is not None:
            ratio = f"{r['ratio']:.2f}×"
            if spread and r.get("ratio_range"):
                ratio += f" ({r['ratio_range'][0]:.2f}–{r['ratio_range'][1]:.2f})"
        lines.append(f"| {r['stage']} | {r['version']} | {tps} | "
                     f"{r['s_per_step']:.3f} | {r['tok_per_step']:,.0f} | {100 * r['mfu']:.1f}% | "
                     f"{r['peak_rss_mb']:,.0f} | {r['setup_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def results_markdown(table: str, meta: dict) -> str:
    """The whole results file (``bench/RESULTS.md``, or ``RESULTS-bf16.md`` for a bf16 run): the
    precision in the title, then when, where, versions, settings, then the table."""
    settings = ", ".join(f"{k} {v}" for k, v in meta["settings"].items())
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    precision = meta.get("precision", "fp32")
    command = "python bench/vs_trl.py" + ("" if precision == "fp32" else f" --precision {precision}")
    return (
        f"# alignforge vs TRL — {PRECISION_TITLE[precision]}\n\n"
        f"Generated by `{command}` — do not edit by hand; rerun it on your machine.\n"
        "Absolute numbers depend on the machine (and on what else it runs); only the ratio within\n"
        "one run counts. How each column is measured: see the docstring of `bench/vs_trl.py`.\n\n"
        f"- date: {meta['date']}\n"
        f"- precision: {precision_line(precision)}\n"
        f"- machine: {meta['machine']}\n"
        f"- versions: {versions}\n"
        f"- settings: {settings}\n"
        f"- CPU flags: {meta.get('cpu_flags', 'not recorded')}\n"
        f"- {precision} matmul peak (same run): {meta['peak_gflops']:.1f} GFLOP/s"
        + (" (the larger of {:.1f} before and {:.1f} after the rows)".format(*meta["peak_readings"])
           if meta.get("peak_readings") else "") + "\n\n"
        f"{table}\n\n"
        "## Goals (issue 18)\n\n"
        "Against TRL at its best (no gradient checkpointing, DPO's reference precomputed), same precision:\n"
        "offline rows (SFT, reward, DPO) ≥ 60% MFU and ≥ 2× tokens/s; online rows (GRPO, RLOO, PPO end\n"
        "to end) ≥ 45% MFU and ≥ 2×; the sampling engine ≥ 2× `generate`; peak RSS ≤ 2× the baseline's.\n\n"
        + "".join(f"- {line}\n" for line in meta.get("goals", []))
        + ("\n" + meta["notes"] + "\n" if meta.get("notes") else "")
    )


def precision_line(precision: str) -> str:
    """What ``--precision`` meant for both sides of every row (the ``- precision:`` line)."""
    if precision == "fp32":
        return ("fp32 on both sides (alignforge `runtime.precision=fp32`, TRL `bf16=False`); MFU divides "
                "by the fp32 matmul peak")
    return ("bf16 autocast over fp32 master weights on both sides: alignforge `runtime.precision=bf16`; TRL "
            "`bf16=True` (with `use_cpu=True` accelerate wraps each prepared model's forward in "
            "`torch.autocast(\"cpu\", bfloat16)`, weights stay fp32); the plain PPO loop, `generate` and the "
            "engine inside `torch.autocast(\"cpu\", bfloat16)`. MFU divides by the bf16 matmul peak")


def contention_warning(rows: list[dict]) -> str:
    """A warning when an MFU is above 100%: then the peak was measured while other work held the
    CPU (or that work stopped mid-run), so rates taken at different moments do not compare."""
    over = [f"{r['stage']}/{r['library']}" for r in rows if r["mfu"] > 1.0]
    if not over:
        return ""
    return (f"**Warning: MFU above 100% for {', '.join(over)}: the machine's load changed during the "
            "run, so these numbers and ratios are not trustworthy; rerun on an idle machine.**\n\n")


def profile_summary(profile: dict, top: int = 3) -> str:
    """``{"wall_s", "ops": [[name, self seconds], ...], "ops_self_s"}`` → "aten::mm 41%, … ; outside aten
    ops 15%": shares of the profiled wall time; what no op accounts for is Python and framework
    overhead. ``ops`` holds the largest ops only; ``ops_self_s`` is the self time of *every* op (a
    profile without it counts the listed ones, which overstates the overhead by the ops left out)."""
    wall = max(profile["wall_s"], 1e-12)
    ops = sorted(profile["ops"], key=lambda o: -o[1])
    shown = ", ".join(f"{name} {100 * s / wall:.0f}%" for name, s in ops[:top])
    ops_self = profile.get("ops_self_s", sum(s for _, s in ops))
    text = f"{shown}; outside aten ops {100 * max(0.0, 1.0 - ops_self / wall):.0f}%"
    # The profiler's own cost lands between ops, so "outside" overstates the overhead of the unprofiled
    # run: compare the profiled steps with the same row's unprofiled ones (set by main()).
    plain, steps = profile.get("unprofiled_step_s"), profile.get("steps")
    if plain and steps:
        text += (f" (a profiled step {wall / steps:.3f} s against {plain:.3f} s unprofiled, "
                 f"{100 * (wall / steps / plain - 1):+.0f}%; the ops' self time is "
                 f"{100 * ops_self / (plain * steps):.0f}% of the unprofiled steps)")
    return text


def goal_lines(rows: list[dict], profiles: dict[str, dict] | None = None) -> list[str]:
    """Per stage: is each goal met, from the numbers in ``rows`` (no judgement typed by hand). When a
    goal is missed and the stage was profiled, the ops that took its time are named after it."""
    out = []
    by = {(r["stage"], r["library"]): r for r in rows}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        af, trl = by.get((stage, "alignforge")), by.get((stage, "trl"))
        base = split_stage(stage)[0]
        if af is None or trl is None or base not in GOALS:
            continue
        mfu_goal, ratio_goal = GOALS[base]
        rss = af["peak_rss_mb"] / max(trl["peak_rss_mb"], 1e-9)
        met = (mfu_goal is None or af["mfu"] >= mfu_goal, af["ratio"] >= ratio_goal, rss <= 2.0)

        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT met"

        mfu = "" if mfu_goal is None else \
            f"MFU {100 * af['mfu']:.1f}% vs goal {100 * mfu_goal:.0f}% ({verdict(met[0])}); "
        line = (f"{stage}: {mfu}{af['ratio']:.2f}× the baseline vs goal "
                f"{ratio_goal:.0f}× ({verdict(met[1])}); peak RSS "
                f"{rss:.2f}× the baseline's ({verdict(met[2])})")
        if not all(met) and profiles and stage in profiles:
            line += f" — where alignforge's time goes (torch.profiler): {profile_summary(profiles[stage])}"
        out.append(line)
    return out


# ---------------------------------------------------------------------------------------------
# One worker (its own process)
# ---------------------------------------------------------------------------------------------


def worker_main(args) -> int:
    import torch
    import vs_trl_workers as W

    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    stamps: list[float] = []
    prof = None
    if args.profile_out:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU])
        if args.warmup == 0:
            prof.start()

    def stamp() -> None:
        stamps.append(time.perf_counter())
        # Profile the measured steps only: not the set-up, not what a stage does after its last step
        # (the reward stage scores its normalisation samples there).
        if prof is not None and len(stamps) == args.warmup:
            prof.start()
        if prof is not None and len(stamps) == args.warmup + args.steps:
            prof.stop()

    if args.worker == "alignforge":
        fn = W.alignforge_worker
    else:  # "trl" = TRL at its best, "trl-defaults" = TRL's own default settings
        fn = functools.partial(W.trl_worker, defaults=args.worker == "trl-defaults")
    raw = fn(args.stage, Path(args.fixture), args.warmup + args.steps, args.batch, args.seed, stamp,
             precision=args.precision)
    if prof is not None:
        ops = [[e.key, e.self_cpu_time_total / 1e6] for e in prof.key_averages() if e.self_cpu_time_total > 0]
        ops.sort(key=lambda o: -o[1])
        Path(args.profile_out).write_text(json.dumps({"wall_s": stamps[-1] - stamps[args.warmup - 1]
                                                      if args.warmup else stamps[-1] - t0, "ops": ops[:20],
                                                      "ops_self_s": sum(o[1] for o in ops), "steps": args.steps}))
    raw["step_tokens"] = raw["step_tokens"][:len(stamps)]  # a dataloader may collate one batch ahead
    raw["setup_s"] = stamps[0] - t0 if stamps else float("nan")
    raw["stamps"] = [s - t0 for s in stamps]
    raw["matmul_params"] = W.matmul_params_of(Path(args.fixture), args.stage)
    Path(args.result).write_text(json.dumps(raw))
    return 0


# ---------------------------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------------------------


def ensure_trl_venv(venv: Path = VENV) -> Path:
    """``venv``'s python, with trl + accelerate importable; created on first use."""
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    if subprocess.run([str(py), "-c", "import trl, accelerate"], capture_output=True, check=False).returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "trl", "accelerate"], check=True)
    return py


def run_worker(python: str, library: str, stage: str, args, fixture: Path, profile_out: Path | None = None) -> Run:
    precision = getattr(args, "precision", "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [python, str(Path(__file__).resolve()), "--worker", library, "--stage", stage,
               "--fixture", str(fixture), "--result", str(result), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--seed", str(args.seed),
               "--threads", str(args.threads), "--precision", precision]
        if profile_out is not None:
            cmd += ["--profile-out", str(profile_out)]
        # ACCELERATE_MIXED_PRECISION: transformers starts from it and only bf16=True overrides it, so a
        # stray "bf16" in the caller's environment would make an fp32 run's TRL side autocast.
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
               "ACCELERATE_MIXED_PRECISION": "bf16" if precision == "bf16" else "no"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{library} {stage} worker failed (exit {proc.returncode}):\n{output[-4000:]}")
        raw = json.loads(result.read_text())
    # ru_maxrss is in KiB on Linux.
    return Run(library=library, stage=stage, step_tokens=raw["step_tokens"], stamps=raw["stamps"],
               setup_s=raw["setup_s"], matmul_params=raw["matmul_params"], version=raw["version"],
               peak_rss_bytes=usage.ru_maxrss * 1024,
               flops_per_token=flops_per_token(stage, raw["matmul_params"]))




#: Two peak readings further apart than this mean the machine's load changed during the run.
PEAK_SPREAD = 0.15


def trusted_peak(before: float, after: float, precision: str = "fp32") -> tuple[float, str]:
    """The peak MFU divides by: the larger reading (a reading can only be lowered by other work on
    the machine), and a warning when the two differ by more than :data:`PEAK_SPREAD`."""
    peak = max(before, after)
    if abs(before - after) > PEAK_SPREAD * peak:
        return peak, (f"**Warning: the {precision} matmul peak read {before / 1e9:.1f} GFLOP/s before the rows and "
                      f"{after / 1e9:.1f} after (more than {PEAK_SPREAD:.0%} apart): the machine's load changed "
                      "during the run; MFU uses the larger, and the rows are not trustworthy — rerun on an idle "
                      "machine.**\n\n")
    return peak, ""


def parse_stages(text: str, scale: str | None, smoke: bool) -> list[str]:
    """The rows to run: ``--stages`` plus the scale rows; ``--smoke`` shrinks the sampling shapes."""
    stages = [s for s in text.split(",") if s]
    if scale:
        stages += [f"{s}-{scale}" for s in SCALE_STAGES if f"{s}-{scale}" not in stages]
    out = []
    for s in stages:
        base, sc, _ = split_stage(s)  # raises on a malformed sample-BxN
        if base not in GOALS and base != "sample":
            raise ValueError(f"--stages: unknown {s!r}; rows are {', '.join(STAGES)} (and <stage>-30m with --scale)")
        if sc is not None and (base not in SCALE_STAGES or sc != "30m"):
            raise ValueError(f"--stages: {s!r}: only {', '.join(SCALE_STAGES)} have a 30m row")
        out.append("sample-4x8" if smoke and base == "sample" else s)
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--scale", choices=["30m"], default=None, help="also run SFT and DPO on the ≈30 M model")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="examples (SFT), pairs (reward/DPO) or completions "
                                                          "(online) per step")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs per row; the table shows medians")
    ap.add_argument("--profile", action="store_true", help="profile alignforge's worker on rows that miss a goal")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trl-defaults", action="store_true",
                    help="also a row of TRL at its default settings (gradient checkpointing on, DPO reference "
                         "computed every step) beside TRL at its best")
    ap.add_argument("--precision", choices=sorted(RESULTS_BY_PRECISION), default="fp32",
                    help="every row on both sides in fp32, or in bf16 autocast over fp32 weights (alignforge "
                         "runtime.precision=bf16, TRL bf16=True); MFU uses the matmul peak in that precision")
    ap.add_argument("--smoke", action="store_true", help="1 measured step, batch 4; RESULTS.md untouched")
    ap.add_argument("--results", type=Path, default=None,
                    help="where to write the Markdown (default: " + ", ".join(
                        f"{p.relative_to(ROOT)} for {k}" for k, p in RESULTS_BY_PRECISION.items()) + ")")
    ap.add_argument("--fixture", type=Path, default=BENCH / "_fixture")
    # Worker mode (internal): run one library on one stage and write the raw measurement.
    ap.add_argument("--worker", choices=["trl", "trl-defaults", "alignforge"], help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.smoke:
        args.steps, args.batch = 1, 4
    if args.repeats < 1:
        ap.error("--repeats: expected >= 1")
    try:
        stages = parse_stages(args.stages, args.scale, args.smoke)
    except ValueError as e:
        ap.error(str(e))

    import fixture as fixture_mod
    import torch
    import transformers

    import alignforge
    from alignforge.perf import measure_matmul_peak

    fx = fixture_mod.ensure(args.fixture)
    if args.scale:
        fixture_mod.ensure_scale(fx, args.scale)
    trl_python = str(ensure_trl_venv())
    trl_version = subprocess.run([trl_python, "-c", "import trl, accelerate; print(trl.__version__, accelerate.__version__)"],
                                 capture_output=True, text=True, check=True).stdout.split()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    print(f"CPU: {machine()}; {cpu_flags()}", flush=True)
    peak_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    print(f"precision: {PRECISION_TITLE[args.precision]} on both sides of every row", flush=True)
    peak_before = measure_matmul_peak(peak_dtype, cache=False)
    print(f"{args.precision} matmul peak (before the rows): {peak_before / 1e9:.1f} GFLOP/s ({args.threads} threads)",
          flush=True)

    per_repeat_runs: list[list[Run]] = []
    for rep in range(args.repeats):
        runs: list[Run] = []
        for stage in stages:
            if rep > 0 and split_stage(stage)[1] is not None:
                continue  # the scale rows run once (each takes minutes); their row says repeats 1
            sides = [("trl", trl_python), ("alignforge", sys.executable)]
            # TRL's venv is only needed for TRL's trainers; the other baselines run in this python.
            if split_stage(stage)[0] in ("ppo", "sample"):
                sides[0] = ("trl", sys.executable)
            elif args.trl_defaults:
                sides.append(("trl-defaults", trl_python))
            for library, python in (sides if rep % 2 == 0 else sides[::-1]):
                print(f"[{rep + 1}/{args.repeats}] {stage}: {library} ...", flush=True)
                runs.append(run_worker(python, library, stage, args, fx))
        per_repeat_runs.append(runs)
        if args.repeats > 1:
            print(format_table(summarise(runs, args.warmup, peak_before)), flush=True)
    peak_after = measure_matmul_peak(peak_dtype, cache=False)
    peak, peak_note = trusted_peak(peak_before, peak_after, args.precision)
    print(f"{args.precision} matmul peak (after the rows): {peak_after / 1e9:.1f} GFLOP/s; MFU uses {peak / 1e9:.1f}",
          flush=True)
    if peak_note:
        print(peak_note, flush=True)
    per_repeat = [summarise(runs, args.warmup, peak) for runs in per_repeat_runs]
    rows = aggregate(per_repeat) if args.repeats > 1 else per_repeat[0]
    profiles: dict[str, dict] = {}
    if args.profile:
        # Only the rows that miss a goal: the profile is there to say why.
        missed = [line.split(":")[0] for line in goal_lines(rows) if "NOT met" in line]
        with tempfile.TemporaryDirectory() as tmp:
            for stage in missed:
                print(f"profile: {stage}: alignforge ...", flush=True)
                path = Path(tmp) / f"{stage}.json"
                run_worker(sys.executable, "alignforge", stage, args, fx, profile_out=path)
                profiles[stage] = json.loads(path.read_text())
                ours = next((r for r in rows if r["stage"] == stage and r["library"] == "alignforge"), None)
                if ours is not None:
                    profiles[stage]["unprofiled_step_s"] = ours["s_per_step"]
                print(f"  {profile_summary(profiles[stage], top=5)}", flush=True)
    table = format_table(rows)
    print(f"alignforge vs TRL — {PRECISION_TITLE[args.precision]}")
    print(table)
    goals = goal_lines(rows, profiles)
    for line in goals:
        print(line)
    if args.smoke and args.results is None:
        return 0
    load_end = os.getloadavg()
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{machine()}; load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_start)} at "
                       f"the start, {'/'.join(f'{x:.1f}' for x in load_end)} at the end (other work on the box "
                       "slows both sides)",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "trl": trl_version[0],
                         "accelerate": trl_version[1], "alignforge": alignforge.__version__},
            "precision": args.precision,
            "settings": {"batch": args.batch, "warm-up steps": args.warmup, "measured steps": args.steps,
                         "repeats": args.repeats, "threads": args.threads, "seq_len": SEQ_LEN, "lr": LR,
                         "seed": args.seed},
            "peak_gflops": peak / 1e9, "peak_readings": (peak_before / 1e9, peak_after / 1e9),
            "cpu_flags": cpu_flags(), "goals": goals,
            "notes": peak_note + contention_warning(rows) + NOTES + (NOTES_BF16 if args.precision == "bf16" else "")}
    out = args.results or RESULTS_BY_PRECISION[args.precision]
    from alignforge.io import atomic_write_text

    atomic_write_text(out, results_markdown(table, meta))
    print(f"wrote {out}")
    return 0


NOTES = """## Notes

- Rows: `trl` is the baseline of the row — TRL's trainer (SFT, reward, DPO, GRPO, RLOO), the plain
  PyTorch loop of `bench/ppo_reference.py` (PPO: TRL 1.16 has no PPO trainer), transformers'
  `model.generate` (sample-BxN). Online rows: 16 completions a step (4 prompts × 4 for GRPO/RLOO,
  16 prompts for PPO), 48 new tokens, the fixture's fixed random reward model on both sides, a KL to
  the frozen reference (GRPO β 0.04 k3 in the loss, RLOO β 0.05 k1 in the reward, PPO β 0.05), one
  update per rollout (PPO: 2 epochs × 2 minibatches); time is end to end (sampling, scoring, update).
- Tokens: real non-pad tokens; online rows count each rollout's prompt + completion tokens once.
  Sampling rows count the B·N generated tokens (eos off, so both sides generate exactly N per row).
- With repeats > 1 every number is the median over repeats and brackets give the min–max; the
  ratio is the median of each repeat's own ratio (its two runs ran back to back). The ≈30 M rows
  (`-30m`: d 512, 8 layers, same tokenizer and data) run once.
- MFU counts the 6N / 2N matmul FLOPs of design §8 only: the LM head (4096 × d, a quarter of the
  4-layer model's matmuls) and attention are not in N, so 100% is out of reach by construction."""


NOTES_BF16 = """
- bf16: both sides autocast the same ops (matmuls, attention) to bf16 over fp32 weights, gradients
  and AdamW state. One difference is left, by design on each side: alignforge runs the LM head in
  fp32 inside autocast wherever log-probs or sampling read it (`alignforge.generation.fp32_head`:
  the sampler, rollout log-probs, SFT/DPO target log-probs), while TRL's trainers and `generate`
  run it in bf16 (TRL's default; GRPO's `cast_lm_head_to_fp32` stays off — TRL at its best — and
  it would not cover TRL's `generate` anyway). The baselines thus do their head, about a quarter of
  the fixture model's matmuls, in the faster precision: the ratios are, if anything, conservative
  for alignforge. The PPO baseline runs its whole loop inside autocast (the backward replays the
  forward's dtypes and AdamW has no autocast ops, so this equals autocasting the forwards)."""


if __name__ == "__main__":
    raise SystemExit(main())
