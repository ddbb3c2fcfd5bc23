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
    assert report["policies"] == ["other", "sft", "oracle", "demonstrator", "random"]
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
    assert len(lines) == 5 * 2 * 24  # policies × modes × prompts
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
