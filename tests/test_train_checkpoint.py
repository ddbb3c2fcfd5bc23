"""Checkpoints: a round trip restores model, optimizer, schedule and every RNG; a crash mid-save
leaves the previous state loadable; metrics.jsonl is cut back to the checkpoint's offset."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from alignforge.config import RuntimeSection, TrainSection
from alignforge.train import checkpoint as ckpt
from alignforge.train.loop import lr_factor, make_optimizer, make_scheduler, optimizer_step
from alignforge.train.tracking import MetricsLogger, read_metrics

T = TrainSection(lr=1e-2, warmup_steps=2, max_steps=10)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    opt = make_optimizer(model, T)
    return model, opt, make_scheduler(opt, T)


def _train_step(model, opt, sched):
    x = torch.randn(5, 4)  # consumes the global torch RNG, as dropout does
    model(x).pow(2).mean().backward()
    optimizer_step(model, opt, sched, 1.0)


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched = _setup()
    for _ in range(3):
        _train_step(model, opt, sched)
    random.seed(5)
    np.random.seed(6)
    ckpt.save_state(tmp_path, model=model, optimizer=opt, scheduler=sched, step=3,
                    data={"epoch": 1, "offset": 7}, metrics_offset=42, extra={"elapsed_s": 1.5})
    lr_at_3 = sched.get_last_lr()
    # the uninterrupted continuation
    expect_py, expect_np = random.random(), np.random.rand()
    _train_step(model, opt, sched)
    expect = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = _setup(seed=123)  # different init and RNG: everything must come from disk
    st = ckpt.load_state(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    assert (st.step, st.data, st.metrics_offset, st.extra) == (3, {"epoch": 1, "offset": 7}, 42, {"elapsed_s": 1.5})
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == lr_at_3
    assert opt2.param_groups[0]["lr"] == lr_at_3[0] == pytest.approx(T.lr * lr_factor(3, T))
    assert (random.random(), np.random.rand()) == (expect_py, expect_np)
    _train_step(model2, opt2, sched2)
    for a, b in zip(expect, model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_nothing_to_resume(tmp_path):
    model, opt, sched = _setup()
    assert ckpt.load_state(tmp_path / "nowhere", model=model, optimizer=opt) is None
    assert not ckpt.has_state(tmp_path)


def test_crash_mid_save_keeps_the_previous_state(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    _train_step(model, opt, sched)
    ckpt.save_state(tmp_path, model=model, optimizer=opt, scheduler=sched, step=1)
    at_step1 = [p.detach().clone() for p in model.parameters()]
    _train_step(model, opt, sched)

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            real_save(obj, f, *a, **k)
            raise OSError("disk full (simulated crash mid-save)")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_state(tmp_path, model=model, optimizer=opt, scheduler=sched, step=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]  # no half-written folder left

    fresh, fopt, fsched = _setup(seed=9)
    assert ckpt.load_state(tmp_path, model=fresh, optimizer=fopt, scheduler=fsched).step == 1
    for a, b in zip(at_step1, fresh.parameters()):
        assert torch.equal(a, b)


def test_kill_between_the_two_renames_and_stale_temp_dirs(tmp_path):
    """kill -9 runs no cleanup: a temp folder stays, and the swap may stop after state → state.old."""
    model, opt, sched = _setup()
    _train_step(model, opt, sched)
    ckpt.save_state(tmp_path, model=model, optimizer=opt, scheduler=sched, step=1)
    os.replace(tmp_path / "state", tmp_path / "state.old")
    stale = tmp_path / ".state.x1y2.tmp"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half a file")
    assert ckpt.has_state(tmp_path)
    fresh, fopt, _ = _setup(seed=9)
    assert ckpt.load_state(tmp_path, model=fresh, optimizer=fopt).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_done_marker_and_clear(tmp_path):
    assert not ckpt.is_done(tmp_path)
    ckpt.mark_done(tmp_path, {"step": 3})
    assert ckpt.is_done(tmp_path) and json.loads((tmp_path / "DONE").read_text()) == {"step": 3}
    (tmp_path / "state").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "keep.txt").write_text("not ours")
    ckpt.clear(tmp_path, also=("tokenizer",))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_metrics_truncated_to_the_checkpoint_offset(tmp_path):
    log = MetricsLogger(tmp_path, RuntimeSection(progress=False))
    log.log(1, loss=2.0)
    log.log(2, loss=1.5, note=float("nan"))
    offset = log.offset()
    log.log(3, loss=1.2)  # written after the checkpoint by the run that then died
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert read_metrics(tmp_path)[1]["note"] == "nan"

    log = MetricsLogger(tmp_path, RuntimeSection(progress=False), resume_offset=offset)
    log.log(3, loss=1.25)
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 1.25

    MetricsLogger(tmp_path).close()  # a new run (no resume offset) starts a fresh file
    assert read_metrics(tmp_path) == []


def test_tensorboard_missing_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install 'alignforge\[tb\]'"):
            MetricsLogger(tmp_path, RuntimeSection(tensorboard=True))
    else:
        log = MetricsLogger(tmp_path, RuntimeSection(tensorboard=True, progress=False))
        log.log(1, loss=1.0)
        log.close()
        assert any((tmp_path / "tb").iterdir())


def test_metrics_file_shorter_than_the_checkpoint_is_refused(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RuntimeError, match="shorter"):
        MetricsLogger(tmp_path, resume_offset=1000)
