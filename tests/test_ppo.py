"""``alignforge ppo`` on tiny local models: the rollout component, the full loop on a bandit, exact
resume, PPO-ptx, strict config errors, and (slow) the reward-hacking direction at β = 0 vs β > 0."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_helpers import crash_on_call  # noqa: E402
from rl_helpers import (BEST, args, bandit_fixture, best_arm_reward, first_token_probs, make_bandit,  # noqa: E402
                        rl_config)

from alignforge.rl import rollout as R  # noqa: E402
from alignforge.config import ConfigError, PPOConfig  # noqa: E402
from alignforge.generation import SamplingParams  # noqa: E402
from alignforge.stages import ppo  # noqa: E402

torch.set_num_threads(1)


bandit = bandit_fixture("ppo_bandit")


def _cfg(bandit, out, **kw):
    return rl_config(PPOConfig, bandit, out, {"rollout.prompts": 32, "ppo.minibatch_size": 16, "ppo.epochs": 2,
                                              "ppo.steps": 12, "kl.coef": 0.0}, **kw)


def test_rollout_reuses_exact_engine_logprobs_and_matches_a_forward(bandit):
    """Old log-probs from the engine equal a training forward's; ref = policy gives KL 0; values align."""
    from alignforge.models.heads import init_from_causal_lm
    from alignforge.models.load import frozen_copy, load_causal_lm

    policy, tok = load_causal_lm(bandit["policy"])
    ref = frozen_copy(policy)
    value, _ = init_from_causal_lm(bandit["policy"], seed=3)
    from alignforge.data.batching import encode_prompt

    ids = [encode_prompt(tok, "Pick one"), encode_prompt(tok, "one Pick one Pick")]
    params = SamplingParams(temperature=0.7, max_new_tokens=5)
    reward = lambda gen: gen.response_mask.sum(1).float()  # noqa: E731 - length as a score
    ro = R.make_rollout(policy, ref, tok, ids * 3, params, generator=torch.Generator().manual_seed(0),
                        reward_fn=reward, value_model=value)
    assert ro.timings["recomputed_logprobs"] == 0.0
    lp, _ = R.response_logprobs(policy.eval(), ro, 0.7)
    assert torch.allclose(lp * ro.mask, ro.logprobs, atol=1e-5)
    assert torch.allclose(ro.ref_logprobs, ro.logprobs, atol=1e-5)  # ref == policy
    assert ro.scores.tolist() == ro.mask.sum(1).tolist()
    # V(s_t) is the head on the hidden state that predicts token t: check row 0 token 0 by hand.
    with torch.no_grad():
        h = value.model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0, -1]
        assert float(ro.values[0, 0]) == pytest.approx(float(value.score(h)[0]), abs=1e-5)
    # A minibatch trims the padding columns and keeps every quantity aligned.
    sub = ro.select([1, 3])
    lp_sub, _ = R.response_logprobs(policy, sub, 0.7)
    assert sub.input_ids.shape[1] <= ro.input_ids.shape[1]
    assert torch.allclose(lp_sub * sub.mask, sub.logprobs, atol=1e-5)
    # Truncated sampling is not the policy's distribution: the log-probs are recomputed.
    ro2 = R.make_rollout(policy, ref, tok, ids, SamplingParams(temperature=1.0, top_k=3, max_new_tokens=4),
                         generator=torch.Generator().manual_seed(0), reward_fn=reward, missing_eos_penalty=1.0,
                         score_clip=2.5)
    assert ro2.timings["recomputed_logprobs"] == 1.0
    want = (ro2.mask.sum(1) - torch.tensor([float(r != "stop") for r in ro2.finish_reason])).clamp(-2.5, 2.5)
    assert torch.allclose(ro2.scores, want)


def test_ppo_learns_the_best_arm_of_a_one_token_bandit(bandit, tmp_path):
    p0 = first_token_probs(bandit["model"], bandit["tok"])[bandit["arm"][BEST]]
    out = ppo.run(_cfg(bandit, tmp_path / "ppo"), reward_fn=best_arm_reward(bandit))
    from alignforge.models.load import load_causal_lm

    model, tok = load_causal_lm(out / "model")
    probs = first_token_probs(model, tok)
    assert float(p0) < 0.2
    assert int(probs.argmax()) == bandit["arm"][BEST] and float(probs.max()) > 0.8
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[-1]["score"] > rows[0]["score"] + 0.4
    for k in ("kl", "entropy", "clip_frac", "vf_loss", "explained_variance", "response_length", "generate_s",
              "score_s", "train_s", "approx_kl"):
        assert k in rows[0]
    assert rows[0]["ratio"] == pytest.approx(1.0, abs=0.05)  # first epoch starts on-policy
    assert (out / "value" / "config.json").is_file() and (out / "DONE").is_file()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ppo_resumes_exactly_after_a_crash(bandit, tmp_path, precision):
    """Stopped mid-run after the step-2 checkpoint, a resumed run ends with identical weights — within
    one precision: bf16 autocast (sampling, scoring, the loss's forward) is as deterministic as fp32."""
    from safetensors.torch import load_file

    kw = {"ppo.steps": 4, "train.save_every": 2, "kl.coef": 0.1, "kl.target": 0.5, "kl.horizon": 100,
          "runtime.precision": precision}
    full = ppo.run(_cfg(bandit, tmp_path / "full", **kw), reward_fn=best_arm_reward(bandit))
    good = best_arm_reward(bandit)
    crashing = crash_on_call(good, 4, "killed during step 4")
    cfg = _cfg(bandit, tmp_path / "resumed", **kw)
    with pytest.raises(KeyboardInterrupt):
        ppo.run(cfg, reward_fn=crashing)
    assert json.loads((tmp_path / "resumed" / "state" / "trainer.json").read_text())["step"] == 2
    resumed = ppo.run(_cfg(bandit, tmp_path / "resumed", **kw), reward_fn=good)
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    va = load_file(str(full / "value" / "model.safetensors"))
    vb = load_file(str(resumed / "value" / "model.safetensors"))
    assert all(torch.equal(va[k], vb[k]) for k in va)
    ma = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith("_s") and "per_s" not in k}  # noqa: E731
    assert [strip(r) for r in ma] == [strip(r) for r in mb]


def test_ppo_ptx_mixes_a_pretraining_loss(bandit, tmp_path):
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": "Pick one a b c d e"}) + "\n" for _ in range(20)))
    out = ppo.run(_cfg(bandit, tmp_path / "ptx", **{"ppo.steps": 2, "ppo.ptx_coef": 0.5, "ppo.ptx_data": text,
                                                    "train.seq_len": 16}), reward_fn=best_arm_reward(bandit))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["ptx_loss"] > 0 for r in rows)


def test_ppo_config_errors_are_clear(bandit, tmp_path):
    with pytest.raises(ConfigError, match="ppo.ptx_data"):
        _cfg(bandit, tmp_path, **{"ppo.ptx_coef": 1.0})
    with pytest.raises(ConfigError, match="ppo.clip"):
        _cfg(bandit, tmp_path, **{"ppo.clip": 1.5})
    with pytest.raises(ConfigError, match="unknown config key 'ppo.lamda'"):
        _cfg(bandit, tmp_path, **{"ppo.lamda": 0.9})
    with pytest.raises(ConfigError, match="reward.init"):
        ppo.run(_cfg(bandit, tmp_path / "x"))  # no reward model and none injected


@pytest.mark.slow
def test_reward_hacking_direction_beta0_vs_beta_positive(tmp_path):
    """A proxy that loves length: at β = 0 proxy and length rise while the gold reward falls;
    with β > 0 (KL to the SFT policy) gold holds. Gold = the right first word, then stop."""
    bandit = make_bandit(tmp_path, sft_response=BEST)
    best, eos = bandit["arm"][BEST], bandit["eos"]

    def gold_of(gen) -> torch.Tensor:
        right = (gen.response_ids[:, 0] == best).float()
        extra = (gen.response_mask.sum(1) - 2).clamp(min=0).float()  # tokens between the answer and eos
        return right - 0.25 * extra

    curves = {}
    for name, beta in (("beta0", 0.0), ("beta1", 1.0)):
        gold_curve: list[float] = []

        def proxy(gen, gold_curve=gold_curve):
            gold_curve.append(float(gold_of(gen).mean()))
            return gold_of(gen) + 0.5 * gen.response_mask.sum(1).float()  # + a length bonus: the bias

        out = ppo.run(_cfg(bandit, tmp_path / name, **{"sampling.max_new_tokens": 8, "ppo.steps": 25,
                                                      "train.lr": 5e-3, "kl.coef": beta}), reward_fn=proxy)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        curves[name] = {"proxy": [r["score"] for r in rows], "length": [r["response_length"] for r in rows],
                        "gold": gold_curve[:len(rows)]}
    first = lambda xs: sum(xs[:3]) / 3  # noqa: E731
    last = lambda xs: sum(xs[-3:]) / 3  # noqa: E731
    hack, kept = curves["beta0"], curves["beta1"]
    for name, c in curves.items():  # the curves, for `pytest -s` (first 3 vs last 3 steps)
        print(name, {k: (round(first(v), 2), round(last(v), 2)) for k, v in c.items()})
    assert last(hack["proxy"]) > first(hack["proxy"]) + 0.5
    assert last(hack["length"]) > first(hack["length"]) + 1.5
    assert last(hack["gold"]) < first(hack["gold"]) - 0.3
    assert last(kept["gold"]) > first(kept["gold"]) - 0.15
    assert last(kept["gold"]) > last(hack["gold"]) + 0.3


DDP_SCRIPT = r'''
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from alignforge.config import PPOConfig, load_config
from alignforge.rl.advantages import global_whiten, whiten
from alignforge.stages import ppo
from alignforge.train import distributed as dist

out, argv = Path(sys.argv[1]), sys.argv[2:]
dist.init_distributed()
rank, world = dist.rank(), dist.world_size()
# global whitening over ranks == whitening of the concatenated batch in one process
g = torch.Generator().manual_seed(7)
vals, mask = torch.randn(2 * 3, 5, generator=g), (torch.rand(2 * 3, 5, generator=g) > 0.3).float()
mine = slice(3 * rank, 3 * rank + 3)
whitened_ok = torch.allclose(global_whiten(vals[mine], mask[mine]), whiten(vals, mask)[mine], atol=1e-5)
# gradients averaged over ranks
lin = torch.nn.Linear(2, 1, bias=False)
lin.weight.grad = torch.full((1, 2), float(rank + 1))
dist.average_gradients(lin)
grads_ok = lin.weight.grad.tolist() == [[1.5, 1.5]]
# every rank must end with the same policy weights: record a checksum where the stage saves them
from alignforge.train import checkpoint as ckpt
save, sums = ckpt.save_model_dir, {}
def spy(path, model, tokenizer=None):
    sums[Path(path).name] = sum(float(p.double().abs().sum()) for p in model.parameters())
    return save(path, model, tokenizer)
ckpt.save_model_dir = spy
ppo.run(load_config(PPOConfig, None, argv))
(out / f"rank{rank}.json").write_text(json.dumps({"whiten": whitened_ok, "grads": grads_ok, "world": world,
                                                  "sums": sums}))
dist.cleanup()
'''


@pytest.mark.slow  # two torchrun processes: ~30 s of interpreter start-up and imports
def test_two_process_gloo_rollouts_shard_and_stay_in_sync(bandit, tmp_path):
    """torchrun × 2: each rank samples half the prompts with its own seed, advantages are whitened
    with global statistics (= one process on the concatenation), gradients are averaged, so both
    ranks train the same weights; metrics are gathered on rank 0."""
    import os
    import subprocess

    from alignforge.models.heads import init_from_causal_lm, save_scorer

    rm, rm_tok = init_from_causal_lm(bandit["policy"], seed=1)
    save_scorer(rm, rm_tok, tmp_path / "rm")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "two"
    cfg = {"model.init": bandit["policy"], "reward.init": tmp_path / "rm", "data.train": bandit["data"], "out": out,
           "runtime.threads": 1, "runtime.progress": False, "runtime.device": "cpu", "sampling.max_new_tokens": 3,
           "train.seq_len": 32, "train.lr": 1e-2, "train.warmup_steps": 0, "train.save_every": 0,
           "train.eval_every": 0, "rollout.prompts": 8, "ppo.minibatch_size": 2, "ppo.epochs": 1, "ppo.steps": 2}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tmp_path), *args(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for g in got:
        assert (g["whiten"], g["grads"], g["world"]) == (True, True, 2)
    assert got[0]["sums"] == pytest.approx(got[1]["sums"], rel=1e-12) and set(got[0]["sums"]) == {"model", "value"}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("explained_variance" in r for r in rows)
    assert (out / "DONE").is_file() and (out / "value" / "config.json").is_file()
