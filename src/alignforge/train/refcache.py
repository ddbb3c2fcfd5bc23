"""Reference log-probs computed once, before training, instead of a reference forward every step.

DPO and its relatives need ``log π_ref(y_w|x)`` and ``log π_ref(y_l|x)`` for every pair. The
reference model never changes, so those numbers are a function of (data, reference weights)
only. :func:`reference_logprobs` computes them in one pre-pass (forward only, packed, no grad),
keeps them in memory, and optionally stores them on disk under a key that hashes the encoded
data and the reference weights — so a rerun, a resume, or a β sweep over the same pairs reads
them back, and a change to either the data or the reference model can never reuse stale values.

The pre-pass is part of the stage's wall time (design §8): its cost is one forward over the
data, about 1/3 of one training epoch, against one reference forward per pair *per epoch* on the
naive path — and the reference model can be dropped from memory afterwards.

Distributed: each rank computes a contiguous shard of the pairs and the shards are summed
(all-reduce of zero-filled vectors), so every rank ends with the full vectors.

Packing (shared with the DPO training step): :func:`pair_logprobs` puts the chosen and the
rejected examples of a micro-batch into rows of ``seq_len`` tokens with best-fit packing and a
block-diagonal mask (one forward for both, no attention across examples, little padding), then
puts the per-example sums back in pair order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from alignforge.data.batching import Attention, Example, collate, pack, sequence_logprobs
from alignforge.io import atomic_open
from alignforge.train import distributed as dist

Pair = tuple[Example, Example]


# ---------------------------------------------------------------------------------------------
# Packed forward of pairs
# ---------------------------------------------------------------------------------------------


def pair_logprobs(model, pairs: Sequence[Pair], pad_id: int, *, seq_len: int | None = None,
                  attention: Attention = "mask", packed: bool = True,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` summed response log-probs ``(n,)`` of ``pairs`` in ONE forward.

    ``packed``: best-fit pack the 2n examples into rows of ``seq_len`` (default: the longest
    example) — the padding-free path; otherwise one example per row, padded to the longest
    (what :func:`alignforge.data.batching.batch_pairs` does). Both give the same numbers.
    """
    n = len(pairs)
    examples = [c for c, _ in pairs] + [r for _, r in pairs]
    if packed:
        rows = pack([len(e) for e in examples], seq_len or max(len(e) for e in examples))
    else:
        rows = [[i] for i in range(2 * n)]
    batch = collate(examples, rows, pad_id)
    if device is not None:
        batch = batch.to(device)
    flat = sequence_logprobs(model, batch, attention)
    # collate numbers examples in row order; put them back in [chosen..., rejected...] order.
    order = torch.tensor([i for row in rows for i in row], device=flat.device)
    out = torch.empty_like(flat).index_copy(0, order, flat)
    return out[:n], out[n:]


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def model_fingerprint(model) -> str:
    """SHA-256 of a model's architecture config and every parameter/buffer (names, dtypes, bytes).

    Hashing the weights themselves (not a path or mtime) is what makes the cache safe: the same
    folder retrained, or a LoRA policy merged into a new reference, gives a new key. It reads each
    tensor once (a second or so per GB).
    """
    from alignforge.models.load import unwrap

    m = unwrap(model)
    h = hashlib.sha256()
    cfg = getattr(m, "config", None)
    if cfg is not None:
        d = cfg.to_dict()
        for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache"):
            d.pop(volatile, None)
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    for name, t in sorted(m.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(pairs: Sequence[Pair]) -> str:
    """SHA-256 of the encoded pairs (token ids and loss masks, in order)."""
    h = hashlib.sha256()
    for c, r in pairs:
        for ex in (c, r):
            h.update(json.dumps([ex.input_ids, ex.loss_mask]).encode())
    return h.hexdigest()


def cache_key(pairs: Sequence[Pair], ref_fingerprint: str, attention: Attention = "mask") -> str:
    """The key of a reference cache: data + reference weights (+ how attention was told, for safety)."""
    h = hashlib.sha256()
    h.update(data_fingerprint(pairs).encode())
    h.update(ref_fingerprint.encode())
    h.update(attention.encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# The pre-pass
# ---------------------------------------------------------------------------------------------


def compute_reference_logprobs(ref_model, pairs: Sequence[Pair], pad_id: int, *, batch_size: int = 16,
                               seq_len: int | None = None, attention: Attention = "mask",
                               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """One forward-only pass over all pairs (this rank's shard, then summed over ranks).

    Pairs are visited in order of length so each packed micro-batch holds similar lengths.
    Returns fp32 CPU tensors ``(chosen, rejected)`` of shape ``(len(pairs),)``.
    """
    n = len(pairs)
    chosen = torch.zeros(n, dtype=torch.float32)
    rejected = torch.zeros(n, dtype=torch.float32)
    # Uneven shards are fine here (no gradient mean to keep exact): rank r takes [n·r/w, n·(r+1)/w).
    r, w = dist.rank(), dist.world_size()
    lo, hi = n * r // w, n * (r + 1) // w
    mine = sorted(range(lo, hi), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    was_training = ref_model.training
    ref_model.eval()
    with torch.inference_mode():
        for j in range(0, len(mine), batch_size):
            idx = mine[j:j + batch_size]
            c, r = pair_logprobs(ref_model, [pairs[i] for i in idx], pad_id, seq_len=seq_len, attention=attention,
                                 device=device)
            chosen[idx] = c.float().cpu()
            rejected[idx] = r.float().cpu()
    ref_model.train(was_training)
    if dist.is_distributed():
        both = dist.all_reduce_sum(torch.cat([chosen, rejected]).to(device)).cpu()
        chosen, rejected = both[:n].clone(), both[n:].clone()
    return chosen, rejected


def reference_logprobs(ref_model, pairs: Sequence[Pair], pad_id: int, *, cache_dir: str | Path | None = None,
                       batch_size: int = 16, seq_len: int | None = None, attention: Attention = "mask",
                       device: torch.device | str = "cpu", ref_fingerprint: str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(chosen, rejected, info)``: reference log-probs from the disk cache or a fresh pre-pass.

    ``cache_dir=None`` keeps them in memory only. ``info`` says what happened: ``key``,
    ``hit`` (read from disk), ``path``, ``seconds`` (pre-pass or read time).
    """
    import time

    t0 = time.perf_counter()
    fp = ref_fingerprint or model_fingerprint(ref_model)
    key = cache_key(pairs, fp, attention)
    path = Path(cache_dir) / f"ref-{key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") == key and blob["chosen"].shape == (len(pairs),):
            return blob["chosen"], blob["rejected"], {"key": key, "hit": True, "path": str(path),
                                                       "seconds": time.perf_counter() - t0}
    chosen, rejected = compute_reference_logprobs(ref_model, pairs, pad_id, batch_size=batch_size, seq_len=seq_len,
                                                  attention=attention, device=device)
    if path is not None and dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            torch.save({"key": key, "chosen": chosen, "rejected": rejected, "pairs": len(pairs)}, f)
    dist.barrier()
    return chosen, rejected, {"key": key, "hit": False, "path": str(path) if path else None,
                              "seconds": time.perf_counter() - t0}
