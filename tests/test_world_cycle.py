"""The non-transitive world (issue 12): answer styles, the ``condorcet`` annotator pool whose majority
prefers s0 ≻ s1 ≻ s2 ≻ s0, and why it matters — a scalar Bradley–Terry reward model fitted to its
labels gets at most two of the three cycle directions right, the pairwise preference model gets all
three; reward maximisation collapses onto one style, Nash-MD stays mixed.

The frozen pools (``default``, ``length_biased``) must label exactly as before the styles existed:
the digests below were computed with the code of commit bef98d8 (before this feature)."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alignforge.config import ConfigError
from alignforge.world import (
    ANNOTATOR_PRESETS,
    AnnotatorPoolConfig,
    WorldConfig,
    build_world,
)
from alignforge.world.annotators import AnnotatorPool, realistic_candidates
from alignforge.world.judge import judge
from alignforge.world.styles import (
    cycle_pairs,
    restyle,
    style_of,
    style_shares,
    styled,
    unstyled,
)

torch.set_num_threads(1)

#: sha256 of the labels :func:`_labels_digest` draws, computed before the condorcet pool was added.
FROZEN_DIGESTS = {
    "default": "603c28241c748f8eecd21ed79280564f378a8c03606200dcccf9788870cc94bd",
    "length_biased": "27948eed1a168a71df984f742492572339a6f2d0b423366c9a1478e29c569d75",
}


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=0), corpus=False, demos=False)


def _labels_digest(world, pool_name: str) -> str:
    pool = AnnotatorPool(world, pool_name, seed=3)
    prompts = [r.prompt for r in world.prompts["test"][:60]]
    h = hashlib.sha256()
    for p, cands in zip(prompts, realistic_candidates(world, prompts, seed=1)):
        for rec in (pool.compare(p, cands[0], cands[2]), pool.rank(p, cands), pool.rate(p, cands[1])):
            h.update(json.dumps(rec.to_dict(), sort_keys=True).encode())
    return h.hexdigest()


def test_frozen_pools_label_exactly_as_before(world):
    for name, digest in FROZEN_DIGESTS.items():
        assert _labels_digest(world, name) == digest, name


def test_styles_round_trip():
    assert restyle("The job of Ka is baker.", 1) == "The job of Ka is baker. Okay."
    assert restyle(restyle("I do not know.", 0), 2) == "I do not know. Right."  # a new style replaces the old
    assert style_of("It is 4. Sure.") == 0 and style_of("It is 4. NotSure.") is None and style_of("Right.") == 2
    assert unstyled("It is 4. Okay.") == "It is 4." and unstyled("It is 4.") == "It is 4."
    assert style_shares(["a Sure.", "b Sure.", "c Right.", "d"]) == [0.5, 0.0, 0.25, 0.25]
    assert list(cycle_pairs()) == [(0, 1), (1, 2), (2, 0)]
    assert styled(lambda p: "It is 4.", 2)("What is 2 plus 2?") == "It is 4. Right."
    with pytest.raises(ValueError, match="style must be 0..2"):
        restyle("x", 3)


def test_gold_judge_ignores_the_style_outside_format_prompts(world):
    """Styles differ in taste only: the same gold reward for every style of the oracle's answer on
    every non-format test prompt (format prompts are left out of the cycle: an extra word breaks
    "one word" / "uppercase"). An answer already near the verbosity limit (the demonstrator's
    filler sentence) can cross it with the style word: rare, and bench/nash_cycle.py skips those."""
    from alignforge.world.demonstrator import Demonstrator

    demo = Demonstrator(world, seed=0)
    n = changed = 0
    for rec in world.prompts["test"]:
        if world.task(rec.prompt).category == "format":
            continue
        answer = world.oracle(rec.prompt)
        base = judge(rec.prompt, answer, world).reward
        assert [judge(rec.prompt, restyle(answer, k), world).reward for k in range(3)] == [base] * 3, answer
        d = demo(rec.prompt)
        changed += len({judge(rec.prompt, restyle(d, k), world).reward for k in range(3)}
                       | {judge(rec.prompt, d, world).reward}) > 1
        n += 1
    assert n > 400 and changed / n < 0.1, (n, changed)


def test_condorcet_pool_majority_is_a_cycle(world):
    """Each third of the pool ranks the styles in its own rotated order; the majority of labels
    prefers s0 ≻ s1, s1 ≻ s2 and s2 ≻ s0 (≈ 2/3 each; every group is nearly always consistent)."""
    cfg = ANNOTATOR_PRESETS["condorcet"]
    assert cfg.style_cycle > 0 and cfg.annotators % 3 == 0
    pool = AnnotatorPool(world, "condorcet", seed=0)
    prompts = [r.prompt for r in world.prompts["test"] if world.task(r.prompt).category != "format"][:200]
    rng = random.Random(0)
    for win, lose in cycle_pairs():
        wins, by_group = 0, {0: [0, 0], 1: [0, 0], 2: [0, 0]}
        for i in range(600):
            p = prompts[i % len(prompts)]
            base = world.oracle(p)
            a, b = restyle(base, win), restyle(base, lose)
            if rng.random() < 0.5:  # both presentation orders
                a, b = b, a
            c = pool.compare(p, a, b)
            won = style_of(c.chosen) == win
            wins += won
            g = int(c.annotator.rsplit("-", 1)[1]) % 3
            by_group[g][0] += won
            by_group[g][1] += 1
        assert 0.57 < wins / 600 < 0.75, (win, lose, wins / 600)
        # the two groups that rank `win` above `lose` nearly always say so, the third nearly never
        shares = sorted(w / n for w, n in by_group.values())
        assert shares[0] < 0.15 and shares[1] > 0.8, shares


def test_style_cycle_config_is_checked():
    with pytest.raises(ConfigError, match="style_cycle"):
        AnnotatorPoolConfig(annotators=8, style_cycle=2.0).validate()
    with pytest.raises(ConfigError, match="style_cycle"):
        AnnotatorPoolConfig(style_cycle=-1.0).validate()


# ---------------------------------------------------------------------------------------------
# The consequence, on a one-token bandit whose arms a, b, c stand for the styles s0, s1, s2:
# the real reward stage, preference model, PPO and Nash-MD stages on the pool's labels.
# ---------------------------------------------------------------------------------------------

ARM_OF_STYLE = ("a", "b", "c")


@pytest.fixture(scope="module")
def cycle_bandit(world, tmp_path_factory):
    """A tiny policy answering a, b or c (≈ ⅓ each) to "Pick one", and 300 condorcet-pool labels
    on styled world answers with each style replaced by its arm."""
    from rl_helpers import tiny_llama, word_tokenizer

    from alignforge.data.batching import encode_example
    from alignforge.models.load import save_model

    root = tmp_path_factory.mktemp("cycle")
    tok = word_tokenizer()
    model = tiny_llama(tok)
    save_model(model, tok, root / "backbone")  # the preference model's backbone (before SFT, like a base LM)
    rows = [encode_example(tok, "Pick one", arm) for arm in ARM_OF_STYLE]
    ids = torch.tensor([r.input_ids for r in rows])
    labels = torch.tensor([[t if m else -100 for t, m in zip(r.input_ids, r.loss_mask)] for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):  # one batch of the three answers: the policy mixes them evenly
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    save_model(model, tok, root / "policy")

    pool = AnnotatorPool(world, "condorcet", seed=0)
    prompts = [r.prompt for r in world.prompts["train"] if world.task(r.prompt).category != "format"][:300]
    rng = random.Random(1)
    prefs = []
    for p in prompts:
        base = world.oracle(p)
        k, j = rng.sample(range(3), 2)
        c = pool.compare(p, restyle(base, k), restyle(base, j))
        prefs.append({"prompt": "Pick one", "chosen": ARM_OF_STYLE[style_of(c.chosen)],
                      "rejected": ARM_OF_STYLE[style_of(c.rejected)]})
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": "Pick one"}) + "\n" for _ in range(8)))
    return {"root": root, "policy": root / "policy", "backbone": root / "backbone", "tok": tok,
            "prefs": root / "prefs.jsonl", "labels": prefs,
            "prompts": root / "prompts.jsonl", "arms": [tok.convert_tokens_to_ids(a) for a in ARM_OF_STYLE]}


def _arm_shares(model_dir, cb) -> list[float]:
    from rl_helpers import first_token_probs

    from alignforge.models.load import load_causal_lm

    model, tok = load_causal_lm(model_dir)
    p = first_token_probs(model, tok)
    return [float(p[i]) for i in cb["arms"]]


COMMON = {"runtime.threads": 1, "runtime.progress": False, "runtime.device": "cpu", "train.seq_len": 32}


@pytest.fixture(scope="module")
def cycle_models(cycle_bandit, tmp_path_factory):
    """The scalar RM (the reward stage) and the preference model, fitted on the same cycle labels:
    the RM's scores of a, b, c and the preference model's P(s_i ≻ s_j) for the three directions."""
    from rl_helpers import args

    from alignforge.config import RewardConfig, load_config
    from alignforge.models.heads import init_from_causal_lm, load_scorer, save_scorer
    from alignforge.models.preference import (
        PreferenceExample,
        fit_preference_model,
        preference_probs,
    )
    from alignforge.stages import reward

    cb, tmp_path = cycle_bandit, tmp_path_factory.mktemp("cycle_models")

    # 1. the scalar Bradley–Terry reward model (the reward stage) on the labels
    reward.run(load_config(RewardConfig, None, args({
        **COMMON, "model.init": cb["policy"], "data.train": cb["prefs"], "data.eval": cb["prefs"],
        "out": tmp_path / "rm", "train.batch_size": 16, "train.lr": 3e-3, "train.warmup_steps": 2,
        "reward.epochs": 3, "reward.kinds": "[comparison]"})))
    rm, rm_tok = load_scorer(tmp_path / "rm")
    r = reward.score_texts(rm.eval(), rm_tok, [("Pick one", a) for a in ARM_OF_STYLE], 32, 8)[:, 0]
    rm_p = [float(torch.sigmoid(r[i] - r[j])) for i, j in cycle_pairs()]

    # 2. the pairwise preference model on the same labels, aggregated per pair of arms (target = the
    # share of labels preferring the first: the same maximum-likelihood fit as the raw 0/1 labels,
    # with less gradient noise for these few steps): all three directions
    w, lo = [ARM_OF_STYLE[i] for i, _ in cycle_pairs()], [ARM_OF_STYLE[j] for _, j in cycle_pairs()]
    shares = []
    for a, b in zip(w, lo):
        won = sum(r["chosen"] == a and r["rejected"] == b for r in cb["labels"])
        lost = sum(r["chosen"] == b and r["rejected"] == a for r in cb["labels"])
        shares.append(won / (won + lost))
    pm, pm_tok = init_from_causal_lm(cb["backbone"], n_heads=1, head_names=["preference"], seed=0)
    fit_preference_model(pm, pm_tok, [PreferenceExample("Pick one", a, b, target=t) for a, b, t in zip(w, lo, shares)],
                         steps=80, lr=1e-2, batch_size=3, seed=0)
    save_scorer(pm, pm_tok, tmp_path / "pm")
    pm_p = preference_probs(pm, pm_tok, ["Pick one"] * 3, w, lo)
    return {"r": r, "rm_p": rm_p, "pm_p": pm_p, "label_shares": shares}


def test_scalar_reward_model_fails_the_cycle_the_preference_model_does_not(cycle_models):
    """Fitted on the condorcet pool's labels: the scalar RM gets at most two of the three
    directions (a scalar order cannot be cyclic) and is nearly indifferent (the Bradley–Terry
    optimum on a symmetric cycle is a tie), the preference model gets all three."""
    m = cycle_models
    assert min(m["label_shares"]) > 0.55, m["label_shares"]  # the labels' majority is the cycle
    assert sum(p > 0.5 for p in m["rm_p"]) <= 2, m["rm_p"]
    assert max(abs(p - 0.5) for p in m["rm_p"]) < 0.15, m["rm_p"]
    assert (m["pm_p"] > 0.55).all(), m["pm_p"]


@pytest.mark.slow  # two tiny stage runs (PPO, Nash-MD): ~10 s on one thread, after the fixtures
def test_reward_maximisation_collapses_onto_one_style_nash_md_stays_mixed(cycle_bandit, cycle_models, tmp_path):
    from rl_helpers import args

    from alignforge.config import NashConfig, PPOConfig, load_config
    from alignforge.stages import nash, ppo

    cb, r, pm_p = cycle_bandit, cycle_models["r"], cycle_models["pm_p"]
    start = _arm_shares(cb["policy"], cb)
    assert min(start) > 0.25, start  # the SFT policy mixes the three styles


    # 3. what the policies do, from the same mixed SFT policy. Both models only ever saw the three
    # styles; any other answer (never labelled) is scored as below every style by both — the
    # RM's worst, a loss to any style for the preference model — so each policy plays the cycle.
    arm_ids = torch.tensor(cb["arms"])

    def arm_index(gen) -> torch.Tensor:  # 0, 1, 2 for a, b, c; -1 otherwise
        first = gen.response_ids[:, 0]
        hit = first[:, None] == arm_ids[None, :]
        return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(first, -1))

    def rm_reward(gen) -> torch.Tensor:
        k = arm_index(gen)
        return torch.where(k >= 0, r[k.clamp(min=0)], r.min() - 1.0)

    P = torch.full((4, 4), 0.5)  # index 3 = off-style
    for (i, j), pij in zip(cycle_pairs(), pm_p.tolist()):
        P[i, j], P[j, i] = pij, 1 - pij
    P[:3, 3], P[3, :3] = 1.0, 0.0

    def pm_preference(prompts, gen_a, gen_b) -> torch.Tensor:
        a, b = arm_index(gen_a), arm_index(gen_b)
        return P[a.where(a >= 0, 3), b.where(b >= 0, 3)]

    rl = {**COMMON, "model.init": cb["policy"], "data.train": cb["prompts"], "sampling.max_new_tokens": 1,
          "train.lr": 3e-3, "train.warmup_steps": 0, "train.schedule": "constant", "train.weight_decay": 0.0,
          "train.batch_size": 16, "train.log_every": 100, "train.save_every": 0, "train.eval_every": 0,
          "rollout.prompts": 32}
    # PPO as a pure reward maximiser (β_KL = 0): the RM is near-indifferent between styles, and what
    # little order it has is all a maximiser sees. Nash-MD with its own regularisation (opponent
    # mixture β = 0.5 with π_ref, β_KL = 0.05) and a smaller step: the Nash-MD iteration needs one.
    ppo_out = ppo.run(load_config(PPOConfig, None, args({**rl, "out": tmp_path / "ppo", "ppo.steps": 15,
                                                          "train.lr": 1e-2, "kl.coef": 0.0,
                                                          "ppo.minibatch_size": 16})), reward_fn=rm_reward)
    nash_out = nash.run(load_config(NashConfig, None, args({**rl, "out": tmp_path / "nash", "nash.steps": 20,
                                                            "nash.mixture_beta": 0.5, "train.lr": 3e-3,
                                                            "kl.coef": 0.05})), preference_fn=pm_preference)
    ppo_shares, nash_shares = _arm_shares(ppo_out / "model", cb), _arm_shares(nash_out / "model", cb)
    print(f"style shares: SFT {start}, PPO on the RM {ppo_shares}, Nash-MD on the preference model {nash_shares}")
    assert max(ppo_shares) > 0.8, ppo_shares  # reward maximisation collapses onto one style
    assert max(nash_shares) < 0.6 and min(nash_shares) > 0.15, nash_shares  # Nash-MD stays mixed
