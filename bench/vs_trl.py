"""alignforge vs TRL, side by side in one sitting on the same fixture (issue 11).

    python bench/vs_trl.py                      # SFT + DPO, 2 warm-up + 8 measured steps, batch 16
    python bench/vs_trl.py --steps 20 --stages sft,dpo
    python bench/vs_trl.py --smoke              # 1 measured step, batch 4; does not touch RESULTS.md

What it does, in order:

1. builds the fixture (``bench/fixture.py`` → ``bench/_fixture/``) if it is missing;
2. makes TRL's own virtual environment ``bench/.trl-venv`` (``--system-site-packages`` over this
   environment, so the same CPU torch and transformers are used; only ``trl`` and ``accelerate``
   are installed into it — never into alignforge's dependencies);
3. measures the fp32 matmul peak once, in this process, with the workers' thread count
   (:func:`alignforge.perf.measure_matmul_peak`, the design §8 routine);
4. for each stage runs TRL then alignforge, alternately, each in a fresh subprocess;
5. prints one table and (unless ``--smoke``) writes it into ``bench/RESULTS.md``.

How each side is timed — the same way on both: a timestamp at the end of every optimizer step;
the first ``--warmup`` steps are dropped; the measured time is from the end of the last warm-up
step to the end of the last step, so data loading, collation, the optimizer and per-step Python
all count. TRL: a ``TrainerCallback.on_step_end``. alignforge: the real stage
(``alignforge.stages.sft.run`` / ``dpo.run`` built through ``alignforge.config.build_config``)
with ``train.log_every=1``, stamped when it logs each step.

Tokens are real, non-pad tokens of the sequences the model runs on. TRL: counted exactly in each
collated batch (the attention mask). alignforge: the stage's own count of real tokens over the
run, divided by its steps (packing leaves almost no padding; the per-step counts of both sides
are in the table as ``tok/step``). DPO counts prompt+chosen and prompt+rejected.

MFU = 6 · non-embedding matmul params · tokens/s ÷ the peak of step 3 (design §8). TRL's DPO
runs its reference model forward each step and alignforge's runs it once in a pre-pass before
the loop; neither is in the 6·N count, and the pre-pass shows in the ``setup s`` column (from
process start to the end of the first step, for both sides), not in the measured steps.
Peak RSS is the worker process's own high-water mark (``os.wait4``), so TRL's and ours never mix.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".trl-venv"
RESULTS = BENCH / "RESULTS.md"
STAGES = ("sft", "dpo")  # reward, GRPO, RLOO and PPO: not yet (see RESULTS.md)
LR = 1e-5
SEQ_LEN = 256  # > the longest fixture example (~110 tokens with the chat template)


# ---------------------------------------------------------------------------------------------
# Results and the table (pure functions; tests/test_bench_table.py covers them)
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One worker's measurement: ``stamps`` are step-end times (s), ``step_tokens`` per step."""

    library: str  # "trl" | "alignforge"
    stage: str
    step_tokens: list[float]
    stamps: list[float]
    setup_s: float  # process start → end of the first step (loading, tokenising, pre-passes)
    matmul_params: int
    version: str
    peak_rss_bytes: int = 0

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


def summarise(runs: list[Run], warmup: int, peak_flops: float) -> list[dict]:
    """One row per run: tokens/s, s/step, MFU (6·N·tok/s ÷ peak), RSS, and alignforge/TRL ratio."""
    rows = []
    for r in runs:
        tokens, seconds, steps = r.measured(warmup)
        tps = tokens / max(seconds, 1e-12)
        rows.append({"stage": r.stage, "library": r.library, "version": r.version, "steps": steps,
                     "tok_per_step": tokens / steps, "tokens_per_s": tps, "s_per_step": seconds / steps,
                     "mfu": 6.0 * r.matmul_params * tps / peak_flops, "peak_rss_mb": r.peak_rss_bytes / 2**20,
                     "setup_s": r.setup_s, "ratio": None})
    trl = {row["stage"]: row for row in rows if row["library"] == "trl"}
    for row in rows:
        if row["library"] == "alignforge" and row["stage"] in trl:
            row["ratio"] = row["tokens_per_s"] / trl[row["stage"]]["tokens_per_s"]
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table (it also reads fine in a terminal)."""
    head = ["stage", "library", "tokens/s", "s/step", "tok/step", "MFU", "peak RSS MB", "setup s",
            "alignforge/TRL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else ""
        lines.append(f"| {r['stage']} | {r['version']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['s_per_step']:.3f} | {r['tok_per_step']:,.0f} | {100 * r['mfu']:.1f}% | "
                     f"{r['peak_rss_mb']:,.0f} | {r['setup_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def results_markdown(table: str, meta: dict) -> str:
    """The whole ``bench/RESULTS.md``: when, where, versions, settings, then the table."""
    settings = ", ".join(f"{k} {v}" for k, v in meta["settings"].items())
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    return (
        "# alignforge vs TRL\n\n"
        "Generated by `python bench/vs_trl.py` — do not edit by hand; rerun it on your machine.\n"
        "Absolute numbers depend on the machine (and on what else it runs); only the ratio within\n"
        "one run counts. How each column is measured: see the docstring of `bench/vs_trl.py`.\n\n"
        f"- date: {meta['date']}\n"
        f"- machine: {meta['machine']}\n"
        f"- versions: {versions}\n"
        f"- settings: {settings}\n"
        f"- fp32 matmul peak (same run): {meta['peak_gflops']:.1f} GFLOP/s\n\n"
        f"{table}\n\n"
        "## Goals (issue 11)\n\n"
        "Firm: ≥ 60% MFU for SFT, reward and DPO, ≥ 45% for the online stages. Stretch: ≥ 2× TRL\n"
        "tokens/s for SFT/reward/DPO, ≥ 3× for GRPO/RLOO/PPO; peak RSS ≤ 2× TRL's.\n\n"
        + "".join(f"- {line}\n" for line in meta.get("goals", []))
        + ("\n" + meta["notes"] + "\n" if meta.get("notes") else "")
    )


def contention_warning(rows: list[dict]) -> str:
    """A warning when an MFU is above 100%: then the peak was measured while other work held the
    CPU (or that work stopped mid-run), so rates taken at different moments do not compare."""
    over = [f"{r['stage']}/{r['library']}" for r in rows if r["mfu"] > 1.0]
    if not over:
        return ""
    return (f"**Warning: MFU above 100% for {', '.join(over)}: the machine's load changed during the "
            "run, so these numbers and ratios are not trustworthy; rerun on an idle machine.**\n\n")


def goal_lines(rows: list[dict]) -> list[str]:
    """Per stage: is each goal met, from the numbers in ``rows`` (no judgement typed by hand)."""
    out = []
    by = {(r["stage"], r["library"]): r for r in rows}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        af, trl = by.get((stage, "alignforge")), by.get((stage, "trl"))
        if af is None or trl is None:
            continue
        mfu_goal = 0.60 if stage in ("sft", "reward", "dpo") else 0.45
        ratio_goal = 2.0 if stage in ("sft", "reward", "dpo") else 3.0
        rss = af["peak_rss_mb"] / max(trl["peak_rss_mb"], 1e-9)

        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT met"

        out.append(f"{stage}: MFU {100 * af['mfu']:.1f}% vs goal {100 * mfu_goal:.0f}% "
                   f"({verdict(af['mfu'] >= mfu_goal)}); {af['ratio']:.2f}× TRL vs stretch "
                   f"{ratio_goal:.0f}× ({verdict(af['ratio'] >= ratio_goal)}); peak RSS "
                   f"{rss:.2f}× TRL's ({verdict(rss <= 2.0)})")
    return out


# ---------------------------------------------------------------------------------------------
# Workers (each in its own process)
# ---------------------------------------------------------------------------------------------


def _non_pad_tokens(batch) -> float:
    if "attention_mask" in batch:
        return float(batch["attention_mask"].sum())
    return float(batch["input_ids"].numel())  # padding-free collation: every position is real


def trl_worker(stage: str, fixture: Path, steps: int, batch: int, seed: int) -> dict:
    """Train with TRL's own trainer for ``steps`` steps; return the raw measurement."""
    import datasets
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from alignforge.models.load import matmul_params

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(fixture / "model")
    model = AutoModelForCausalLM.from_pretrained(fixture / "model")
    data = (fixture / ("sft.jsonl" if stage == "sft" else "pref.jsonl")).read_text()
    rows = [json.loads(line) for line in data.splitlines() if line.strip()]
    stamps: list[float] = []
    tokens: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    common = {"output_dir": tempfile.mkdtemp(prefix="trl-"), "per_device_train_batch_size": batch,
              "gradient_accumulation_steps": 1, "max_steps": steps, "learning_rate": LR,
              "lr_scheduler_type": "constant", "logging_steps": steps, "save_strategy": "no",
              "report_to": "none", "use_cpu": True, "seed": seed, "dataloader_num_workers": 0,
              "max_length": SEQ_LEN, "disable_tqdm": True, "bf16": False}
    if stage == "sft":
        # Messages, so TRL applies the same chat template as alignforge; loss on the answer only.
        ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                          "completion": [{"role": "assistant", "content": r["response"]}]}
                                         for r in rows])
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=ds,
                                 processing_class=tok, callbacks=[Stamp()])
    elif stage == "dpo":
        ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                          "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                          "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                                         for r in rows])
        trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common, beta=0.1), train_dataset=ds,
                                 processing_class=tok, callbacks=[Stamp()])
    else:
        raise ValueError(f"stage {stage!r}: the TRL worker knows {', '.join(STAGES)}")
    collate = trainer.data_collator

    def counting_collator(examples):
        out = collate(examples)
        tokens.append(_non_pad_tokens(out))
        return out

    trainer.data_collator = counting_collator
    trainer.train()
    # The dataloader may collate one batch ahead of the last step; keep one count per step.
    return {"step_tokens": tokens[:len(stamps)], "stamps": stamps, "matmul_params": matmul_params(model),
            "version": f"trl {trl.__version__} (transformers {transformers.__version__})"}


def alignforge_worker(stage: str, fixture: Path, steps: int, batch: int, seed: int) -> dict:
    """Run the real alignforge stage for ``steps`` steps; return the raw measurement."""
    from transformers import AutoModelForCausalLM

    import alignforge
    from alignforge.config import DPOConfig, SFTConfig, build_config
    from alignforge.models.load import matmul_params
    from alignforge.train import tracking

    stamps: list[float] = []
    seen: set[int] = set()
    log = tracking.MetricsLogger.log

    def stamped_log(self, step, *a, **kw):  # one stamp per step (an eval row may log the same step)
        if step not in seen:
            seen.add(step)
            stamps.append(time.perf_counter())
        return log(self, step, *a, **kw)

    tracking.MetricsLogger.log = stamped_log
    out = Path(tempfile.mkdtemp(prefix="af-")) / stage
    common = {"model.init": str(fixture / "model"), "out": str(out), "seed": seed, "train.lr": LR,
              "train.max_steps": steps, "train.log_every": 1, "train.eval_every": 0, "train.save_every": 0,
              "train.warmup_steps": 0, "train.schedule": "constant", "train.seq_len": SEQ_LEN,
              "runtime.device": "cpu", "runtime.progress": False}
    # Threads: worker_main already set torch's, and runtime.threads unset leaves them as they are.
    if stage == "sft":
        from alignforge.stages import sft
        # ``batch`` examples per step: a packed row of SEQ_LEN holds SEQ_LEN // 110 whole fixture
        # examples (~107 tokens each with the template), so ask for the rows that hold ``batch``
        # of them (tok/step in the table shows how close the two sides are).
        rows = max(1, -(-batch // max(1, SEQ_LEN // 110)))
        cfg = build_config(SFTConfig, None, {**common, "data.train": str(fixture / "sft.jsonl"),
                                             "train.batch_size": rows, "sft.samples": 0, "sft.eval_fraction": 0.0})
        sft.run(cfg)
    elif stage == "dpo":
        from alignforge.stages import dpo
        cfg = build_config(DPOConfig, None, {**common, "data.train": str(fixture / "pref.jsonl"),
                                             "train.batch_size": batch, "dpo.beta": 0.1, "dpo.ref_cache": "memory",
                                             "dpo.eval_fraction": 0.0, "dpo.kl_prompts": 0})
        dpo.run(cfg)
    else:
        raise ValueError(f"stage {stage!r}: the alignforge worker knows {', '.join(STAGES)}")
    done = json.loads((out / "DONE").read_text())
    per_step = float(done["tokens"]) / done["step"]
    return {"step_tokens": [per_step] * len(stamps), "stamps": stamps,
            "matmul_params": matmul_params(AutoModelForCausalLM.from_pretrained(fixture / "model")),
            "version": f"alignforge {alignforge.__version__}"}


def worker_main(args) -> int:
    import torch

    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fn = trl_worker if args.worker == "trl" else alignforge_worker
    raw = fn(args.stage, Path(args.fixture), args.warmup + args.steps, args.batch, args.seed)
    raw["setup_s"] = raw["stamps"][0] - t0 if raw["stamps"] else float("nan")
    raw["stamps"] = [s - t0 for s in raw["stamps"]]
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


def run_worker(python: str, library: str, stage: str, args, fixture: Path) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [python, str(Path(__file__).resolve()), "--worker", library, "--stage", stage,
               "--fixture", str(fixture), "--result", str(result), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--seed", str(args.seed),
               "--threads", str(args.threads)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
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
               peak_rss_bytes=usage.ru_maxrss * 1024)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="examples (SFT) or pairs (DPO) per step")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="1 measured step, batch 4; RESULTS.md untouched")
    ap.add_argument("--results", type=Path, default=None, help=f"where to write the Markdown (default {RESULTS})")
    ap.add_argument("--fixture", type=Path, default=BENCH / "_fixture")
    # Worker mode (internal): run one library on one stage and write the raw measurement.
    ap.add_argument("--worker", choices=["trl", "alignforge"], help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.smoke:
        args.steps, args.batch = 1, 4
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"--stages: unknown {', '.join(unknown)}; this version benchmarks {', '.join(STAGES)}")

    import torch
    import transformers

    import alignforge
    from alignforge.perf import measure_matmul_peak

    sys.path.insert(0, str(BENCH))
    import fixture as fixture_mod

    fx = fixture_mod.ensure(args.fixture)
    trl_python = str(ensure_trl_venv())
    trl_version = subprocess.run([trl_python, "-c", "import trl, accelerate; print(trl.__version__, accelerate.__version__)"],
                                 capture_output=True, text=True, check=True).stdout.split()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    peak = measure_matmul_peak(torch.float32, cache=False)
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({args.threads} threads)", flush=True)

    runs: list[Run] = []
    for stage in stages:
        for library, python in (("trl", trl_python), ("alignforge", sys.executable)):
            print(f"{stage}: {library} ...", flush=True)
            runs.append(run_worker(python, library, stage, args, fx))
    rows = summarise(runs, args.warmup, peak)
    table = format_table(rows)
    print(table)
    if args.smoke and args.results is None:
        return 0
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{machine()}; 1-min load average {load_start:.1f} at the start, "
                                                                         f"{os.getloadavg()[0]:.1f} at the end (other work on the box slows both sides)",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "trl": trl_version[0],
                         "accelerate": trl_version[1], "alignforge": alignforge.__version__},
            "settings": {"batch": args.batch, "warm-up steps": args.warmup, "measured steps": args.steps,
                         "threads": args.threads, "seq_len": SEQ_LEN, "lr": LR},
            "peak_gflops": peak / 1e9, "goals": goal_lines(rows),
            "notes": (contention_warning(rows) + "Not benchmarked yet: reward, GRPO, RLOO, PPO, the sampling engine vs "
                      "`model.generate`, and the ≈30 M scale row (issue 11 is open).")}
    out = args.results or RESULTS
    from alignforge.io import atomic_write_text

    atomic_write_text(out, results_markdown(table, meta))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
