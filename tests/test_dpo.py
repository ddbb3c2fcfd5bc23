"""``alignforge dpo`` and the reference log-prob cache on tiny local models (nothing downloaded).

The loss functions themselves are tested against direct formulas in ``tests/test_losses.py``.
Here: packed pair log-probs ≡ one example per row ≡ each example alone; cached reference
log-probs ≡ a live reference forward (and the disk cache is keyed by data and weights);
gradient accumulation ≡ one big batch; one DPO step moves the implicit margin the right way;
a smoke run on real HH-RLHF pairs from ``../shared/data`` (full and LoRA), cache ≡ naive
training, strict configs and clear errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from alignforge.config import ConfigError, DPOConfig, load_config
from alignforge.data.batching import encode_pair, pad_id_of, sequence_logprobs, collate
from alignforge.losses import dpo_loss
from alignforge.stages import dpo
from alignforge.train import refcache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_helpers import crash_after_save  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HH = SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"
needs_hh = pytest.mark.skipif(not HH.exists(), reason=f"shared data not found: {HH} (clone with shared/ beside the repo)")

PAIRS = [
    {"prompt": "What is 2+3?", "chosen": "It is 5.", "rejected": "It is 7, I think, maybe."},
    {"prompt": "Say yes.", "chosen": "yes", "rejected": "no no no"},
    {"prompt": "Where does the fox live?", "chosen": "Near the silver river.", "rejected": "I refuse."},
    {"prompt": "Name a colour.", "chosen": "red", "rejected": "The colour is a colour."},
    {"prompt": "What is 4+4?", "chosen": "It is 8.", "rejected": "It is 9."},
    {"prompt": "Hello there", "chosen": "Hello.", "rejected": "Go away."},
    {"prompt": "Count to three.", "chosen": "1, 2, 3", "rejected": "1, 2"},
    {"prompt": "Is the sky blue?", "chosen": "Yes, on a clear day.", "rejected": "Never."},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with our tokenizer (trained on the test texts + some HH text), saved as an HF dir."""
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model
    from alignforge.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("dpo_models")
    texts = [p["prompt"] + " " + p["chosen"] + " " + p["rejected"] for p in PAIRS] * 4
    if HH.exists():
        import gzip

        with gzip.open(HH, "rt") as f:
            texts += [json.loads(line)["chosen"] for _, line in zip(range(200), f)]
    tok = train_tokenizer(texts, vocab_size=500)
    model = tiny_random_model("llama", len(tok), seed=0, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, max_positions=512, tie_embeddings=False)
    save_model(model, tok, root / "llama")
    return {"dir": root / "llama", "model": model, "tok": tok, "root": root}


def _encoded(tok, rows=PAIRS):
    return [encode_pair(tok, r["prompt"], r["chosen"], r["rejected"]) for r in rows]


def _args(tiny, data, out, **kw) -> list[str]:
    base = {"model.init": tiny["dir"], "data.train": data, "out": out, "runtime.threads": 1,
            "runtime.progress": False, "runtime.device": "cpu", "train.seq_len": 96, "train.batch_size": 2,
            "train.max_steps": 3, "train.warmup_steps": 1, "train.log_every": 1, "train.eval_every": 0,
            "train.save_every": 0, "train.lr": 1e-3, "dpo.kl_prompts": 2, "dpo.kl_max_new_tokens": 6,
            "dpo.eval_fraction": 0.25}
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


# ---------------------------------------------------------------------------------------------
# Packed pair log-probs and the reference cache
# ---------------------------------------------------------------------------------------------


def test_packed_pair_logprobs_equal_each_example_alone(tiny):
    model, tok = tiny["model"], tiny["tok"]
    pairs = _encoded(tok)
    pad = pad_id_of(tok)
    with torch.no_grad():
        c_pack, r_pack = refcache.pair_logprobs(model, pairs, pad, seq_len=64, packed=True)
        c_pad, r_pad = refcache.pair_logprobs(model, pairs, pad, packed=False)
        alone = [[float(sequence_logprobs(model, collate([ex], [[0]], pad))[0]) for ex in pair] for pair in pairs]
    expect_c = torch.tensor([a[0] for a in alone])
    expect_r = torch.tensor([a[1] for a in alone])
    torch.testing.assert_close(c_pack, expect_c, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(r_pack, expect_r, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(c_pad, expect_c, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(r_pad, expect_r, atol=1e-4, rtol=1e-5)
    assert (c_pack < 0).all() and (r_pack < 0).all()


def test_cached_reference_logprobs_equal_live_computation_and_key_on_data_and_weights(tiny, tmp_path):
    from alignforge.models.load import frozen_copy

    ref = frozen_copy(tiny["model"])
    tok = tiny["tok"]
    pairs = _encoded(tok)
    pad = pad_id_of(tok)
    c, r, info = refcache.reference_logprobs(ref, pairs, pad, cache_dir=tmp_path, batch_size=3, seq_len=64)
    assert not info["hit"] and Path(info["path"]).is_file()
    with torch.no_grad():  # live: the naive path's forward, pair by pair
        live = [refcache.pair_logprobs(ref, [p], pad, packed=False) for p in pairs]
    torch.testing.assert_close(c, torch.cat([x[0] for x in live]), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(r, torch.cat([x[1] for x in live]), atol=1e-4, rtol=1e-5)
    # Second call: read from disk, bit-identical.
    c2, r2, info2 = refcache.reference_logprobs(ref, pairs, pad, cache_dir=tmp_path, batch_size=3, seq_len=64)
    assert info2["hit"] and info2["key"] == info["key"]
    assert torch.equal(c, c2) and torch.equal(r, r2)
    # Other data → other key; other weights → other key (never a stale hit).
    assert refcache.cache_key(pairs[:-1], refcache.model_fingerprint(ref)) != info["key"]
    with torch.no_grad():
        ref.model.norm.weight.add_(1e-3)
    _, _, info3 = refcache.reference_logprobs(ref, pairs, pad, cache_dir=tmp_path, batch_size=3, seq_len=64)
    assert not info3["hit"] and info3["key"] != info["key"]


# ---------------------------------------------------------------------------------------------
# The loss inside the stage
# ---------------------------------------------------------------------------------------------


def test_pair_losses_equal_dpo_loss_and_a_hand_value():
    cfg = load_config(DPOConfig, None, ["dpo.beta=0.5"])
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.5])
    per = dpo.pair_losses(pc, pr, rc, rr, cfg)
    # pair 0: h = (-1+1.5) - (-3+2.5) = 1.0 → -log σ(0.5) = 0.474077
    assert per[0].item() == pytest.approx(0.4740769841801067, abs=1e-6)
    assert per.mean().item() == pytest.approx(dpo_loss(pc, pr, rc, rr, beta=0.5)[0].item(), abs=1e-6)


def test_one_dpo_step_raises_the_chosen_log_ratio_margin(tiny):
    """Gradient direction: after one SGD step on the DPO loss, the policy prefers chosen more."""
    from alignforge.models.load import frozen_copy

    import copy

    model = copy.deepcopy(tiny["model"]).train()
    ref = frozen_copy(model)
    tok = tiny["tok"]
    pairs = _encoded(tok)
    pad = pad_id_of(tok)
    rc, rr, _ = refcache.reference_logprobs(ref, pairs, pad)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    pc, pr = refcache.pair_logprobs(model, pairs, pad)
    loss, m0 = dpo_loss(pc, pr, rc, rr, beta=0.1)
    loss.backward()
    opt.step()
    with torch.no_grad():
        pc2, pr2 = refcache.pair_logprobs(model, pairs, pad)
    margin_after = ((pc2 - rc) - (pr2 - rr)).mean()
    assert m0["reward_margin"].item() == pytest.approx(0.0, abs=1e-5)  # policy == reference at start
    assert margin_after.item() > 1e-3
    assert dpo_loss(pc2, pr2, rc, rr, beta=0.1)[0].item() < loss.item()


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def test_gradient_accumulation_equals_big_batch(tiny, tmp_path):
    """4 micro-batches of 1 pair ≡ 1 micro-batch of 4 pairs: same accumulated gradient (its logged
    pre-clip norm, which a wrong normaliser would scale — Adam would hide that in the weights), same
    loss, same weights. A ranking makes the pair weights unequal (1/3 each of its 3 pairs)."""
    rows = PAIRS + [{"prompt": "Pick one.", "responses": ["yes", "It is 5.", "no"], "ranking": [1, 0, 2]}]
    data = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    common = {"train.max_steps": 2, "train.grad_clip": 0.0, "train.lr": 1e-2, "dpo.kl_prompts": 0,
              "dpo.eval_fraction": 0.0, "dpo.ref_cache": "memory", "train.weight_decay": 0.0}
    big = dpo.run(load_config(DPOConfig, None, _args(tiny, data, tmp_path / "big", **common,
                                                     **{"train.batch_size": 4, "train.grad_accum": 1})))
    acc = dpo.run(load_config(DPOConfig, None, _args(tiny, data, tmp_path / "acc", **common,
                                                     **{"train.batch_size": 1, "train.grad_accum": 4})))
    mb = [json.loads(x) for x in (big / "metrics.jsonl").read_text().splitlines()]
    ma = [json.loads(x) for x in (acc / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(ma, mb):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert mb[1]["loss"] < mb[0]["loss"]
    wb, wa = _final_weights(big), _final_weights(acc)
    start = tiny["model"].state_dict()
    moved = max(float((wb[k] - start[k]).abs().max()) for k in wb if k in start)
    assert moved > 1e-3  # it trained
    # Adam divides by sqrt(v): weights with ~0 gradient amplify float-rounding noise, hence atol.
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-4)


def test_cached_and_naive_reference_train_identically(tiny, tmp_path):
    data = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    common = {"train.max_steps": 2, "dpo.kl_prompts": 0, "dpo.eval_fraction": 0.0}
    a = dpo.run(load_config(DPOConfig, None, _args(tiny, data, tmp_path / "cache", **common, **{"dpo.ref_cache": "disk"})))
    b = dpo.run(load_config(DPOConfig, None, _args(tiny, data, tmp_path / "naive", **common, **{"dpo.ref_cache": "off"})))
    assert list((a / "ref_cache").glob("ref-*.pt"))
    wa, wb = _final_weights(a), _final_weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert ma[0]["loss"] == pytest.approx(mb[0]["loss"], abs=1e-5)
    assert ma[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Smoke on real HH-RLHF pairs (full and LoRA), configs, errors
# ---------------------------------------------------------------------------------------------


@needs_hh
@pytest.mark.parametrize("lora", [False, True])
def test_dpo_smoke_on_hh_rlhf_pairs(tiny, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    extra = {"data.format": "hh-rlhf", "data.max_records": 24, "train.seq_len": 256, "train.max_steps": 3,
             "train.eval_every": 3, "dpo.loss": "sigmoid", "dpo.max_eval_pairs": 4}
    if lora:
        extra.update({"model.lora.enabled": True, "model.lora.r": 4, "train.lr": 5e-3})
    out = dpo.run(load_config(DPOConfig, None, _args(tiny, HH, tmp_path / "out", **extra)))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected", "eval_loss",
                "eval_reward_accuracy", "eval_kl"):
        assert key in rows[-1] and rows[-1][key] == rows[-1][key]  # present, not NaN
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 1
    assert rows[-1]["eval_kl"] > -1.0
    done = json.loads((out / "DONE").read_text()) if (out / "DONE").read_text().strip().startswith("{") else {}
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert reloaded.config.vocab_size == len(tiny["tok"])
    assert not any("lora" in k for k in reloaded.state_dict())
    if done:
        assert done["pairs_per_s"] > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dpo_resumes_exactly_after_a_crash(tiny, tmp_path, monkeypatch, precision):
    data = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    kw = {"train.max_steps": 4, "train.save_every": 2, "dpo.kl_prompts": 0, "dpo.eval_fraction": 0.0,
          "runtime.precision": precision}
    with crash_after_save(monkeypatch, dpo.ckpt):
        dpo.run(load_config(DPOConfig, None, _args(tiny, data, tmp_path / "crash", **kw)))
    resumed = dpo.run(load_config(DPOConfig, None, _args(tiny, data, tmp_path / "crash", **kw)))
    full = dpo.run(load_config(DPOConfig, None, _args(tiny, data, tmp_path / "full", **kw)))
    a, b = _final_weights(resumed), _final_weights(full)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_held_out_pairs_never_share_a_prompt_with_training_pairs():
    from alignforge.data.preferences import PreferencePair

    pairs = [PreferencePair(f"p{i % 5}", f"a{i}", f"b{i}") for i in range(20)]
    train, held = dpo.split_by_prompt(pairs, 0.4, seed=0)
    assert len(train) + len(held) == 20 and held
    assert not {p.prompt for p in train} & {p.prompt for p in held}


@pytest.mark.parametrize("loss", ["ipo", "hinge"])
def test_other_losses_and_reference_free_run(tiny, tmp_path, loss):
    data = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = dpo.run(load_config(DPOConfig, None, _args(tiny, data, tmp_path / loss, **{
        "dpo.loss": loss, "dpo.reference_free": loss == "hinge", "train.max_steps": 2, "dpo.kl_prompts": 0})))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if loss == "ipo":  # h = 0 at step 1: (0 - 1/(2β))² = 25 for β = 0.1
        assert rows[0]["loss"] == pytest.approx(25.0, abs=1e-3)
    assert (out / "model" / "config.json").is_file()


def test_rankings_expand_to_weighted_pairs_and_ties_are_dropped(tiny, tmp_path):
    rows = PAIRS[:4] + [{"prompt": "Pick one.", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},
                        {"prompt": "Tie?", "chosen": "x", "rejected": "y", "tie": True}]
    data = _write_jsonl(tmp_path / "mixed.jsonl", rows)
    cfg = load_config(DPOConfig, None, _args(tiny, data, tmp_path / "o"))
    pairs, stats = dpo.read_pairs(cfg, "train")
    assert stats.ties_dropped == 1 and len(pairs) == 4 + 3
    assert sorted(p.weight for p in pairs)[:3] == pytest.approx([1 / 3] * 3)
    rated = _write_jsonl(tmp_path / "rated.jsonl", rows + [{**PAIRS[5], "strength": 0}, {**PAIRS[6], "strength": 3}])
    strong, stats = dpo.read_pairs(load_config(DPOConfig, None, _args(tiny, rated, tmp_path / "o") + [
        "dpo.min_strength=1"]), "train")
    assert stats.weak_dropped == 1 and len(strong) == len(pairs) + 1 and PAIRS[5]["chosen"] not in {
        p.chosen for p in strong}


def test_dpo_config_is_strict_and_errors_are_clear(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match="dpo.beta"):
        load_config(DPOConfig, None, ["dpo.beta=0"])
    with pytest.raises(ConfigError, match="Did you mean 'dpo.beta'"):
        load_config(DPOConfig, None, ["dpo.betta=0.1"])
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(DPOConfig, None, ["dpo.loss=ipo", "dpo.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="dpo.min_strength"):
        load_config(DPOConfig, None, ["dpo.min_strength=5"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": 3, "rejected": "y"}) + "\n")
    rc = dpo.main(_args(tiny, bad, tmp_path / "o"))
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl:2" in err and "chosen" in err


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/dpo*.yaml")))
def test_shipped_dpo_configs_load_strictly(path):
    cfg = load_config(DPOConfig, path)
    assert cfg.dpo.beta > 0


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tiny, tmp_path):
    """End to end through the CLI: torchrun 2×(grad_accum 1) ≡ 1×(grad_accum 2) — the reference
    pre-pass is sharded over the ranks and summed, the weight normaliser is global, metrics gathered."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    data = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    one, two = tmp_path / "one", tmp_path / "two"
    common = {"train.max_steps": 3, "train.eval_every": 3, "dpo.kl_prompts": 2}
    assert dpo.main(_args(tiny, data, one, **common, **{"train.grad_accum": 2})) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "alignforge", "dpo", *_args(tiny, data, two, **common, **{"train.grad_accum": 1})]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a, b = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    ra = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rb] == [1, 2, 3]
    for key in ("loss", "reward_margin", "reward_accuracy", "eval_loss", "eval_reward_accuracy"):
        assert rb[-1][key] == pytest.approx(ra[-1][key], rel=1e-4, abs=1e-6)
    ca, cb = (torch.load(next((d / "ref_cache").glob("ref-*.pt")), weights_only=True) for d in (one, two))
    torch.testing.assert_close(ca["chosen"], cb["chosen"], atol=1e-5, rtol=1e-5)
