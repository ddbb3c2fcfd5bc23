"""`alignforge demo --quick` from a fresh directory, killed mid-stage and resumed (slow)."""

import json
import os
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
    log = done.stdout + done.stderr
    for step in ("world", "tokenizer", "pretrain"):
        assert f"pipeline: {step} done, skipped" in log
    assert "sft: resuming" in log or "resuming at step" in log

    report = json.loads((root / "eval" / "eval.json").read_text())
    gold = {n: report["sample"][n]["summary"]["all"]["reward"]["value"] for n in ("oracle", "sft", "random")}
    assert gold["oracle"] > gold["sft"] > gold["random"], gold
    for name in ("ppo", "dpo", "rsft", "ppo-hack"):
        assert name in report["sample"] and "win_rate" in report["sample"][name]
    html = (root / "report.html").read_text()
    assert "Headline" in html and "data:image/png;base64," in html and "<script" not in html
