"""torchrun support: process-group init, DDP/FSDP wrap, rank-0 I/O, per-rank seeds, sharding.

Every function works unchanged in a plain single process (rank 0 of 1), so stages call them
unconditionally and the same code runs under ``python -m alignforge`` and ``torchrun``.
Backend: NCCL when this process drives a GPU, gloo on CPU (that is what CI tests).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def init_distributed(device: torch.device | None = None, timeout_minutes: float = 30.0) -> bool:
    """Join the torchrun process group if launched by torchrun (WORLD_SIZE > 1).

    Returns True when running distributed. Safe to call twice. ``device``: the device this rank
    trains on; CUDA → NCCL (and ``cuda.set_device`` so collectives use the right GPU), else gloo.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("launched with WORLD_SIZE > 1 but this torch build has no torch.distributed")
    use_cuda = (device.type == "cuda") if device is not None else torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Rank 0: the only process that writes files, logs metrics and shows progress."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor | float:
    """Sum over ranks (a float in → a float out). Identity in one process."""
    if not is_distributed():
        return x
    is_tensor = isinstance(x, torch.Tensor)
    t = x.detach().clone() if is_tensor else torch.tensor(float(x), dtype=torch.float64)
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(x.device) if is_tensor else float(t)


def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor | float:
    """Mean over ranks (a float in → a float out). Identity in one process."""
    if not is_distributed():
        return x
    return all_reduce_sum(x) / world_size()


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (small Python objects: metrics, RNG states)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_seed(seed: int) -> int:
    """This rank's seed for dropout/sampling: rank 0 keeps ``seed`` (a 1-process run is rank 0).

    Distinct per rank so ranks do not draw identical dropout masks or samples; data order is
    NOT derived from this (it is global, from (seed, epoch), then sharded).
    """
    return seed + 1_000_003 * rank()


def shard_range(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """[start, end) of rank ``r``'s contiguous shard of ``n`` items; ``n`` must split evenly.

    Even splitting is required, not rounded: with packed equal-length sequences, DDP's gradient
    mean over ranks equals the global-batch mean only if every rank holds the same count.
    """
    r = rank() if r is None else r
    w = world_size() if w is None else w
    if n % w:
        raise ValueError(f"global batch of {n} does not split evenly over {w} processes")
    k = n // w
    return r * k, (r + 1) * k


def shard(items: Any, r: int | None = None, w: int | None = None) -> Any:
    """This rank's contiguous slice of a global batch (tensor or list)."""
    start, end = shard_range(len(items), r, w)
    return items[start:end]


def on_main(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: run only on rank 0 (returns None elsewhere). For writers of shared files."""

    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    wrapper.__name__ = getattr(fn, "__name__", "on_main")
    wrapper.__doc__ = fn.__doc__
    return wrapper


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. trains and saves a tokenizer), the others after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def wrap_model(model: torch.nn.Module, runtime: Any, device: torch.device) -> torch.nn.Module:
    """DDP (or FSDP with ``runtime.fsdp``) when distributed; the model itself otherwise.

    FSDP uses the per-parameter sharding API (``fully_shard``, FSDP2): each transformer block is
    its own unit (so only one block's full weights exist at a time), then the root.
    """
    model.to(device)
    if not is_distributed():
        return model
    if getattr(runtime, "fsdp", False):
        from torch.distributed.fsdp import fully_shard

        block_names = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in block_names:
                fully_shard(module)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying model of a DDP wrapper (FSDP2 shards in place, nothing to unwrap)."""
    return getattr(model, "module", model)


def no_sync(model: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on non-final micro-batches of an accumulation step.

    DDP has ``no_sync()``; FSDP2 has ``set_requires_gradient_sync`` (reduce-scatter skipped).
    """
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    if skip and hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def average_gradients(*models) -> None:
    """Mean of every gradient over ranks (no-op in one process). Plain all-reduce instead of DDP
    because the value model is called through ``token_scores`` (its backbone and head directly),
    which a DDP wrapper's forward hooks would not see."""
    if not is_distributed():
        return
    for model in models:
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= world_size()


def gathered_mean(row: dict[str, float]) -> dict[str, float]:
    """Every value averaged over ranks (each rank holds the same number of responses)."""
    if not is_distributed():
        return row
    keys = sorted(row)
    t = all_reduce_mean(torch.tensor([float(row[k]) for k in keys], dtype=torch.float64))
    return dict(zip(keys, t.tolist()))
