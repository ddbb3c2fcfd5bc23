"""`alignforge pipeline`: parsing, {step} references, strict step keys, skip-when-done."""

import pytest

from alignforge.config import ConfigError
from alignforge.stages.pipeline import (DONE_FILE, load_pipeline, parse_pipeline, run_pipeline, step_config)


def test_references_resolve_to_step_folders_and_rounds(tmp_path):
    p = parse_pipeline({"run": "r", "steps": [{"name": "world"}, {"name": "tok", "stage": "tokenizer",
                                                                 "set": {"data.train": "{world}/corpus.jsonl"}}],
                        "rounds": 2, "round_steps": [{"name": "collect", "set": {"collect.round": "{round}",
                                                                               "model.init": "{tok}"}}]})
    assert [s.name for s in p.steps] == ["world", "tok"] and p.rounds == 2
    refs = {"world": "runs/r/world", "tok": "runs/r/tok", "round": "2", "prev_round": "1"}
    cfg = step_config(p, p.steps[1], p.out_dir("tok"), refs)
    assert cfg.data.train == "runs/r/world/corpus.jsonl" and cfg.out == "runs/r/tok"
    c = step_config(p, p.round_steps[0], p.out_dir("collect-r2"), refs)
    assert c.collect.round == 2 and c.model.init == "runs/r/tok"


@pytest.mark.parametrize("data,match", [
    ({"steps": [{"name": "x", "stage": "nope"}]}, "unknown stage 'nope'"),
    ({"steps": [{"name": "world", "sett": {}}]}, "unknown step key"),
    ({"steps": [{"name": "world"}, {"name": "world"}]}, "unique"),
    ({"stepz": []}, "unknown key"),
])
def test_bad_pipelines_fail_clearly(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_pipeline(data)


def test_unknown_reference_and_unknown_config_key(tmp_path):
    p = parse_pipeline({"steps": [{"name": "tokenizer", "set": {"data.train": "{nothing}/x"}}]})
    with pytest.raises(ConfigError, match="refers to no earlier step"):
        step_config(p, p.steps[0], tmp_path, {})
    p = parse_pipeline({"steps": [{"name": "tokenizer", "set": {"tokenizer.vocab": 3}}]})
    with pytest.raises(ConfigError, match="step tokenizer.*tokenizer.vocab"):
        step_config(p, p.steps[0], tmp_path, {})


def test_runs_steps_then_skips_finished_ones(tmp_path):
    yml = tmp_path / "p.yaml"
    yml.write_text("run: t\nsteps:\n  - name: world\n  - name: tokenizer\n"
                   "    set: {data.train: '{world}/corpus.jsonl', tokenizer.vocab_size: 300}\n")
    p = load_pipeline(yml)
    p.out_root = tmp_path / "runs"
    logs: list[str] = []
    refs = run_pipeline(p, log=logs.append)
    assert (tmp_path / "runs" / "tokenizer" / "tokenizer.json").exists()
    assert (tmp_path / "runs" / "world" / DONE_FILE).exists()
    logs.clear()
    assert run_pipeline(p, log=logs.append) == refs
    assert logs == ["pipeline: world done, skipped", "pipeline: tokenizer done, skipped"]
    # A changed config reruns that step.
    p.steps[1].values["tokenizer.vocab_size"] = 320
    logs.clear()
    run_pipeline(p, log=logs.append)
    assert logs[0] == "pipeline: world done, skipped" and "tokenizer (tokenizer)" in logs[1]


def test_shipped_pipeline_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "world"
    p = load_pipeline(root / "iterate.yaml")
    refs = {n: f"runs/x/{n}" for n in ("world", "tokenizer", "pretrain", "sft", "policy", "collect", "reward")}
    refs.update(round="1", prev_round="0")
    for s in p.steps + p.round_steps:
        step_config(p, s, p.out_dir(s.name), refs)
