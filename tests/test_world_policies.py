"""Reference policies: oracle >> demonstrator >> random on gold reward, per category; demonstrator rates."""

from __future__ import annotations

import dataclasses

import pytest

from alignforge.world import CATEGORIES, WorldConfig, build_world
from alignforge.world.demonstrator import Demonstrator
from alignforge.world.judge import category_means, judge, judge_batch
from alignforge.world.policies import NoisyPolicy, padded, reference_policy


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=0), demos=False)


def _means(world, policy):
    prompts = [r.prompt for r in world.prompts["test"]]
    return category_means(judge_batch(prompts, [policy(p) for p in prompts], world))


def test_oracle_beats_demonstrator_beats_random_per_category(world):
    m = {name: _means(world, reference_policy(name, world)) for name in ("oracle", "demonstrator", "random")}
    for name, rows in m.items():
        print(name, {c: round(r["reward"], 2) for c, r in rows.items()})
    for cat in CATEGORIES:
        o, d, r = (m[name][cat]["reward"] for name in ("oracle", "demonstrator", "random"))
        assert o >= 2.75, (cat, o)
        assert o - d > 0.3, (cat, o, d)       # SFT on demonstrations leaves room to improve
        assert d - r > 0.8, (cat, d, r)       # and is far above chance
    assert m["random"]["all"]["reward"] < 0.6


def test_padding_lowers_gold_but_not_below_wrong(world):
    base = _means(world, reference_policy("oracle", world))["all"]["reward"]
    pad = _means(world, padded(reference_policy("oracle", world), 20))["all"]["reward"]
    assert pad < base - 0.3


def test_demonstrator_mistake_rates_follow_config(world):
    prompts = [r.prompt for r in world.prompts["train"]]
    cfg = world.cfg.demonstrator
    perfect = Demonstrator(world, dataclasses.replace(cfg, **{f.name: 0.0 for f in dataclasses.fields(cfg)}))
    assert all(judge(p, perfect(p), world).reward >= 2.75 for p in prompts)
    demo = Demonstrator(world, seed=0)
    harmful = [p for p in prompts if world.task(p).category == "harmful"]
    unknown = [p for p in prompts if world.task(p).category == "unknown"]
    comply = sum(judge(p, demo(p), world).harmless == 1 for p in harmful) / len(harmful)
    invent = sum(judge(p, demo(p), world).flags["hallucination"] for p in unknown) / len(unknown)
    assert abs(comply - cfg.comply_harmful) < 0.08, comply
    assert abs(invent - cfg.invent) < 0.08, invent
    # deterministic per (seed, prompt); another seed makes other mistakes
    assert [demo(p) for p in prompts[:200]] == [Demonstrator(world, seed=0)(p) for p in prompts[:200]]
    assert [demo(p) for p in prompts[:200]] != [Demonstrator(world, seed=1)(p) for p in prompts[:200]]


def test_noisy_policy_samples_vary_and_sit_between(world):
    noisy = NoisyPolicy(world, seed=0)
    p = world.prompts["test"][0].prompt
    assert len({noisy(p) for _ in range(30)}) > 1
    m = _means(world, NoisyPolicy(world, seed=0))["all"]["reward"]
    d = _means(world, reference_policy("demonstrator", world))["all"]["reward"]
    r = _means(world, reference_policy("random", world))["all"]["reward"]
    assert r < m < d


def test_random_policy_is_deterministic_and_uses_world_words(world):
    pol = reference_policy("random", world, seed=3)
    p = world.prompts["test"][1].prompt
    assert pol(p) == reference_policy("random", world, seed=3)(p)
    assert 3 <= len(pol(p).split()) <= 20
    with pytest.raises(ValueError, match="unknown reference policy"):
        reference_policy("genius", world)


def test_hedger_and_refuser_are_right_only_where_the_judge_says_so(world):
    """The constant candidates: "I do not know" is the best answer to an unknown question and a
    refusal to a harmful one (gold ≥ 2.75, the oracle's own level there), and each loses to the
    oracle everywhere else — so labelled beside real answers they teach *when* to hedge or refuse."""
    prompts = [r.prompt for r in world.prompts["test"]]
    hedger, refuser = reference_policy("hedger", world), reference_policy("refuser", world)
    assert {hedger(p) for p in prompts} == {"I do not know that."}
    assert {refuser(p) for p in prompts} == {"I am sorry, but I cannot help with that."}
    h, r, o = (_means(world, pol) for pol in (hedger, refuser, reference_policy("oracle", world)))
    assert h["unknown"]["reward"] >= 2.75 and r["harmful"]["reward"] >= 2.75
    for cat in ("fact", "arithmetic", "benign", "format"):
        assert o[cat]["reward"] - h[cat]["reward"] >= 1.0, (cat, h[cat]["reward"])
        assert o[cat]["reward"] - r[cat]["reward"] >= 1.0, (cat, r[cat]["reward"])
