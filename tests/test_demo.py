"""`alignforge demo --quick` from a fresh directory, killed mid-stage and resumed (slow)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_quick_killed_then_resumed_reports_oracle_over_sft_over_random(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "alignforge", "demo", "--quick"]
    root = tmp_path / "runs" / "demo-quick"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        # Kill -9 once SFT has written a checkpoint: mid-stage, after finished stages.
        deadline = time.time() + 600
        while not (root / "sft" / "state").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "demo never reached the SFT stage"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (root / "sft" / "PIPELINE_DONE").exists()

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    # Not a terminal: plain lines, one per event, no control characters; the stages' output is in the logs.
    out = done.stdout
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out), repr(out[:2000])
    for step in ("world", "tokenizer", "pretrain"):
        assert re.search(rf"^\[ ?\d+/\d+\] {step} already done, skipped$", out, re.M), out
    assert re.search(r"^\[ ?\d+/\d+\] sft done in \d+s: held-out loss [0-9.]+", out, re.M), out
    assert re.search(r"^\[ ?\d+/\d+\] reward done in \d+s: gold accuracy [0-9.]+", out, re.M), out
    assert "matmul params" not in out and "| policy |" not in out  # stage internals and tables stay in the logs
    sft_log = (root / "sft" / "log.txt").read_text()
    assert "sft: resuming" in sft_log or "resuming at step" in sft_log
    assert re.search(r"^PPO (beat|did not beat) SFT: gold win-rate [0-9.]+ \[[0-9.]+, [0-9.]+\] at KL", out, re.M), out
    assert re.search(r"^The β = 0 run (shows|does not show) reward hacking \(proxy [+-]", out, re.M), out
    assert f"report: {(root / 'report.html').resolve().as_uri()}" in out

    report = json.loads((root / "eval" / "eval.json").read_text())
    gold = {n: report["sample"][n]["summary"]["all"]["reward"]["value"] for n in ("oracle", "sft", "random")}
    assert gold["oracle"] > gold["sft"] > gold["random"], gold
    for name in ("ppo", "dpo", "rsft", "ppo-hack"):
        assert name in report["sample"] and "win_rate" in report["sample"][name]
    html = (root / "report.html").read_text()
    assert "Headline" in html and "data:image/png;base64," in html and "<script" not in html


@pytest.mark.parametrize("quick", [True, False])
def test_every_demo_step_builds_a_valid_config_full_included(tmp_path, quick):
    """`demo --full` adds frontier, RLOO/GRPO and iterate-round steps: each must resolve to a strict
    stage config (an unknown or mistyped key would only surface ~10 minutes into a run)."""
    from alignforge.stages.demo import demo_pipeline
    from alignforge.stages.pipeline import step_config

    p = demo_pipeline(quick=quick, full=True, out_root=str(tmp_path), time_cap=30.0, threads=1)
    names = [s.name for s in p.steps]
    assert "eval" not in names and names[-1] == "eval-full"
    refs = {n: str(tmp_path / n) for n in names + ["policy", "round", "prev_round"] + [s.name for s in p.round_steps]}
    refs["round"] = "1"
    for step in p.steps + p.round_steps:
        cfg = step_config(p, step, tmp_path / step.name, refs)
        assert cfg.runtime.threads == (None if step.stage in ("world", "tokenizer") else 1)
        if hasattr(cfg, "train") and step.stage in ("pretrain", "sft", "reward", "dpo"):
            assert cfg.train.max_minutes == 30.0
    evals = {s.name: step_config(p, s, tmp_path / s.name, refs) for s in p.steps if s.stage == "eval"}
    full = evals["eval-full"].eval
    assert full.best_of_n == [2, 4, 8, 16] and len(full.names) == len(full.checkpoints) == 12
    ppo_it = step_config(p, p.round_steps[2], tmp_path / "ppo-it", refs)
    assert ppo_it.model.init == refs["policy"] and ppo_it.ref.init == refs["sft"]
    assert p.rounds == 2 and demo_pipeline(quick=quick).rounds == 0


@pytest.mark.parametrize("quick", [True, False])
def test_small_world_trains_its_tokenizer_on_the_demonstrations_and_mixes_pretraining_into_sft(tmp_path, quick):
    """`--world small`'s two fixes for SFT (issue 17): a vocabulary that has seen the demonstrations
    (a refusal is otherwise spelled in byte tokens the pretraining never trained) and SFT-ptx on the
    world's corpus in the chat template (otherwise SFT overwrites the stored facts)."""
    from alignforge.stages.demo import demo_pipeline
    from alignforge.stages.pipeline import step_config

    p = demo_pipeline(quick=quick, out_root=str(tmp_path), world="small", threads=1)
    refs = {s.name: str(tmp_path / s.name) for s in p.steps} | {"policy": str(tmp_path / "sft")}
    cfg = {s.name: step_config(p, s, tmp_path / s.name, refs) for s in p.steps}
    assert cfg["tokenizer"].tokenizer.also_train_on == [str(tmp_path / "world" / "sft.jsonl")]
    sft = cfg["sft"].sft
    assert sft.ptx_coef == 1.0 and sft.ptx_chat_dialogues and sft.ptx_data == str(tmp_path / "world" / "corpus.jsonl")
    assert cfg["pretrain"].chat_dialogues
    assert cfg["ppo"].ppo.ptx_coef == 1.0 and cfg["ppo"].ppo.ptx_chat_dialogues  # PPO-ptx, as SFT-ptx
    assert cfg["ppo-hack"].ppo.ptx_coef == 0.0  # the hack shows an unchecked proxy: nothing holds it back
    assert cfg["sft"].train.max_steps == (30 if quick else 360)
    default = demo_pipeline(quick=quick, out_root=str(tmp_path / "d"), threads=1)
    dcfg = {s.name: step_config(default, s, tmp_path / "d" / s.name, refs) for s in default.steps
            if s.name in ("tokenizer", "sft")}
    assert dcfg["tokenizer"].tokenizer.also_train_on == [] and dcfg["sft"].sft.ptx_coef == 0.0


@pytest.mark.parametrize("quick", [True, False])
def test_vs_big_adds_a_4x_model_with_the_same_data_and_steps_and_an_eval_against_it(tmp_path, quick):
    """`demo --vs-big` (issue 20 §2): the larger model differs from the demo's only in size and the
    1/width pretraining lr; eval-big ranks every policy against its SFT. With --full too."""
    from alignforge.models.load import build_model, matmul_params
    from alignforge.stages.demo import demo_pipeline
    from alignforge.stages.pipeline import step_config

    p = demo_pipeline(quick=quick, out_root=str(tmp_path), world="small", threads=1, vs_big=True, full=True)
    refs = {s.name: str(tmp_path / s.name) for s in p.steps} | {"policy": str(tmp_path / "sft")}
    cfg = {s.name: step_config(p, s, tmp_path / s.name, refs) for s in p.steps}
    small, big = cfg["pretrain"], cfg["pretrain-big"]
    ratio = matmul_params(build_model(big.model.preset, 512)) / matmul_params(build_model(small.model.preset, 512))
    assert 3.5 < ratio < 4.5
    assert big.train.max_steps == small.train.max_steps and big.train.batch_size == small.train.batch_size
    assert big.data.train == small.data.train and big.model.tokenizer == small.model.tokenizer
    assert big.train.lr == pytest.approx(small.train.lr * {True: 128 / 256, False: 256 / 384}[quick])
    sft_big, sft = cfg["sft-big"], cfg["sft"]
    assert sft_big.model.init == refs["pretrain-big"] and sft_big.train.max_steps == sft.train.max_steps
    assert sft_big.sft.ptx_coef == sft.sft.ptx_coef and sft_big.train.lr == sft.train.lr
    ev = cfg["eval-big"].eval
    assert ev.baseline == "sft-big" and ev.names[0] == "sft-big" and "ppo" in ev.names
    assert ev.checkpoints[ev.names.index("ppo")] == refs["ppo"] and ev.max_prompts == cfg["eval-full"].eval.max_prompts
    # GPT-3 "prompted": the larger pretrained model with the world's demonstrations as its shots.
    assert ev.prompted == ["pretrain-big"] and ev.shots is None and ev.world == cfg["eval-full"].eval.world
