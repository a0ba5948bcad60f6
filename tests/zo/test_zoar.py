"""ZoAR: its rule transcribed independently on a moving point, the leave-one-out baseline's unbiasedness, and
the variance reduction of baseline + reuse against two-point ZO-SGD at equal queries per step."""

import pytest
import torch

from lmopt.zo import ZoAR, ZOEstimator
from lmopt.zo.directions import DirectionSampler, mix_seed

D = 20
A = torch.linspace(0.5, 2.0, D, dtype=torch.float64)
X = torch.linspace(-1.0, 1.0, D, dtype=torch.float64)
GRAD = A * X


def f(x):
    return float(0.5 * (A * x * x).sum())


def _hand_zoar(x0, steps, lr, mu, q, history, seed):
    """ZoAR in plain words: each step query f(x + mu z) for q fresh seeded Gaussian directions; pool them
    with the (seed, value) pairs of the last `history` steps (taken at older x); give each pair the mean of
    the other pooled values as its baseline; step x <- x - lr * 1/M sum (y - b)/mu * z."""
    sampler = DirectionSampler("gaussian")
    x = x0.clone()
    kept: list[list[tuple[int, float]]] = []
    path = []
    for t in range(steps):
        fresh = []
        for j in range(q):
            s = mix_seed(seed, t, j)
            z = sampler.full(s, 0, x.shape, x.device).double()
            fresh.append((s, f(x + mu * z)))
        pool = fresh + [pair for past in kept for pair in past]
        total = sum(y for _, y in pool)
        g = torch.zeros_like(x)
        for s, y in pool:
            b = (total - y) / (len(pool) - 1)
            g += (y - b) / mu * sampler.full(s, 0, x.shape, x.device).double()
        x = x - lr * g / len(pool)
        kept = ([fresh] + kept)[:history]
        path.append(x.clone())
    return path


def test_zoar_follows_the_transcribed_rule_on_a_moving_point():
    x = torch.nn.Parameter(torch.full((D,), 0.7, dtype=torch.float64))
    opt = ZoAR([x], lr=0.002, mu=1e-2, q=2, history=3, seed=5)
    expected = _hand_zoar(x.detach(), 30, lr=0.002, mu=1e-2, q=2, history=3, seed=5)
    start = f(x.detach())
    for t in range(30):
        opt.step(lambda: f(x.detach()))
        torch.testing.assert_close(x.detach(), expected[t], rtol=1e-10, atol=1e-12)
    assert opt.last_step["directions_in_estimate"] == 8  # 2 fresh + 3 kept steps of 2: stale queries used
    assert f(x.detach()) < 0.95 * start  # the point moved (downhill), so reused values were stale


def test_leave_one_out_coefficients():
    est = ZOEstimator(mu=1e-2, q=3, difference="one-sided", baseline="average", history=2, reuse=True, seed=1)
    x = X.clone()
    for t in range(4):
        kept = est.state_dict()["buffer"]
        e = est.estimate(lambda x=x: f(x), [(0, x)], step=t)
        x = x - 0.05 * est.materialize(e, [(0, x)])[0]
    fresh = [(est.direction_seed(3, j), v) for j, v in enumerate(e.values)]
    pool = fresh + [(s, v) for step in kept for s, v, _ in step]
    seeds = [s for s, _ in pool]
    values = [v for _, v in pool]
    assert sorted(e.seeds) == sorted(seeds) and len(seeds) == 9  # 3 fresh + 2 kept steps of 3
    for s, c in zip(e.seeds, e.coefs):
        y = values[seeds.index(s)]
        loo = (sum(values) - y) / (len(values) - 1)
        assert c == pytest.approx((y - loo) / 1e-2 / len(values), rel=1e-12)


def test_average_baseline_is_unbiased_at_a_fixed_point():
    # M = 2 pooled values: a baseline including the own value would halve the estimate on average
    est = ZOEstimator(mu=1e-3, q=2, difference="one-sided", baseline="average", seed=3)
    total = torch.zeros(D, dtype=torch.float64)
    n = 3000
    for t in range(n):
        e = est.estimate(lambda: f(X), [(0, X)], step=t)
        total += est.materialize(e, [(0, X)])[0]
    ratio = float(total @ GRAD) / n / float(GRAD @ GRAD)
    assert 0.85 < ratio < 1.15, ratio


def test_average_baseline_needs_two_queries():
    with pytest.raises(ValueError, match="q >= 2"):
        ZOEstimator(mu=1e-2, q=1, difference="one-sided", baseline="average", history=4)


def _mse(est, steps=800, warmup=10):
    errs = []
    for t in range(steps):
        e = est.estimate(lambda: f(X), [(0, X)], step=t)
        if t >= warmup:
            g = est.materialize(e, [(0, X)])[0]
            errs.append(float(((g - GRAD) ** 2).sum()))
    return sum(errs) / len(errs), e.queries


def test_zoar_lower_variance_than_two_point_at_equal_queries():
    two_point, q_two = _mse(ZOEstimator(mu=1e-2, q=1, difference="two-sided", seed=0))
    zoar, q_zoar = _mse(ZOEstimator(mu=1e-2, q=2, difference="one-sided", baseline="average", history=4,
                                    reuse=True, seed=0))
    baseline_only, _ = _mse(ZOEstimator(mu=1e-2, q=2, difference="one-sided", baseline="average", history=4,
                                        reuse=False, seed=0))
    assert q_two == q_zoar == 2
    # theory for the two-point Gaussian estimator: E||g - grad||^2 = (d + 1) ||grad||^2
    expected = (D + 1) * float((GRAD**2).sum())
    assert 0.8 * expected < two_point < 1.2 * expected
    assert zoar < 0.5 * two_point, (zoar, two_point)
    # reuse is what buys most of the reduction: the averaged baseline alone with 2 fresh queries does not
    assert zoar < 0.5 * baseline_only
