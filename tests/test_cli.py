"""The ``alignforge`` entry point: stage list, per-stage help, suggestions, the shared stage interface."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from alignforge import cli
from alignforge.config import PretrainConfig, describe


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignforge", *args], capture_output=True, text=True, timeout=120)


def test_top_help_lists_available_stages_with_one_line_each():
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: alignforge <stage>")
    stages = cli.available_stages()
    assert stages, "no stage module is installed"
    for name, (_, doc) in stages.items():
        assert f"  {name:<11} {doc}" in out.stdout.splitlines()
    # Stages whose module is not in this install are not advertised.
    for name in set(cli.STAGES) - set(stages):
        assert f"  {name} " not in out.stdout


@pytest.mark.skipif(importlib.util.find_spec("alignforge.stages.pretrain") is None,
                    reason="the pretrain stage module is not in this checkout")
def test_pretrain_help_lists_every_key_and_bad_key_exits_2(capsys):
    # In-process (the console entry point is covered above): one torch start-up instead of two.
    with pytest.raises(SystemExit) as e:
        cli.main(["pretrain", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: alignforge pretrain [--config FILE]")
    for key, tp, default, doc in describe(PretrainConfig):
        assert f"  {key} " in out and doc in out
        assert f"[{tp}; default: {default!r}]" in out
    assert cli.main(["pretrain", "train.lrr=1"]) == 2  # in-process: one torch start-up is enough
    assert capsys.readouterr().err.startswith("alignforge pretrain: error: unknown config key 'train.lrr'. Did you mean 'train.lr'?")


def test_unknown_stage_suggests_the_closest(capsys):
    assert cli.main(["pretrian"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignforge: unknown stage 'pretrian'.")
    if "pretrain" in cli.available_stages():
        assert "Did you mean 'pretrain'?" in err
    out = _run("pretrian")  # and through the real console entry point
    assert out.returncode == 2 and "unknown stage 'pretrian'" in out.stderr


@pytest.fixture
def fake_stage(tmp_path, monkeypatch):
    """A stage module outside the package, registered like a real one, that records its config."""
    module = tmp_path / "fake_stage_mod.py"
    module.write_text(textwrap.dedent(f"""
        import json
        from alignforge.cli import run_stage
        from alignforge.config import PretrainConfig, to_dict
        from alignforge.data.records import RecordError

        def run(cfg):
            if cfg.run == "boom":
                raise RecordError("expected a string", path="d.jsonl", line=3, field="text")
            with open({str(tmp_path / "seen.json")!r}, "w") as f:
                json.dump(to_dict(cfg), f)

        def main(argv):
            return run_stage("fake", PretrainConfig, run, argv, positional="model.init")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.STAGES, "fake", ("fake_stage_mod", "a stage for the CLI tests"))
    return tmp_path / "seen.json"


def test_stage_interface_config_overrides_and_sugar(fake_stage, tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  lr: 0.01\n  max_steps: 3\n")
    argv = ["fake", "--config", str(cfg_file), "train.max_steps=5", "--out", str(tmp_path / "o"),
            "runs/w/sft", "--seed", "4", "train.lr=3e-4", "--run", "r1"]
    assert cli.main(argv) == 0
    seen = json.loads(fake_stage.read_text())
    assert seen["train"]["max_steps"] == 5 and seen["train"]["lr"] == 3e-4  # overrides win over the file
    assert (seen["out"], seen["seed"], seen["run"]) == (str(tmp_path / "o"), 4, "r1")
    assert seen["model"]["init"] == "runs/w/sft"  # the positional argument
    assert "a stage for the CLI tests" in cli._top_help()


def test_stage_errors_print_one_line_and_exit_2(fake_stage, capsys):
    assert cli.main(["fake", "train.batch_size=1.5"]) == 2
    assert capsys.readouterr().err.strip() == (
        "alignforge fake: error: config key 'train.batch_size': expected int, got 1.5 (float)")
    assert cli.main(["fake", "--run", "boom"]) == 2
    assert capsys.readouterr().err.strip() == "alignforge fake: error: d.jsonl:3: field 'text': expected a string"
    with pytest.raises(SystemExit) as e:
        cli.main(["fake", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "train.lr" in help_text and "peak learning rate (AdamW)" in help_text
