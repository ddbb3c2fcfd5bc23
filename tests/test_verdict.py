"""The demo's verdict in words (eval/verdict.py), on a hand-written eval.json."""

from alignforge.eval.verdict import beat_baseline, hack_sentence, verdict_lines


def _w(value, lo, hi):
    return {"value": value, "lo": lo, "hi": hi, "n": 300}


REPORT = {
    "baseline": "sft",
    "policies": ["pretrain", "sft", "ppo", "dpo", "demonstrator"],
    "kl": {"ppo": {"kl": 4.44}, "dpo": {"kl": 9.5}},
    "sample": {
        "pretrain": {"win_rate": _w(0.39, 0.35, 0.43)},
        "sft": {},
        "ppo": {"win_rate": _w(0.64, 0.60, 0.68), "teacher_diff": _w(-0.95, -1.15, -0.74)},
        "dpo": {"win_rate": _w(0.53, 0.49, 0.57), "teacher_diff": _w(0.10, 0.02, 0.18)},
        "demonstrator": {},
    },
}


def test_a_policy_beats_the_baseline_only_when_its_ci_is_above_a_half():
    assert beat_baseline(REPORT, "ppo") and not beat_baseline(REPORT, "dpo")
    assert not beat_baseline(REPORT, "sft")  # no win-rate against itself


def test_the_verdict_says_who_beat_sft_at_what_kl_and_against_the_teacher():
    lines = verdict_lines(REPORT)
    assert lines[0] == "PPO beat SFT: gold win-rate 0.64 [0.60, 0.68] at KL 4.4 nats."
    assert lines[1] == "DPO did not beat SFT: gold win-rate 0.53 [0.49, 0.57] at KL 9.5 nats (CI includes ½)."
    assert lines[2] == "SFT vs the pretrained model: the pretrained model's win-rate 0.39 [0.35, 0.43] (SFT better)."
    assert lines[3] == ("Against SFT's teacher (demonstrator), gold difference: PPO -0.95 [-1.15, -0.74] (below); "
                        "DPO +0.10 [+0.02, +0.18] (above).")
    assert len(lines) == 4  # no β = 0 metrics given: no hacking sentence


def test_hacking_is_proxy_up_and_gold_not_up_from_the_first_to_the_last_step():
    rows = [{"step": 0, "score": 0.1, "gold_all": 0.6}, {"step": 4, "score": 1.0},
            {"step": 8, "score": 2.1, "gold_all": 0.53}]
    assert hack_sentence(rows) == ("the β = 0 run shows reward hacking (proxy +2.00, gold -0.07 from its first to "
                                   "its last step)")
    assert verdict_lines(REPORT, rows)[-1].startswith("The β = 0 run shows reward hacking (proxy +2.00")
    rows[-1]["gold_all"] = 0.7
    assert "does not show reward hacking" in hack_sentence(rows)
    assert hack_sentence(rows[:1]) is None  # one point is no trend
