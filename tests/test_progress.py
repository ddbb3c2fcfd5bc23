"""The run view: its ETA arithmetic, plain output without control characters when stdout is not a
terminal, stage output kept in <step>/log.txt, and (in a pseudo-terminal) the live view on screen."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignforge.train.progress import RunOutput, RunView, fmt_seconds

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n: ANSI escapes, \r, backspace


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_fmt_seconds():
    assert [fmt_seconds(x) for x in (None, 0, 59.4, 75, 3700)] == ["estimating", "0s", "59s", "1m15s", "1h01m"]


def test_the_eta_scales_the_remaining_sizes_by_this_machines_measured_rate():
    clock, lines = Clock(), []
    view = RunView("t", [("world", "world", 1.0), ("pretrain", "pretrain", 100.0), ("sft", "sft", 50.0),
                         ("eval", "eval", 30.0)], live=False, emit=lines.append, clock=clock)
    view.step_started("world")
    assert view.remaining_text() == "estimating"  # the sized steps ahead have no rate yet
    clock.t = 1.0
    view.step_finished("world", "3 files")
    assert view.remaining() is None  # a 1-second step says nothing about the machine
    view.step_started("pretrain")
    view.bar_started("pretrain", 400)
    clock.t = 21.0
    view.bar_advanced(20)  # 5%: too early for the bar to extrapolate
    assert view.bar_remaining() is None and view.remaining() is None
    clock.t = 41.0
    view.bar_advanced(100)  # 25% in 40 s → 120 s left in this step, the only thing it knows so far
    assert view.bar_remaining() == pytest.approx(120.0)
    assert view.remaining() is None  # sft and eval still need a rate
    clock.t = 201.0
    view.bar_advanced(400)
    view.step_finished("pretrain", "held-out 0.52 bits/byte")
    # pretrain took 200 s for a size of 100: this machine runs at 2 s per reference second.
    assert view.remaining() == pytest.approx(2 * (50 + 30))
    view.step_started("sft")
    clock.t = 231.0  # 30 s into sft, no bar: its size (100 s here) minus what it has used
    assert view.remaining() == pytest.approx((100 - 30) + 60)
    assert lines[0].startswith("[1/4] world (world) started")
    assert "[2/4] pretrain: 100/400 steps (25%)" in "\n".join(lines)
    assert any(x.startswith("[2/4] pretrain done in 3m20s: held-out 0.52 bits/byte · run remaining 2m40s")
               for x in lines)
    assert not any(CONTROL.search(x) for x in lines)


def test_a_plan_with_unsized_steps_says_unknown_not_a_made_up_number():
    view = RunView("t", [("a", "sft", None), ("b", "dpo", None)], live=False, emit=lambda s: None, clock=Clock())
    view.step_started("a")
    assert view.remaining_text() == "unknown"


def _pipeline_yaml(tmp_path: Path) -> Path:
    from alignforge.train.testing import TINY_MODEL, tiny_corpus

    data = tiny_corpus(tmp_path / "data")
    f = tmp_path / "p.yaml"
    f.write_text(f"""run: view
steps:
  - name: pretrain
    set: {{data.train: "{data['train']}", data.eval: "{data['eval']}", model.tokenizer: "{data['tokenizer']}",
           model.overrides: {TINY_MODEL}, runtime.threads: 1, runtime.device: cpu,
           train.seq_len: 32, train.batch_size: 8, train.max_steps: 8, train.warmup_steps: 1,
           train.log_every: 1, train.eval_every: 4, train.save_every: 4}}
  - name: pretrain-again
    stage: pretrain
    set: {{data.train: "{data['train']}", data.eval: "{data['eval']}", model.tokenizer: "{data['tokenizer']}",
           model.overrides: {TINY_MODEL}, runtime.threads: 1, runtime.device: cpu, seed: 1,
           train.seq_len: 32, train.batch_size: 8, train.max_steps: 4, train.warmup_steps: 1,
           train.log_every: 1, train.eval_every: 0, train.save_every: 0}}
""")
    return f


def test_plain_output_is_one_line_per_event_and_the_stage_output_goes_to_its_log(tmp_path, monkeypatch):
    from alignforge.stages.pipeline import load_pipeline, planned_steps, run_pipeline

    monkeypatch.chdir(tmp_path)
    p = load_pipeline(_pipeline_yaml(tmp_path))
    screen = io.StringIO()
    with RunOutput("run", planned_steps(p), stream=screen) as out:
        run_pipeline(p, output=out)
    text = screen.getvalue()
    assert not CONTROL.search(text), repr(text)
    lines = text.splitlines()
    assert lines[0].startswith("[1/2] pretrain (pretrain) started")
    assert re.search(r"^\[1/2\] pretrain done in \d+s: held-out [0-9.]+ bits/byte \(best n-gram [0-9.]+\)", text, re.M)
    assert re.search(r"^\[2/2\] pretrain-again done in \d+s: held-out", text, re.M)
    assert "tokens/s" not in text and "matmul params" not in text  # the stage's own lines are not here ...
    log = (tmp_path / "runs" / "view" / "pretrain" / "log.txt").read_text()
    assert "pipeline: pretrain (pretrain) →" in log and "matmul params" in log  # ... they are in its log

    # Rerun: both steps are done and say so, one line each.
    screen = io.StringIO()
    with RunOutput("run", planned_steps(p), stream=screen) as out:
        run_pipeline(p, output=out)
    assert screen.getvalue().splitlines() == ["[1/2] pretrain already done, skipped",
                                              "[2/2] pretrain-again already done, skipped"]


def test_verbose_also_echoes_the_stage_output(tmp_path, monkeypatch):
    from alignforge.stages.pipeline import load_pipeline, planned_steps, run_pipeline

    monkeypatch.chdir(tmp_path)
    p = load_pipeline(_pipeline_yaml(tmp_path))
    screen = io.StringIO()
    with RunOutput("run", planned_steps(p, ["pretrain"]), stream=screen, verbose=True) as out:
        run_pipeline(p, output=out, only=["pretrain"])
    assert "matmul params" in screen.getvalue() and "[1/1] pretrain done in" in screen.getvalue()


@pytest.mark.skipif(sys.platform != "linux", reason="pty + a Linux terminal")
def test_in_a_pseudo_terminal_the_live_view_is_on_screen(tmp_path):
    pyte = pytest.importorskip("pyte")
    import pty

    f = _pipeline_yaml(tmp_path)
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "30", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alignforge", "pipeline", str(f)], cwd=tmp_path, env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.time() + 300
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal (Linux raises EIO)
            break
        if not data:
            break
        chunks.append(data)
        assert time.time() < deadline, "pipeline did not finish in 300 s"
    proc.wait(timeout=60)
    os.close(master)
    raw = b"".join(chunks)
    assert proc.returncode == 0, raw.decode(errors="replace")[-3000:]
    assert b"\x1b[" in raw  # a live display: cursor movement, colours
    screen = pyte.Screen(120, 30)
    stream = pyte.ByteStream(screen)
    stream.feed(raw.replace(b"\n", b"\r\n") if b"\r\n" not in raw else raw)
    shown = "\n".join(line.rstrip() for line in screen.display)
    assert "alignforge pipeline view" in shown and "remaining" in shown, shown
    assert re.search(r"✓\s+pretrain\s+\d+s\s+held-out [0-9.]+ bits/byte", shown), shown
    assert re.search(r"✓\s+pretrain-again\s+\d+s", shown), shown
    assert "matmul params" not in shown  # stage output stayed in the logs
