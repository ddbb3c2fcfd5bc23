"""``alignforge reinforce`` (REINFORCE with a baseline, RLOO, GRPO) on tiny local models: each
learns the best arm of a one-token bandit; advantages are those of ``alignforge.rl`` (checked by
hand); a GRPO run resumes exactly; groups are never split; strict config errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_helpers import crash_on_call  # noqa: E402
from rl_helpers import BEST, args, bandit_fixture, best_arm_reward, first_token_probs, rl_config  # noqa: E402

from alignforge.config import ConfigError, ReinforceConfig  # noqa: E402
from alignforge.stages import reinforce  # noqa: E402

torch.set_num_threads(1)


bandit = bandit_fixture("reinforce_bandit")


def _cfg(bandit, out, **kw):
    return rl_config(ReinforceConfig, bandit, out, {"rollout.prompts": 8, "reinforce.k": 4,
                                                    "reinforce.minibatch_size": 16, "reinforce.steps": 12,
                                                    "kl.coef": 0.0}, **kw)


def test_sequence_advantages_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 3.0])
    kl = torch.tensor([0.5, 0.0, 1.0, 0.0])
    a, r = reinforce.sequence_advantages("rloo", scores, kl, 0.2, 2, None, True)
    assert r.tolist() == pytest.approx([0.9, 0.0, -0.2, 3.0])
    assert a.tolist() == pytest.approx([0.9, -0.9, -3.2, 3.2])  # r_i − r_other within each pair
    a, r = reinforce.sequence_advantages("grpo", scores, kl, 0.2, 2, None, False)  # Dr. GRPO: centred only
    assert r.tolist() == scores.tolist() and a.tolist() == pytest.approx([0.5, -0.5, -1.5, 1.5])
    a, _ = reinforce.sequence_advantages("grpo", scores, kl, 0.2, 2, None, True)
    assert a.tolist() == pytest.approx([0.5 / (0.5 ** 0.5 + 1e-4), -0.5 / (0.5 ** 0.5 + 1e-4),
                                        -1.5 / (4.5 ** 0.5 + 1e-4), 1.5 / (4.5 ** 0.5 + 1e-4)])
    a, _ = reinforce.sequence_advantages("reinforce", scores, kl, 0.0, 1, 0.25, True)
    assert a.tolist() == pytest.approx([0.75, -0.25, -0.25, 2.75])


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce"])
def test_learns_the_best_arm_of_a_one_token_bandit(bandit, tmp_path, algorithm):
    out = reinforce.run(_cfg(bandit, tmp_path / algorithm, **{"reinforce.algorithm": algorithm,
                                                               "reinforce.steps": 15 if algorithm == "reinforce" else 12}),
                        reward_fn=best_arm_reward(bandit))
    from alignforge.models.load import load_causal_lm

    model, tok = load_causal_lm(out / "model")
    probs = first_token_probs(model, tok)
    assert int(probs.argmax()) == bandit["arm"][BEST] and float(probs.max()) > 0.6
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["score"] > rows[0]["score"] + 0.4
    assert rows[0]["ratio"] == pytest.approx(1.0, abs=0.05)  # one epoch: near on-policy (exact on the 1st minibatch)
    assert {"kl", "entropy", "group_score_std", "generate_s", "train_s"} <= rows[0].keys()


def test_groups_are_contiguous_and_never_split(bandit, tmp_path):
    """Every rollout row i belongs to prompt i // k; a minibatch that is not whole groups is refused."""
    seen = []

    def reward(gen):
        seen.append(gen.prompt_ids.shape[0])
        return torch.zeros(gen.response_ids.shape[0])

    reinforce.run(_cfg(bandit, tmp_path / "g", **{"reinforce.steps": 1}), reward_fn=reward)
    assert seen == [8 * 4]
    with pytest.raises(ConfigError, match="multiple of reinforce.k"):
        reinforce.run(_cfg(bandit, tmp_path / "bad", **{"reinforce.minibatch_size": 6}), reward_fn=reward)


def test_grpo_with_kl_loss_resumes_exactly(bandit, tmp_path):
    from safetensors.torch import load_file

    kw = {"reinforce.steps": 4, "train.save_every": 2, "kl.coef": 0.1, "kl.estimator": "k3",
          "reinforce.epochs": 2, "reinforce.minibatch_size": 8}
    good = best_arm_reward(bandit)
    full = reinforce.run(_cfg(bandit, tmp_path / "full", **kw), reward_fn=good)
    crashing = crash_on_call(good, 3, "killed during step 3")
    with pytest.raises(KeyboardInterrupt):
        reinforce.run(_cfg(bandit, tmp_path / "resumed", **kw), reward_fn=crashing)
    resumed = reinforce.run(_cfg(bandit, tmp_path / "resumed", **kw), reward_fn=good)
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(resumed / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("kl_loss" in r for r in rows)


def test_config_errors_are_clear(bandit, tmp_path):
    with pytest.raises(ConfigError, match="needs >= 2 samples"):
        _cfg(bandit, tmp_path, **{"reinforce.algorithm": "rloo", "reinforce.k": 1})
    with pytest.raises(ConfigError, match="reinforce.algorithm"):
        _cfg(bandit, tmp_path, **{"reinforce.algorithm": "ppo"})


DDP_SCRIPT = r'''
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from alignforge.config import ReinforceConfig, load_config
from alignforge.stages import reinforce
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist

out, argv = Path(sys.argv[1]), sys.argv[2:]
dist.init_distributed()
seen, sums = [], {}
real = reinforce.R.make_rollout
def spy_rollout(policy, ref, tok, prompt_ids, *a, **kw):
    seen.append([list(p) for p in prompt_ids])  # this rank's rows, in order
    return real(policy, ref, tok, prompt_ids, *a, **kw)
reinforce.R.make_rollout = spy_rollout
save = ckpt.save_model_dir
def spy_save(path, model, tokenizer=None):
    sums[Path(path).name] = sum(float(p.double().abs().sum()) for p in model.parameters())
    return save(path, model, tokenizer)
ckpt.save_model_dir = spy_save
reinforce.run(load_config(ReinforceConfig, None, argv))
(out / f"rank{dist.rank()}.json").write_text(json.dumps({"seen": seen, "sums": sums}))
dist.cleanup()
'''


@pytest.mark.slow  # two torchrun processes: ~30 s of interpreter start-up and imports
def test_two_process_gloo_keeps_groups_whole_and_ranks_in_sync(bandit, tmp_path):
    """torchrun × 2 with GRPO: each rank gets half of the step's prompts, all k copies of a prompt on
    one rank (contiguous), and both ranks end with the same weights (averaged gradients)."""
    import os
    import subprocess

    from alignforge.models.heads import init_from_causal_lm, save_scorer

    rm, rm_tok = init_from_causal_lm(bandit["policy"], seed=1)
    save_scorer(rm, rm_tok, tmp_path / "rm")
    data = tmp_path / "prompts.jsonl"  # distinct prompts, so rows can be traced to their prompt
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Pick one", "one", "Pick", "one Pick")))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cfg = {"model.init": bandit["policy"], "reward.init": tmp_path / "rm", "data.train": data,
           "out": tmp_path / "two", "runtime.threads": 1, "runtime.progress": False, "runtime.device": "cpu",
           "sampling.max_new_tokens": 2, "train.seq_len": 32, "train.lr": 1e-2, "train.warmup_steps": 0,
           "train.save_every": 0, "train.eval_every": 0, "rollout.prompts": 4, "reinforce.k": 3,
           "reinforce.minibatch_size": 3, "reinforce.steps": 2, "kl.coef": 0.1, "kl.estimator": "k3"}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tmp_path), *args(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for step in range(2):
        rows = [got[r]["seen"][step] for r in (0, 1)]
        assert len(rows[0]) == len(rows[1]) == 2 * 3  # 2 prompts × k = 3 per rank
        groups = [[tuple(x) for x in rr[i:i + 3]] for rr in rows for i in (0, 3)]
        assert all(len(set(g)) == 1 for g in groups)  # k copies of one prompt, contiguous
        assert len({g[0] for g in groups}) == 4  # the 4 prompts of the step, none on both ranks
    assert got[0]["sums"] == pytest.approx(got[1]["sums"], rel=1e-12)
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("kl_loss" in r for r in rows)
