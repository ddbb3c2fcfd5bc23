"""``alignforge rsft`` (rejection-sampling fine-tuning) and the best-of-n helper, on tiny local models.

A scorer is injected where a test needs to know which response is best (score = −words, so the
shortest of n must be kept); the reward-model scorer is checked against a direct forward of the
HF classifier; a tiny round end to end with a scalar-head reward model; resume after a round;
the gold oracle is refused by the stage itself (import boundary) with a message naming the
oracle runner.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from alignforge.config import ConfigError, RSFTConfig, load_config
from alignforge.eval.scorers import RewardModelScorer, best_of_n, sample_and_score
from alignforge.stages import rsft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_helpers import crash_after_save  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 2+3?", "Say yes.", "Where does the fox live?", "Name a colour.", "What is 4+4?",
           "Hello there", "Count to three.", "Is the sky blue?"]
TEXTS = ["It is 5.", "yes", "Near the silver river.", "red", "It is 8.", "Hello.", "1, 2, 3", "Yes, on a clear day."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from alignforge.models.heads import init_from_causal_lm, save_scorer
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model
    from alignforge.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("rsft_models")
    tok = train_tokenizer([p + " " + t for p, t in zip(PROMPTS, TEXTS)] * 8, vocab_size=320)
    model = tiny_random_model("llama", len(tok), seed=0, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, max_positions=256, tie_embeddings=False)
    save_model(model, tok, root / "policy")
    rm, rm_tok = init_from_causal_lm(root / "policy", seed=1)
    save_scorer(rm, rm_tok, root / "rm")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"policy": root / "policy", "rm": root / "rm", "data": data, "model": model, "tok": tok}


def shortest(prompts, responses):
    """A scorer with a known best: fewer words is better."""
    return [-float(len(r.split())) for r in responses]


def _args(tiny, out, **kw):
    base = {"model.init": tiny["policy"], "reward.init": tiny["rm"], "data.train": tiny["data"], "out": out,
            "runtime.threads": 1, "runtime.progress": False, "runtime.device": "cpu", "rsft.rounds": 2,
            "rsft.n": 3, "rsft.prompts_per_round": 4, "sampling.max_new_tokens": 8, "train.seq_len": 64,
            "train.batch_size": 2, "train.warmup_steps": 1, "train.log_every": 1, "train.lr": 3e-3}
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def test_sample_and_score_and_best_of_n_pick_the_highest_score(tiny):
    s = sample_and_score(tiny["model"], tiny["tok"], PROMPTS[:3], shortest, 4, max_new_tokens=10, seed=3)
    assert len(s.texts) == 3 and all(len(t) == 4 for t in s.texts)
    for texts, scores, k in zip(s.texts, s.scores, s.best()):
        assert scores == [-float(len(t.split())) for t in texts]
        assert scores[k] == max(scores)
    again = sample_and_score(tiny["model"], tiny["tok"], PROMPTS[:3], shortest, 4, max_new_tokens=10, seed=3)
    assert again.texts == s.texts  # deterministic for a seed
    bon = best_of_n(tiny["model"], tiny["tok"], PROMPTS[:3], shortest, 4, max_new_tokens=10, seed=3)
    assert bon == [t[k] for t, k in zip(s.texts, s.best())]


def test_reward_model_scorer_equals_a_direct_classifier_forward(tiny):
    from transformers import AutoModelForSequenceClassification

    from alignforge.data.batching import encode_example

    scorer = RewardModelScorer(str(tiny["rm"]), batch_size=3)
    got = scorer(PROMPTS[:5], TEXTS[:5])
    hf = AutoModelForSequenceClassification.from_pretrained(tiny["rm"] / "model" if (tiny["rm"] / "model").is_dir()
                                                            else tiny["rm"]).eval()
    want = []
    with torch.no_grad():
        for p, t in zip(PROMPTS[:5], TEXTS[:5]):
            ids = torch.tensor([encode_example(scorer.tokenizer, p, t).input_ids])
            want.append(float(hf(ids).logits[0, 0]))  # normalisation is (x - 0) / 1 at init
    assert got == pytest.approx(want, abs=1e-5)


def test_rsft_keeps_the_best_of_n_and_fine_tunes_on_it(tiny, tmp_path):
    cfg = load_config(RSFTConfig, None, _args(tiny, tmp_path / "out"))
    out = rsft.run(cfg, scorer=shortest)
    for rnd in (0, 1):
        demos = [json.loads(x) for x in (out / f"round{rnd}.jsonl").read_text().splitlines()]
        assert len(demos) == 4
        for d in demos:
            assert d["round"] == rnd and d["source"] == "rsft" and d["sampling"]["n"] == 3
            assert d["meta"]["score"] == -float(len(d["response"].split()))
            assert d["meta"]["score"] >= d["meta"]["mean_score"]  # the best is at least the mean
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if "round" in r]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["score_best_mean"] >= r["score_mean"] for r in rounds)
    assert all(r["loss"] > 0 for r in rows if "loss" in r)
    from safetensors.torch import load_file

    w = load_file(str(out / "model" / "model.safetensors"))
    start = tiny["model"].state_dict()
    assert max(float((w[k] - start[k]).abs().max()) for k in w if k in start) > 1e-4  # it trained


def test_rsft_with_a_reward_model_runs_end_to_end_and_resumes_at_the_next_round(tiny, tmp_path, monkeypatch):
    out = tmp_path / "rm"
    args = _args(tiny, out, **{"rsft.rounds": 2, "rsft.min_score": -100.0})
    with crash_after_save(monkeypatch, rsft.ckpt, "simulated crash after round 0"):
        rsft.run(load_config(RSFTConfig, None, args))
    first_round0 = (out / "round0.jsonl").read_text()
    assert not (out / "round1.jsonl").exists()
    rsft.run(load_config(RSFTConfig, None, args))  # resumes at round 1
    assert (out / "round0.jsonl").read_text() == first_round0
    assert (out / "round1.jsonl").is_file() and (out / "DONE").is_file()
    # the resumed run equals an uninterrupted one
    full = rsft.run(load_config(RSFTConfig, None, _args(tiny, tmp_path / "full", **{"rsft.min_score": -100.0})))
    assert (full / "round1.jsonl").read_text() == (out / "round1.jsonl").read_text()


def test_rsft_refuses_the_gold_judge_and_names_the_oracle_runner(tiny, tmp_path, capsys):
    rc = rsft.main(_args(tiny, tmp_path / "o", **{"rsft.scorer": "gold"}))
    err = capsys.readouterr().err
    assert rc == 2 and "alignforge.eval.oracle rsft" in err
    rc = rsft.main(_args(tiny, tmp_path / "o2", **{"reward.init": "null"}))
    assert rc == 2 and "reward.init" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="rsft.rounds"):
        load_config(RSFTConfig, None, ["rsft.rounds=0"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/rsft*.yaml")))
def test_shipped_rsft_configs_load_strictly(path):
    cfg = load_config(RSFTConfig, path)
    assert cfg.rsft.n >= 1


def test_oracle_runner_injects_the_gold_judge(tiny, tmp_path):
    """`python -m alignforge.eval.oracle rsft --world DIR ...`: the kept responses are scored by gold."""
    from alignforge.config import load_config as load
    from alignforge.eval.oracle import GoldScorer, load_world, main, make_scorer
    from alignforge.world import WorldConfig, build_world
    from alignforge.world.judge import gold_rewards

    wdir = tmp_path / "world"
    build_world(load(WorldConfig, None, ["prompts.test=20", "prompts.train=20", "prompts.sft=5"]),
                corpus=False).write(wdir)
    world = load_world(wdir)
    prompts = [p.prompt for p in world.prompts["train"][:6]]
    assert isinstance(make_scorer(f"gold:{wdir}"), GoldScorer)
    assert make_scorer(f"gold:{wdir}")(prompts, [world.oracle(p) for p in prompts]) == \
        gold_rewards(prompts, [world.oracle(p) for p in prompts], world)
    args = _args(tiny, tmp_path / "gold", **{"data.train": wdir / "prompts_train.jsonl", "rsft.rounds": 1,
                                            "reward.init": "null"})
    assert main(["rsft", "--world", str(wdir), *args]) == 0
    demos = [json.loads(x) for x in (tmp_path / "gold" / "round0.jsonl").read_text().splitlines()]
    assert len(demos) == 4
    assert [d["meta"]["score"] for d in demos] == pytest.approx(
        gold_rewards([d["prompt"] for d in demos], [d["response"] for d in demos], world))
    assert "scorer: gold" in (tmp_path / "gold" / "config.yaml").read_text()


def _small_world(tmp_path):
    from alignforge.config import load_config as load
    from alignforge.eval.oracle import load_world
    from alignforge.world import WorldConfig, build_world

    wdir = tmp_path / "world"
    build_world(load(WorldConfig, None, ["prompts.test=20", "prompts.train=20", "prompts.sft=5"]),
                corpus=False).write(wdir)
    return wdir, load_world(wdir)


def test_oracle_reward_fn_scores_each_rollout_row_by_its_own_prompt(tiny, tmp_path):
    """An RL stage's rollout rows carry prompt ids, not texts: the oracle finds each row's prompt by its
    ids (left-truncated as the stage truncates them) and scores the engine's response text with gold."""
    from alignforge.data.batching import encode_prompt
    from alignforge.eval.oracle import GoldScorer, scorer_reward_fn
    from alignforge.generation import SamplingParams, generate
    from alignforge.world.judge import gold_rewards

    wdir, world = _small_world(tmp_path)
    tok = tiny["tok"]
    prompts = [p.prompt for p in world.prompts["train"][:5]]
    reward_fn = scorer_reward_fn(GoldScorer(world), tok, prompts, max_prompt_tokens=12)
    order = [3, 0, 4, 4, 1]  # rows in another order than the prompts, one prompt twice
    gen = generate(tiny["model"].eval(), [encode_prompt(tok, prompts[i], 12) for i in order],
                   SamplingParams(temperature=1.0, max_new_tokens=6), eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id, tokenizer=tok, generator=torch.Generator().manual_seed(0))
    got = reward_fn(gen)
    assert got.tolist() == pytest.approx(gold_rewards([prompts[i] for i in order], gen.texts, world))
    other = scorer_reward_fn(GoldScorer(world), tok, prompts[:2], max_prompt_tokens=12)
    with pytest.raises(ValueError, match="not one of the 2 prompts"):
        other(gen)


def test_oracle_ppo_trains_on_the_gold_reward(tiny, tmp_path):
    """`python -m alignforge.eval.oracle ppo --world DIR ...`: every rollout is scored by gold."""
    from alignforge.eval.oracle import main
    from alignforge.world.judge import gold_rewards

    wdir, world = _small_world(tmp_path)
    out = tmp_path / "ppo"
    args = {"model.init": tiny["policy"], "data.train": wdir / "prompts_train.jsonl", "out": out,
            "runtime.threads": 1, "runtime.progress": False, "rollout.prompts": 4, "ppo.minibatch_size": 2,
            "ppo.epochs": 1, "ppo.steps": 2, "sampling.max_new_tokens": 6, "train.seq_len": 64,
            "reward.init": tiny["rm"]}  # ignored: the oracle replaces it
    assert main(["ppo", "--world", str(wdir), *[f"{k}={v}" for k, v in args.items()]]) == 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert rows and [r["score"] for r in rows] == pytest.approx(
        gold_rewards([r["prompt"] for r in rows], [r["response"] for r in rows], world))
    assert (out / "DONE").exists()
    assert main(["dpo", "--world", str(wdir)]) == 2  # only the stages that take a scorer or a reward


@pytest.mark.slow
def test_two_process_gloo_round(tiny, tmp_path):
    """torchrun 2 processes: each samples and scores half of a round's prompts, the kept answers are
    gathered (every prompt once), both ranks train on the same batches (DDP), rank 0 writes."""
    import os
    import subprocess
    import sys

    out = tmp_path / "two"
    args = _args(tiny, out, **{"rsft.rounds": 1, "rsft.n": 2, "rsft.prompts_per_round": 6, "train.batch_size": 1})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "alignforge", "rsft", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    demos = [json.loads(x) for x in (out / "round0.jsonl").read_text().splitlines()]
    chosen = rsft.round_prompts(PROMPTS, 6, 0, 0)
    assert [d["prompt"] for d in demos] == chosen  # rank 0's half, then rank 1's, each prompt once
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kept"] == 6 and (out / "DONE").is_file()
