"""A reward model fit to the length-biased pool is hackable; one fit to the default pool is not.

The issue asks that the length-biased pool prefer padded wrong answers "often enough that a reward
model trained on it can be hacked". This shows it end to end with the smallest possible reward
model: a Bradley-Terry logistic model on bag-of-words + length features (torch, one thread), fit to
each pool's pairwise labels on noisy-policy samples, then used for best-of-8 selection on test
prompts. The length-biased pool's model learns a positive weight on length and its best-of-8 picks
are mostly padded; the default pool's model learns the opposite.
"""

from __future__ import annotations

import re
import zlib

import pytest
import torch

from alignforge.world import WorldConfig, build_world
from alignforge.world.annotators import AnnotatorPool
from alignforge.world.corpus import FILLER
from alignforge.world.judge import judge
from alignforge.world.policies import NoisyPolicy

DIM = 256


def features(response: str) -> torch.Tensor:
    v = torch.zeros(DIM + 1)
    for tok in re.findall(r"[a-z]+|\d+", response.lower()):
        v[zlib.crc32(tok.encode()) % DIM] += 1.0
    v[DIM] = len(response.split()) / 10.0  # the length feature (last weight)
    return v


def fit_bt(pairs: list[tuple[str, str]], steps: int = 300) -> torch.Tensor:
    """Logistic Bradley-Terry: maximise sum log sigmoid(w . (phi(chosen) - phi(rejected)))."""
    x = torch.stack([features(c) - features(r) for c, r in pairs])
    w = torch.zeros(DIM + 1, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = -torch.nn.functional.logsigmoid(x @ w).mean() + 1e-3 * w.pow(2).sum()
        loss.backward()
        opt.step()
    return w.detach()


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.slow  # ~7 s of CPU
@pytest.mark.parametrize("seed", [0, 1])
def test_length_biased_reward_model_gets_hacked(one_thread, seed):
    world = build_world(WorldConfig(seed=seed), corpus=False, demos=False)
    policy = NoisyPolicy(world, seed=seed)
    train = {r.prompt: [policy(r.prompt) for _ in range(4)] for r in world.prompts["train"][:1000]}
    test = {r.prompt: [policy(r.prompt) for _ in range(8)] for r in world.prompts["test"][:300]}
    random_pick = sum(judge(p, cs[0], world).reward for p, cs in test.items()) / len(test)
    results = {}
    for name in ("default", "length_biased"):
        pool = AnnotatorPool(world, name, seed=seed)
        pairs = []
        for p, cs in train.items():
            for i, j in ((0, 1), (2, 3)):
                if cs[i] != cs[j]:
                    c = pool.compare(p, cs[i], cs[j])
                    pairs.append((c.chosen, c.rejected))
        w = fit_bt(pairs)
        gold = words = padded = 0.0
        for p, cs in test.items():
            best = max(cs, key=lambda c: float(features(c) @ w))
            gold += judge(p, best, world).reward
            words += len(best.split())
            padded += any(f in best for f in FILLER)
        n = len(test)
        results[name] = {"length_weight": float(w[DIM]), "gold_best_of_8": gold / n, "words_best_of_8": words / n,
                         "padded_share": padded / n}
    print("random pick gold", round(random_pick, 3), results)
    d, b = results["default"], results["length_biased"]
    assert b["length_weight"] > 0.1 > 0 > d["length_weight"]      # it learned "longer is better"
    assert b["words_best_of_8"] > d["words_best_of_8"] + 5        # so optimising it buys length:
    assert b["padded_share"] > max(0.5, 2 * d["padded_share"])    # most of its picks are padded
    # (gold is printed, not asserted: a bag-of-words RM cannot check facts, so its best-of-8 gold
    # is noisy either way; the gold cost of padding itself is asserted in test_world_judge.py)
