"""``runs/<run>/<stage>/``: resumable training state, the final HF model, and the DONE marker.

Layout (design §5)::

    <out>/state/          everything needed to continue bit-identically, written atomically
        model.pt          model state_dict (fp32)
        optimizer.pt      optimizer state_dict
        scheduler.pt      lr-scheduler state_dict
        rng.pt            per rank: python, numpy, torch CPU and CUDA generator states
        trainer.json      step, data position, metrics.jsonl byte offset, world size, extras
    <out>/model/          final model + tokenizer in HF format (plain ``from_pretrained`` loads it)
    <out>/DONE            written last: the stage finished; it is not recomputed unless forced

Why resume is exact: the state is captured at an optimizer-step boundary after everything that
step does (train, log, eval), the data order is a pure function of (seed, epoch) so the saved
(epoch, offset) restores it, every generator the step could touch is restored, and the metrics
file is cut back to the byte offset it had at the checkpoint.

Atomicity: the whole ``state/`` folder is built in a temporary sibling and swapped in
(:func:`alignforge.io.atomic_dir`), so a crash (even ``kill -9``) mid-save leaves the previous
state loadable; :func:`load_state` finishes an interrupted swap and removes stale temp folders.
Only rank 0 writes; the other ranks send it their RNG states.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignforge.io import atomic_dir, atomic_write_text, recover_dir
from alignforge.train import distributed as dist

STATE = "state"
MODEL = "model"
DONE = "DONE"


# ---------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's generator states, in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Model / optimizer state dicts (plain, DDP, FSDP2)
# ---------------------------------------------------------------------------------------------


def _is_fsdp(model: torch.nn.Module) -> bool:
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def _options():
    """Full (unsharded) state dicts keyed by parameter names, whatever the wrapping.

    One format for a plain model, DDP and FSDP — so a run can resume under another wrapper
    (a DDP checkpoint continued with FSDP, or on one process with the same world size), and the
    optimizer state is keyed by names, not by parameter order. Distributed: gathered to CPU,
    kept on rank 0 (the writer).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if dist.is_distributed():
        return StateDictOptions(full_state_dict=True, cpu_offload=True)
    return StateDictOptions()


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def _optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def _load_model_state(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    # strict: a checkpoint of another architecture must fail loudly, not load half the weights
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=dist.is_distributed(), strict=True))


def _load_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, sd,
                             options=StateDictOptions(full_state_dict=dist.is_distributed()))


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What :func:`load_state` restored besides the tensors: where to continue from."""

    step: int
    data: dict[str, Any] = field(default_factory=dict)
    metrics_offset: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def save_state(out_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any = None, step: int, data: dict[str, Any] | None = None,
               metrics_offset: int = 0, extra: dict[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/state/`` atomically. Call on EVERY rank (collectives inside).

    ``data``: the data position (e.g. ``EpochSampler.state_dict()``); ``metrics_offset``:
    ``MetricsLogger.offset()``; ``extra``: small JSON-able values to carry over (elapsed time).
    """
    path = Path(out_dir) / STATE
    model_sd = _model_state(model)
    optim_sd = _optim_state(model, optimizer)
    rngs = dist.all_gather_object(rng_state())
    if dist.is_main():
        meta = {"step": int(step), "data": data or {}, "metrics_offset": int(metrics_offset),
                "world_size": dist.world_size(), "extra": extra or {}}
        with atomic_dir(path) as tmp:
            torch.save(model_sd, tmp / "model.pt")
            torch.save(optim_sd, tmp / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rngs, tmp / "rng.pt")
            # Written last inside the temp dir; the swap makes all files appear together anyway.
            (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
    dist.barrier()
    return path


def _clean_stale(out_dir: Path) -> None:
    """Finish an interrupted swap, drop temp folders a killed save left behind (rank 0 only)."""
    if not dist.is_main():
        return
    recover_dir(out_dir / STATE)
    for tmp in out_dir.glob(f".{STATE}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def has_state(out_dir: str | Path) -> bool:
    p = Path(out_dir)
    return (p / STATE / "trainer.json").is_file() or (p / (STATE + ".old") / "trainer.json").is_file()


def load_state(out_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               scheduler: Any = None, restore_rng: bool = True) -> TrainState | None:
    """Restore ``<out_dir>/state/`` into the given objects; None when there is nothing to resume.

    Call on every rank after the model is wrapped and the optimizer built. RNG states are per
    rank; resuming with a different number of processes is refused (it could not be exact).
    """
    out_dir = Path(out_dir)
    _clean_stale(out_dir)
    dist.barrier()
    path = out_dir / STATE
    if not (path / "trainer.json").is_file():
        return None
    meta = json.loads((path / "trainer.json").read_text())
    if meta.get("world_size", 1) != dist.world_size():
        raise RuntimeError(f"{path}: saved by {meta.get('world_size')} processes, resuming with "
                           f"{dist.world_size()}; use the same number of processes (or force=true)")
    _load_model_state(model, torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    if optimizer is not None:
        _load_optim_state(model, optimizer, torch.load(path / "optimizer.pt", map_location="cpu",
                                                       weights_only=True))
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if restore_rng:
        rngs = torch.load(path / "rng.pt", weights_only=True)
        set_rng_state(rngs[dist.rank()])
    return TrainState(step=int(meta["step"]), data=meta.get("data", {}),
                      metrics_offset=int(meta.get("metrics_offset", 0)), extra=meta.get("extra", {}))


# ---------------------------------------------------------------------------------------------
# Finished stages
# ---------------------------------------------------------------------------------------------


def is_done(out_dir: str | Path) -> bool:
    return (Path(out_dir) / DONE).is_file()


def clear(out_dir: str | Path, also: tuple[str, ...] = ()) -> None:
    """Forget a previous run in ``out_dir`` (``force=true``): DONE, model, state, metrics, and
    the folders named in ``also`` (e.g. a tokenizer the stage trained)."""
    if not dist.is_main():
        dist.barrier()
        return
    out_dir = Path(out_dir)
    (out_dir / DONE).unlink(missing_ok=True)
    for name in (STATE, STATE + ".old", MODEL, MODEL + ".old", *also):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    dist.barrier()


def save_model_dir(path: str | Path, model: torch.nn.Module, tokenizer: Any = None) -> Path:
    """Model (+ tokenizer) as a standard HF directory, atomically. Rank 0 writes.

    Uses ``alignforge.models.load.save_model`` (the one way every stage saves); an FSDP model
    is gathered to full tensors first and saved from those.
    """
    path = Path(path)
    # FSDP: every rank takes part in gathering the full weights; rank 0 writes them.
    full = _model_state(model) if _is_fsdp(model) else None
    if full is not None:
        # Gathered copies of a tied parameter (embeddings = lm_head) are separate tensors; make
        # them one again so save_pretrained stores it once, as it does for an unsharded model.
        first: dict[int, str] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in first and name in full:
                full[name] = full[first[id(param)]]
            first.setdefault(id(param), name)
    if dist.is_main():
        from alignforge.models.load import quiet_transformers, save_model

        if full is None:
            save_model(dist.unwrap(model), tokenizer, path)
        else:
            with quiet_transformers(), atomic_dir(path) as tmp:
                model.save_pretrained(tmp, state_dict=full, safe_serialization=True)
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)
    dist.barrier()
    return path


def mark_done(out_dir: str | Path, info: dict[str, Any] | None = None) -> None:
    """Write the DONE marker (rank 0), after everything else is in place."""
    if dist.is_main():
        atomic_write_text(Path(out_dir) / DONE, json.dumps(info or {}, indent=1) + "\n")
    dist.barrier()
