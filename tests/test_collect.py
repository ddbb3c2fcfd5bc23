"""The collect stage on a small generated world with a tiny random policy, and collect → reward end to end.

A tiny random Llama samples gibberish, so the fixture adds the world's oracle as a reference
candidate: then every prompt has at least one pair with different gold rewards.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from alignforge.config import CollectConfig, ConfigError, RewardConfig, load_config
from alignforge.data.records import Candidates, Comparison, Rating, Ranking, read_records
from alignforge.stages import collect

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world_and_policy(tmp_path_factory):
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer
    from alignforge.world import WorldConfig, build_world

    root = tmp_path_factory.mktemp("collect")
    cfg = load_config(WorldConfig, None, ["size.people=12", "size.places=12", "size.creatures=12",
                                          "prompts.train=40", "prompts.test=20", "prompts.sft=4"])
    build_world(cfg, corpus=False).write(root / "world")
    tok = tiny_tokenizer("llama")
    save_model(tiny_random_model("llama", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id),
               tok, root / "policy")
    return root


def collect_cfg(root: Path, out: Path, *extra: str) -> CollectConfig:
    return load_config(CollectConfig, None, [
        f"model.init={root / 'policy'}", f"data.train={root / 'world' / 'prompts_train.jsonl'}", f"out={out}",
        "collect.prompts=12", "collect.eval_prompts=8", "collect.k=3", "collect.reference_policies=[oracle]",
        "sampling.max_new_tokens=8", "runtime.progress=false", *extra])


def test_collect_writes_labelled_records_with_provenance(world_and_policy, tmp_path):
    out = collect.run(collect_cfg(world_and_policy, tmp_path / "c"))
    summary = json.loads((out / "summary.json").read_text())
    cands = read_records(out / "candidates.jsonl")
    assert len(cands) == 12 + 8 and all(isinstance(c, Candidates) for c in cands)
    assert all(1 <= len(c.responses) <= 4 for c in cands)  # K=3 samples + the oracle, empties left out
    train = read_records(out / "train.jsonl")
    kinds = {r.kind for r in train}
    assert kinds == {"comparison", "ranking", "rating"} and summary["train_labels"]["ranking"] <= 12
    for rec in train + cands:  # design §8 provenance on every generated record
        assert rec.policy == str(world_and_policy / "policy") and rec.round == 0
        assert rec.sampling["temperature"] == 1.0 and rec.sampling["max_new_tokens"] == 8
    assert all(r.annotator and r.annotator.startswith("default-") for r in train)
    # a comparison against the oracle names both candidates' policies
    mixed = [r for r in train if isinstance(r, Comparison) and r.meta]
    assert mixed and all(set(r.meta["policies"]) <= {str(world_and_policy / "policy"), "world:oracle"} for r in mixed)
    gold = read_records(out / "gold_eval.jsonl")
    assert gold and all(r.source == "world-gold" and r.meta["gold"][0] > r.meta["gold"][1] for r in gold)
    assert summary["gold_pairs"] == len(gold) and 0.0 <= summary["annotator_gold_agreement"] <= 1.0
    assert read_records(out / "eval.jsonl") and (out / "length_probe.jsonl").exists()
    assert summary["samples"] == (12 + 8) * 3 and (out / "DONE").exists()


def test_labels_per_prompt_and_empty_samples_counted(world_and_policy):
    from alignforge.world.annotators import AnnotatorPool
    from alignforge.world.core import build_world, load_world_config

    world = build_world(load_world_config(world_and_policy / "world"), corpus=False, demos=False)
    stats = {k: 0 for k in ("empty_samples", "ties", "prompts_with_one_distinct_candidate")}
    p = world.prompts["train"][0].prompt
    cands = collect.with_references(world, [p], [["", "a b c", "a b c"]], ["oracle"], "pol", 0, stats)
    texts, pols = cands[0]
    assert stats["empty_samples"] == 1 and texts[:2] == ["a b c", "a b c"] and pols == ["pol", "pol", "world:oracle"]
    recs = collect.label_prompt(AnnotatorPool(world), p, texts, pols, ["comparison", "ranking", "rating"], 5,
                                random.Random(0), {"round": 3}, stats)
    # 2 distinct texts: 1 comparison (only one pair exists), 1 ranking of 2, 2 ratings; provenance set
    assert [r.kind for r in recs] == ["comparison", "ranking", "rating", "rating"]
    assert all(r.round == 3 for r in recs) and len(recs[1].responses) == 2
    one = collect.label_prompt(AnnotatorPool(world), p, ["x", "x"], ["pol", "pol"], ["comparison", "rating"], 2,
                               random.Random(0), {}, stats)
    assert [r.kind for r in one] == ["rating"] and stats["prompts_with_one_distinct_candidate"] == 1
    assert [collect.gold_strength(g, [0.5, 1.5, 3.0]) for g in (0.25, 0.5, 2.0, 3.0)] == [0, 1, 2, 3]


@pytest.mark.parametrize("override, match", [
    ("collect.labels=[votes]", "collect.labels"), ("collect.k=1", "at least 2 candidates"),
    ("collect.reference_policies=[god]", "reference_policies")])
def test_bad_collect_config(world_and_policy, tmp_path, override, match):
    cfg = collect_cfg(world_and_policy, tmp_path, override)
    if override == "collect.k=1":
        cfg.collect.reference_policies = []
    with pytest.raises(ConfigError, match=match):
        collect.check_config(cfg)


def test_world_configs_load_strictly():
    from alignforge.config import load_config as load

    c = load(CollectConfig, REPO / "configs" / "world" / "collect.yaml")
    r = load(RewardConfig, REPO / "configs" / "world" / "reward.yaml")
    h = load(RewardConfig, REPO / "configs" / "hf" / "reward-hh.yaml")
    assert c.collect.k == 4 and r.reward.gold_eval.endswith("gold_eval.jsonl") and h.data.format == "hh-rlhf"


@pytest.mark.slow
def test_collect_then_reward_end_to_end(world_and_policy, tmp_path):
    """collect (length-biased pool) → reward on its labels: gold accuracy, noise ceiling and length bias reported."""
    from alignforge.stages import reward

    out = collect.run(collect_cfg(world_and_policy, tmp_path / "c", "collect.prompts=40", "collect.eval_prompts=20",
                                  "collect.pool=length_biased"))
    cfg = load_config(RewardConfig, None, [
        f"model.init={world_and_policy / 'policy'}", f"data.train={out / 'train.jsonl'}",
        f"data.eval={out / 'eval.jsonl'}", f"reward.gold_eval={out / 'gold_eval.jsonl'}",
        f"reward.length_probe={out / 'length_probe.jsonl'}", f"reward.normalize_on={out / 'candidates.jsonl'}",
        f"out={tmp_path / 'rm'}", "train.batch_size=16", "train.seq_len=96", "train.lr=3e-3",
        "train.warmup_steps=2", "runtime.progress=false"])
    reward.run(cfg)
    res = json.loads((tmp_path / "rm" / "eval.json").read_text())
    for key in ("eval_accuracy", "gold_accuracy", "length_probe_prefers_padded", "length_corr", "pairs_per_s"):
        assert key in res and res[key] == res[key]  # present and not NaN
    assert res["gold_pairs"] == json.loads((out / "summary.json").read_text())["gold_pairs"]
    assert any(k.startswith("gold_accuracy_strength") for k in res)


def test_collect_accepts_every_world_annotator_pool_preset():
    """`collect.pool` lists exactly the world's presets (a new preset must be selectable)."""
    import typing

    from alignforge.config import CollectConfig, build_config
    from alignforge.world.config import ANNOTATOR_PRESETS

    section = typing.get_type_hints(CollectConfig)["collect"]
    pool_type = typing.get_type_hints(section)["pool"]
    assert set(typing.get_args(pool_type)) == set(ANNOTATOR_PRESETS)
    for name in ANNOTATOR_PRESETS:
        assert build_config(CollectConfig, None, {"collect.pool": name}).collect.pool == name
