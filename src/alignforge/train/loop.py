"""The shared pieces of every training loop: device, precision, optimizer, schedule, one step.

Stages keep their loops explicit (read them top to bottom); what two stages would otherwise
copy lives here once:

- :func:`resolve_device`, :func:`autocast`, :func:`apply_threads` — ``runtime.*`` switches;
- :func:`make_optimizer` — AdamW with weight decay only on matmul weights;
- :func:`lr_factor` / :func:`make_scheduler` — linear warmup then cosine / linear / constant;
- :func:`optimizer_step` — clip, step, schedule, zero grads (gradient accumulation is the
  caller's loop: scale each micro-batch loss by its share of the global batch);
- :func:`seed_everything`, :func:`epoch_order` — seeding and data order as a pure function of
  (seed, epoch), which is what makes resume exact;
- :func:`lm_loss`, :func:`bits_per_byte` — the causal-LM loss and held-out bits per byte;
- :func:`start_stage`, :class:`StageClock`, :func:`out_of_time` — DONE/force, and the training
  time across resumes against ``train.max_minutes``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------------------------


def resolve_device(runtime: Any) -> torch.device:
    """``runtime.device``: auto → CUDA when present (this rank's GPU under torchrun), else CPU."""
    from alignforge.train import distributed as dist

    want = getattr(runtime, "device", "auto")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda but torch sees no CUDA device "
                           "(use runtime.device=auto or cpu)")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", dist.local_rank() % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


#: What ``runtime.precision: auto`` resolves to on a CPU, overriding the ISA check (fp32 | bf16).
#: The test suite pins it to fp32 (tests/conftest.py) so one suite holds on every CPU vendor.
AUTO_PRECISION_ENV = "ALIGNFORGE_AUTO_PRECISION"


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has a bf16 matmul unit: AMX-BF16 tiles (Intel Sapphire Rapids on) or AVX512-BF16
    dot products (AMD Zen 4, Intel Cooper Lake). Measured with torch 2.13 at 2 threads, a tiny-4m training
    step (batch 16 × 256) under bf16 autocast against fp32: 1.4-1.75x on a Xeon with AMX, 1.57x on an AMD
    EPYC with AVX512-BF16 (matmul peak 356 vs 146 GFLOP/s); `python bench/train_throughput.py --variants
    baseline --precision fp32,bf16` prints both on yours. AVX2-only CPUs emulate bf16: fp32 there. A flag
    check, not a timing: the choice must not depend on what else the machine was doing when a probe ran."""
    try:
        if torch.cpu._is_amx_tile_supported() and _cpuinfo_has("amx_bf16"):
            return True
    except AttributeError:  # a torch without the AMX probe: fall through to the flag
        pass
    return _cpuinfo_has("avx512_bf16", missing=False)


def _cpuinfo_has(flag: str, path: str = "/proc/cpuinfo", missing: bool = True) -> bool:
    # torch reports AMX *tiles*; AMX-FP16-only or AMX-INT8-only parts would also set them. Linux lists
    # the bf16 unit separately; where there is no flags list, answer ``missing`` (True: trust torch's probe).
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return flag in line.split()
    except OSError:
        pass
    return missing


def resolve_precision(runtime: Any, device: torch.device) -> str:
    """``runtime.precision`` → ``"bf16"`` or ``"fp32"`` on this device (see :func:`autocast_dtype`)."""
    import os

    precision = getattr(runtime, "precision", "auto")
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16"
        if precision == "bf16":
            raise RuntimeError("runtime.precision=bf16 but this GPU does not support bf16")
        return "fp32"
    if precision == "bf16":
        return "bf16"
    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip().lower()
    if forced:
        if forced not in ("fp32", "bf16"):
            raise RuntimeError(f"{AUTO_PRECISION_ENV}={forced!r}: expected fp32 or bf16")
        return forced
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast_dtype(runtime: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    auto → bf16 on a CUDA device that supports it and on a CPU with AMX-BF16
    (:func:`cpu_has_fast_bf16`), fp32 everywhere else; ``ALIGNFORGE_AUTO_PRECISION`` overrides
    what auto picks on a CPU. Explicit ``bf16`` is honoured on any CPU. Master weights and
    optimizer state stay fp32 either way: autocast only changes the dtype of the ops inside it,
    and log-probs that feed ratios and KL are computed from fp32 logits (rollout.response_logits).
    Within one precision a run is exactly reproducible and resumes bit-identically; fp32 and
    bf16 runs of the same seed are different runs.
    """
    return torch.bfloat16 if resolve_precision(runtime, device) == "bf16" else None


def compute_dtype(runtime: Any, device: torch.device) -> torch.dtype:
    """The dtype the matmuls run in (bf16 under autocast, else fp32): MFU's peak is measured in it."""
    return autocast_dtype(runtime, device) or torch.float32


def autocast(runtime: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """``with autocast(cfg.runtime, device): loss = ...`` — bf16 autocast or a no-op."""
    dtype = autocast_dtype(runtime, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def apply_threads(runtime: Any) -> None:
    """``runtime.threads`` → torch intra-op threads (None leaves torch's choice)."""
    threads = getattr(runtime, "threads", None)
    if threads:
        torch.set_num_threads(int(threads))


# ---------------------------------------------------------------------------------------------
# Seeds and data order
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of ``range(n)`` that depends only on (seed, epoch).

    Data order must never come from the global RNG: then it would depend on how much randomness
    everything else consumed before it (dropout, sampling, a tokenizer), and a resumed run would
    see different batches. A private generator keyed by (seed, epoch) makes the order a pure
    function of the position, so restoring (epoch, offset) restores the data exactly.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=g)


class EpochSampler:
    """Endless stream of example indices, reshuffled each epoch by :func:`epoch_order`.

    State is just (epoch, offset) — saved in checkpoints as the data position.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n <= 0:
            raise ValueError("no training examples (after packing) to sample from")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.offset = 0, 0
        self._order: torch.Tensor | None = None

    def _current(self) -> torch.Tensor:
        if self._order is None:
            self._order = (epoch_order(self.n, self.seed, self.epoch) if self.shuffle
                           else torch.arange(self.n))
        return self._order

    def take(self, k: int) -> torch.Tensor:
        """The next ``k`` indices (crossing into the next epoch when this one runs out)."""
        out = []
        while k > 0:
            order = self._current()
            chunk = order[self.offset:self.offset + k]
            out.append(chunk)
            k -= len(chunk)
            self.offset += len(chunk)
            if self.offset >= self.n:
                self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        return torch.cat(out)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("n", self.n) != self.n:
            raise RuntimeError(f"checkpoint was made with {state['n']} training examples, now there are "
                               f"{self.n}: the data changed, so the run cannot resume exactly "
                               "(use force=true to start over)")
        self.epoch, self.offset, self._order = int(state["epoch"]), int(state["offset"]), None


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters: decay matmul weights; no decay on norms, biases, embeddings.

    Decaying a norm gain pulls it toward 0 (not toward its init 1) and decaying embeddings
    shrinks rare tokens' vectors just for being rare; both hurt. Tied lm_head/embedding weights
    are one tensor and are seen once, as an embedding.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            no_decay.add(id(module.weight))
    decay, other, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2 or id(p) in no_decay or "norm" in name.lower():
            other.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: torch.nn.Module, train: Any) -> torch.optim.Optimizer:
    """AdamW from ``train.lr/weight_decay/beta1/beta2/eps``.

    ``foreach`` (multi-tensor) AdamW: one kernel launch per op over all tensors instead of one per
    parameter. For a small model the optimizer step is a visible share of a step, and Python
    per-parameter overhead dominates it.
    """
    return torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr,
                             betas=(train.beta1, train.beta2), eps=train.eps, foreach=True)


def lr_factor(step: int, train: Any) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based).

    Warmup: (step+1)/warmup for step < warmup, so the first step already moves (lr/warmup) and
    step warmup-1 is at the peak. Then, with progress p = (step-warmup)/(max_steps-warmup) in
    [0, 1): cosine = r + (1-r)·½(1+cos πp), linear = 1 - (1-r)·p, constant = 1, where
    r = min_lr_ratio.
    """
    warmup = max(0, int(train.warmup_steps))
    if step < warmup:
        return (step + 1) / warmup
    if train.schedule == "constant":
        return 1.0
    span = max(1, int(train.max_steps) - warmup)
    progress = min(1.0, (step - warmup) / span)
    r = float(train.min_lr_ratio)
    if train.schedule == "cosine":
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if train.schedule == "linear":
        return 1.0 - (1.0 - r) * progress
    raise ValueError(f"unknown schedule {train.schedule!r}; expected cosine, linear or constant")


def make_scheduler(optimizer: torch.optim.Optimizer, train: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over :func:`lr_factor`; its state (last_epoch) is all a checkpoint needs."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train))


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   grad_clip: float = 0.0) -> float:
    """Clip (if ``grad_clip`` > 0), step optimizer and schedule, clear grads; return the grad norm.

    The norm is the pre-clip global L2 norm (what is worth logging: spikes show here first).
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip and grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in params])) if params else torch.tensor(0.0)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# ---------------------------------------------------------------------------------------------
# Causal LM loss and bits per byte
# ---------------------------------------------------------------------------------------------


def lm_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
            reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of ``targets`` (already shifted; -100 = ignore) given ``inputs``."""
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=-100, reduction=reduction)


def pack_stream(token_lists: Iterable[Sequence[int]], eos_id: int) -> torch.Tensor:
    """Documents joined into one token stream, each followed by ``eos_id``."""
    out: list[int] = []
    for ids in token_lists:
        out.extend(ids)
        out.append(eos_id)
    return torch.tensor(out, dtype=torch.long)


def pack_blocks(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[n_blocks, seq_len + 1]`` windows with stride ``seq_len`` (one token of overlap).

    Inputs are ``block[:-1]`` and targets ``block[1:]``: every token after the first is
    predicted exactly once and every input is exactly ``seq_len`` long (no padding). The tail
    that does not fill a block is dropped (at most ``seq_len`` tokens of the training stream).
    """
    n = (len(stream) - 1) // seq_len
    if n <= 0:
        return torch.empty(0, seq_len + 1, dtype=torch.long)
    return stream[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()


@torch.no_grad()
def heldout_nats(model: torch.nn.Module, stream: torch.Tensor, seq_len: int, batch_size: int,
                 device: torch.device, ignore_ids: Sequence[int] = (),
                 ctx: contextlib.AbstractContextManager | None = None,
                 shard: tuple[int, int] = (0, 1)) -> tuple[float, float]:
    """Σ −ln p(token) over a held-out token stream → ``(total_nats, scored_tokens)``.

    The whole stream is scored (the last block padded and masked), so every text token but the
    very first is counted. Targets in ``ignore_ids`` (eos and other specials: they stand for no
    bytes of text) are left out, as nanochat does, so tokenizers that mark document ends
    differently compare honestly. ``shard=(rank, world)`` scores every world-th block; sum the
    parts over ranks and divide with :func:`bits_per_byte`.
    """
    rank, world = shard
    n = len(stream) - 1
    all_starts = list(range(0, max(n, 0), seq_len))
    # Every rank runs the same number of forwards (FSDP gathers weights inside each one, so a
    # rank with one block fewer would hang the others): short shards get a fully masked block.
    per_rank = -(-len(all_starts) // world)
    starts = all_starts[rank::world]
    starts += [-1] * (per_rank - len(starts))
    total, count = torch.zeros((), dtype=torch.float64), 0
    was_training = model.training
    model.eval()
    ignore = torch.tensor(sorted(set(ignore_ids)), dtype=torch.long)
    for i in range(0, len(starts), batch_size):
        xs, ys = [], []
        for s in starts[i:i + batch_size]:
            chunk = stream[s:s + seq_len + 1] if s >= 0 else stream[:0]
            x = torch.zeros(seq_len, dtype=torch.long)
            y = torch.full((seq_len,), -100, dtype=torch.long)
            if len(chunk) > 1:
                x[: len(chunk) - 1] = chunk[:-1]
                y[: len(chunk) - 1] = chunk[1:]
            if len(ignore):
                y[torch.isin(y, ignore)] = -100
            xs.append(x)
            ys.append(y)
        x, y = torch.stack(xs).to(device), torch.stack(ys).to(device)
        with ctx if ctx is not None else contextlib.nullcontext():
            nats = lm_loss(model, x, y, reduction="sum")
        total += nats.double().cpu()
        count += int((y != -100).sum())
    model.train(was_training)
    return float(total), float(count)


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Bits per byte (design §8 perplexity): summed nats ÷ ln 2 ÷ UTF-8 bytes of the text."""
    return total_nats / math.log(2) / max(1, n_bytes)


def start_stage(cfg: Any, name: str, clear_also: Sequence[str] = (),
                prompts: Callable[[], Sequence[Any] | None] | None = None) -> tuple[Any, torch.device, bool]:
    """The opening every training stage shares: CPU threads, device, torchrun init, DONE, and the
    memory check.

    Returns ``(out, device, finished)``. A finished stage (``DONE`` in its folder) is not
    recomputed unless ``cfg.force``, which clears the folder (and ``clear_also`` beside it) first;
    an unfinished one with ``state/`` resumes inside the stage. A stage that would run prints its
    memory estimate and is refused here, before it loads a model (and before ``force`` clears
    anything), when the estimate does not fit the device (:func:`alignforge.train.memcheck.check_memory`;
    ``prompts``: for a stage that samples from prompts of unbounded length, a function returning
    them, so that the check can measure the longest).
    """
    from alignforge.train import checkpoint as ckpt
    from alignforge.train import distributed as dist
    from alignforge.train.memcheck import check_memory

    out = cfg.out_dir()
    apply_threads(cfg.runtime)
    device = resolve_device(cfg.runtime)
    dist.init_distributed(device)
    if ckpt.is_done(out) and not cfg.force:
        if dist.is_main():
            print(f"{name}: {out} is finished (DONE); set force=true to recompute")
        return out, device, True
    check_memory(cfg, device, prompts=prompts)
    if cfg.force:
        ckpt.clear(out, also=tuple(clear_also))
    if dist.is_main():
        print(f"{name}: {precision_note(cfg.runtime, device)}")
    return out, device, False


def precision_note(runtime: Any, device: torch.device) -> str:
    """'bf16 autocast (runtime.precision=auto: this CPU has a bf16 matmul unit: AMX-BF16 or AVX512-BF16)' — what a stage runs in, and why."""
    import os

    want = getattr(runtime, "precision", "auto")
    got = resolve_precision(runtime, device)
    if want != "auto":
        why = f"runtime.precision={want}"
    elif os.environ.get(AUTO_PRECISION_ENV, "").strip():
        why = f"runtime.precision=auto, {AUTO_PRECISION_ENV}={os.environ[AUTO_PRECISION_ENV].strip()}"
    elif device.type == "cuda":
        why = "runtime.precision=auto on " + ("a GPU with bf16" if got == "bf16" else "a GPU without bf16")
    else:
        why = "runtime.precision=auto: " + ("this CPU has a bf16 matmul unit: AMX-BF16 or AVX512-BF16" if got == "bf16" else "no AMX-BF16 or AVX512-BF16 on this CPU")
    return ("bf16 autocast, fp32 master weights" if got == "bf16" else "fp32") + f" ({why})"


class StageClock:
    """A stage's training time across resumes: the seconds its checkpoint saved plus this process's.
    ``train.max_minutes`` is checked against it and every checkpoint stores it (``elapsed_s``)."""

    def __init__(self, elapsed_before: float = 0.0):
        self.elapsed_before = elapsed_before
        self.start = time.perf_counter()

    def elapsed_s(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start


def out_of_time(train: Any, clock: StageClock) -> bool:
    """Has the stage spent ``train.max_minutes``? Rank 0 decides and broadcasts its answer, so that
    every process stops after the same step (their clocks differ a little)."""
    from alignforge.train import distributed as dist

    return dist.broadcast_object(train.max_minutes is not None and clock.elapsed_s() / 60 >= train.max_minutes)
