"""The evaluation protocol component (``alignforge.eval``): statistics against simple references,
the gold-judge evaluation of the world's reference policies, KL on sampled responses against an
independent log-prob computation, and the import boundary of the scorer modules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignforge.eval.metrics import (bootstrap_ci, gap_closed, length_controlled, length_fit, paired_bootstrap,
                                     win_rate, win_scores)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_matches_the_normal_interval_of_a_mean():
    x = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    est = bootstrap_ci(x, n_boot=4000, seed=1)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert est.value == pytest.approx(x.mean(), abs=1e-12) and est.n == 400
    assert est.lo == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert est.hi == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_bootstrap_ci_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    hits = 0
    reps = 300
    for r in range(reps):
        x = rng.exponential(1.0, size=60)  # skewed, true mean 1
        e = bootstrap_ci(x, n_boot=400, seed=r)
        hits += e.lo <= 1.0 <= e.hi
    assert 0.88 <= hits / reps <= 0.99


def test_paired_bootstrap_removes_the_shared_prompt_variance():
    b = np.random.default_rng(0).normal(0, 3, size=100)
    e = paired_bootstrap(b + 0.5, b)
    assert e.value == pytest.approx(0.5) and e.lo == pytest.approx(0.5) and e.hi == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same prompts"):
        paired_bootstrap([1, 2], [1, 2, 3])


def test_win_rate_counts_ties_as_half():
    assert win_scores([1, 2, 3, 3], [0, 2, 4, 3]).tolist() == [1.0, 0.5, 0.0, 0.5]
    assert win_rate([1, 2, 3, 3], [0, 2, 4, 3]).value == pytest.approx(0.5)
    assert win_rate([1, 1, 1], [1, 1, 1]).value == 0.5
    e = win_rate([2, 2, 2, 2], [1, 1, 1, 1])
    assert (e.value, e.lo, e.hi) == (1.0, 1.0, 1.0)


def test_gap_closed_by_hand():
    e = gap_closed([2.0, 2.0, 2.0], [1.0, 1.0, 1.0], [3.0, 3.0, 3.0])
    assert e.value == pytest.approx(0.5) and e.lo == pytest.approx(0.5)
    e = gap_closed([1.0, 3.0], [0.0, 2.0], [2.0, 4.0])  # means 2, 1, 3
    assert e.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="not better than SFT"):
        gap_closed([1.0], [2.0], [1.0])


def test_length_controlled_reward_removes_an_exact_length_effect():
    lengths = np.array([2, 4, 6, 8, 10, 12], dtype=float)
    rewards = 2.0 - 0.1 * lengths  # longer = worse, exactly
    fit = length_fit(rewards, lengths)
    assert fit.slope == pytest.approx(-0.1) and fit.predict(0) == pytest.approx(2.0)
    e = length_controlled(rewards, lengths, fit, at_length=10.0)
    assert e.value == pytest.approx(1.0) and e.hi - e.lo == pytest.approx(0.0, abs=1e-12)
    # Within groups: two prompt types with different base rewards and lengths, slope +0.2 inside each.
    r = np.array([1.0, 1.2, 1.4, 3.0, 3.2, 3.4])
    n = np.array([10, 11, 12, 1, 2, 3], dtype=float)
    assert length_fit(r, n, groups=[0, 0, 0, 1, 1, 1]).slope == pytest.approx(0.2)
    assert length_fit(r, n).slope < 0  # pooled: the between-prompt confound flips the sign


def test_statistics_reject_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


# ---------------------------------------------------------------------------------------------
# Gold-judge evaluation of the world's reference policies
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    from alignforge.config import load_config
    from alignforge.world import WorldConfig, build_world

    return build_world(load_config(WorldConfig, None, ["prompts.test=80", "prompts.train=10"]), corpus=False,
                       demos=False)


def test_reference_policies_through_the_protocol(world):
    from alignforge.eval.protocol import compare, evaluate_reference, markdown
    from alignforge.world.judge import judge_batch
    from alignforge.world.policies import reference_policy

    prompts = world.prompts["test"]
    oracle = evaluate_reference(world.oracle, prompts, judge=world, name="oracle")
    demo = evaluate_reference(reference_policy("demonstrator", world), prompts, judge=world, name="sft")
    rnd = evaluate_reference(reference_policy("random", world), prompts, judge=world, name="random")
    # per-category means equal a direct call of the judge
    gold = judge_batch([p.prompt for p in prompts], [world.oracle(p.prompt) for p in prompts], world)
    s = oracle.summary()
    for cat in {p.category for p in prompts}:
        want = np.mean([g.reward for g, p in zip(gold, prompts) if p.category == cat])
        assert s[cat]["reward"]["value"] == pytest.approx(want)
    assert s["fact"]["reward"]["value"] == 3.0 and s["all"]["flags"]["hallucination"] == 0.0
    rep = compare([demo, oracle, rnd], baseline="sft", oracle="oracle", modes=["sample"])
    sec = rep["sample"]
    assert sec["oracle"]["win_rate"]["value"] > 0.5 > sec["random"]["win_rate"]["value"]
    assert sec["oracle"]["reward_diff"]["lo"] > 0
    assert sec["random"]["gap_closed"]["value"] < 0
    assert "gap_closed" not in sec["oracle"] and "win_rate" not in sec["sft"]
    table = markdown(rep)
    assert "| all (n=80) |" in table and "win-rate vs sft" in table
    # teacher_diff: the paired mean difference to the named teacher, exactly mean(a) - mean(b).
    rep = compare([demo, oracle, rnd], baseline="sft", oracle="oracle", teacher="sft", modes=["sample"])
    diff = rep["sample"]["oracle"]["teacher_diff"]
    assert diff["value"] == pytest.approx(oracle.values("sample").mean() - demo.values("sample").mean())
    assert diff["lo"] > 0 > rep["sample"]["random"]["teacher_diff"]["hi"]
    assert rep["teacher"] == "sft" and "teacher_diff" not in rep["sample"]["sft"]
    with pytest.raises(ValueError, match="other prompts"):
        compare([demo, evaluate_reference(world.oracle, prompts[:10], judge=world, name="x")])


# ---------------------------------------------------------------------------------------------
# Policies: sampling + greedy, KL on sampled responses
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from alignforge.models.tiny import tiny_random_model
    from alignforge.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["What is 2+3? It is 5.", "Say yes. yes", "Hello there. Hello."] * 10, vocab_size=300)

    def make(seed):
        return tiny_random_model("llama", len(tok), seed=seed, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id, max_positions=128, tie_embeddings=False)

    return make(0), make(1), tok


def _direct_logprob(model, prompt_ids, resp_ids) -> float:
    """log p(response | prompt) by one plain, unpacked forward and a log-softmax (an independent path)."""
    ids = torch.tensor([list(prompt_ids) + list(resp_ids)])
    with torch.no_grad():
        logp = model(ids).logits.float().log_softmax(-1)[0]
    P = len(prompt_ids)
    return float(sum(logp[P - 1 + t, r] for t, r in enumerate(resp_ids)))


def test_sampled_kl_equals_a_direct_log_ratio_and_is_zero_against_itself(tiny):
    from alignforge.data.batching import encode_prompt
    from alignforge.eval.kl import sampled_kl

    pi, ref, tok = tiny
    prompts = ["What is 2+3?", "Say yes.", "Hello there."]
    res = sampled_kl(pi, pi, tok, prompts, max_new_tokens=6, seed=0)
    assert res.kl == pytest.approx(0.0, abs=1e-6) and res.mean_tokens > 0
    responses = [[5, 7, tok.eos_token_id], [9], [11, 12]]
    res = sampled_kl(pi, ref, tok, prompts, responses=responses)
    want = [_direct_logprob(pi, encode_prompt(tok, p), r) - _direct_logprob(ref, encode_prompt(tok, p), r)
            for p, r in zip(prompts, responses)]
    assert res.per_prompt == pytest.approx(want, abs=1e-4)
    assert res.kl == pytest.approx(np.mean(want), abs=1e-4)
    assert res.kl_per_token == pytest.approx(np.mean(want) / 2.0, abs=1e-4)


def test_evaluate_policy_samples_greedy_and_kl(tiny):
    from alignforge.data.records import PromptRecord
    from alignforge.eval.protocol import compare, evaluate_policy

    pi, ref, tok = tiny
    prompts = [PromptRecord(prompt=p, category=c) for p, c in
               [("What is 2+3?", "arithmetic"), ("Say yes.", "format"), ("Hello there.", "benign")] * 2]

    def judge(ps, rs):  # a stand-in judge: fewer words is better
        return [-float(len(r.split())) for r in rs]

    a = evaluate_policy(pi, tok, prompts, judge=judge, samples=2, max_new_tokens=6, ref=pi, name="a")
    b = evaluate_policy(pi, tok, prompts, judge=judge, samples=2, max_new_tokens=6, ref=ref, name="b")
    assert set(a.rows) == {"sample", "greedy"} and len(a.rows["sample"]) == 6
    assert a.rows["greedy"][0]["response"] == a.rows["greedy"][3]["response"]  # greedy: same prompt, same answer
    assert [r["response"] for r in a.rows["sample"]] == [r["response"] for r in b.rows["sample"]]  # seeded
    assert a.kl["kl"] == pytest.approx(0.0, abs=1e-6) and b.kl["kl"] != pytest.approx(0.0, abs=1e-6)
    s = a.summary("sample")
    assert set(s) == {"arithmetic", "format", "benign", "all"} and s["all"]["n"] == 6
    rep = compare([a, b], baseline="a")
    assert rep["sample"]["b"]["win_rate"]["value"] == 0.5  # identical samples: all ties
    assert rep["kl"]["a"]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_scorer_modules_stay_outside_the_gold_judge():
    """Stricter than the project-wide boundary (where ``alignforge.eval`` is a gateway that stops
    taint): the modules rsft/dpo import — eval.scorers, eval.kl, eval.metrics — must not reach the
    judge at all, so RSFT can only get a gold scorer by injection from eval.oracle."""
    import ast
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ib", Path(__file__).with_name("test_import_boundary.py"))
    ib = importlib.util.module_from_spec(spec)
    sys.modules["ib"] = ib
    spec.loader.exec_module(ib)
    sources = ib.project_sources()
    imports = {n: ib.imported_modules(ast.parse(src), n, pkg, set(sources)) for n, (src, pkg) in sources.items()}
    tainted = {m for m in ib.HIDDEN if m in sources}
    changed = True
    while changed:  # closure with no gateway
        changed = False
        for n, deps in imports.items():
            if n not in tainted and deps & tainted:
                tainted.add(n)
                changed = True
    for clean in ("alignforge.eval", "alignforge.eval.scorers", "alignforge.eval.kl", "alignforge.eval.metrics",
                  "alignforge.stages.rsft", "alignforge.stages.dpo", "alignforge.train.refcache"):
        assert clean not in tainted, clean
    assert "alignforge.eval.protocol" in tainted and "alignforge.eval.oracle" in tainted


def test_prompts_longer_than_the_model_keep_their_last_tokens(tiny):
    from alignforge.data.batching import encode_prompt
    from alignforge.eval.kl import prompt_budget, sampled_kl
    from alignforge.eval.protocol import evaluate_policy

    pi, ref, tok = tiny
    long_prompt = "Say yes. " * 80  # far more than the model's 128 positions
    assert len(encode_prompt(tok, long_prompt)) > 128
    assert prompt_budget(pi, 8) == 120 and prompt_budget(pi, 8, 50) == 50
    res = sampled_kl(pi, ref, tok, [long_prompt, "Hello there."], max_new_tokens=8)
    assert len(res.per_prompt) == 2 and all(v == v for v in res.per_prompt)
    ev = evaluate_policy(pi, tok, [long_prompt], judge=lambda ps, rs: [0.0] * len(rs), max_new_tokens=8, ref=ref)
    assert len(ev.rows["sample"]) == 1 and ev.kl is not None
