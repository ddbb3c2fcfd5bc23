"""``runtime.precision``: what ``auto`` picks on which CPU, the fp32 LM head inside bf16 autocast, and
the bf16 paths (pretraining, sampling, RL scoring) staying within bf16's rounding of the fp32 ones.

These run on any CPU: ``precision: bf16`` is honoured everywhere, it is only *slower* than fp32
where the CPU has no AMX. The suite pins ``auto`` to fp32 (conftest.py); here it is unpinned.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_helpers import make_bandit  # noqa: E402

from alignforge.rl import rollout as R  # noqa: E402
from alignforge.config import RuntimeSection  # noqa: E402
from alignforge.generation import SamplingParams, fp32_head, generate  # noqa: E402
from alignforge.train import loop  # noqa: E402
from alignforge.train.loop import AUTO_PRECISION_ENV, autocast_dtype, compute_dtype, resolve_precision  # noqa: E402

CPU = torch.device("cpu")
BF16 = RuntimeSection(device="cpu", precision="bf16")


def test_auto_is_bf16_only_on_a_cpu_with_amx_and_the_override_wins(monkeypatch):
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision(RuntimeSection(), CPU) == "bf16"
    assert autocast_dtype(RuntimeSection(), CPU) is torch.bfloat16 and compute_dtype(RuntimeSection(), CPU) is torch.bfloat16
    assert resolve_precision(RuntimeSection(precision="fp32"), CPU) == "fp32"  # an explicit fp32 is never overridden
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp32")
    assert resolve_precision(RuntimeSection(), CPU) == "fp32"
    assert resolve_precision(RuntimeSection(precision="bf16"), CPU) == "bf16"  # nor an explicit bf16

    monkeypatch.delenv(AUTO_PRECISION_ENV)
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision(RuntimeSection(), CPU) == "fp32"
    assert autocast_dtype(RuntimeSection(), CPU) is None and compute_dtype(RuntimeSection(), CPU) is torch.float32
    assert resolve_precision(RuntimeSection(precision="bf16"), CPU) == "bf16"
    monkeypatch.setenv(AUTO_PRECISION_ENV, "bf16")
    assert resolve_precision(RuntimeSection(), CPU) == "bf16"
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")
    with pytest.raises(RuntimeError, match="ALIGNFORGE_AUTO_PRECISION='fp16': expected fp32 or bf16"):
        resolve_precision(RuntimeSection(), CPU)


def test_the_suite_runs_auto_as_fp32():
    # conftest.py: one set of expected values for AMD and Intel runners.
    assert resolve_precision(RuntimeSection(), CPU) == "fp32"


def test_the_bf16_check_reads_the_bf16_flags_not_just_the_tiles(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_int8\n")
    assert not loop._cpuinfo_has("amx_bf16", str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert loop._cpuinfo_has("amx_bf16", str(info))
    assert loop._cpuinfo_has("amx_bf16", str(tmp_path / "absent"))  # no /proc: trust torch's tile probe
    # AVX512-BF16 (AMD Zen 4) counts too, but only when the kernel lists it: no flags, no bf16 claim.
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert loop._cpuinfo_has("avx512_bf16", str(info), missing=False)
    assert not loop._cpuinfo_has("avx512_bf16", str(tmp_path / "absent"), missing=False)
    # On this machine the answer agrees with the kernel's flags and torch's probe.
    if Path("/proc/cpuinfo").is_file():
        amx = loop._cpuinfo_has("amx_bf16") and torch.cpu._is_amx_tile_supported()
        assert loop.cpu_has_fast_bf16() == (amx or loop._cpuinfo_has("avx512_bf16"))


def test_the_head_stays_fp32_inside_autocast():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(3, 16) * 10
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coarse, fine = head(h), fp32_head(head, h)
    assert coarse.dtype is torch.bfloat16 and fine.dtype is torch.float32
    assert torch.equal(fine, head(h))  # bit for bit the fp32 head
    assert torch.equal(fp32_head(head, h), head(h))  # and a no-op outside autocast


@pytest.fixture(scope="module")
def bandit(tmp_path_factory):
    return make_bandit(tmp_path_factory.mktemp("precision_bandit"), sft_response="c")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    return make_bandit(tmp_path_factory.mktemp("precision_untrained"))


def test_bf16_rollout_recomputes_old_logprobs_and_stays_near_fp32(untrained):
    """Under autocast the behaviour log-probs come from the full forward the loss repeats (the engine's
    incremental bf16 pass rounds differently), so PPO starts at ratio 1 exactly; and bf16 log-probs
    of the same tokens stay within bf16's rounding of fp32's."""
    from alignforge.data.batching import encode_prompt
    from alignforge.models.load import frozen_copy, load_causal_lm

    torch.set_num_threads(1)
    policy, tok = load_causal_lm(untrained["policy"])
    ref = frozen_copy(policy)
    ids = [encode_prompt(tok, "Pick one"), encode_prompt(tok, "one Pick one Pick")] * 4
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    reward = lambda gen: gen.response_mask.sum(1).float()  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ro = R.make_rollout(policy, ref, tok, ids, params, generator=torch.Generator().manual_seed(0), reward_fn=reward)
        again, _ = R.response_logprobs(policy.eval(), ro, 1.0)
    assert ro.timings["recomputed_logprobs"] == 1.0
    assert torch.equal(again * ro.mask, ro.logprobs)  # deterministic: ratio 1 at the first update
    with torch.no_grad():
        fp32, _ = R.response_logprobs(policy, ro, 1.0)
    diff = ((fp32 - ro.logprobs) * ro.mask).abs()
    # bf16 keeps 8 significant bits: each rounded matmul moves an activation by ≤ 2^-9 relative, a few
    # 1e-3 nats through this 2-layer model's log-probs (≈ 2 nats here). 0.05 is ten times that: it fails
    # on a wrong path (an fp16 overflow, weights cast to bf16 for good), not on rounding.
    assert float(diff.max()) < 0.05, float(diff.max())
    assert float(diff.sum()) > 0  # and autocast really ran in bf16


def test_the_engine_samples_with_a_bf16_cache_under_autocast(bandit):
    from alignforge.data.batching import encode_prompt, pad_id_of
    from alignforge.models.load import load_causal_lm

    policy, tok = load_causal_lm(bandit["policy"])
    ids = [encode_prompt(tok, "Pick one")] * 16
    params = SamplingParams(temperature=0.0, max_new_tokens=3)
    kw = dict(eos_token_id=tok.eos_token_id, pad_token_id=pad_id_of(tok), tokenizer=tok)
    fp32 = generate(policy, ids, params, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = generate(policy, ids, params, **kw)
    # The SFT'd bandit answers "c" with a margin far beyond bf16's rounding: greedy picks the same.
    assert bf16.texts == fp32.texts and bf16.texts[0].strip() == "c"
    assert bf16.response_logprobs.dtype is torch.float32
    assert torch.allclose(bf16.response_logprobs, fp32.response_logprobs, atol=0.05)


def test_bf16_pretraining_tracks_fp32_and_measures_its_peak_in_bf16(tmp_path, monkeypatch):
    """Same seed, same data: the bf16-autocast loss curve stays within a few percent of fp32's (master
    weights and AdamW state are fp32 in both), and the logged MFU is against a bf16 peak."""
    from alignforge.stages import pretrain
    from alignforge.train.testing import tiny_pretrain_args

    torch.set_num_threads(1)
    peaks = []
    monkeypatch.setattr(pretrain, "measure_matmul_peak", lambda dtype, **kw: peaks.append(dtype) or 1e12)
    curves = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert pretrain.main(tiny_pretrain_args(tmp_path / "data", out, max_steps=30, eval_every=0, save_every=0)
                             + [f"runtime.precision={precision}"]) == 0
        curves[precision] = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert peaks == [torch.float32, torch.bfloat16]
    a, b = curves["fp32"], curves["bf16"]
    assert len(a) == len(b) == 30 and a != b
    assert b[-1] < b[0] - 1.0  # it learns (5.7 → 4.1 nats in 30 steps)
    # Rounding noise, not a different optimisation: over 30 steps the curves part by 1e-4 relative (Xeon,
    # AMX); 1% is where bf16 would be losing updates — AdamW's steps here are ~1e-3 of a weight, below
    # bf16's spacing, so weights kept in bf16 would stall and the curves would split by tenths of a nat.
    assert all(abs(x - y) <= 0.01 * x for x, y in zip(a, b)), list(zip(a, b))


def test_each_stage_says_what_precision_it_runs_in_and_why(monkeypatch):
    from alignforge.train.loop import precision_note

    assert precision_note(RuntimeSection(precision="fp32"), CPU) == "fp32 (runtime.precision=fp32)"
    assert precision_note(RuntimeSection(), CPU) == "fp32 (runtime.precision=auto, ALIGNFORGE_AUTO_PRECISION=fp32)"
    monkeypatch.delenv(AUTO_PRECISION_ENV)
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: True)
    assert precision_note(RuntimeSection(), CPU) == ("bf16 autocast, fp32 master weights "
                                                     "(runtime.precision=auto: this CPU has a bf16 matmul unit: AMX-BF16 or AVX512-BF16)")
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: False)
    assert precision_note(RuntimeSection(), CPU) == "fp32 (runtime.precision=auto: no AMX-BF16 or AVX512-BF16 on this CPU)"
