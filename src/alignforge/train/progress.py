"""What a person sees while a pipeline runs: one view of its steps with an ETA, the running stage's bar,
one line per finished step — and the stages' own output in ``<step>/log.txt``.

Two outputs of one :class:`RunView`:

- in a terminal, a live view (rich): every step with waiting / running / done, its time and key
  figure; the run's elapsed and estimated remaining time; the current stage's bar (steps, tokens/s,
  loss or score);
- anywhere else (CI, a log file), plain lines, one per event, with the same information and no
  control characters: a step starting, a quarter of its bar done, a step finished.

Stages do not know about the view: their :class:`~alignforge.train.tracking.MetricsLogger` finds the
active one (:func:`active_view`) and reports its bar there instead of drawing its own.

The ETA: a step's *size* is its expected seconds on a reference machine (``expected_s``, the demo's
measured step times); once steps have finished, the remaining sizes are scaled by how much slower or
faster this machine was on them. The running step's own bar, once a tenth of it is done, extrapolates
its own remainder. Until some step gives a rate, the view says "estimating".
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

_ACTIVE: list["RunView"] = []

#: Below this many expected seconds a finished step says little about the machine's speed (loading
#: and start-up dominate it), so it does not set the ETA's rate.
RATE_MIN_S = 10.0
#: The running bar extrapolates itself once this fraction of it is done.
BAR_MIN_FRACTION = 0.1


def active_view() -> "RunView | None":
    """The view of the pipeline that is running in this process, if any (MetricsLogger reports to it)."""
    return _ACTIVE[-1] if _ACTIVE else None


def fmt_seconds(s: float | None) -> str:
    """``75 → '1m15s'``, ``3700 → '1h01m'``; None → 'estimating'."""
    if s is None:
        return "estimating"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1000:.1f}k tok/s" if tokens_per_s >= 1000 else f"{tokens_per_s:.0f} tok/s"


@dataclass
class StepState:
    name: str
    stage: str
    expected_s: float | None = None
    status: str = "waiting"  # waiting | running | done | skipped | failed
    started: float | None = None
    seconds: float | None = None
    figure: str = ""


@dataclass
class BarState:
    description: str
    total: int
    done: int = 0
    started: float = 0.0
    fields: dict[str, float] = field(default_factory=dict)

    def update(self, row: dict[str, Any]) -> None:
        for key in ("loss", "score", "kl", "tokens_per_s"):
            v = row.get(key)
            if isinstance(v, (int, float)):
                self.fields[key] = float(v)

    def info(self) -> str:
        """``loss 2.31 · 5.2k tok/s``: the figures a stage logs that say how it is going."""
        parts = []
        for key, label in (("loss", "loss"), ("score", "score"), ("kl", "KL")):
            if key in self.fields:
                parts.append(f"{label} {self.fields[key]:.3f}")
        if "tokens_per_s" in self.fields:
            parts.append(fmt_rate(self.fields["tokens_per_s"]))
        return " · ".join(parts)


class RunView:
    """The state of one pipeline run, updated by events; rendered live or as plain lines.

    ``emit`` receives the plain lines: every event in plain mode; in live mode only a failure (the
    table already holds a line per step). ``clock`` is injectable so tests need no sleeping.
    """

    def __init__(self, title: str, steps: list[tuple[str, str, float | None]], *, live: bool,
                 emit: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.title, self.live, self.emit, self.clock = title, live, emit, clock
        self.steps = [StepState(n, s, e) for n, s, e in steps]
        self.start = clock()
        self.bar: BarState | None = None
        self._quarters = 0

    # ------------------------------------------------------------------------------ events
    def _step(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name:
                return s
        s = StepState(name, name)  # a step the plan did not list (e.g. a round step): append it
        self.steps.append(s)
        return s

    def _label(self, step: StepState) -> str:
        width = len(str(len(self.steps)))
        return f"[{self.steps.index(step) + 1:>{width}}/{len(self.steps)}] {step.name}"

    def _say(self, text: str) -> None:
        if not self.live:
            self.emit(text)

    def step_started(self, name: str) -> None:
        s = self._step(name)
        s.status, s.started, self.bar = "running", self.clock(), None
        self._say(f"{self._label(s)} ({s.stage}) started · run elapsed {fmt_seconds(self.elapsed())}, "
                  f"remaining {self.remaining_text()}")

    def step_skipped(self, name: str) -> None:
        s = self._step(name)
        s.status, s.seconds, s.figure = "skipped", 0.0, "already done"
        self._say(f"{self._label(s)} already done, skipped")

    def step_finished(self, name: str, figure: str = "") -> None:
        s = self._step(name)
        s.status, s.seconds, s.figure, self.bar = "done", self.clock() - (s.started or self.clock()), figure, None
        self._say(f"{self._label(s)} done in {fmt_seconds(s.seconds)}" + (f": {figure}" if figure else "")
                  + f" · run remaining {self.remaining_text()}")

    def step_failed(self, name: str, error: str, stopped: bool = False) -> None:
        """The step raised (``stopped``: it was interrupted, which is not its fault)."""
        s = self._step(name)
        s.status, s.seconds, s.figure, self.bar = "failed", self.clock() - (s.started or self.clock()), error, None
        self.emit(f"{self._label(s)} {'stopped' if stopped else 'FAILED'} after {fmt_seconds(s.seconds)}: {error}")

    def bar_started(self, description: str, total: int) -> None:
        self.bar, self._quarters = BarState(description, max(1, int(total)), started=self.clock()), 0

    def bar_advanced(self, done: int) -> None:
        if self.bar is None:
            return
        self.bar.done = min(int(done), self.bar.total)
        quarter = 4 * self.bar.done // self.bar.total
        if not self.live and 0 < quarter < 4 and quarter > self._quarters:  # 25%, 50%, 75%: enough for a log
            self._quarters = quarter
            running = next((s for s in self.steps if s.status == "running"), None)
            label = self._label(running) if running else self.bar.description
            info = self.bar.info()
            self._say(f"{label}: {self.bar.done}/{self.bar.total} steps ({25 * quarter}%)"
                      + (f", {info}" if info else "") + f" · step remaining {fmt_seconds(self.bar_remaining())}, "
                      f"run remaining {self.remaining_text()}")

    def bar_fields(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(row)

    def bar_finished(self) -> None:
        if self.bar is not None:
            self.bar.done = self.bar.total

    # ------------------------------------------------------------------------------ time
    def elapsed(self) -> float:
        return self.clock() - self.start

    def _rate(self) -> float | None:
        """This machine's seconds per reference second, from the finished steps that had a size."""
        spent = sized = 0.0
        for s in self.steps:
            if s.status == "done" and s.expected_s and s.expected_s >= RATE_MIN_S and s.seconds is not None:
                spent, sized = spent + s.seconds, sized + s.expected_s
        return spent / sized if sized else None

    def bar_remaining(self) -> float | None:
        """The running bar's own extrapolation, once a tenth of it is done."""
        b = self.bar
        if b is None or b.done < BAR_MIN_FRACTION * b.total:
            return None
        return (self.clock() - b.started) * (b.total - b.done) / b.done

    def remaining(self) -> float | None:
        """Seconds left for the whole run, or None while there is nothing to estimate from."""
        rate = self._rate()
        running = [s for s in self.steps if s.status == "running"]
        waiting = [s for s in self.steps if s.status == "waiting"]
        total = 0.0
        for s in running:
            own = self.bar_remaining()
            if own is None:
                if rate is None or not s.expected_s:
                    return None
                own = max(0.0, s.expected_s * rate - (self.clock() - (s.started or self.clock())))
            total += own
        for s in waiting:
            if s.expected_s is None:
                return None  # a step of unknown size: no honest total
            if s.expected_s >= RATE_MIN_S and rate is None:
                return None
            total += s.expected_s * (rate or 1.0)
        return total

    def remaining_text(self) -> str:
        """The run's remaining time in words: a duration, 'estimating' (sizes known, no rate yet), or
        'unknown' (a step of the plan has no size, e.g. a YAML pipeline: only the running bar is timed)."""
        unsized = any(s.expected_s is None for s in self.steps if s.status in ("waiting", "running"))
        if unsized:
            return "unknown"
        return fmt_seconds(self.remaining())

    # ------------------------------------------------------------------------------ live rendering
    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        marks = {"done": ("✓", "green"), "skipped": ("✓", "dim"), "running": ("▶", "bold yellow"),
                 "waiting": ("·", "dim"), "failed": ("✗", "bold red")}
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(overflow="ellipsis", no_wrap=True)
        for s in self.steps:
            mark, style = marks[s.status]
            if s.status == "running":
                when = fmt_seconds(self.clock() - (s.started or self.clock()))
            elif s.seconds is not None and s.status != "skipped":
                when = fmt_seconds(s.seconds)
            else:
                when = ""
            table.add_row(Text(mark, style=style), Text(s.name, style=style if s.status != "done" else ""),
                          when, Text(s.figure or ("running" if s.status == "running" else s.status),
                                     style="" if s.status == "done" else "dim"))
        head = Text.assemble((self.title, "bold"), f"   elapsed {fmt_seconds(self.elapsed())}",
                             "   remaining ", (self.remaining_text(), "bold"))
        parts: list[Any] = [head, table]
        if self.bar is not None:
            b = self.bar
            line = Table.grid(padding=(0, 1))
            line.add_column(no_wrap=True)
            line.add_column(width=30)
            line.add_column(no_wrap=True)
            line.add_row(Text(b.description, style="bold"), ProgressBar(total=b.total, completed=b.done, width=30),
                         f"{b.done}/{b.total}  step remaining {fmt_seconds(self.bar_remaining())}"
                         + (f"  {b.info()}" if b.info() else ""))
            parts.append(line)
        return Group(*parts)


class _Tee(io.TextIOBase):
    """A text stream that writes to a log file and, optionally, echoes each write."""

    def __init__(self, log: TextIO, echo: Callable[[str], None] | None):
        self.log, self.echo = log, echo

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        if self.echo is not None:
            self.echo(text)
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:  # a stage that asks is not writing to the terminal any more
        return False


class RunOutput:
    """Chooses live or plain output for a run, owns the live display, and captures stage output.

    ``with RunOutput(title, steps) as out:`` then ``out.view`` gets the events and
    ``with out.capture(log_path):`` around each stage sends its prints there (and to the screen with
    ``verbose``).
    """

    def __init__(self, title: str, steps: list[tuple[str, str, float | None]], *, stream: TextIO | None = None,
                 verbose: bool = False, live: bool | None = None, width: int | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.verbose = verbose
        self._live_display = None
        self.console = None
        if self.live:
            from rich.console import Console

            self.console = Console(file=self.stream, width=width, force_terminal=True)
        self.view = RunView(title, steps, live=self.live, emit=self.line)

    def line(self, text: str) -> None:
        """A line for the person watching: above the live view, or plain."""
        if self._live_display is not None:
            self._live_display.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def echo(self, text: str) -> None:
        """Raw stage output with ``-v``: above the live view, or straight through."""
        if self._live_display is not None:
            self._live_display.console.print(text, end="", highlight=False, markup=False)
        else:
            self.stream.write(text)
            self.stream.flush()

    def __enter__(self) -> "RunOutput":
        if self.live:
            from rich.live import Live

            self._live_display = Live(self.view, console=self.console, refresh_per_second=4, transient=False,
                                      redirect_stdout=False, redirect_stderr=False)
            self._live_display.start()
        _ACTIVE.append(self.view)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self.view)
        if self._live_display is not None:
            self._live_display.refresh()
            self._live_display.stop()
            self._live_display = None

    @contextlib.contextmanager
    def capture(self, log_path: Path) -> Iterator[None]:
        """Send this block's stdout and stderr to ``log_path`` (appended: a resumed step keeps its history)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8", errors="backslashreplace") as log:
            tee = _Tee(log, self.echo if self.verbose else None)
            with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):  # type: ignore[type-var]
                yield
