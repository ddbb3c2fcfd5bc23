"""Shared loop pieces: schedule values by hand, weight-decay groups, gradient accumulation ≡ big
batch, data order from (seed, epoch), packing, and bits per byte against a hand computation."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from alignforge.config import RuntimeSection, TrainSection
from alignforge.models.load import build_model
from alignforge.train.loop import (EpochSampler, autocast_dtype, bits_per_byte, epoch_order, heldout_nats,
                                   lm_loss, lr_factor, make_optimizer, make_scheduler, optimizer_step,
                                   pack_blocks, pack_stream, param_groups, resolve_device)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=64, max_position_embeddings=64)


def test_schedule_values_by_hand():
    t = TrainSection(warmup_steps=4, max_steps=14, min_lr_ratio=0.1, schedule="cosine")
    # warmup: (s+1)/4
    assert [lr_factor(s, t) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # cosine over 10 steps after warmup: p = (s-4)/10
    assert lr_factor(4, t) == pytest.approx(1.0)
    assert lr_factor(9, t) == pytest.approx(0.1 + 0.9 * 0.5)           # p = 0.5: halfway
    assert lr_factor(14, t) == pytest.approx(0.1)                        # p = 1: the floor
    assert lr_factor(6, t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    lin = TrainSection(warmup_steps=0, max_steps=10, min_lr_ratio=0.0, schedule="linear")
    assert [lr_factor(s, lin) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    const = TrainSection(warmup_steps=2, max_steps=10, schedule="constant")
    assert [lr_factor(s, const) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]


def test_scheduler_drives_the_optimizer_lr():
    t = TrainSection(lr=1e-2, warmup_steps=2, max_steps=6, min_lr_ratio=0.0, schedule="linear")
    model = torch.nn.Linear(3, 3)
    opt = make_optimizer(model, t)
    sched = make_scheduler(opt, t)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        model(torch.ones(1, 3)).sum().backward()
        optimizer_step(model, opt, sched, grad_clip=1.0)
    assert seen == pytest.approx([5e-3, 1e-2, 1e-2, 7.5e-3, 5e-3, 2.5e-3])


def test_no_weight_decay_on_norms_biases_embeddings():
    model = build_model("tiny-1m", 100, seed=0, **TINY)
    decay, other = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    named = dict(model.named_parameters())
    assert id(named["model.embed_tokens.weight"]) not in ids  # tied with lm_head: seen once
    assert all(id(p) not in ids for n, p in named.items() if "norm" in n)
    assert id(named["model.layers.0.self_attn.q_proj.weight"]) in ids
    n_all = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(other["params"]) == n_all


# Gradient accumulation changes only the order of fp32 additions, never what is added, so the
# accumulated and the one-batch gradient differ by summation rounding alone. Unit roundoff
# u = 2^-24 ≈ 6e-8; the longest reduction behind one gradient element here is ~n = 16·16 tokens
# × 100 (the vocabulary, the widest contraction) ≈ 2.6e4 terms, whose rounding errors add like a
# random walk: ≈ u·√n ≈ 1e-5 of the terms' scale. Scale means the tensor's largest gradient (or its norm), not
# the element itself: elements that cancel to ~0 have no bounded *relative* error on any BLAS.
# Measured on AMD EPYC, and against a float64 and a reshuffled-order batch-16 gradient: ≤ 5e-7;
# a real accumulation bug (a missing 1/4, a microbatch dropped or counted twice) is ≥ 0.25.
GRAD_TOL = 1e-5


def test_grad_accumulation_4x4_equals_batch_16():
    torch.manual_seed(0)
    data = torch.randint(0, 100, (16, 17))
    t = TrainSection(lr=1e-2, warmup_steps=0, max_steps=10, grad_clip=1.0)
    base = build_model("tiny-1m", 100, seed=0, **TINY)

    big = copy.deepcopy(base)
    lm_loss(big, data[:, :-1], data[:, 1:]).backward()
    acc = copy.deepcopy(base)
    for i in range(4):
        mb = data[4 * i:4 * (i + 1)]
        (lm_loss(acc, mb[:, :-1], mb[:, 1:]) / 4).backward()
    grads = {n: p.grad.clone() for n, p in big.named_parameters()}
    for (n, a), (_, b) in zip(big.named_parameters(), acc.named_parameters()):
        scale = a.grad.abs().max().item()
        assert scale > 0, n
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=GRAD_TOL * scale, msg=n)
        assert (b.grad - a.grad).norm() <= GRAD_TOL * a.grad.norm(), n

    norms = []
    for model in (big, acc):
        opt = make_optimizer(model, t)
        norms.append(optimizer_step(model, opt, make_scheduler(opt, t), t.grad_clip))
    assert norms[1] == pytest.approx(norms[0], rel=GRAD_TOL)
    # One AdamW step. Its first update is lr·ĝ/(|ĝ|+eps) (m̂ = ĝ, √v̂ = |ĝ|; ĝ the clipped
    # gradient) plus weight decay, identical on both sides. That is ≈ lr·sign(ĝ): scale-invariant
    # (so a missing 1/4 shows only in the gradient check above), and it amplifies rounding where
    # |ĝ| is near eps or 0 — two gradients GRAD_TOL apart can step up to 2·lr apart there (the
    # Intel AVX-512 failure; reproduced here with a float64 or reordered batch-16 gradient: an
    # element of layers.1.mlp.gate_proj with |ĝ| ≈ 3e-9 < eps). With the two ĝ within
    # δ = GRAD_TOL·max|ĝ| and |ĝ| > δ, the update's derivative eps/(|ĝ|+eps)² bounds the
    # difference by lr·eps·δ/(|ĝ|−δ)², ≤ 1e-3·lr once |ĝ| ≥ δ + √(1e3·eps·δ). There the weights must
    # agree to 1e-3·lr (fp32 rounding of θ is ~1e-5·lr); below it, Adam's sign decides, not the
    # accumulation. The threshold excludes well under 10% of elements (~0.1% here).
    clip = min(1.0, t.grad_clip / norms[0]) if t.grad_clip else 1.0
    compared = total = 0
    for (n, a), (_, b) in zip(big.named_parameters(), acc.named_parameters()):
        g = grads[n].abs() * clip
        delta = GRAD_TOL * g.max().item()
        stable = g >= delta + math.sqrt(1e3 * t.eps * delta)
        torch.testing.assert_close(b[stable], a[stable], rtol=0, atol=1e-3 * t.lr, msg=n)
        compared += int(stable.sum())
        total += g.numel()
    assert compared >= 0.9 * total, (compared, total)
    moved = max((a - b).abs().max().item() for a, b in zip(big.parameters(), base.parameters()))
    assert moved > 0.5 * t.lr, "the step must have moved the weights"


def test_epoch_order_is_a_function_of_seed_and_epoch_only():
    a = epoch_order(50, seed=3, epoch=1)
    torch.rand(100)  # consuming global randomness must not change the data order
    assert torch.equal(a, epoch_order(50, seed=3, epoch=1))
    assert not torch.equal(a, epoch_order(50, seed=3, epoch=2))
    assert sorted(a.tolist()) == list(range(50))


def test_sampler_crosses_epochs_and_restores_its_position():
    s = EpochSampler(5, seed=1)
    first = s.take(3)
    state = s.state_dict()
    rest = s.take(4)  # 2 from epoch 0, 2 from epoch 1
    assert torch.equal(torch.cat([first, rest[:2]]).sort().values, torch.arange(5))
    assert torch.equal(rest[2:], epoch_order(5, 1, 1)[:2])
    s2 = EpochSampler(5, seed=1)
    s2.load_state_dict(state)
    assert torch.equal(s2.take(4), rest)
    with pytest.raises(RuntimeError, match="the data changed"):
        EpochSampler(6, seed=1).load_state_dict(state)


def test_pack_stream_and_blocks():
    stream = pack_stream([[1, 2, 3], [4, 5]], eos_id=0)
    assert stream.tolist() == [1, 2, 3, 0, 4, 5, 0]
    blocks = pack_blocks(stream, seq_len=3)  # windows of 4, stride 3
    assert blocks.tolist() == [[1, 2, 3, 0], [0, 4, 5, 0]]
    assert pack_blocks(stream, seq_len=10).shape == (0, 11)


class _Uniform(torch.nn.Module):
    """Logits all zero: every token has probability 1/V, so −ln p = ln V exactly."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_bits_per_byte_by_hand():
    V = 64
    stream = torch.tensor([5, 6, 7, 1, 8, 9, 1, 10, 11, 12])  # 1 = eos, ignored as a target
    nats, count = heldout_nats(_Uniform(V), stream, seq_len=4, batch_size=2, device=torch.device("cpu"),
                               ignore_ids=[1])
    # targets: stream[1:] = 9 tokens, 2 of them eos → 7 scored tokens of ln 64 nats = 6 bits each
    assert count == 7
    assert nats == pytest.approx(7 * math.log(V))
    assert bits_per_byte(nats, n_bytes=21) == pytest.approx(7 * 6 / 21)
    # sharded over 2 "ranks", the parts add up to the whole
    parts = [heldout_nats(_Uniform(V), stream, 4, 2, torch.device("cpu"), [1], shard=(r, 2)) for r in range(2)]
    assert sum(p[0] for p in parts) == pytest.approx(nats) and sum(p[1] for p in parts) == count
    # 3 blocks over 2 ranks: rank 1 scores a fully masked filler block, so both run 2 forwards
    calls = []

    class Counting(_Uniform):
        def forward(self, input_ids):
            calls.append(input_ids.shape[0])
            return super().forward(input_ids)

    for r in range(2):
        heldout_nats(Counting(V), stream, 3, 1, torch.device("cpu"), [1], shard=(r, 2))
    assert calls == [1, 1, 1, 1]


def test_cpu_runs_fp32_and_auto_device():
    rt = RuntimeSection(device="cpu")
    assert resolve_device(rt).type == "cpu"
    assert autocast_dtype(rt, torch.device("cpu")) is None
    assert autocast_dtype(RuntimeSection(precision="bf16"), torch.device("cpu")) is torch.bfloat16
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(RuntimeSection(device="auto")).type == expected
