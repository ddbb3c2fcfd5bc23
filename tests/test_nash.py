"""``alignforge nash`` (Nash-MD) on a one-token bandit with a fixed pairwise preference: the policy
moves toward the preferred arm; the leave-one-out advantage by hand; the opponent really is the
geometric mixture (β = 1 → the reference's samples); exact resume; strict config errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_helpers import crash_on_call
from rl_helpers import BEST, args, bandit_fixture, first_token_probs, rl_config

from alignforge.config import ConfigError, NashConfig, load_config
from alignforge.stages import nash

torch.set_num_threads(1)


bandit = bandit_fixture("nash_bandit")


def _cfg(bandit, out, **kw):
    return rl_config(NashConfig, bandit, out, {"train.batch_size": 16, "rollout.prompts": 16, "nash.steps": 12,
                                               "nash.mixture_beta": 0.25, "kl.coef": 0.0}, **kw)


def best_beats_others(bandit, seen=None):
    """A fixed preference: the best arm beats any other (P = 1), loses to none; same arm → ½."""
    best = bandit["arm"][BEST]

    def fn(prompts, gen_a, gen_b):
        a = (gen_a.response_ids[:, 0] == best).float()
        b = (gen_b.response_ids[:, 0] == best).float()
        if seen is not None:
            seen.append((gen_a.response_ids[:, 0].clone(), gen_b.response_ids[:, 0].clone()))
        return 0.5 + 0.5 * (a - b)

    return fn


def test_leave_one_out_advantages_by_hand():
    r = torch.tensor([0.5, -0.5, 0.0, 0.2])
    # mean of the others: (−0.3)/3, (0.7)/3, (0.2)/3, (0.0)/3
    assert nash.loo_advantages(r).tolist() == pytest.approx([0.6, -0.5 - 0.7 / 3, -0.2 / 3, 0.2])
    assert nash.loo_advantages(torch.tensor([0.3])).tolist() == [0.0]


def test_policy_moves_toward_the_preferred_arm(bandit, tmp_path):
    out = nash.run(_cfg(bandit, tmp_path / "run"), preference_fn=best_beats_others(bandit))
    from alignforge.models.load import load_causal_lm
    model, tok = load_causal_lm(out / "model")
    before = first_token_probs(bandit["model"], bandit["tok"])[bandit["arm"][BEST]]
    probs = first_token_probs(model, tok)
    assert int(probs.argmax()) == bandit["arm"][BEST] and float(probs.max()) > 0.5 > float(before)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["win_rate"] > rows[0]["win_rate"]
    assert rows[-1]["kl"] > 0.05  # moved away from the reference (no KL penalty here)
    assert {"win_rate", "kl", "mixture_beta", "kl_coef", "entropy", "ratio"} <= rows[0].keys()


def test_opponent_is_the_mixture_beta_one_is_the_reference(bandit, tmp_path):
    """With mixture_beta = 1 the opponent samples from π_ref, so after the policy has moved the
    opponent's arm distribution stays the reference's while the policy's does not."""
    seen: list = []
    nash.run(_cfg(bandit, tmp_path / "b1", **{"nash.mixture_beta": 1.0, "nash.steps": 12, "rollout.prompts": 32,
                                               "train.batch_size": 32}),
             preference_fn=best_beats_others(bandit, seen))
    best = bandit["arm"][BEST]
    ref_p = float(first_token_probs(bandit["model"], bandit["tok"])[best])
    pol_late = torch.cat([a for a, _ in seen[-4:]]).eq(best).float().mean()
    opp_late = torch.cat([b for _, b in seen[-4:]]).eq(best).float().mean()
    assert float(pol_late) > ref_p + 0.2
    assert abs(float(opp_late) - ref_p) < 0.15


def test_resume_after_a_crash_is_exact(bandit, tmp_path):
    kw = {"nash.steps": 4, "train.save_every": 1, "kl.coef": 0.05}
    full = nash.run(_cfg(bandit, tmp_path / "full", **kw), preference_fn=best_beats_others(bandit))
    good = best_beats_others(bandit)
    crashing = crash_on_call(good, 3)
    with pytest.raises(KeyboardInterrupt):
        nash.run(_cfg(bandit, tmp_path / "resumed", **kw), preference_fn=crashing)
    resumed = nash.run(_cfg(bandit, tmp_path / "resumed", **kw), preference_fn=good)
    from safetensors.torch import load_file
    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_config_errors_are_clear(bandit, tmp_path):
    with pytest.raises(ConfigError, match="nash.mixture_beta"):
        _cfg(bandit, tmp_path / "x", **{"nash.mixture_beta": 1.5})
    with pytest.raises(ConfigError, match="preference.init"):
        nash.run(_cfg(bandit, tmp_path / "y"))


def test_fits_a_preference_model_from_comparisons_then_plays(bandit, tmp_path):
    """The real path: nash.preference_data → a preference model on the policy's backbone, fitted on
    comparison records (c beats every other arm; a tie between a and b), saved under <out>/preference
    and loadable by plain transformers; then Nash-MD against it moves the policy toward c."""
    from alignforge.models.heads import load_scorer
    from alignforge.models.preference import preference_probs

    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "Pick one", "chosen": "c", "rejected": x} for x in "abde"] * 4
    rows.append({"prompt": "Pick one", "chosen": "a", "rejected": "b", "tie": True})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = nash.run(_cfg(bandit, tmp_path / "pm", **{"nash.preference_data": data, "nash.preference_steps": 40,
                                                     "nash.preference_lr": 3e-3, "nash.steps": 12}))
    pm, tok = load_scorer(out / "preference")
    p = preference_probs(pm, tok, ["Pick one"] * 4, ["c"] * 4, list("abde"))
    assert (p > 0.8).all()
    model, _ = __import__("alignforge.models.load", fromlist=["x"]).load_causal_lm(out / "model")
    probs = first_token_probs(model, tok)
    assert int(probs.argmax()) == bandit["arm"][BEST]


def test_gold_win_rate_against_sft_and_the_previous_eval_is_logged(bandit, tmp_path):
    """With nash.eval_world: at every evaluation the gold reward and the gold win-rate (paired
    bootstrap 95% CI) vs SFT and vs the previous evaluation's policy — through alignforge.eval —
    and eval.json vs SFT at the end. The first evaluation after step 0 has SFT as its previous one."""
    from alignforge.world import WorldConfig, build_world

    cfg = load_config(WorldConfig, None, ["size.people=12", "size.places=12", "size.creatures=12",
                                          "prompts.train=10", "prompts.test=12", "prompts.sft=4"])
    build_world(cfg, corpus=False).write(tmp_path / "world")
    out = nash.run(_cfg(bandit, tmp_path / "gold", **{"nash.steps": 2, "train.eval_every": 1,
                                                      "data.eval": tmp_path / "world" / "prompts_test.jsonl",
                                                      "nash.eval_world": tmp_path / "world", "nash.eval_prompts": 12}),
                   preference_fn=best_beats_others(bandit))
    rows = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "gold_all" in r}
    assert sorted(rows) == [0, 1, 2]
    assert "gold_win_rate_vs_sft" not in rows[0]  # step 0 is SFT itself
    assert rows[1]["gold_win_rate_vs_prev"] == rows[1]["gold_win_rate_vs_sft"]
    for r in (rows[1], rows[2]):
        for key in ("sft", "prev"):
            v = r[f"gold_win_rate_vs_{key}"]
            assert 0.0 <= r[f"gold_win_rate_vs_{key}_lo"] <= v <= r[f"gold_win_rate_vs_{key}_hi"] <= 1.0
    report = json.loads((out / "eval.json").read_text())
    assert report["policies"] == ["sft", "nash"] and report["prompts"] == 12
    assert report["sample"]["nash"]["win_rate"]["n"] == 12


DDP_SCRIPT = r'''
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from alignforge.config import NashConfig, load_config
from alignforge.stages import nash
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist

out, argv = Path(sys.argv[1]), sys.argv[2:]
dist.init_distributed()
seen, sums = [], {}
real = nash.R.make_rollout
def spy_rollout(policy, ref, tok, prompt_ids, *a, **kw):
    seen.append([list(p) for p in prompt_ids])
    return real(policy, ref, tok, prompt_ids, *a, **kw)
nash.R.make_rollout = spy_rollout
save = ckpt.save_model_dir
def spy_save(path, model, tokenizer=None):
    sums[Path(path).name] = sum(float(p.double().abs().sum()) for p in model.parameters())
    return save(path, model, tokenizer)
ckpt.save_model_dir = spy_save
nash.run(load_config(NashConfig, None, argv))
(out / f"rank{dist.rank()}.json").write_text(json.dumps({"seen": seen, "sums": sums}))
dist.cleanup()
'''


@pytest.mark.slow  # two torchrun processes: ~30 s of interpreter start-up and imports
def test_two_process_gloo_fits_once_splits_prompts_and_stays_in_sync(bandit, tmp_path):
    """torchrun × 2: rank 0 fits the preference model once (both ranks then load it), each rank
    plays its half of the step's prompts, and both end with the same weights (averaged gradients)."""
    import os
    import subprocess

    data = tmp_path / "prompts.jsonl"  # distinct prompts, so rows can be traced to their prompt
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Pick one", "one", "Pick", "one Pick")))
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": "Pick one", "chosen": "c", "rejected": x}) + "\n" for x in "abde"))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cfg = {"model.init": bandit["policy"], "nash.preference_data": prefs, "nash.preference_steps": 3,
           "data.train": data, "out": tmp_path / "two", "runtime.threads": 1, "runtime.progress": False,
           "runtime.device": "cpu", "sampling.max_new_tokens": 2, "train.seq_len": 32, "train.lr": 1e-2,
           "train.warmup_steps": 0, "train.save_every": 0, "train.eval_every": 0, "train.batch_size": 2,
           "rollout.prompts": 4, "nash.steps": 2, "kl.coef": 0.1}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tmp_path), *args(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("preference model fitted") == 1
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for step in range(2):
        rows = [[tuple(x) for x in got[r]["seen"][step]] for r in (0, 1)]
        assert len(rows[0]) == len(rows[1]) == 2
        assert len(set(rows[0]) | set(rows[1])) == 4  # the step's 4 prompts, none on both ranks
    assert got[0]["sums"] == pytest.approx(got[1]["sums"], rel=1e-12)
