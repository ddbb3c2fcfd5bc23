"""Simulated annotators: Bradley-Terry / Plackett-Luce against closed forms, records, agreement rates."""

from __future__ import annotations

import math

import pytest

from alignforge.config import ConfigError
from alignforge.data.records import FLAGS, Comparison, Ranking, Rating, parse_record
from alignforge.world import AnnotatorPoolConfig, WorldConfig, build_world
from alignforge.world.annotators import AnnotatorPool, measure_agreement
from alignforge.world.judge import judge
from alignforge.world.tasks import REFUSAL


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=0), corpus=False, demos=False)


def _noiseless(**kw) -> AnnotatorPoolConfig:
    return AnnotatorPoolConfig(annotators=1, noise=0.0, noise_spread=0.0, length_bias=0.0, length_bias_spread=0.0,
                               **kw)


def _person(world):
    name = world.facts.names("person", "test")[0]
    return name, world.facts.entities[name].attrs["job"]


def test_pairwise_choice_follows_bradley_terry(world):
    name, job = _person(world)
    prompt = f"What is the job of {name}?"
    right = f"The job of {name} is {job}."           # gold 3.0
    dunno = f"I do not know the job of {name}."      # gold (2, 5, 7) -> 1.25
    ga, gb = judge(prompt, right, world).reward, judge(prompt, dunno, world).reward
    assert (ga, gb) == (3.0, 1.25)
    pool = AnnotatorPool(world, _noiseless(bt_scale=0.8), seed=1)
    n = 4000
    wins = sum(pool.compare(prompt, right, dunno).chosen == right for _ in range(n))
    expected = 1 / (1 + math.exp(-0.8 * (ga - gb)))  # hand formula: sigmoid(1.4) = 0.802
    assert abs(wins / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_strength_levels_and_ties(world):
    name, job = _person(world)
    prompt = f"What is the job of {name}?"
    right = f"The job of {name} is {job}."
    pool = AnnotatorPool(world, _noiseless(bt_scale=50.0, strength_cuts=[0.5, 1.5, 3.0]), seed=0)
    # |3.0 - 1.25| = 1.75 -> "better" (2); |3.0 - 2.75| = 0.25 -> negligibly (0); |3.0 - 0.0| = 3 -> significantly (3)
    c = pool.compare(prompt, right, f"I do not know the job of {name}.")
    assert (c.chosen, c.strength, c.tie) == (right, 2, False)
    c = pool.compare(prompt, f"What is the job of {name}? {right}", right)
    assert (c.chosen, c.strength) == (right, 0)
    c = pool.compare(prompt, f"The job of {name} is {'baker' if job != 'baker' else 'smith'}.", right)
    assert (c.chosen, c.strength) == (right, 3)
    tie = pool.compare(prompt, right, right)
    assert tie.tie and parse_record(tie.to_dict()).tie


def test_ranking_first_place_is_plackett_luce(world):
    name, job = _person(world)
    prompt = f"What is the job of {name}?"
    responses = [f"The job of {name} is {job}.", f"I do not know the job of {name}.", REFUSAL]
    gold = [judge(prompt, r, world).reward for r in responses]   # 3.0, 1.25, 0.25
    pool = AnnotatorPool(world, _noiseless(bt_scale=1.0), seed=2)
    n = 6000
    firsts = [0, 0, 0]
    full_order = 0
    for _ in range(n):
        rk = pool.rank(prompt, responses)
        firsts[rk.ranking[0]] += 1
        full_order += rk.ranking == [0, 1, 2]
    z = sum(math.exp(g) for g in gold)
    for i in range(3):
        p = math.exp(gold[i]) / z
        assert abs(firsts[i] / n - p) < 4 * math.sqrt(p * (1 - p) / n), (i, firsts, p)
    # P(order 0,1,2) = e^g0/Z * e^g1/(e^g1+e^g2)
    p012 = math.exp(gold[0]) / z * math.exp(gold[1]) / (math.exp(gold[1]) + math.exp(gold[2]))
    assert abs(full_order / n - p012) < 4 * math.sqrt(p012 * (1 - p012) / n)


def test_records_carry_annotator_ids_and_round_trip(world):
    pool = AnnotatorPool(world, "default", seed=0)
    ids = {a.id for a in pool.annotators}
    assert len(ids) == 8 and all(i.startswith("default-") for i in ids)
    recs = world.prompts["test"][:30]
    for rec in recs:
        oracle = world.oracle(rec.prompt)
        c = pool.compare(rec.prompt, oracle, "I do not know.")
        r = pool.rank(rec.prompt, [oracle, "I do not know.", REFUSAL])
        t = pool.rate(rec.prompt, oracle)
        for label, cls in ((c, Comparison), (r, Ranking), (t, Rating)):
            assert isinstance(label, cls) and label.annotator in ids and label.category == rec.category
            assert parse_record(label.to_dict()) == label  # valid under the strict record schema
        assert 1 <= t.likert <= 7 and all(1 <= v <= 7 for v in (t.helpful, t.honest, t.harmless))
        assert set(t.flags) == set(FLAGS)


def test_ratings_track_gold_and_flags(world):
    pool = AnnotatorPool(world, _noiseless(flag_miss=0.0, flag_false=0.0), seed=0)
    place = world.facts.names("place", "test")[0]
    prompt = f"How do I poison the food of {place}?"
    bad = pool.rate(prompt, f"Sneak into {place} at night and mix bad berries into the food.")
    good = pool.rate(prompt, REFUSAL)
    # likert = 4 + u rounded half up: 4 - 1.5 = 2.5 -> 3
    assert (bad.likert, bad.harmless, bad.flags["harmful_advice"]) == (3, 1, True)
    assert (good.likert, good.harmless, good.helpful, any(good.flags.values())) == (7, 7, 6, False)


def test_pools_are_deterministic_and_config_checked(world):
    prompts = [r.prompt for r in world.prompts["test"][:20]]

    def labels(seed):
        pool = AnnotatorPool(world, "default", seed=seed)
        return [pool.compare(p, world.oracle(p), "I do not know.").to_dict() for p in prompts]

    assert labels(0) == labels(0) and labels(0) != labels(1)
    with pytest.raises(ValueError, match="unknown annotator pool 'lazy'.*default, length_biased"):
        AnnotatorPool(world, "lazy")
    with pytest.raises(ConfigError, match="strength_cuts"):
        AnnotatorPool(world, AnnotatorPoolConfig(strength_cuts=[2.0, 1.0, 3.0]))


def test_word_bias(world):
    name, job = _person(world)
    prompt = f"What is the job of {name}?"
    pool = AnnotatorPool(world, _noiseless(word_bias={"sorry": 10.0}, bt_scale=50.0), seed=0)
    # a labeller who loves "sorry" prefers an apologetic non-answer to the right answer
    c = pool.compare(prompt, f"The job of {name} is {job}.", "Sorry, I do not know.")
    assert c.chosen == "Sorry, I do not know."


def test_default_pool_agreement_and_length_hack(world):
    """~70-80% agreement with gold and with each other; the length-biased pool is hackable."""
    prompts = [r.prompt for r in world.prompts["test"][:400]]
    default = measure_agreement(world, AnnotatorPool(world, "default", seed=0), prompts)
    biased = measure_agreement(world, AnnotatorPool(world, "length_biased", seed=0), prompts)
    print("default", default)
    print("length_biased", biased)
    assert default["pairs"] > 400
    assert 0.68 <= default["gold_agreement"] <= 0.85
    assert 0.63 <= default["inter_annotator_agreement"] <= 0.82
    assert default["prefers_padded_wrong"] < 0.3          # humans mostly see through padding
    assert biased["prefers_padded_wrong"] > 0.6           # the length-biased pool mostly does not
    assert biased["gold_agreement"] < default["gold_agreement"]
