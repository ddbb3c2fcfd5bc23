"""bench/vs_trl.py's pure parts: measurement windows, rates, MFU, ratio, table and RESULTS.md text.

No TRL needed: the runs are built by hand with numbers whose results are easy to compute.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def vs():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", BENCH / "vs_trl.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _runs(vs):
    # TRL: 2 warm-up steps (slow), then 3 steps of 1000 tokens in 1.0 s each → 1000 tok/s.
    trl = vs.Run(library="trl", stage="sft", step_tokens=[900, 950, 1000, 1000, 1000],
                 stamps=[5.0, 7.0, 8.0, 9.0, 10.0], setup_s=5.0, matmul_params=1_000_000,
                 version="trl 1.16.0", peak_rss_bytes=800 * 2**20)
    # alignforge: 3 measured steps of 1200 tokens in 0.5 s each → 2400 tok/s, 2.4× TRL.
    af = vs.Run(library="alignforge", stage="sft", step_tokens=[1200] * 5,
                stamps=[3.0, 3.5, 4.0, 4.5, 5.0], setup_s=3.0, matmul_params=1_000_000,
                version="alignforge 0.1.0", peak_rss_bytes=1000 * 2**20)
    return [trl, af]


def test_measured_window_drops_warmup_steps(vs):
    trl, af = _runs(vs)
    assert trl.measured(2) == (3000.0, 3.0, 3)  # from the end of step 2 (t=7) to t=10
    assert af.measured(2) == (3600.0, 1.5, 3)
    assert trl.measured(0) == (4850.0, 10.0, 5)  # no warm-up: from the worker's start (t=0)
    with pytest.raises(ValueError, match="need more than the 5 warm-up steps"):
        trl.measured(5)
    bad = vs.Run("trl", "dpo", step_tokens=[1.0], stamps=[1.0, 2.0], setup_s=1.0, matmul_params=1,
                 version="x")
    with pytest.raises(ValueError, match="2 step stamps but 1 token counts"):
        bad.measured(0)


def test_summarise_rates_mfu_and_ratio(vs):
    rows = vs.summarise(_runs(vs), warmup=2, peak_flops=1e11)
    trl, af = rows
    assert trl["tokens_per_s"] == pytest.approx(1000.0)
    assert trl["s_per_step"] == pytest.approx(1.0)
    assert trl["tok_per_step"] == pytest.approx(1000.0)
    # MFU = 6 · 1e6 params · 1000 tok/s / 1e11 FLOP/s = 6%.
    assert trl["mfu"] == pytest.approx(0.06)
    assert trl["ratio"] is None
    assert af["tokens_per_s"] == pytest.approx(2400.0)
    assert af["mfu"] == pytest.approx(0.144)
    assert af["ratio"] == pytest.approx(2.4)
    assert af["peak_rss_mb"] == pytest.approx(1000.0)


def test_table_and_results_markdown(vs):
    rows = vs.summarise(_runs(vs), warmup=2, peak_flops=1e11)
    table = vs.format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| stage | library | tokens/s | s/step |")
    assert lines[2] == "| sft | trl 1.16.0 | 1,000 | 1.000 | 1,000 | 6.0% | 800 | 5.0 |  |"
    assert lines[3] == "| sft | alignforge 0.1.0 | 2,400 | 0.500 | 1,200 | 14.4% | 1,000 | 3.0 | 2.40× |"
    goals = vs.goal_lines(rows)
    # 14.4% < 60% MFU; 2.4× ≥ 2× stretch; RSS 1000/800 = 1.25× ≤ 2×.
    assert goals == [("sft: MFU 14.4% vs goal 60% (NOT met); 2.40× TRL vs stretch 2× (met); "
                      "peak RSS 1.25× TRL's (met)")]
    meta = {"date": "2026-11-25 14:00 UTC", "machine": "test cpu", "peak_gflops": 100.0,
            "versions": {"torch": "2.13.0", "trl": "1.16.0"}, "settings": {"batch": 16},
            "goals": goals, "notes": "note line"}
    md = vs.results_markdown(table, meta)
    assert md.startswith("# alignforge vs TRL\n")
    assert "- date: 2026-11-25 14:00 UTC\n" in md
    assert "- versions: torch 2.13.0, trl 1.16.0\n" in md
    assert "- fp32 matmul peak (same run): 100.0 GFLOP/s\n" in md
    assert table in md
    assert "- sft: MFU 14.4%" in md and md.rstrip().endswith("note line")


def test_non_pad_token_count(vs):
    import torch

    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    assert vs._non_pad_tokens(batch) == 8.0
    assert vs._non_pad_tokens({"input_ids": torch.ones(1, 7, dtype=torch.long)}) == 7.0  # padding-free


def test_contention_warning_only_when_mfu_exceeds_one(vs):
    rows = vs.summarise(_runs(vs), warmup=2, peak_flops=1e11)
    assert vs.contention_warning(rows) == ""
    # A peak 10× too low (measured while the CPU was busy) pushes alignforge to 144% MFU.
    rows = vs.summarise(_runs(vs), warmup=2, peak_flops=1e10)
    warning = vs.contention_warning(rows)
    assert "MFU above 100% for sft/alignforge:" in warning and "sft/trl" not in warning
