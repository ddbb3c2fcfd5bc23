"""Crashes on purpose, for the tests that a stage resumes exactly after it was killed mid-run.

``crash_after_save``: the run dies right after writing a checkpoint (DPO, SFT, RSFT).
``crash_on_call``: a reward or preference function that kills the run at its n-th call (the RL stages).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import pytest


@contextlib.contextmanager
def crash_after_save(monkeypatch, ckpt, message: str = "simulated crash after the step-2 checkpoint"):
    """In the block, ``ckpt.save_state`` saves, then raises ``KeyboardInterrupt(message)``, which the block
    must raise (as ``pytest.raises`` asserts); after it, the real ``save_state`` is back."""
    real = ckpt.save_state

    def save_then_crash(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt(message)

    monkeypatch.setattr(ckpt, "save_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(ckpt, "save_state", real)


def crash_on_call(fn: Callable, n: int, message: Optional[str] = None) -> Callable:
    """``fn``, except that its ``n``-th call raises ``KeyboardInterrupt(message)`` instead."""
    calls = {"n": 0}

    def crashing(*a):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt() if message is None else KeyboardInterrupt(message)
        return fn(*a)

    return crashing
