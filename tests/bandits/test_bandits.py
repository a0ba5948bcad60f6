"""Bandits on synthetic reward landscapes: each must beat uniform sampling (fixed seeds, asserted regret)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmopt.bandits import EXP3, BetaBernoulliTS, ExponentialWeights, NeuralUCB, exp3_gamma


# ------------------------------------------------------------------ NeuralUCB
def _landscape(seed: int, n: int = 200, d: int = 6):
    """A smooth nonlinear reward over random arms: a sigmoid ridge plus a sinusoidal bump."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    f = 1 / (1 + np.exp(-2 * X @ w)) + 0.2 * np.sin(2 * X[:, 1])
    return X, f


T_NEURAL = 20


def _run_neural_ucb(seed: int, T: int = T_NEURAL, n_init: int = 5):
    X, f = _landscape(seed)
    rng = np.random.default_rng(100 + seed)
    bandit = NeuralUCB(X.shape[1], train_steps=60, lr=1e-2, nu=0.01, seed=seed)
    chosen = [int(i) for i in rng.choice(len(X), n_init, replace=False)]
    for i in chosen:
        bandit.add_observation(X[i], f[i] + 0.05 * rng.normal())
    while len(chosen) < T:
        bandit.fit()
        i = bandit.select(X, exclude=chosen)
        assert i not in chosen
        bandit.update(X[i], f[i] + 0.05 * rng.normal())
        chosen.append(i)
    return f.max() - f[chosen].max(), f.max() * T - f[chosen].sum()


def test_neural_ucb_beats_uniform_sampling():
    simple, cumulative, u_simple, u_cum = [], [], [], []
    for seed in range(3):
        s, c = _run_neural_ucb(seed)
        simple.append(s)
        cumulative.append(c)
        X, f = _landscape(seed)
        # uniform sampling without replacement, averaged over 50 draws (its expected regret)
        rng = np.random.default_rng(seed)
        draws = [rng.choice(len(X), T_NEURAL, replace=False) for _ in range(50)]
        u_simple.append(np.mean([f.max() - f[d].max() for d in draws]))
        u_cum.append(np.mean([f.max() * T_NEURAL - f[d].sum() for d in draws]))
    # the 5 random initial arms are included in NeuralUCB's regret
    assert np.mean(cumulative) < 0.8 * np.mean(u_cum), (cumulative, u_cum)
    assert np.mean(simple) < np.mean(u_simple), (simple, u_simple)


def test_neural_ucb_gradients_match_autograd_and_sigma_shrinks():
    b = NeuralUCB(4, hidden=8, hidden_layers=2, seed=3, train_steps=0)
    X = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    G = b.gradients(X)
    assert G.shape == (5, b.n_params)
    for i in range(5):
        b.net.zero_grad()
        b.net(X[i: i + 1]).sum().backward()
        ref = torch.cat([p.grad.reshape(-1) for p in b.net.parameters()])
        torch.testing.assert_close(G[i], ref)
    # sigma = sqrt(sum lam*nu*g^2/U) with U = lam at start
    mu, sig = b.ucb(X)
    expect = torch.sqrt((b.nu * G * G).sum(1)).double().numpy()
    np.testing.assert_allclose(sig, expect, rtol=1e-5)
    b.update(X[0], 1.0)  # U grows along g(x0)^2 -> x0's bonus shrinks
    _, sig2 = b.ucb(X)
    assert sig2[0] < sig[0]
    np.testing.assert_allclose(b.U.numpy(), (b.lam + G[0] ** 2).numpy(), rtol=1e-6)


def test_neural_ucb_deterministic_and_validates():
    X, f = _landscape(0, n=50)
    picks = []
    for _ in range(2):
        b = NeuralUCB(6, train_steps=30, seed=7)
        for i in range(4):
            b.add_observation(X[i], f[i])
        b.fit()
        picks.append((b.select(X), b.mean(X[:3]).tolist()))
    assert picks[0] == picks[1]
    with pytest.raises(ValueError, match="shape"):
        b.select(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="lam"):
        NeuralUCB(3, lam=0)
    with pytest.raises(ValueError, match="NaN"):
        b.mean(np.full((1, 6), np.nan))
    with pytest.raises(ValueError, match="every arm is excluded"):
        b.select(X[:2], exclude=[0, 1])


def test_neural_ucb_released_code_fit_details():
    """As in the released EASE/INSTINCT code: features z-scored on the training points (a constant dimension
    centred, not divided by ~0), Adam weight decay lam/n, and the same initial weights every round."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(6, 3, generator=gen) * torch.tensor([10.0, 0.1, 1.0]) + torch.tensor([5.0, -2.0, 0.0])
    X[:, 2] = 4.0  # a constant feature
    y = [float(v) for v in torch.rand(6, generator=gen)]
    b = NeuralUCB(3, hidden=8, hidden_layers=1, train_steps=50, lr=1e-2, seed=0)
    for x, r in zip(X, y):
        b.add_observation(x, r)
    b.fit()
    torch.testing.assert_close(b._mu, X.mean(0))
    torch.testing.assert_close(b._sd, torch.tensor([X[:, 0].std(unbiased=False), X[:, 1].std(unbiased=False), 1.0]))
    # the released code's fit, transcribed: same init, z-scored inputs, Adam(weight_decay = lam / n)
    ref = NeuralUCB(3, hidden=8, hidden_layers=1, train_steps=0, seed=0)
    net = ref.net
    Z = (X - X.mean(0)) / torch.where(X.std(0, unbiased=False) > 1e-12, X.std(0, unbiased=False), torch.ones(3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=0.1 / 6)
    yt = torch.tensor(y)
    for _ in range(50):
        opt.zero_grad()
        ((net(Z).squeeze(-1) - yt) ** 2).mean().backward()
        opt.step()
    np.testing.assert_allclose(b.mean(X[:4]), net(Z[:4]).squeeze(-1).detach().double().numpy(), rtol=1e-5, atol=1e-6)
    # every round restarts from the same weights: two fits on the same data agree exactly
    first = b.mean(X).tolist()
    b.fit()
    assert b.mean(X).tolist() == first
    fresh = NeuralUCB(3, hidden=8, hidden_layers=1, train_steps=50, lr=1e-2, seed=0, init_each_fit="fresh")
    for x, r in zip(X, y):
        fresh.add_observation(x, r)
    fresh.fit()
    a1 = fresh.mean(X).tolist()
    fresh.fit()
    assert fresh.mean(X).tolist() != a1
    normal = NeuralUCB(3, hidden=200, hidden_layers=1, train_steps=0, init="normal")
    assert 0.9 < float(normal.net[0].weight.detach().std()) < 1.1
    with pytest.raises(ValueError, match="init_each_fit"):
        NeuralUCB(3, init_each_fit="new")


# ------------------------------------------------------------------ EXP3
def test_exp3_gamma_follows_auer_cor_3_2():
    assert exp3_gamma(10, 1000) == pytest.approx(math.sqrt(10 * math.log(10) / ((math.e - 1) * 1000)))
    assert exp3_gamma(10, 1) == 1.0
    with pytest.raises(ValueError, match="gamma"):
        EXP3(5)


def test_exp3_update_is_importance_weighted():
    b = EXP3(4, gamma=0.2, seed=0)
    p = b.probabilities()
    np.testing.assert_allclose(p, 0.25)
    b.update(2, 0.5)
    w = np.ones(4)
    w[2] = math.exp(0.2 * (0.5 / 0.25) / 4)
    np.testing.assert_allclose(b.probabilities(), 0.8 * w / w.sum() + 0.2 / 4)
    assert b.probabilities().min() >= 0.2 / 4 - 1e-12
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        b.update(0, 1.5)


@pytest.mark.parametrize("adversarial", [False, True])
def test_exp3_beats_uniform(adversarial):
    K, T = 8, 3000
    means = np.linspace(0.2, 0.8, K)
    regrets = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        b = EXP3(K, horizon=T, seed=seed)
        total, best = 0.0, 0.0
        for t in range(T):
            m = means if not adversarial or t < T // 3 else means[::-1]  # best arm switches once
            rewards = (rng.random(K) < m).astype(float)
            a = b.select()
            b.update(a, rewards[a])
            total += rewards[a]
            best += m.max() if not adversarial else 0.0
        if adversarial:  # best fixed arm in hindsight
            best = max(means[i] * (T // 3) + means[::-1][i] * (T - T // 3) for i in range(K))
        regrets.append(best - total)
    uniform_regret = (T * means.max() if not adversarial else best) - T * means.mean()
    assert np.median(regrets) < 0.5 * uniform_regret, (regrets, uniform_regret)


def test_exponential_weights_concentrates_on_best_estimate():
    ew = ExponentialWeights(eta=2.0, seed=0)
    ew.add_arms(3)
    for _ in range(5):
        ew.accumulate([0.1, 0.9, 0.5])
    p = ew.probabilities()
    assert p.argmax() == 1 and p[1] > 0.95
    np.testing.assert_allclose(p, np.exp(2 * np.array([0.5, 4.5, 2.5])) / np.exp(2 * np.array([0.5, 4.5, 2.5])).sum())
    ew.add_arms(1)
    assert ew.probabilities().shape == (4,)
    with pytest.raises(ValueError, match="one estimate per arm"):
        ew.accumulate([1.0])
    draws = [ExponentialWeights(1.0, seed=5) for _ in range(2)]
    for d in draws:
        d.add_arms(4)
    assert [draws[0].select() for _ in range(10)] == [draws[1].select() for _ in range(10)]


# ------------------------------------------------------------------ Thompson sampling
def test_thompson_beats_uniform_and_updates_posterior():
    K, T = 10, 1500
    means = np.linspace(0.1, 0.7, K)
    regrets = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        ts = BetaBernoulliTS(K, seed=seed)
        total = 0.0
        for _ in range(T):
            a = ts.select()
            r = float(rng.random() < means[a])
            ts.update(a, r)
            total += means[a]
        regrets.append(T * means.max() - total)
    uniform = T * (means.max() - means.mean())
    assert np.median(regrets) < 0.2 * uniform and max(regrets) < 0.35 * uniform, (regrets, uniform)

    ts = BetaBernoulliTS(2, alpha0=2, beta0=3, binarize=False)
    ts.update(0, 1.0)
    ts.update(0, 0.25)
    np.testing.assert_allclose(ts.alpha, [3.25, 2.0])
    np.testing.assert_allclose(ts.beta, [3.75, 3.0])
    assert len(set(ts.select_batch(2))) == 2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ts.update(1, -0.1)


# -- BatchUCB (APE's bandit evaluator) -----------------------------------------------------------------
def _reference_ucb_choice(counts, totals, c, n):
    """APE's rule in words: the mean of an arm is its score total over the examples it was scored on (0 if
    none); add c times the root of ln(sum of counts, each plus 1e-3) over its count plus 1e-3; take the n
    largest, ties by numpy's argsort reversed."""
    counts, totals = np.asarray(counts, float), np.asarray(totals, float)
    mean = np.where(counts > 0, totals / np.where(counts > 0, counts, 1), 0.0)
    eps = counts + 1e-3
    return [int(i) for i in np.argsort(mean + c * np.sqrt(np.log(eps.sum()) / eps))[::-1][:n]]


def test_batch_ucb_counts_examples_and_matches_the_rule_on_a_hand_case():
    from lmopt.bandits import BatchUCB

    b = BatchUCB(3, c=1.0, seed=0)
    first = b.choose(2)
    assert len(set(first)) == 2
    b.update([0, 1], [1.0, 0.5], n_samples=5)
    assert b.counts.tolist() == [5, 5, 0] and b.means().tolist() == [1.0, 0.5, 0.0]
    # arm 2 unscored: 0 + sqrt(ln(10.003) / 0.001) = 47.99 beats arm 0's 1 + sqrt(ln(10.003) / 5.001) = 1.68
    assert b.ucb() == pytest.approx([1 + (np.log(10.003) / 5.001) ** 0.5, 0.5 + (np.log(10.003) / 5.001) ** 0.5,
                                     (np.log(10.003) / 0.001) ** 0.5])
    assert b.choose(2) == [2, 0]
    b.update([2], [0.9], n_samples=5)
    assert b.choose(1) == [0] and b.best() == 0


def test_batch_ucb_follows_apes_rule_for_thirty_rounds():
    from lmopt.bandits import BatchUCB

    rng = np.random.default_rng(1)
    true = rng.uniform(size=37)
    b = BatchUCB(37, c=1.0, seed=3)
    counts, totals = np.zeros(37), np.zeros(37)
    for r in range(30):
        arms = b.choose(8)
        if r:
            assert arms == _reference_ucb_choice(counts, totals, 1.0, 8)
        scores = [rng.binomial(5, true[i]) / 5 for i in arms]
        b.update(arms, scores, 5)
        for i, s in zip(arms, scores):
            counts[i] += 5
            totals[i] += 5 * s
    assert b.counts.tolist() == counts.tolist() and b.means() == pytest.approx(totals / np.maximum(counts, 1))
    assert true[b.best()] > np.median(true)  # the bandit's pick is a good arm


def test_batch_ucb_rejects_bad_input():
    from lmopt.bandits import BatchUCB

    with pytest.raises(ValueError, match="n_arms"):
        BatchUCB(0)
    b = BatchUCB(2)
    with pytest.raises(ValueError, match="2 arms but 1 scores"):
        b.update([0, 1], [0.5], 3)
    with pytest.raises(IndexError, match="out of range"):
        b.update([2], [0.5], 3)
