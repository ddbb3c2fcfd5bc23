"""bench/fixture.py: the shared alignforge-vs-TRL fixture is deterministic and has the issue's sizes."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location("bench_fixture", BENCH / "fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    fx = _load_fixture_module()
    a = tmp_path_factory.mktemp("fx") / "a"
    b = tmp_path_factory.mktemp("fx") / "b"
    fx.build(a)
    fx.build(b)
    return fx, a, b


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_are_byte_identical(built):
    _, a, b = built
    fa, fb = _files(a), _files(b)
    assert set(fa) == set(fb)
    assert {"model/model.safetensors", "model/tokenizer.json", "sft.jsonl", "pref.jsonl",
            "prompts.jsonl", "fixture.json", "reward/model.safetensors", "reward/config.json"} <= set(fa)
    different = [name for name in fa if fa[name] != fb[name]]
    assert different == []


def test_model_sizes_and_plain_transformers_reload(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, a, _ = built
    model = AutoModelForCausalLM.from_pretrained(a / "model")
    tok = AutoTokenizer.from_pretrained(a / "model")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) \
        == (256, 4, 4, 688)
    assert cfg.tie_word_embeddings is False
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert len(tok) == 4096 == cfg.vocab_size
    # 2·4096·256 embeddings + 4·(4·256² + 3·256·688) matmuls + 9·256 RMSNorm weights.
    expected = 2 * 4096 * 256 + 4 * (4 * 256 * 256 + 3 * 256 * 688) + 9 * 256
    n = sum(p.numel() for p in model.parameters())
    assert n == expected == 5_261_568
    manifest = json.loads((a / "fixture.json").read_text())
    assert manifest["model"]["params"] == n
    assert manifest["model"]["matmul_params"] == 4 * (4 * 256 * 256 + 3 * 256 * 688)
    # The reloaded model runs and the tokenizer round-trips text exactly (byte-level BPE).
    text = "def f(x):\n    return x  # ünïcode"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 4096)


def test_rows_and_token_lengths(built):
    from transformers import AutoTokenizer

    from alignforge.data.records import read_records

    _, a, _ = built
    tok = AutoTokenizer.from_pretrained(a / "model")
    sft = read_records(a / "sft.jsonl", kind="demonstration")
    pref = read_records(a / "pref.jsonl", kind="comparison")
    prompts = read_records(a / "prompts.jsonl", kind="prompt")
    assert len(sft) == len(pref) == len(prompts) == 256

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    # Cut at 40 + 60 ids; re-tokenising the decoded text may merge across the old boundary.
    assert all(34 <= n(d.prompt) <= 46 for d in sft)
    assert all(52 <= n(d.response) <= 68 for d in sft)
    assert len({d.prompt for d in sft}) == 256  # 256 different windows, not one repeated
    for d, c, p in zip(sft, pref, prompts):
        assert c.prompt == d.prompt == p.prompt
        assert c.chosen == d.response
        assert c.rejected != c.chosen and 52 <= n(c.rejected) <= 68


def test_reward_model_is_the_backbone_with_one_seeded_head(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    fx, a, _ = built
    rm = AutoModelForSequenceClassification.from_pretrained(a / "reward")
    lm = AutoModelForCausalLM.from_pretrained(a / "model")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == 0
    backbone = dict(lm.model.named_parameters())
    assert all(torch.equal(p, backbone[name]) for name, p in rm.model.named_parameters())
    # The head: N(0, 1/(hidden+1)) from a generator seeded with REWARD_HEAD_SEED (init_from_causal_lm).
    want = torch.randn(1, 256, generator=torch.Generator().manual_seed(fx.REWARD_HEAD_SEED)) * (1.0 / math.sqrt(257))
    assert torch.equal(rm.score.weight.detach(), want)
    assert json.loads((a / "fixture.json").read_text())["reward"] == {"head_seed": fx.REWARD_HEAD_SEED, "heads": 1}


def test_scale_30m_preset_sizes():
    import torch
    from transformers import AutoModelForCausalLM

    from alignforge.models.load import matmul_params, preset_config

    fx = _load_fixture_module()
    preset, folder = fx.SCALES["30m"]
    cfg = preset_config(preset, 4096, tie_word_embeddings=False)
    assert (cfg.hidden_size, cfg.num_hidden_layers, folder) == (512, 8, "model-30m")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    # ≈30 M: 2·4096·512 embeddings + 8·(4·512² + 3·512·1376) matmuls + 17·512 RMSNorm weights.
    assert matmul_params(model) == 8 * (4 * 512 * 512 + 3 * 512 * 1376) == 25_296_896
    assert sum(p.numel() for p in model.parameters()) == 2 * 4096 * 512 + 25_296_896 + 17 * 512
    with pytest.raises(ValueError, match="expected one of 30m"):
        fx.ensure_scale("/nonexistent", "7b")
