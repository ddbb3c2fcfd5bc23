"""Every loss against a hand-computed value or a direct formula."""

import math

import pytest
import torch

from alignforge import losses


def test_token_logprobs_match_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    tokens = torch.randint(0, 11, (2, 5))
    for temp in (1.0, 0.7):
        ref = torch.log_softmax(logits / temp, -1).gather(-1, tokens[..., None]).squeeze(-1)
        assert torch.allclose(losses.token_logprobs(logits, tokens, temp), ref, atol=1e-6)


def test_bradley_terry_hand_values():
    chosen = torch.tensor([2.0, 0.0])
    rejected = torch.tensor([1.0, 1.0])
    # -log σ(1) = 0.31326, -log σ(-1) = 1.31326
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    assert losses.bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # With margins 1 and 0: pair 1 → -log σ(0) = log 2
    got = losses.bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0])).item()
    assert got == pytest.approx((math.log(2) + math.log1p(math.exp(1))) / 2, rel=1e-6)
    # Weighted: Σ w ℓ / Σ w
    got = losses.bradley_terry_loss(chosen, rejected, weight=torch.tensor([3.0, 1.0])).item()
    assert got == pytest.approx((3 * math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 4, rel=1e-6)


def test_bradley_terry_label_smoothing_hand_values():
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731 — softplus: -log σ(-x)
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # ε = 0.2, Δ = (1, -1): (0.8·(-log σ(Δ)) + 0.2·(-log σ(-Δ))) averaged
    expected = ((0.8 * sp(-1) + 0.2 * sp(1)) + (0.8 * sp(1) + 0.2 * sp(-1))) / 2
    got = losses.bradley_terry_loss(chosen, rejected, label_smoothing=0.2).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # a margin m is asked of both directions: pair 1 with m = 1 → 0.8·(-log σ(0)) + 0.2·(-log σ(-2))
    got = losses.bradley_terry_loss(chosen[:1], rejected[:1], margin=torch.tensor([1.0]), label_smoothing=0.2).item()
    assert got == pytest.approx(0.8 * math.log(2) + 0.2 * sp(2), rel=1e-6)
    # the minimum is at the finite gap log((1-ε)/ε), where the gradient vanishes (plain BT has none)
    gap = torch.tensor([math.log(0.8 / 0.2)], requires_grad=True)
    losses.bradley_terry_loss(gap, torch.zeros(1), label_smoothing=0.2).backward()
    assert abs(gap.grad.item()) < 1e-6
    # ε = 0 is the plain loss exactly
    assert losses.bradley_terry_loss(chosen, rejected, label_smoothing=0.0).item() == \
        losses.bradley_terry_loss(chosen, rejected).item()


def test_ranking_pair_weight_makes_each_ranking_count_once():
    for k in (2, 4, 9):
        assert losses.ranking_pair_weights(k) * (k * (k - 1) // 2) == pytest.approx(1.0)


def _direct_dpo(pc, pr, rc, rr, beta, kind, eps=0.0):
    h = (pc - rc) - (pr - rr)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    if kind == "sigmoid":
        return -(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h))
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return max(0.0, 1 - beta * h)


@pytest.mark.parametrize("kind,eps", [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0)])
def test_dpo_family_matches_direct_formula(kind, eps):
    pc, pr, rc, rr = [-10.0, -7.0], [-12.0, -6.0], [-11.0, -7.5], [-11.5, -6.2]
    beta = 0.3
    loss, metrics = losses.dpo_loss(torch.tensor(pc), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr),
                                    beta=beta, loss_type=kind, label_smoothing=eps)
    expected = sum(_direct_dpo(*v, beta, kind, eps) for v in zip(pc, pr, rc, rr)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # implicit rewards: β (log π - log π_ref)
    assert metrics["reward_chosen"].item() == pytest.approx(beta * ((pc[0] - rc[0]) + (pc[1] - rc[1])) / 2, rel=1e-5)


def test_dpo_reference_free_and_gradient_direction():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _ = losses.dpo_loss(pc, pr, None, None, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    loss.backward()
    # Minimising the loss raises the chosen log-prob and lowers the rejected one.
    assert pc.grad.item() < 0 < pr.grad.item()


def test_kl_estimators_match_formulas_and_k1_k3_unbiased():
    logp = torch.tensor([-1.0, -2.0])
    logp_ref = torch.tensor([-1.5, -1.0])
    log_r = logp_ref - logp
    assert torch.allclose(losses.kl_estimate(logp, logp_ref, "k1"), -log_r)
    assert torch.allclose(losses.kl_estimate(logp, logp_ref, "k2"), 0.5 * log_r**2)
    assert torch.allclose(losses.kl_estimate(logp, logp_ref, "k3"), log_r.exp() - 1 - log_r)
    # Monte Carlo: both unbiased estimators approach the exact KL of two categoricals.
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum().item()
    s = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for kind in ("k1", "k3"):
        est = losses.kl_estimate(p.log()[s], q.log()[s], kind).mean().item()
        assert est == pytest.approx(exact, abs=0.01)
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        losses.kl_estimate(logp, logp_ref, "k9")


def test_ppo_policy_loss_hand_computed_with_clipping():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, m = losses.ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(0.5, 0.8) = 0.8 (clipped); token 3: max(-2.2, -2.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, rel=1e-5)
    assert m["clip_frac"].item() == pytest.approx(2 / 3)
    # Masked token does not count.
    loss2, _ = losses.ppo_policy_loss(logp, old, adv, torch.tensor([[1.0, 1.0, 0.0]]), clip=0.2)
    assert loss2.item() == pytest.approx((-1.2 + 0.8) / 2, rel=1e-5)


def test_value_loss_hand_computed_with_clipping():
    v = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    ret = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, m = losses.value_loss(v, old, ret, mask, clip=0.2)
    # token 1: unclipped (1-2)^2 = 1, clipped V = 0.7 → 1.69 → max 1.69 ; token 2: 1 and 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, rel=1e-5)
    assert m["vf_clip_frac"].item() == pytest.approx(0.5)
    loss_nc, _ = losses.value_loss(v, old, ret, mask, clip=None)
    assert loss_nc.item() == pytest.approx(0.5 * (1.0 + 1.0) / 2, rel=1e-6)


def test_entropy_uniform():
    assert losses.entropy_from_logits(torch.zeros(1, 8)).item() == pytest.approx(math.log(8), rel=1e-6)
