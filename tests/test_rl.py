"""RL estimators against naive per-element loops."""

import pytest
import torch

from alignforge import rl


def naive_gae(rewards, values, lengths, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        n = lengths[b]
        running = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b, t] = running
    ret = adv + values * (torch.arange(T)[None] < torch.tensor(lengths)[:, None])
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_matches_naive_loop_with_padding(gamma, lam):
    torch.manual_seed(0)
    lengths = [5, 3, 1]
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = (torch.arange(5)[None] < torch.tensor(lengths)[:, None]).float()
    adv, ret = rl.gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = naive_gae(rewards, values, lengths, gamma, lam)
    assert torch.allclose(adv, ref_adv * mask, atol=1e-5)
    assert torch.allclose(ret, ref_ret * mask, atol=1e-5)


def test_discounted_returns():
    r = torch.tensor([[1.0, 0.0, 2.0]])
    got = rl.discounted_returns(r, torch.ones(1, 3), gamma=0.5)
    assert torch.allclose(got, torch.tensor([[1.5, 1.0, 2.0]]))


def test_whiten_masked():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = rl.whiten(x, mask)
    vals = w[mask.bool()]
    assert vals.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert vals.std().item() == pytest.approx(1.0, abs=1e-4)
    assert w[0, 3].item() == 0.0


def test_per_token_rewards_kl_and_score_at_last_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]])
    logp_ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -2.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = rl.per_token_rewards(torch.tensor([3.0, -1.0]), logp, logp_ref, mask, kl_coef=0.1)
    expected_kl = (logp - logp_ref) * mask  # k1
    assert torch.allclose(kl, expected_kl)
    expected = -0.1 * expected_kl
    expected[0, 2] += 3.0
    expected[1, 1] += -1.0
    assert torch.allclose(rewards, expected)


def test_rloo_and_grpo_match_loops():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    k = 4
    rloo = rl.rloo_advantages(scores, k)
    grpo = rl.grpo_advantages(scores, k)
    for i in range(8):
        g = scores[(i // k) * k:(i // k + 1) * k]
        others = torch.cat([g[: i % k], g[i % k + 1:]])
        assert rloo[i].item() == pytest.approx(scores[i].item() - others.mean().item(), abs=1e-6)
        assert grpo[i].item() == pytest.approx(((scores[i] - g.mean()) / (g.std() + 1e-4)).item(), abs=1e-5)
    with pytest.raises(ValueError, match="groups of 3"):
        rl.rloo_advantages(scores, 3)


def test_adaptive_kl_controller():
    c = rl.AdaptiveKLController(value=0.1, target=6.0, horizon=100)
    c.update(12.0, n_steps=10)  # error clipped to +0.2 → β *= 1 + 0.2·10/100
    assert c.value == pytest.approx(0.1 * 1.02)
    c2 = rl.AdaptiveKLController(value=0.1, target=6.0, horizon=100)
    c2.update(5.4, n_steps=10)  # error -0.1 → β *= 0.99
    assert c2.value == pytest.approx(0.1 * 0.99)
    assert rl.FixedKLController(0.05).update(100.0, 10) == 0.05


def test_explained_variance():
    ret = torch.tensor([[1.0, 2.0, 3.0]])
    assert rl.explained_variance(ret, ret, torch.ones(1, 3)) == pytest.approx(1.0)
    assert rl.explained_variance(torch.zeros(1, 3) + 2.0, ret, torch.ones(1, 3)) == pytest.approx(0.0, abs=1e-6)
