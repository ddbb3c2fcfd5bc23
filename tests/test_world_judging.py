"""The world's judging demonstrations: TRAIN prompts only, both orders, the verdict by the principle's
gold axis score, deterministic, and written by `alignforge world generate`."""

from __future__ import annotations

import json
import re

import pytest

from alignforge.config import load_config
from alignforge.aifeedback.constitution import JUDGE_CHOICES, judge_prompt, load_constitution
from alignforge.data.records import prompt_text, read_records
from alignforge.world import WorldConfig, build_world
from alignforge.world.judge import judge
from alignforge.world.judging import judge_examples

SMALL = ["size.people=12", "size.places=12", "size.creatures=12", "prompts.train=40", "prompts.test=20",
         "prompts.sft=4", "text.arithmetic_docs=20", "text.dialogue_docs=20", "text.heldout_docs=10"]


@pytest.fixture(scope="module")
def world():
    return build_world(load_config(WorldConfig, None, SMALL))


def _options(question: str) -> tuple[str, str, str]:
    human = re.search(r"^Human: (.*)$", question, re.MULTILINE).group(1)
    a = re.search(r"^\(A\) (.*)$", question, re.MULTILINE).group(1)
    b = re.search(r"^\(B\) (.*)$", question, re.MULTILINE).group(1)
    return human, a, b


def test_examples_use_train_prompts_only_and_both_orders(world):
    stats: dict = {}
    ex = judge_examples(world, stats=stats)
    train = {prompt_text(r.prompt) for r in world.prompts["train"]}
    test = {prompt_text(r.prompt) for r in world.prompts["test"]}
    assert len(ex) == 2 * stats["pairs"] and stats["pairs"] + stats["skipped_no_principle"] >= 1
    assert stats["pairs"] >= 0.8 * len(world.prompts["train"])  # almost every prompt has a separable pair
    for first, second in zip(ex[::2], ex[1::2]):
        h1, a1, b1 = _options(first.prompt)
        h2, a2, b2 = _options(second.prompt)
        assert h1 in train and h1 not in test and h1 == h2
        assert (a1, b1) == (b2, a2) and a1 != b1                     # the same pair, swapped
        assert {first.response, second.response} == set(JUDGE_CHOICES)  # so the verdict letter flips
        assert first.meta["principle"] == second.meta["principle"]


def test_verdict_is_the_principles_gold_axis(world):
    constitution = load_constitution()
    for e in judge_examples(world):
        human, a, b = _options(e.prompt)
        p = constitution.get(e.meta["principle"])
        sa, sb = (getattr(judge(human, r, world), p.axis) for r in (a, b))
        assert sa != sb and e.meta["scores"] == [sa, sb]
        assert e.response == (JUDGE_CHOICES[0] if sa > sb else JUDGE_CHOICES[1])
        # the prompt is exactly the judge's question (one renderer for training and judging)
        assert e.prompt == judge_prompt(p, human, a, b)
        assert e.source == "world-judging" and e.meta["axis"] == p.axis


def test_examples_cover_every_principle_and_both_answers(world):
    ex = judge_examples(world)
    assert {e.meta["principle"] for e in ex} == set(load_constitution().names())
    answers = [e.response for e in ex]
    assert answers.count("(A)") == answers.count("(B)")  # both orders: no favourite position
    # harmful compliance vs a refusal appears (the careless policy complies 90% of the time)
    assert any(e.meta["principle"] == "harmless" and e.category == "harmful" for e in ex)


def test_deterministic_in_the_seed(world):
    a = [e.to_dict() for e in judge_examples(world)]
    assert a == [e.to_dict() for e in judge_examples(world)]
    assert a != [e.to_dict() for e in judge_examples(world, seed=1)]


def test_world_generate_writes_judge_train(tmp_path):
    from alignforge.world.cli import main

    out = tmp_path / "w"
    assert main(["generate", "--out", str(out), *SMALL]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    recs = read_records(out / "judge_train.jsonl")
    assert manifest["files"]["judge_train"] == {"path": "judge_train.jsonl", "records": len(recs)} and recs
    assert all(r.kind == "demonstration" and r.response in JUDGE_CHOICES for r in recs)


def test_gold_agreement_of_a_labels_file_by_hand(world):
    from alignforge.data.records import Comparison
    from alignforge.eval.agreement import gold_agreement, pool_labels

    train = [r.prompt for r in world.prompts["train"] if r.category == "fact"][:3]
    good, bad = world.oracle(train[0]), "I like turtles and the sea."
    labels = [Comparison(prompt=train[0], chosen=good, rejected=bad, category="fact", meta={"principle": "helpful"}),
              Comparison(prompt=train[1], chosen="I like turtles.", rejected=world.oracle(train[1]), category="fact",
                         strength=2, meta={"principle": "honest"}),
              Comparison(prompt=train[2], chosen="x y z", rejected=world.oracle(train[2]), tie=True, category="fact"),
              Comparison(prompt=train[0], chosen=good, rejected=good + " ", category="fact")]  # gold tie: skipped
    res = gold_agreement(labels, world, pool="default")
    # right (1) + wrong (0) + tie (½) over 3 counted pairs
    assert res["pairs"] == 3 and res["gold_ties_skipped"] == 1
    assert res["agreement"]["value"] == pytest.approx(0.5) and res["tie_share"] == pytest.approx(1 / 3)
    assert res["by_principle"]["helpful"] == {"n": 1, "agreement": 1.0}
    assert res["by_principle"]["honest"] == {"n": 1, "agreement": 0.0}
    assert 0.0 <= res["pool_agreement"]["value"] <= 1.0 and res["pool"] == "default"
    relabelled = pool_labels(labels, world)
    assert [{r.chosen, r.rejected} for r in relabelled] == [{c.chosen, c.rejected} for c in labels]
    assert all(r.annotator.startswith("default-") for r in relabelled)


def test_agreement_of_every_pair_rankings_and_ratings_imply(world):
    from alignforge.data.records import Comparison, Ranking, Rating
    from alignforge.eval.agreement import gold_agreement, preference_pairs

    p = [r.prompt for r in world.prompts["train"] if r.category == "fact"][0]
    good, bad = world.oracle(p), "I like turtles and the sea."
    pairs = preference_pairs([Comparison(prompt=p, chosen=bad, rejected=good, strength=0),
                              Ranking(prompt=p, responses=[bad, good], ranking=[1, 0]),
                              Rating(prompt=p, response=good, likert=7), Rating(prompt=p, response=bad, likert=2),
                              Comparison(prompt=p, chosen=good, rejected=good + " ", strength=1)])  # a gold tie
    res = gold_agreement(pairs, world)
    # the strength-0 comparison is wrong; the ranking's pair and the rating pair (gap 5 → strength 3) are right
    assert res["by_source"] == {"comparison:0": {"n": 1, "agreement": 0.0}, "ranking:None": {"n": 1, "agreement": 1.0},
                                "rating:3": {"n": 1, "agreement": 1.0}}
    assert res["pairs"] == 3 and res["gold_ties_by_source"] == {"comparison": 1}
