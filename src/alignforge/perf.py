"""Throughput and MFU: ONE shared routine every stage and bench uses (design §8).

MFU = achieved model FLOP/s ÷ the *measured* matmul peak of this machine, in the same process
(same thread settings, same dtype), so the number means "how much of what this box can actually
do in a matmul did we use". Model FLOPs count only the non-embedding matmul parameters N
(:func:`alignforge.models.load.matmul_params`): 6·N per token for forward+backward, 2·N forward
only. Tokens are real (non-pad) tokens. Attention-score FLOPs and the LM head are *not* counted,
which is the usual convention (Kaplan et al. / nanoGPT's 6N) and makes MFU a conservative number
for small models with long sequences or large vocabularies.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


_PEAK_CACHE: dict[tuple, float] = {}


def measure_matmul_peak(dtype: torch.dtype = torch.float32, n: int | None = None, repeats: int = 5,
                        device: str | torch.device = "cpu", min_seconds: float = 0.2,
                        cache: bool = True) -> float:
    """Best-of-``repeats`` FLOP/s of an ``n×n @ n×n`` matmul (2·n³ FLOPs) on ``device``.

    ``n`` defaults to 1024 on CPU (already at the BLAS peak there; 2048 only costs time) and
    8192 on GPU. With ``cache`` the result is kept per (device, dtype, n, threads) for the
    process, so stages run back to back (tests, pipeline) measure once.

    Best, not mean: we want the machine's capability, and on a shared machine the slow runs are
    the ones other processes stole time from. Each repeat runs the matmul enough times to last
    ``min_seconds`` so timer resolution and thread wake-up do not dominate. Runs with the current
    ``torch.get_num_threads()``, i.e. the same threads as training when called from there.
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    key = (str(device), dtype, n, torch.get_num_threads())
    if cache and key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    gen = torch.Generator(device="cpu").manual_seed(0)  # never touches the global RNG
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b, out=out)  # warm-up: thread pool, allocator, kernel selection
    sync()
    t0 = time.perf_counter()
    torch.matmul(a, b, out=out)
    sync()
    one = max(time.perf_counter() - t0, 1e-9)
    iters = max(1, int(min_seconds / one))
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        sync()
        dt = time.perf_counter() - t0
        best = max(best, 2.0 * n**3 * iters / dt)
    _PEAK_CACHE[key] = best
    return best


def train_flops(n_matmul_params: int, tokens: int) -> float:
    """Forward + backward FLOPs: 6 · N · T."""
    return 6.0 * n_matmul_params * tokens


def forward_flops(n_matmul_params: int, tokens: int) -> float:
    """Forward-only FLOPs (scoring, reference log-probs, a reward model): 2 · N · T."""
    return 2.0 * n_matmul_params * tokens


@dataclass
class Throughput:
    """Counts real tokens and FLOPs over wall time; reports tokens/s and MFU.

    ``flops_per_token`` is 6·N for training (default) or 2·N for forward-only work. Use
    :meth:`add` after each optimizer step (or any unit of work), :meth:`window` for the rate since
    the last call (what metrics.jsonl logs), :meth:`total` for the whole run. ``pause``/``resume``
    keep evaluation and checkpoint time out of the training rate.
    """

    n_matmul_params: int
    peak_flops: float | None = None
    flops_per_token: float | None = None
    _t_start: float = field(default=0.0, repr=False)
    _t_window: float = field(default=0.0, repr=False)
    _paused_at: float | None = field(default=None, repr=False)
    _paused_total: float = field(default=0.0, repr=False)
    _paused_window: float = field(default=0.0, repr=False)
    tokens: int = 0
    _window_tokens: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.flops_per_token is None:
            self.flops_per_token = train_flops(self.n_matmul_params, 1)
        self._t_start = self._t_window = time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += int(tokens)
        self._window_tokens += int(tokens)

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            dt = time.perf_counter() - self._paused_at
            self._paused_total += dt
            self._paused_window += dt
            self._paused_at = None

    def _rates(self, tokens: int, seconds: float) -> dict[str, float]:
        seconds = max(seconds, 1e-9)
        tps = tokens / seconds
        out = {"tokens_per_s": tps, "flops_per_s": tps * self.flops_per_token}
        if self.peak_flops:
            out["mfu"] = out["flops_per_s"] / self.peak_flops
        return out

    def window(self) -> dict[str, float]:
        """Rates since the previous ``window()`` call (or the start), then start a new window."""
        now = time.perf_counter()
        out = self._rates(self._window_tokens, now - self._t_window - self._paused_window)
        self._t_window, self._window_tokens, self._paused_window = now, 0, 0.0
        return out

    def total(self) -> dict[str, float]:
        """Rates over everything added since construction, minus paused time."""
        out = self._rates(self.tokens, time.perf_counter() - self._t_start - self._paused_total)
        out["tokens"] = float(self.tokens)
        return out


def machine() -> str:
    """The CPU model, logical CPUs and OS: what a number printed by a bench was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def cpu_flags(cpuinfo: str | None = None) -> str:
    """The ISA flags that decide CPU matmul speed per precision (AMX / AVX-512 bf16, AVX-512, AVX2)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown (no /proc/cpuinfo)"
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    shown = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return " ".join(shown) or "none of amx_bf16 / avx512_bf16 / avx512f / avx2"
