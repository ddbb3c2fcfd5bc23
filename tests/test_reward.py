"""The reward stage: items and losses by hand, heads/gate/normalisation, bad input, tiny end-to-end runs.

Losses are checked against values computed here with ``math`` (not with the code under test): a
stub "model" whose score is 0.1 × the sequence length makes every reward known in advance.
End-to-end runs use a tiny random Llama with our tokenizer, built locally (nothing downloaded).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignforge.config import ConfigError, RewardConfig, load_config
from alignforge.data.records import Comparison, Ranking, Rating, RecordError
from alignforge.stages import reward

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def cfg_with(*overrides: str) -> RewardConfig:
    return load_config(RewardConfig, None, list(overrides))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------------------------------------
# Items: expansion counts, weights, margins, Likert ties (by hand)
# ---------------------------------------------------------------------------------------------


def test_items_from_comparisons_rankings_and_ratings():
    recs = [Comparison(prompt="p", chosen="a", rejected="b", strength=2),
            Comparison(prompt="p", chosen="a", rejected="c", tie=True),
            Ranking(prompt="q", responses=["x", "y", "z", "w"], ranking=[3, 1, 0, 2]),
            Rating(prompt="r", response="good", likert=6), Rating(prompt="r", response="bad", likert=2),
            Rating(prompt="r", response="meh", likert=2)]
    stats: dict = {}
    items = reward.build_items(recs, cfg_with("reward.margins=[0,0.5,1,2]"), stats)
    comp = [i for i in items if i.weight == 1.0 and i.chosen == "a"]
    assert [(i.rejected, i.margin, i.strength) for i in comp] == [("b", 1.0, 2)]
    rank = [i for i in items if i.prompt == "q"]
    assert len(rank) == 6 and all(i.weight == pytest.approx(1 / 6) for i in rank)  # C(4,2)=6, the prompt counts once
    assert {(i.chosen, i.rejected) for i in rank} == {("w", "y"), ("w", "x"), ("w", "z"), ("y", "x"), ("y", "z"),
                                                      ("x", "z")}
    rate = sorted((i.chosen, i.rejected, i.strength, i.margin) for i in items if i.prompt == "r")
    # gap 4 → strength 3 → margin 2; bad = meh is a tie (dropped, counted)
    assert rate == [("good", "bad", 3, 2.0), ("good", "meh", 3, 2.0)]
    assert stats["ties_dropped"] == 2 and stats["pairs"] == 1 + 6 + 2
    strong = reward.build_items(recs, cfg_with("reward.min_strength=3"), stats := {})
    assert sorted((i.chosen, i.rejected) for i in strong if i.prompt != "q") == [("good", "bad"), ("good", "meh")]
    assert stats["weak_dropped"] == 1 and len([i for i in strong if i.prompt == "q"]) == 6  # rankings kept
    assert len(reward.eval_pairs(recs, cfg_with("reward.min_strength=3"))) == 1 + 6 + 2  # held out: every pair
    per_pair = reward.build_items(recs, cfg_with("reward.ranking_weight=per_pair"), {})
    assert all(i.weight == 1.0 and i.margin == 0.0 for i in per_pair)  # margins are off by default


def test_regression_and_axis_items_for_three_heads():
    recs = [Rating(prompt="p", response="a", likert=6, helpful=7, honest=4, harmless=2),
            Rating(prompt="p", response="b", likert=3, helpful=3, honest=4, harmless=6)]
    cfg = cfg_with("reward.heads=[helpful,honest,harmless]", "reward.kinds=[rating]")
    items = reward.build_items(recs, cfg, stats := {})
    got = sorted((i.head, i.chosen, i.rejected) for i in items if i.head is not None)
    assert got == [(0, "a", "b"), (2, "b", "a")]  # honest 4 = 4 is an axis tie
    assert stats["honest_ties_dropped"] == 1
    assert [(i.chosen, i.rejected) for i in items if i.head is None] == [("a", "b")]
    reg = reward.build_items(recs, load_config(RewardConfig, None, ["reward.heads=[helpful,honest,harmless]",
                                                                     "reward.ratings=regression"]), {})
    assert sorted((-1 if i.head is None else i.head, i.chosen, i.target) for i in reg) == [
        (-1, "a", 2.0), (-1, "b", -1.0), (0, "a", 3.0), (0, "b", -1.0), (1, "a", 0.0), (1, "b", 0.0),
        (2, "a", -2.0), (2, "b", 2.0)]


class LengthScorer(torch.nn.Module):
    """score = 0.1 × (number of real tokens) on every head: rewards known by hand."""

    def __init__(self, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, position_ids=None):
        n = attention_mask.sum(1).float()
        logits = (0.1 * n + self.dummy)[:, None].repeat(1, self.heads)
        return type("Out", (), {"logits": logits})()


def test_pair_loss_with_and_without_margin_by_hand():
    a, b = [5] * 7, [5] * 3  # chosen 7 tokens, rejected 3: r_w - r_l = 0.4
    it = reward.Item("p", "c", "r", weight=1.0)
    enc = [(it, [a, b])]
    w = torch.tensor([1.0])
    loss, tokens = reward.micro_loss(LengthScorer(), enc, [0], w, pad_id=0, device="cpu")
    loss = loss.detach()
    assert tokens == 10 and float(loss) == pytest.approx(-log_sigmoid(0.4), rel=1e-6)
    enc = [(reward.Item("p", "c", "r", weight=0.5, margin=1.0), [a, b]),
           (reward.Item("p", "c", "r", weight=2.0, margin=0.0), [b, a])]
    loss, _ = reward.micro_loss(LengthScorer(), enc, [0, 1], w, pad_id=0, device="cpu")
    # Σ w·ℓ: 0.5·−log σ(0.4 − 1) + 2·−log σ(−0.4)
    assert float(loss) == pytest.approx(-0.5 * log_sigmoid(-0.6) - 2 * log_sigmoid(-0.4), rel=1e-6)


def test_a_response_shared_by_pairs_is_scored_once_and_the_loss_is_unchanged():
    """A K-way ranking's C(K,2) pairs share K responses: the pair batch forwards each distinct row once
    (InstructGPT's batching), and the loss equals the one from scoring every row of every pair."""
    calls = []

    class Counting(LengthScorer):
        def forward(self, input_ids, attention_mask, position_ids=None):
            calls.append(input_ids.shape[0])
            return super().forward(input_ids, attention_mask, position_ids)

    rows = [[5] * n for n in (2, 3, 5, 8)]  # a ranking of 4 responses, best first: 6 pairs
    enc = [(reward.Item("p", "c", "r", weight=1 / 6, margin=0.1 * k), [rows[i], rows[j]])
           for k, (i, j) in enumerate((i, j) for i in range(4) for j in range(i + 1, 4))]
    w = torch.tensor([1.0])
    loss, tokens = reward.micro_loss(Counting(), enc, list(range(6)), w, pad_id=0, device="cpu")
    assert calls == [4] and tokens == 2 + 3 + 5 + 8
    # the reference: every pair's two rows scored on their own (LengthScorer: 0.1 · tokens)
    expected = sum(-(1 / 6) * log_sigmoid(0.1 * (len(rows[i]) - len(rows[j])) - 0.1 * k)
                   for k, (i, j) in enumerate((i, j) for i in range(4) for j in range(i + 1, 4)))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_by_prompt_batches_keep_a_prompts_pairs_together():
    def pair(prompt, n):
        return (reward.Item(prompt, "c", "r"), [[5] * n, [6] * n])

    enc = [pair("a", 3), pair("b", 9), pair("a", 4), pair("c", 2), pair("b", 8), pair("a", 5), pair("c", 1),
           (reward.Item("a", "x", None, target=1.0), [[5] * 3])]
    got = reward.plan_batches(enc, batch_size=4, by_prompt=True)
    # prompts by their longest row: c (2), a (5), b (9); c + a would be 5 pairs > 4, so a starts a new batch;
    # a + b would be 5: b alone; the regression point in a batch of its own
    assert got == [[3, 6], [0, 2, 5], [1, 4], [7]]
    # without grouping: length-sorted slices of 4 pairs
    assert reward.plan_batches(enc, batch_size=4) == [[6, 3, 0, 2], [5, 4, 1], [7]]
    # a prompt with more pairs than batch_size is one batch, never split
    big = [pair("p", 3) for _ in range(6)] + [pair("q", 2)]
    assert reward.plan_batches(big, batch_size=4, by_prompt=True) == [[6], [0, 1, 2, 3, 4, 5]]


def test_regression_loss_and_head_selection_by_hand():
    pts = [(reward.Item("p", "x", None, head=None, target=1.0), [[5] * 4]),
           (reward.Item("p", "y", None, head=1, target=-1.0), [[5] * 2])]
    weights = torch.tensor([0.25, 0.75])
    loss, _ = reward.micro_loss(LengthScorer(heads=2), pts, [0, 1], weights, pad_id=0, device="cpu")
    # combined = 0.25·0.4 + 0.75·0.4 = 0.4 → (0.4-1)²; head 1 alone = 0.2 → (0.2+1)²
    assert float(loss) == pytest.approx((0.4 - 1) ** 2 + (0.2 + 1) ** 2, rel=1e-6)


def test_combination_and_safety_gate():
    class Cfg:
        reward_combine = [0.25, 0.25, 0.5]
        reward_safety_head = 2
        reward_safety_threshold = -0.5

    model = type("M", (), {"config": Cfg()})()
    scores = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, -1.0]])
    # row 0: 0.25 + 0.5 + 0 = 0.75; row 1: harmless -1 < -0.5 → gate → -1
    assert reward.reward_from_scores(model, scores).tolist() == pytest.approx([0.75, -1.0])
    Cfg.reward_safety_head = None
    assert reward.reward_from_scores(model, scores).tolist() == pytest.approx([0.75, 0.5])


def test_split_by_prompt_keeps_prompts_apart():
    recs = [Comparison(prompt=f"p{i % 10}", chosen="a", rejected=f"b{i}") for i in range(40)]
    train, held = reward.split_by_prompt(recs, 0.2, seed=0)
    assert len({r.prompt for r in held}) == 2 and len(train) + len(held) == 40
    assert not {r.prompt for r in held} & {r.prompt for r in train}


def test_normalize_on_reads_unlabelled_candidates(tmp_path):
    """``reward.normalize_on`` takes reference-policy samples such as collect's ``candidates.jsonl``:
    a file without preference records is refused as training data, but not as normalisation samples."""
    from alignforge.data.records import Candidates, write_records

    path = tmp_path / "candidates.jsonl"
    write_records(path, [Candidates(prompt="p", responses=["a", "b"]), Candidates(prompt="q", responses=["c"])])
    cfg = cfg_with(f"reward.normalize_on={path}")
    assert sorted(t for _, t in reward.normalisation_texts(cfg, [])) == ["a", "b", "c"]
    with pytest.raises(RecordError, match="candidates"):
        reward.read_preferences(str(path), cfg)


@pytest.mark.parametrize("override, match", [
    ("reward.heads=[a,b]", "ratings' axes"), ("reward.safety_head=harmless", "not one of reward.heads"),
    ("reward.margins=[1,2]", "4 margins"), ("reward.kinds=[likes]", "reward.kinds"),
    ("reward.combine={nope: 1.0}", "reward.combine"),
    ("reward.min_strength=4", "reward.min_strength"), ("reward.label_smoothing=0.5", "reward.label_smoothing")])
def test_bad_reward_config(override, match):
    with pytest.raises(ConfigError, match=match):
        reward.check_config(cfg_with(override))


# ---------------------------------------------------------------------------------------------
# Tiny end-to-end runs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama with our tokenizer, and a preference file the model can learn
    (right answers short, wrong ones long and repetitive)."""
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("reward")
    tok = tiny_tokenizer("llama")
    save_model(tiny_random_model("llama", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id),
               tok, root / "base")
    rows = []
    for i in range(24):
        p = f"what is {i} plus {i}?"
        good, bad = f"It is {2 * i}.", "The quick brown fox jumps over the lazy dog again."
        rows.append({"prompt": p, "chosen": good, "rejected": bad, "strength": i % 4})
        rows.append({"prompt": p, "responses": [good, "no", bad], "ranking": [0, 1, 2]})
        rows.append({"prompt": p, "response": good, "likert": 6, "helpful": 6, "honest": 6, "harmless": 7})
        rows.append({"prompt": p, "response": bad, "likert": 2, "helpful": 2, "honest": 3, "harmless": 4})
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run_reward(tiny, out, *extra):
    cfg = load_config(RewardConfig, None, [f"model.init={tiny / 'base'}", f"data.train={tiny / 'prefs.jsonl'}",
                                           f"out={out}", "train.batch_size=8", "train.seq_len=64",
                                           "train.lr=3e-3", "train.warmup_steps=2", "reward.epochs=2",
                                           "runtime.progress=false", *extra])
    reward.run(cfg)
    return json.loads((Path(out) / "eval.json").read_text())


def test_end_to_end_saves_a_plain_transformers_scorer_normalised_to_mean_zero(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from alignforge.models.heads import load_scorer

    res = run_reward(tiny, tmp_path / "rm", "reward.margins=[0,0.3,0.6,1]", f"reward.normalize_on={tiny / 'prefs.jsonl'}")
    assert res["eval_accuracy"] >= 0.75 and res["eval_pairs"] > 0 and res["pairs_per_s"] > 0 and 0 < res["mfu"] < 1
    assert (tmp_path / "rm" / "DONE").exists() and (tmp_path / "rm" / "config.yaml").exists()
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model")  # plain transformers
    assert rm.config.num_labels == 1 and len(rm.config.reward_mean) == 1
    # the normalisation samples (every response of the preference file) now score 0 on average
    model, tok = load_scorer(tmp_path / "rm")
    cfg = cfg_with(f"reward.normalize_on={tiny / 'prefs.jsonl'}")
    texts = reward.normalisation_texts(cfg, [])
    scores = reward.score_texts(model.eval(), tok, texts, 64, 16)
    assert abs(float(scores.mean())) < 1e-4
    raw = reward.score_texts(model, tok, texts[:3], 64, 16, normalize=False)
    assert torch.allclose(raw - torch.tensor(rm.config.reward_mean), scores[:3], atol=1e-5)


def test_grouped_by_prompt_and_label_smoothed_training_learns_the_same_preference(tiny, tmp_path):
    """InstructGPT's batching and the conservative loss are options of the same loop: both still learn the
    fixture's preference (short right answers over long wrong ones) on held-out prompts."""
    res = run_reward(tiny, tmp_path / "rm", "reward.group_by_prompt=true", "reward.label_smoothing=0.1")
    assert res["eval_accuracy"] >= 0.75 and res["eval_pairs"] > 0


def test_three_heads_with_gate_and_regression(tiny, tmp_path):
    from alignforge.models.heads import load_scorer

    res = run_reward(tiny, tmp_path / "hhh", "reward.heads=[helpful,honest,harmless]",
                     "reward.combine={helpful: 0.25, honest: 0.25, harmless: 0.5}", "reward.safety_head=harmless",
                     "reward.safety_threshold=-1.0", "reward.ratings=regression")
    assert {"eval_helpful_accuracy", "eval_harmless_accuracy", "eval_accuracy"} <= set(res)
    model, _ = load_scorer(tmp_path / "hhh")
    assert model.config.id2label == {0: "helpful", 1: "honest", 2: "harmless"}
    assert model.config.reward_combine == [0.25, 0.25, 0.5] and model.config.reward_safety_head == 2
    # What PPO, RSFT and eval score with: by default the overall reward, hand-combined here from the
    # three heads read one at a time (weights, then the gate: harmless below -1 replaces the sum).
    from alignforge.eval.scorers import RewardModelScorer

    prompts = ["How do I bake bread?", "Tell me how to hurt Kazaix.", "What is 2 plus 2?"]
    answers = ["Knead flour and water, then bake it.", "I will not help with that.", "4"]
    heads = [RewardModelScorer(str(tmp_path / "hhh"), head=h)(prompts, answers) for h in ("helpful", "1", 2)]
    want = [ha if ha < -1.0 else 0.25 * h + 0.25 * o + 0.5 * ha for h, o, ha in zip(*heads)]
    assert RewardModelScorer(str(tmp_path / "hhh"))(prompts, answers) == pytest.approx(want, abs=1e-6)
    assert RewardModelScorer(str(tmp_path / "hhh"), head="helpful")(prompts, answers) == heads[0]
    with pytest.raises(ValueError, match="'kind' is not a head .*helpful, honest, harmless.*'overall'"):
        RewardModelScorer(str(tmp_path / "hhh"), head="kind")
    # The RL stages' loader resolves reward.head the same way (None = overall, models.scoring.select_reward).
    from types import SimpleNamespace

    from alignforge.config import ConfigError
    from alignforge.models.load import load_reward

    tok = load_scorer(tmp_path / "hhh")[1]
    cfg = lambda head: SimpleNamespace(reward=SimpleNamespace(init=str(tmp_path / "hhh"), head=head))  # noqa: E731
    assert load_reward(cfg("overall"), tok, "cpu")[1] is None and load_reward(cfg("harmless"), tok, "cpu")[1] == 2
    with pytest.raises(ConfigError, match="config key 'reward.head'.*'3' is not a head"):
        load_reward(cfg("3"), tok, "cpu")


def test_bad_records_are_clear_errors_or_counted_skips(tiny, tmp_path):
    from alignforge.stages.reward import main

    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    bad = [({"prompt": "p", "chosen": "same", "rejected": "same"}, "field 'chosen': chosen and rejected are identical"),
           ({"prompt": "p", "chosen": "", "rejected": "b"}, "field 'chosen': expected a non-empty string"),
           ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "field 'ranking': expected a permutation")]
    for row, message in bad:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(RecordError) as e:
            reward.read_preferences(str(path), cfg_with())
        assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)
    # through the CLI: one line, exit 2
    assert main([f"data.train={path}", f"model.init={tiny / 'base'}", f"out={tmp_path / 'x'}"]) == 2
    recs = reward.read_preferences(str(path), cfg_with("data.on_bad_record=skip"))
    assert len(recs) == 1  # the bad line was skipped (and counted in the printed summary)


@pytest.mark.skipif(not HH.exists(), reason=f"shared data not found: {HH} (clone with shared/ beside the repo)")
def test_hh_rlhf_records_train(tiny, tmp_path):
    """HH-RLHF transcripts → comparisons → a few steps (the real accuracy is measured in docs/reward.md)."""
    cfg = load_config(RewardConfig, None, [f"model.init={tiny / 'base'}", f"data.train={HH}", "data.max_records=64",
                                           f"out={tmp_path / 'hh'}", "train.batch_size=8", "train.seq_len=128",
                                           "reward.eval_fraction=0.25", "runtime.progress=false"])
    reward.run(cfg)
    res = json.loads((tmp_path / "hh" / "eval.json").read_text())
    assert res["eval_pairs"] >= 8 and 0.0 <= res["eval_accuracy"] <= 1.0 and res["pairs_from_comparison"] > 0


def test_resume_after_a_stop_is_exact(tiny, tmp_path):
    """A run stopped after its first step (time budget 0) and resumed equals an uninterrupted run."""
    from safetensors.torch import load_file

    common = ["reward.epochs=null", "train.max_steps=4", "train.save_every=2"]
    run_reward(tiny, tmp_path / "full", *common)
    run_reward(tiny, tmp_path / "cut", *common, "train.max_minutes=0")
    assert json.loads((tmp_path / "cut" / "DONE").read_text())["step"] == 1
    for name in ("DONE", "eval.json"):  # pretend the first run died after its checkpoint
        (tmp_path / "cut" / name).unlink()
    import shutil

    shutil.rmtree(tmp_path / "cut" / "model")
    res = run_reward(tiny, tmp_path / "cut", *common)
    assert res["step"] == 4
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tiny, tmp_path):
    """torchrun 2×(grad_accum 1) ≡ 1×(grad_accum 2): same global batches, same Σw normalisation."""
    from safetensors.torch import load_file

    args = [f"model.init={tiny / 'base'}", f"data.train={tiny / 'prefs.jsonl'}", "train.batch_size=8",
            "train.seq_len=64", "reward.epochs=null", "train.max_steps=3", "train.warmup_steps=1",
            "train.lr=3e-3", "runtime.progress=false", "runtime.threads=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert reward.main([*args, "train.grad_accum=2", f"out={one}"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "alignforge", "reward", *args, "train.grad_accum=1", f"out={two}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # on a timeout the whole group is killed
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail("2-process reward did not finish in 240 s:\n" + output[-3000:])
    assert proc.returncode == 0, output[-3000:]
    a, b = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    ra = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rb if "loss" in r] == pytest.approx([r["loss"] for r in ra if "loss" in r], rel=1e-4)
    assert json.loads((two / "eval.json").read_text())["eval_accuracy"] == json.loads(
        (one / "eval.json").read_text())["eval_accuracy"]
