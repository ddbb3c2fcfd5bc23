"""Metrics: ``metrics.jsonl`` always (rank 0), a rich progress bar, optional TensorBoard.

One JSON object per line, ``{"step": N, ...}``. The logger knows its byte offset so a checkpoint
can record it; on resume the file is truncated back to that offset, so lines written after the
checkpoint by the interrupted run disappear and the resumed run writes them again: no duplicated
steps, and the file equals an uninterrupted run's (up to timing numbers).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from alignforge.train import distributed as dist
from alignforge.train.progress import BarState, active_view


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # NaN/inf are not JSON; keep them visible rather than crash or drop
    return v


class MetricsLogger:
    """``log(step, loss=..., lr=...)`` → a line in ``<out_dir>/metrics.jsonl`` (+ TensorBoard).

    Only rank 0 writes; on other ranks every method is a no-op, so callers do not branch.
    ``resume_offset``: truncate the file to this many bytes first (from the checkpoint); None
    starts a fresh file (a new run) — pass ``append=True`` to keep what is there instead.
    """

    def __init__(self, out_dir: str | os.PathLike, runtime: Any = None, total_steps: int | None = None,
                 resume_offset: int | None = None, append: bool = False, description: str = "train"):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = dist.is_main()
        self._file = None
        self._tb = None
        self._progress = None
        self._task = None
        self._view = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_offset is not None and self.path.exists():
            if self.path.stat().st_size < resume_offset:  # never pad with NULs: keep what is there
                raise RuntimeError(f"{self.path} is shorter ({self.path.stat().st_size} bytes) than at the "
                                   f"checkpoint ({resume_offset}): it was edited or replaced; move it "
                                   "away to resume, or start over with force=true")
            with open(self.path, "r+b") as f:
                f.truncate(resume_offset)
        elif resume_offset is None and not append and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "ab")
        if runtime is not None and getattr(runtime, "tensorboard", False):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("runtime.tensorboard=true needs TensorBoard: "
                                   "pip install 'alignforge[tb]' (or set runtime.tensorboard=false)") from e
            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))
        show = getattr(runtime, "progress", True) if runtime is not None else True
        self._view = active_view()  # inside a pipeline: its run view shows this stage's bar
        if self._view is not None and total_steps:
            self._view.bar_started(description, total_steps)
        elif show and sys.stderr.isatty() and total_steps:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                      TextColumn("{task.fields[info]}"), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(description, total=total_steps, info="")
            self._fields = BarState(description, total_steps)

    def offset(self) -> int:
        """Bytes written so far (flushed): what a checkpoint stores to truncate back to."""
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    def log(self, step: int, **metrics: Any) -> None:
        if self._file is None:
            return
        row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write((json.dumps(row) + "\n").encode())
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, int(step))
        if self._view is not None:
            self._view.bar_fields(row)
        if self._progress is not None:
            self._fields.update(row)
            self._progress.update(self._task, info=self._fields.info())

    def progress(self, step: int) -> None:
        """Move the bar to ``step`` (call every step; it is cheap)."""
        if self._view is not None:
            self._view.bar_advanced(step)
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def close(self) -> None:
        if self._view is not None:
            self._view.bar_finished()
            self._view = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def last_value(rows: list[dict[str, Any]], key: str) -> float | None:
    """The last numeric value of ``key`` in metrics rows (``None`` if no row has one)."""
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return float(vals[-1]) if vals else None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl (a folder holding one works too)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
