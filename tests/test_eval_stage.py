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


def test_eval_stage_clear_errors(tiny_setup, capsys):
    root = tiny_setup
    assert cli_main(["eval", "--world", str(root / "world")]) == 2
    assert "at least one checkpoint" in capsys.readouterr().err
    assert cli_main(["eval", str(root / "sft")]) == 2
    assert "needs eval.world" in capsys.readouterr().err
    assert cli_main(["eval", str(root / "sft"), "--world", str(root / "world"), "eval.baseline=nope"]) == 2
    assert "not one of the checkpoints" in capsys.readouterr().err
