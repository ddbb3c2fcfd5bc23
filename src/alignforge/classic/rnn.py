"""An LSTM language model: the step between counting (n-grams) and attention (the transformer).

Lecture 002 walks n-gram → RNN → transformer; this file is the middle step, scored in the same unit
as the other two — **bits per byte** of the held-out text (design §8), so the pretraining stage's
``baselines.json`` ranks all three on one scale.

* :class:`LSTMLM` — token embedding → ``nn.LSTM`` → linear readout. Its input vocabulary has one
  extra id, ``BOS = vocab_size``, that starts every document (as in :mod:`alignforge.classic.ngram`,
  where documents are padded with BOS); it is never predicted.
* :func:`train_lstm_lm` — truncated back-propagation through time on windows of the training
  stream (``BOS doc₁ BOS doc₂ …``), each window from a zero state: windows drawn uniformly by a
  seeded generator, AdamW, gradient clipping, cosine decay. It saves its whole state (weights,
  optimizer, generator, step) atomically every ``save_every`` steps and resumes from it, so a
  killed run ends bit-identical to an uninterrupted one (tested).
* :func:`lstm_bits_per_byte` — each held-out document scored from a fresh state after BOS, only its
  own tokens (no end-of-document symbol): exactly what :func:`alignforge.classic.ngram.bits_per_byte`
  scores.

Step-bounded like every stage (``steps``), so the same seed gives the same model on any machine;
``max_minutes`` is an optional cap for the "same time budget as the transformer" comparison.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from alignforge.io import atomic_write_bytes


class LSTMLM(nn.Module):
    """``vocab_size`` output tokens; input ids ``0 .. vocab_size`` (the last one is BOS)."""

    def __init__(self, vocab_size: int, embed: int = 128, hidden: int = 512, layers: int = 1):
        super().__init__()
        self.vocab_size, self.bos = vocab_size, vocab_size
        self.embed = nn.Embedding(vocab_size + 1, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.readout = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor, state: Optional[tuple[torch.Tensor, torch.Tensor]] = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``(batch, time)`` ids → ``(batch, time, vocab)`` logits and the final ``(h, c)``."""
        h, state = self.lstm(self.embed(ids), state)
        return self.readout(h), state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class LSTMTrainConfig:
    """How :func:`train_lstm_lm` trains (the pretraining stage's ``rnn`` section fills it)."""

    steps: int = 300
    embed: int = 128
    hidden: int = 512
    layers: int = 1
    seq_len: int = 128        # truncated-BPTT window (tokens predicted per window)
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 20
    save_every: int = 50      # 0 = only at the end
    max_minutes: Optional[float] = None
    seed: int = 0


def training_stream(docs: Sequence[Sequence[int]], bos: int) -> torch.Tensor:
    """``BOS doc₁ BOS doc₂ …`` as one long tensor (a window may cross a document boundary, as the
    transformer's packed blocks do; the BOS after it tells the model a new document starts)."""
    out: list[int] = []
    for d in docs:
        out.append(bos)
        out.extend(d)
    return torch.tensor(out, dtype=torch.long)


def _lr_at(step: int, cfg: LSTMTrainConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak (the pretraining stage's schedule shape)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def window_loss(model: LSTMLM, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of ``(batch, seq_len + 1)`` windows; BOS targets ignored."""
    logits, _ = model(windows[:, :-1])
    targets = windows[:, 1:].masked_fill(windows[:, 1:] == model.bos, -100)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                       ignore_index=-100)


STATE_FILE = "rnn_state.pt"


def train_lstm_lm(train_docs: Sequence[Sequence[int]], vocab_size: int, cfg: LSTMTrainConfig,
                  state_dir: str | Path | None = None, log: Callable[[str], None] = lambda s: None,
                  device: str | torch.device = "cpu") -> tuple[LSTMLM, dict]:
    """Train an :class:`LSTMLM` on the documents' ids; returns the model and ``{steps, seconds, stopped}``.

    With ``state_dir``, the whole training state is saved there (``rnn_state.pt``) every
    ``cfg.save_every`` steps and at the end, and a run that finds one resumes from it — after a kill
    at any point, the result equals an uninterrupted run's. The file records ``cfg``: a state saved
    under other settings is an error, not silently continued.
    """
    torch.manual_seed(cfg.seed)
    model = LSTMLM(vocab_size, cfg.embed, cfg.hidden, cfg.layers).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    stream = training_stream(train_docs, model.bos)
    if len(stream) < cfg.seq_len + 2:
        raise ValueError(f"LSTM LM: the training text has {len(stream)} tokens, fewer than one window "
                         f"(rnn.seq_len + 1 = {cfg.seq_len + 1})")
    step, seconds_before = 0, 0.0
    path = Path(state_dir) / STATE_FILE if state_dir is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=False, map_location="cpu")
        if saved["config"] != asdict(cfg):
            raise ValueError(f"{path}: saved with rnn settings {saved['config']}, now {asdict(cfg)}; "
                             f"start over (force=true) or restore them")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        step, seconds_before = saved["step"], saved["seconds"]
        log(f"LSTM LM: resuming at step {step}")
    t0 = time.perf_counter()

    def save() -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                    "step": step, "seconds": seconds_before + time.perf_counter() - t0, "config": asdict(cfg)}, buf)
        atomic_write_bytes(path, buf.getvalue())

    stopped = "steps"
    model.train()
    while step < cfg.steps:
        starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        windows = torch.stack([stream[s:s + cfg.seq_len + 1] for s in starts.tolist()]).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss = window_loss(model, windows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        if step % 50 == 0 or step == cfg.steps:
            log(f"LSTM LM: step {step}/{cfg.steps} loss {loss.item():.3f}")
        out_of_time = cfg.max_minutes is not None and \
            (seconds_before + time.perf_counter() - t0) / 60 >= cfg.max_minutes
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or out_of_time:
            save()
        if out_of_time:
            stopped = "max_minutes"
            break
    model.eval()
    return model, {"steps": step, "seconds": seconds_before + time.perf_counter() - t0, "stopped": stopped}


@torch.no_grad()
def lstm_bits_per_byte(model: LSTMLM, texts: Sequence[str], encode: Callable[[str], list[int]],
                       batch_size: int = 32) -> float:
    """Total ``-log2 P`` of each held-out text's tokens (from a fresh state after BOS) over its UTF-8 bytes."""
    docs = [(encode(t), len(t.encode("utf-8"))) for t in texts]
    nbytes = sum(b for _, b in docs)
    if nbytes == 0:
        raise ValueError("no held-out text to score")
    docs = sorted((d for d, _ in docs if d), key=len)  # similar lengths together: little padding
    bits = 0.0
    for i in range(0, len(docs), batch_size):
        chunk = docs[i:i + batch_size]
        L = max(len(d) for d in chunk)
        # Right-padded: the LSTM reads left to right, so padding after a document never changes its scores.
        ids = torch.full((len(chunk), L + 1), model.bos, dtype=torch.long)
        targets = torch.full((len(chunk), L), -100, dtype=torch.long)
        for b, d in enumerate(chunk):
            ids[b, 1:len(d) + 1] = torch.tensor(d)
            targets[b, :len(d)] = torch.tensor(d)
        logits, _ = model(ids[:, :-1].to(model.readout.weight.device))
        nats = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                           targets.reshape(-1).to(logits.device), ignore_index=-100, reduction="sum")
        bits += nats.item() / math.log(2)
    return bits / nbytes
