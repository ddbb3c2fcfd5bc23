"""perf: FLOP formulas by hand, the Throughput meter with a controlled clock, the matmul peak."""

from __future__ import annotations

import pytest
import torch

from alignforge import perf
from alignforge.models.load import build_model, matmul_params


def test_flop_formulas():
    assert perf.train_flops(1_000_000, 2048) == 6 * 1_000_000 * 2048
    assert perf.forward_flops(1_000_000, 2048) == 2 * 1_000_000 * 2048


def test_matmul_params_of_a_tiny_llama_by_hand():
    m = build_model("tiny-1m", 100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, intermediate_size=64)
    # per layer: q,k,v,o 4·32·32 + gate,up,down 3·32·64; embeddings / tied lm_head excluded
    assert matmul_params(m) == 2 * (4 * 32 * 32 + 3 * 32 * 64)


def test_throughput_with_a_fake_clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(perf.time, "perf_counter", lambda: now[0])
    meter = perf.Throughput(n_matmul_params=1000, peak_flops=1e9)
    meter.add(500)
    now[0] += 2.0
    w = meter.window()
    assert w["tokens_per_s"] == 250 and w["flops_per_s"] == 250 * 6000 and w["mfu"] == pytest.approx(1.5e6 / 1e9)
    meter.pause()
    now[0] += 10.0  # eval / checkpoint time is not training time
    meter.resume()
    meter.add(300)
    now[0] += 1.0
    assert meter.window()["tokens_per_s"] == 300
    total = meter.total()
    assert total["tokens"] == 800 and total["tokens_per_s"] == pytest.approx(800 / 3.0)
    fwd = perf.Throughput(1000, flops_per_token=perf.forward_flops(1000, 1))
    assert fwd.flops_per_token == 2000 and "mfu" not in fwd.total()


def test_measured_matmul_peak_is_plausible():
    torch.set_num_threads(1)
    peak = perf.measure_matmul_peak(n=256, repeats=2, min_seconds=0.02)
    assert 1e8 < peak < 1e13  # a CPU core does 0.1 to a few hundred GFLOP/s in fp32
