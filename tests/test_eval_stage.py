"""`alignforge eval` end to end on a tiny world with tiny random checkpoints."""

import json

import pytest

from alignforge.cli import main as cli_main


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("evalstage")
    assert cli_main(["world", "generate", "--seed", "0", "--out", str(root / "world")]) == 0
    tok = tiny_tokenizer("llama")
    for name, seed in (("sft", 0), ("other", 1)):
        model = tiny_random_model("llama", len(tok), seed=seed, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id)
        save_model(model, tok, root / name / "model")
    return root


def test_eval_stage_writes_eval_json_with_protocol_fields(tiny_setup, capsys):
    root = tiny_setup
    out = root / "eval"
    rc = cli_main(["eval", str(root / "other"), str(root / "sft"), "--world", str(root / "world"),
                   "eval.max_prompts=24", "eval.max_new_tokens=8", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["policies"] == ["other", "sft", "oracle", "demonstrator", "random", "hedger"]
    assert report["references"] == ["oracle", "demonstrator", "random", "hedger"]
    assert report["baseline"] == "sft" and report["n_prompts"] == 24
    for mode in ("sample", "greedy"):
        sec = report[mode]
        # The world's own policies order as designed: oracle > demonstrator > random on gold.
        gold = {n: sec[n]["summary"]["all"]["reward"]["value"] for n in ("oracle", "demonstrator", "random")}
        assert gold["oracle"] > gold["demonstrator"] > gold["random"]
        w = sec["other"]["win_rate"]
        assert 0.0 <= w["lo"] <= w["value"] <= w["hi"] <= 1.0
        assert "gap_closed" in sec["other"]
    assert report["kl"]["other"]["kl"] > 0  # KL to the baseline on other's samples
    assert set(report["bits_per_byte"]) == {"other", "sft"}
    assert all(v > 0 for v in report["bits_per_byte"].values())
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 2 * 24  # policies × modes × prompts
    assert "win vs sft" in capsys.readouterr().out


def test_eval_stage_clear_errors(tiny_setup, capsys, tmp_path, monkeypatch):
    root = tiny_setup
    monkeypatch.chdir(tmp_path)  # a failed eval must not leave runs/default/eval behind
    assert cli_main(["eval", "--world", str(root / "world")]) == 2
    assert "at least one checkpoint" in capsys.readouterr().err
    assert cli_main(["eval", str(root / "sft")]) == 2
    assert "needs eval.world" in capsys.readouterr().err
    assert cli_main(["eval", str(root / "sft"), "--world", str(root / "world"), "eval.baseline=nope"]) == 2
    assert "not one of the checkpoints" in capsys.readouterr().err
    assert cli_main(["eval", str(root / "sft"), "--world", str(root / "world"), "eval.references=[oracle,genius]"]) == 2
    err = capsys.readouterr().err
    assert "eval.references" in err and "['genius']" in err
    assert not (tmp_path / "runs").exists()


def test_best_of_n_policies_use_the_reward_model_and_the_kl_bound(tiny_setup):
    """bon-<n>: for every prompt, the answer the reward model scores highest among n samples of
    the baseline (checked against sample_and_score with the same seed), KL = log n - (n-1)/n."""
    import math

    from alignforge.data.records import read_records
    from alignforge.eval.scorers import RewardModelScorer, sample_and_score
    from alignforge.models.heads import init_from_causal_lm, save_scorer
    from alignforge.models.load import load_causal_lm
    from alignforge.stages.eval import bon_kl_bound

    root = tiny_setup
    if not (root / "rm").exists():
        rm, rm_tok = init_from_causal_lm(root / "sft", seed=3)
        save_scorer(rm, rm_tok, root / "rm")
    out = root / "eval-bon"
    rc = cli_main(["eval", str(root / "sft"), "--world", str(root / "world"), "eval.max_prompts=12",
                   "eval.max_new_tokens=8", "eval.best_of_n=[1,4]", "eval.references=[oracle]",
                   f"reward.init={root / 'rm'}", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["policies"] == ["sft", "bon-1", "bon-4", "oracle"]
    assert "bon-4" in report["sample"] and "bon-4" not in report["greedy"]
    assert report["kl"]["bon-1"]["kl"] == 0.0
    assert report["kl"]["bon-4"]["kl"] == pytest.approx(math.log(4) - 3 / 4) == bon_kl_bound(4)
    # Independent recomputation of the picks: same engine, seed and batch as the stage.
    prompts = [r.prompt for r in read_records(root / "world" / "prompts_test.jsonl", kind="prompt")[:12]]
    model, tok = load_causal_lm(root / "sft")
    s = sample_and_score(model, tok, prompts, RewardModelScorer(str(root / "rm")), 4, max_new_tokens=8, seed=0,
                         batch_size=64)
    want = [max(zip(sc, tx), key=lambda t: t[0])[1] for sc, tx in zip(s.scores, s.texts)]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    got = [r["response"] for r in rows if r["policy"] == "bon-4"]
    assert got == want
    # The picked answer's reward-model score is the max of the 4, so its mean is >= bon-1's.
    assert report["reward_model"]["bon-4"] >= report["reward_model"]["bon-1"] - 1e-6
    assert cli_main(["eval", str(root / "sft"), "--world", str(root / "world"), "eval.best_of_n=[2]"]) == 2


def test_pick_shots_takes_one_category_after_another():
    """The prefix shows every kind of request before any kind twice; seeded; never more than exist."""
    from types import SimpleNamespace

    from alignforge.eval.protocol import pick_shots

    recs = [SimpleNamespace(category=c, i=i) for i, c in enumerate("aaaaaabbc")]
    shots = pick_shots(recs, 5, seed=0)
    assert sorted(r.category for r in shots[:3]) == ["a", "b", "c"]
    assert sorted(r.category for r in shots) == ["a", "a", "b", "b", "c"]
    assert len({r.i for r in shots}) == 5  # no record twice
    assert [r.i for r in pick_shots(recs, 5, seed=0)] == [r.i for r in shots]
    assert len(pick_shots(recs, 50, seed=1)) == 9


def test_fewshot_prefix_is_finished_dialogues_and_drops_the_earliest_to_fit(tiny_setup):
    from alignforge.data.batching import prompt_ids, response_ids
    from alignforge.eval.protocol import fewshot_prefix
    from alignforge.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer("llama")
    solved = [("What is 2 plus 2?", "4"), ("Who is Melka?", "I do not know."), ("Say hi.", "hi")]
    blocks = [prompt_ids(tok, p) + response_ids(tok, a) for p, a in solved]
    ids, kept = fewshot_prefix(tok, solved, None, 10)
    assert kept == 3 and ids == blocks[0] + blocks[1] + blocks[2]
    # A budget for the last two blocks and a 10-token prompt: the first (earliest) block goes.
    ids, kept = fewshot_prefix(tok, solved, len(blocks[1]) + len(blocks[2]) + 10, 10)
    assert kept == 2 and ids == blocks[1] + blocks[2]
    assert fewshot_prefix(tok, solved, 5, 10) == ([], 0)


def test_prompted_policy_answers_after_the_fewshot_prefix(tiny_setup, capsys):
    """``eval.prompted=[sft]``: an extra policy 'sft-prompted' whose greedy answers are the
    engine's greedy continuations of prefix + prompt (recomputed here), without a KL entry."""
    import torch

    from alignforge.data.batching import encode_prompt, pad_id_of
    from alignforge.data.records import read_records
    from alignforge.eval.protocol import fewshot_prefix
    from alignforge.generation import SamplingParams, generate
    from alignforge.models.load import load_causal_lm

    root = tiny_setup
    out = root / "eval-prompted"
    rc = cli_main(["eval", str(root / "sft"), "--world", str(root / "world"), "eval.max_prompts=10",
                   "eval.max_new_tokens=8", "eval.prompted=[sft]", "eval.prompted_shots=3",
                   "eval.references=[oracle]", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["policies"] == ["sft", "sft-prompted", "oracle"]
    assert "sft-prompted" not in (report.get("kl") or {})
    shots = report["prompted"]["sft-prompted"]["shots"]
    # By default the shots are world train prompts with the oracle's (right) answers.
    from alignforge.eval.oracle import load_world

    world = load_world(root / "world")
    train = {r.prompt for r in read_records(root / "world" / "prompts_train.jsonl", kind="prompt")}
    # The tiny model's 128 positions hold one solved example beside a prompt and 8 answer tokens.
    assert len(shots) == 1 and all(s["prompt"] in train and s["response"] == world.oracle(s["prompt"]) for s in shots)
    model, tok = load_causal_lm(root / "sft")
    prefix, kept = fewshot_prefix(tok, [(s["prompt"], s["response"]) for s in shots], None, 0)
    assert kept == 1 and report["prompted"]["sft-prompted"]["prefix_tokens"] == len(prefix)
    prompts = [r.prompt for r in read_records(root / "world" / "prompts_test.jsonl", kind="prompt")[:10]]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    for mode, temperature in (("sample", 1.0), ("greedy", 0.0)):
        # The stage seeds its sampler with eval's seed (0), as here.
        g = generate(model, [prefix + encode_prompt(tok, p) for p in prompts],
                     SamplingParams(temperature=temperature, max_new_tokens=8), eos_token_id=tok.eos_token_id,
                     pad_token_id=pad_id_of(tok), tokenizer=tok, generator=torch.Generator().manual_seed(0))
        assert [r["response"] for r in rows if r["policy"] == "sft-prompted" and r["mode"] == mode] == g.texts
    plain = [r["response"] for r in rows if r["policy"] == "sft" and r["mode"] == "sample"]
    prompted = [r["response"] for r in rows if r["policy"] == "sft-prompted" and r["mode"] == "sample"]
    assert plain != prompted  # the prefix changed the distribution the samples come from
    assert cli_main(["eval", str(root / "sft"), "--world", str(root / "world"), "eval.prompted=[nope]"]) == 2
    assert "eval.prompted" in capsys.readouterr().err
