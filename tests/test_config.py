"""Strict configs: unknown keys, wrong types, bad YAML, typed overrides, resolved-config round trip."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from alignforge.config import (ConfigError, PretrainConfig, describe, from_dict, load_config, parse_override,
                               save_config, to_dict)


def test_defaults_and_out_dir():
    cfg = load_config(PretrainConfig)
    assert cfg == PretrainConfig()
    assert cfg.train.lr == 3e-4 and cfg.model.init is None and cfg.data.on_bad_record == "error"
    assert cfg.out_dir() == Path("runs/default/pretrain")
    assert load_config(PretrainConfig, overrides=["run=w"]).out_dir() == Path("runs/w/pretrain")
    assert load_config(PretrainConfig, overrides=["out=/tmp/x"]).out_dir() == Path("/tmp/x")


def test_unknown_key_names_it_suggests_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, overrides=["train.lrr=0.1"])
    msg = str(e.value)
    assert msg.startswith("unknown config key 'train.lrr'. Did you mean 'train.lr'?")
    assert "Valid keys in train: lr, weight_decay, beta1" in msg
    with pytest.raises(ConfigError, match=r"unknown config key 'sede'\. Did you mean 'seed'\? Valid keys: run, out, seed"):
        load_config(PretrainConfig, overrides=["sede=1"])
    # No close match: no suggestion, still the list.
    with pytest.raises(ConfigError) as e:
        from_dict(PretrainConfig, {"zzzz": 1})
    assert "Did you mean" not in str(e.value) and "Valid keys: run, out, seed" in str(e.value)


def test_wrong_type_names_field_expected_type_and_value():
    with pytest.raises(ConfigError, match=r"^config key 'train\.batch_size': expected int, got 1\.5 \(float\)$"):
        load_config(PretrainConfig, overrides=["train.batch_size=1.5"])
    with pytest.raises(ConfigError, match=r"^config key 'seed': expected int, got 'abc' \(str\)$"):
        load_config(PretrainConfig, overrides=["seed=abc"])
    with pytest.raises(ConfigError, match=r"config key 'data\.on_bad_record': expected one of 'error', 'skip', got 'maybe'"):
        load_config(PretrainConfig, overrides=["data.on_bad_record=maybe"])
    with pytest.raises(ConfigError, match=r"config key 'train\.lr': expected float, got True \(bool\)"):
        from_dict(PretrainConfig, {"train": {"lr": True}})
    with pytest.raises(ConfigError, match=r"config key 'train': expected section TrainSection, got 3 \(int\)"):
        from_dict(PretrainConfig, {"train": 3})
    with pytest.raises(ConfigError, match=r"config key 'runtime\.progress': expected bool, got 1 \(int\)"):
        load_config(PretrainConfig, overrides=["runtime.progress=1"])


def test_override_parsing_is_typed_by_the_target_field():
    # A path/name field stays a string even when it looks like a number or a bool.
    assert parse_override(PretrainConfig, "model.init=123") == ("model.init", "123")
    assert parse_override(PretrainConfig, "run=1.50") == ("run", "1.50")
    assert parse_override(PretrainConfig, "model.init=true") == ("model.init", "true")
    # YAML 1.1 reads "3e-4" as a string; a float field still gets a float.
    key, lr = parse_override(PretrainConfig, "train.lr=3e-4")
    assert key == "train.lr" and isinstance(lr, float) and lr == 3e-4
    assert parse_override(PretrainConfig, "train.max_steps=10") == ("train.max_steps", 10)
    assert parse_override(PretrainConfig, "model.init=null") == ("model.init", None)
    assert parse_override(PretrainConfig, "train.max_minutes=2.5") == ("train.max_minutes", 2.5)
    cfg = load_config(PretrainConfig, overrides=["model.init=123", "train.lr=3e-4", "model.lora.target_modules=[q_proj, v_proj]",
                                                 "model.overrides={hidden_size: 64}", "runtime.threads=2"])
    assert cfg.model.init == "123" and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.model.overrides == {"hidden_size": 64} and cfg.runtime.threads == 2
    with pytest.raises(ConfigError, match=r"override 'train\.lr' is not of the form key=value"):
        parse_override(PretrainConfig, "train.lr")
    with pytest.raises(ConfigError, match=r"config key 'train\.lr\.x': 'train\.lr' is not a section"):
        parse_override(PretrainConfig, "train.lr.x=1")


def test_yaml_file_errors_name_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("run: w\ntrain:\n  lr: 1.0e-3\n  max_steps: 5\nmodel:\n  preset: tiny-1m\n")
    cfg = load_config(PretrainConfig, good, overrides=["train.max_steps=7"])  # overrides win over the file
    assert (cfg.run, cfg.train.lr, cfg.train.max_steps, cfg.model.preset) == ("w", 1e-3, 7, "tiny-1m")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"^{bad_yaml}: not valid YAML"):
        load_config(PretrainConfig, bad_yaml)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  warmup: 5\n")
    with pytest.raises(ConfigError, match=rf"^{unknown}: unknown config key 'train\.warmup'\. Did you mean "
                                          r"'train\.warmup_steps'\?"):
        load_config(PretrainConfig, unknown)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=rf"^{wrong}: config key 'train\.max_steps': expected int, got 'lots' \(str\)"):
        load_config(PretrainConfig, wrong)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"the top level must be a mapping of config keys, got list"):
        load_config(PretrainConfig, listy)
    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.yaml"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(PretrainConfig, empty) == PretrainConfig()


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PretrainConfig, overrides=["model.init=123", "train.lr=3e-4", "data.max_records=5", "seed=7"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(PretrainConfig, tmp_path / "run" / "config.yaml") == cfg
    assert to_dict(cfg)["model"]["init"] == "123"
    assert list(tmp_path.glob("run/.*.tmp")) == []


def test_describe_lists_every_leaf_with_default_and_doc():
    rows = {key: (tp, default, doc) for key, tp, default, doc in describe(PretrainConfig)}
    assert rows["train.lr"] == ("float", 3e-4, "peak learning rate (AdamW)")
    assert rows["model.init"][0] == "str or null"
    assert rows["data.on_bad_record"][0] == "one of 'error', 'skip'"
    assert "model.lora.r" in rows and "runtime.device" in rows
    # Every leaf field of every section is listed, and documented.
    def leaves(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from leaves(hints[f.name], prefix + f.name + ".")
            else:
                yield prefix + f.name
    assert sorted(leaves(PretrainConfig)) == sorted(rows)
    assert [key for key, (_, _, doc) in rows.items() if not doc] == []
