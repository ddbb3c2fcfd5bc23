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


def _validate_every_step(p) -> dict:
    """Build every step's config object in pipeline order, as run_pipeline would (no stage runs)."""
    refs: dict[str, str] = {}
    cfgs = {}
    for s in p.steps:
        cfgs[s.name] = step_config(p, s, p.out_dir(s.name), refs)
        refs[s.name] = str(p.out_dir(s.name))
        if s.alias:
            refs[s.alias] = refs[s.name]
    for r in range(1, p.rounds + 1):
        refs.update(round=str(r), prev_round=str(r - 1))
        for s in p.round_steps:
            name = f"{s.name}-r{r}"
            cfgs[name] = step_config(p, s, p.out_dir(name), refs)
            refs[s.name] = refs[name] = str(p.out_dir(name))
            if s.alias:
                refs[s.alias] = refs[s.name]
    return cfgs


def test_shipped_pipeline_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "world"
    cfgs = _validate_every_step(load_pipeline(root / "iterate.yaml"))
    assert cfgs["ppo-r2"].model.init == "runs/iterate/ppo-r1" and cfgs["ppo-r2"].ref.init == "runs/iterate/sft"


def test_full_pipeline_config_validates_with_the_frontiers_and_rounds():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "world"
    cfgs = _validate_every_step(load_pipeline(root / "full.yaml"))
    assert {n: cfgs[n].kl.coef for n in cfgs if n.startswith("ppo-b")} == {"ppo-b0.01": 0.01, "ppo-b0.05": 0.05,
                                                                            "ppo-b0.2": 0.2}
    assert cfgs["ppo-hack"].kl.coef == 0.0 and cfgs["ppo-hack"].reward.init == "runs/full/reward-biased"
    assert cfgs["collect-biased"].collect.pool == "length_biased"
    assert sorted(cfgs[n].dpo.beta for n in cfgs if n.startswith("dpo-")) == [0.03, 0.1, 0.3]
    assert len({cfgs[n].dpo.cache_dir for n in cfgs if n.startswith("dpo-")}) == 1  # one reference pre-pass
    assert (cfgs["rloo"].reinforce.algorithm, cfgs["grpo"].reinforce.algorithm) == ("rloo", "grpo")
    ev = cfgs["eval"].eval
    assert ev.best_of_n == [2, 4, 8, 16] and cfgs["eval"].reward.init == "runs/full/reward"
    assert len(ev.checkpoints) == len(ev.names) == 12 and ev.baseline == "sft"
    # The rounds continue from the latest policy; each round has its own eval folder (report panel).
    assert cfgs["ppo-it-r1"].model.init == "runs/full/sft" and cfgs["ppo-it-r3"].model.init == "runs/full/ppo-it-r2"
    assert cfgs["eval-it-r3"].eval.names == ["round-3", "sft"] and cfgs["collect-it-r2"].collect.round == 2


def test_pipeline_command_writes_the_report_when_runs_have_results(tmp_path, monkeypatch):
    import json

    from alignforge.stages.pipeline import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("run: t\nsteps:\n  - name: world\n")
    assert main(["p.yaml"]) == 0
    assert not (tmp_path / "runs" / "t" / "report.html").exists()  # nothing to draw yet
    (tmp_path / "runs" / "t" / "world" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert main(["p.yaml"]) == 0  # every step skipped; the report is drawn from the folders
    page = (tmp_path / "runs" / "t" / "report.html").read_text()
    assert "Training curves" in page and "data:image/png;base64," in page


def test_every_registered_stage_with_a_config_class_can_be_a_pipeline_step():
    """A stage the CLI knows (with a config object) is also a pipeline stage, and each runner
    resolves to a real config class and a real function."""
    from alignforge.stages.pipeline import STAGE_RUNNERS, _load

    for name in ("rlaif", "critique", "nash", "reinforce"):
        assert name in STAGE_RUNNERS
    for name, (cfg_ref, fn_ref) in STAGE_RUNNERS.items():
        assert callable(_load(fn_ref)), name
        assert hasattr(_load(cfg_ref), "__dataclass_fields__"), name


def test_scale_pipeline_config_validates_the_ladder_and_the_reward_series():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "world"
    cfgs = _validate_every_step(load_pipeline(root / "scale.yaml"))
    ladder = {n: (c.model.preset, c.train.max_steps, c.train.lr) for n, c in cfgs.items() if n.startswith("pretrain-")}
    assert len(ladder) == 15 and {p for p, _, _ in ladder.values()} == {"tiny-1m", "tiny-4m", "small-12m", "small-30m"}
    assert {s for _, s, _ in ladder.values()} == {16, 64, 256, 1024}
    assert ladder["pretrain-tiny-4m-64"][2] == 2e-3 and ladder["pretrain-small-30m-64"][2] == 1e-3  # lr ∝ 1/width
    assert all(cfgs[n].rnn.steps == 0 for n in ladder)
    rms = {n: c for n, c in cfgs.items() if n.startswith("reward-")}
    assert {c.model.init for n, c in rms.items() if "labels" not in n} == \
        {f"runs/scale/pretrain-{p}-256" for p in ("tiny-1m", "tiny-4m", "small-12m", "small-30m")}
    assert sorted(c.data.max_records for n, c in rms.items() if "labels" in n) == [250, 1000, 4000]
    assert all(c.train.max_steps == 300 and c.reward.epochs is None for c in rms.values())
