"""Exact resume: a pretrain subprocess killed by SIGKILL after a checkpoint, resumed, ends with
weights bit-identical (torch.equal) to an uninterrupted run with the same seed, and its
metrics.jsonl has every step once, with the same losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignforge.stages import pretrain
from alignforge.train.testing import tiny_corpus, tiny_pretrain_args

STEPS = 40


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_kill9_then_resume_is_bit_identical(tmp_path):
    torch.set_num_threads(1)
    tiny_corpus(tmp_path / "data")
    # dropout on, so the restored torch RNG state matters too (not only data order and Adam).
    common = dict(max_steps=STEPS, save_every=3, eval_every=5)
    dropout = ["model.overrides={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
               "num_key_value_heads: 4, intermediate_size: 64, max_position_embeddings: 64, "
               "attention_dropout: 0.1}"]

    ref = tmp_path / "ref"
    assert pretrain.main(tiny_pretrain_args(tmp_path / "data", ref, **common) + dropout) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "alignforge", "pretrain",
           *tiny_pretrain_args(tmp_path / "data", out, **common), *dropout]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Kill as soon as a checkpoint exists, i.e. mid-run (steps continue after step 3).
        deadline = time.time() + 240
        while not (out / "state" / "trainer.json").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "DONE").exists(), "the run finished before it was killed"
    saved_step = json.loads((out / "state" / "trainer.json").read_text())["step"]
    assert 0 < saved_step < STEPS

    # Resume in a fresh call (same config); it continues from the checkpoint.
    assert pretrain.main(tiny_pretrain_args(tmp_path / "data", out, **common) + dropout) == 0
    assert (out / "DONE").exists()

    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"

    rows_ref, rows = _rows(ref), _rows(out)
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, STEPS + 1)), "metrics.jsonl must hold every step exactly once"
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows_ref]
    assert [r.get("eval_bpb") for r in rows] == [r.get("eval_bpb") for r in rows_ref]


def test_finished_stage_is_not_recomputed_unless_forced(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = tiny_pretrain_args(tmp_path / "data", out, max_steps=2, save_every=0, eval_every=0)
    assert pretrain.main(args) == 0
    first = _weights(out)
    stamp = (out / "DONE").stat().st_mtime_ns
    assert pretrain.main(args) == 0
    assert "is finished (DONE)" in capsys.readouterr().out
    assert (out / "DONE").stat().st_mtime_ns == stamp

    # force=true starts over: same seed → the same weights again, a fresh metrics file.
    assert pretrain.main(args + ["force=true"]) == 0
    assert (out / "DONE").stat().st_mtime_ns != stamp
    assert [r["step"] for r in _rows(out)] == [1, 2]
    for k, v in _weights(out).items():
        assert torch.equal(v, first[k])
