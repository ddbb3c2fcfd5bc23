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
    # 14.4% < 60% MFU; 2.4× ≥ 2×; RSS 1000/800 = 1.25× ≤ 2×.
    assert goals == [("sft: MFU 14.4% vs goal 60% (NOT met); 2.40× the baseline vs goal 2× (met); "
                      "peak RSS 1.25× the baseline's (met)")]
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


def test_flops_per_token_by_row(vs):
    n = 1_000_000
    assert vs.flops_per_token("sft", n) == vs.flops_per_token("dpo-30m", n) == vs.flops_per_token("reward", n) == 6e6
    # GRPO/RLOO: 2N sampling + 2N reference + 2N reward model + 6N update.
    assert vs.flops_per_token("grpo", n) == vs.flops_per_token("rloo", n) == 12e6
    # PPO, 2 epochs: 2N sampling + 2N ref + 2N reward + 2N value, then 2 × (6N policy + 6N value).
    assert vs.flops_per_token("ppo", n, ppo_epochs=2) == 32e6
    assert vs.flops_per_token("sample-16x48", n) == 2e6
    with pytest.raises(ValueError, match="no FLOP count"):
        vs.flops_per_token("kto", n)
    # summarise uses the run's own FLOPs per token when it has one: 12e6 · 1000 tok/s / 1e11 = 12%.
    trl, _ = _runs(vs)
    trl.flops_per_token = 12e6
    assert vs.summarise([trl], warmup=2, peak_flops=1e11)[0]["mfu"] == pytest.approx(0.12)


def test_split_and_parse_stages(vs):
    assert vs.split_stage("dpo-30m") == ("dpo", "30m", None)
    assert vs.split_stage("sample-64x64") == ("sample", None, (64, 64))
    assert vs.split_stage("grpo") == ("grpo", None, None)
    with pytest.raises(ValueError, match="sample-<prompts>x<new tokens>"):
        vs.split_stage("sample-16")
    assert vs.parse_stages("sft,dpo", "30m", smoke=False) == ["sft", "dpo", "sft-30m", "dpo-30m"]
    assert vs.parse_stages("ppo,sample-16x48,sample-64x64", None, smoke=True) == ["ppo", "sample-4x8"]
    with pytest.raises(ValueError, match="unknown 'kto'"):
        vs.parse_stages("sft,kto", None, smoke=False)
    with pytest.raises(ValueError, match="only sft, dpo have a 30m row"):
        vs.parse_stages("grpo-30m", None, smoke=False)


def _row(vs, stage, library, tps, ratio=None, rss=800.0, mfu=0.1):
    return {"stage": stage, "library": library, "version": library, "steps": 3, "tok_per_step": 1000.0,
            "tokens_per_s": tps, "s_per_step": 1000.0 / tps, "mfu": mfu, "peak_rss_mb": rss, "setup_s": 2.0,
            "ratio": ratio}


def test_aggregate_medians_spread_and_paired_ratio(vs):
    reps = [[_row(vs, "grpo", "trl", 1000.0), _row(vs, "grpo", "alignforge", 3000.0, ratio=3.0, rss=900.0)],
            [_row(vs, "grpo", "trl", 500.0), _row(vs, "grpo", "alignforge", 2000.0, ratio=4.0, rss=950.0)],
            [_row(vs, "grpo", "trl", 800.0), _row(vs, "grpo", "alignforge", 1600.0, ratio=2.0, rss=700.0)]]
    trl, af = vs.aggregate(reps)
    assert (trl["tokens_per_s"], trl["tokens_per_s_range"], trl["repeats"]) == (800.0, (500.0, 1000.0), 3)
    assert trl["ratio"] is None and trl["ratio_range"] is None
    assert af["tokens_per_s"] == 2000.0 and af["s_per_step"] == pytest.approx(0.5)
    # The median of the paired ratios (3, 4, 2) is 3, not median(af) / median(trl) = 2.5.
    assert af["ratio"] == 3.0 and af["ratio_range"] == (2.0, 4.0)
    assert af["peak_rss_mb"] == 950.0  # the worst repeat
    lines = vs.format_table([trl, af]).splitlines()
    assert lines[2] == "| grpo | trl | 800 (500–1,000) | 1.250 | 1,000 | 10.0% | 800 | 2.0 |  |"
    assert lines[3] == "| grpo | alignforge | 2,000 (1,600–3,000) | 0.500 | 1,000 | 10.0% | 950 | 2.0 | 3.00× (2.00–4.00) |"


def test_goal_lines_online_and_sampling_rows_and_profile_reason(vs):
    rows = [_row(vs, "ppo", "trl", 1000.0, rss=1000.0), _row(vs, "ppo", "alignforge", 3500.0, 3.5, 1500.0, 0.5),
            _row(vs, "rloo", "trl", 1000.0), _row(vs, "rloo", "alignforge", 2000.0, 2.0, 800.0, 0.3),
            _row(vs, "sample-16x48", "trl", 1000.0), _row(vs, "sample-16x48", "alignforge", 2500.0, 2.5)]
    # 1.2 s of wall time: mm 0.6 s (50%), addmm 0.3 s (25%), softmax 0.06 s (5%); ops 0.984 s → 18% outside.
    profile = {"wall_s": 1.2, "ops": [["aten::addmm", 0.3], ["aten::mm", 0.6], ["aten::_softmax", 0.06],
                                      ["aten::copy_", 0.024]]}
    assert vs.profile_summary(profile) == "aten::mm 50%, aten::addmm 25%, aten::_softmax 5%; outside aten ops 18%"
    goals = vs.goal_lines(rows, {"rloo": profile, "ppo": profile})
    assert goals == [
        # Every goal met: no profile reason, even though the stage was profiled.
        "ppo: MFU 50.0% vs goal 45% (met); 3.50× the baseline vs goal 2× (met); peak RSS 1.50× the baseline's (met)",
        ("rloo: MFU 30.0% vs goal 45% (NOT met); 2.00× the baseline vs goal 2× (met); "
         "peak RSS 1.00× the baseline's (met)"
         " — where alignforge's time goes (torch.profiler): aten::mm 50%, aten::addmm 25%, aten::_softmax 5%; "
         "outside aten ops 18%"),
        # The sampling engine: a tokens/s goal against `generate`, no MFU goal.
        "sample-16x48: 2.50× the baseline vs goal 2× (met); peak RSS 1.00× the baseline's (met)",
    ]


def test_reference_ppo_gae_and_losses_against_hand_values_and_alignforge():
    import torch

    sys.path.insert(0, str(BENCH))
    import ppo_reference as ref

    from alignforge.losses import ppo_policy_loss, value_loss
    from alignforge.rl import gae

    # One response of 2 tokens then padding; γ = 1, λ = 0.5.
    # δ_1 = 1 + 0 − 0.5 = 0.5, δ_0 = 0 + 0.5 − 0.2 = 0.3; A_1 = 0.5, A_0 = 0.3 + 0.5·0.5 = 0.55.
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.2, 0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = ref.gae(rewards * mask, values * mask, gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.55, 0.5, 0.0]]))
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    m = (torch.arange(6)[None] < torch.tensor([[6], [3], [1], [5]])).float()
    ours, _ = gae(r, v, m, gamma=0.9, lam=0.95)
    assert torch.allclose(ref.gae(r * m, v * m, 0.9, 0.95) * m, ours, atol=1e-6)

    # Clipped losses by hand: ratio e^0.5 ≈ 1.6487 clipped to 1.2 for A = 1 → pg = −1.2 (the min of
    # the two surrogates); A = −1 keeps the unclipped 1.6487. Value: V 1.0, old 0.0, R 0.5 → clipped
    # V = 0.2, max((1 − .5)², (.2 − .5)²) = 0.25, halved = 0.125.
    new_lp, old_lp = torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2)
    a = torch.tensor([[1.0, -1.0]])
    pg, vf = ref.ppo_losses(new_lp, old_lp, a, torch.ones(1, 2), torch.zeros(1, 2), torch.full((1, 2), 0.5),
                            torch.ones(1, 2), clip=0.2, vclip=0.2)
    assert pg.item() == pytest.approx((-1.2 + torch.e ** 0.5) / 2)
    assert vf.item() == pytest.approx(0.125)
    lp, olp, aa = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    vv, ov, rr = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mm = (torch.rand(3, 5, generator=g) > 0.3).float()
    pg, vf = ref.ppo_losses(lp, olp, aa, vv, ov, rr, mm, clip=0.2, vclip=0.2)
    assert pg.item() == pytest.approx(ppo_policy_loss(lp, olp, aa, mm, clip=0.2)[0].item(), rel=1e-6)
    assert vf.item() == pytest.approx(value_loss(vv, ov, rr, mm, clip=0.2)[0].item(), rel=1e-6)


def test_trusted_peak_keeps_the_larger_reading_and_flags_a_changed_load(vs):
    # Other work can only lower a reading, so the larger one is the machine's peak.
    assert vs.trusted_peak(300e9, 290e9) == (300e9, "")  # 3% apart: quiet
    peak, note = vs.trusted_peak(114.8e9, 309.6e9)  # the two readings issue 18 saw on one machine
    assert peak == 309.6e9 and "114.8" in note and "309.6" in note and "not trustworthy" in note
    assert vs.trusted_peak(100e9, 85.1e9)[1] == ""  # 14.9% apart: within PEAK_SPREAD
    assert vs.trusted_peak(100e9, 84.9e9)[1] != ""
    rows = vs.summarise(_runs(vs), warmup=2, peak_flops=peak)
    meta = {"date": "d", "machine": "m", "peak_gflops": peak / 1e9, "peak_readings": (114.8, 309.6),
            "cpu_flags": "amx_bf16 avx512f", "versions": {}, "settings": {}, "goals": [], "notes": note}
    md = vs.results_markdown(vs.format_table(rows), meta)
    assert "- CPU flags: amx_bf16 avx512f\n" in md
    assert "- fp32 matmul peak (same run): 309.6 GFLOP/s (the larger of 114.8 before and 309.6 after the rows)\n" in md


def test_cpu_flags_names_the_matmul_isa(vs):
    info = "model name\t: X\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    assert vs.cpu_flags(info) == "amx_bf16 amx_tile avx512_bf16 avx512f avx2"
    assert vs.cpu_flags("flags\t: fpu avx2\n") == "avx2"
    assert vs.cpu_flags("model name: Y\n").startswith("none of")
