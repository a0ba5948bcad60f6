"""ZoAR's averaged baseline + query reuse lowers the estimator's variance at equal queries per step."""

import torch

from lmopt.zo import ZOEstimator

D = 20
A = torch.linspace(0.5, 2.0, D, dtype=torch.float64)
X = torch.linspace(-1.0, 1.0, D, dtype=torch.float64)
GRAD = A * X


def f(x):
    return float(0.5 * (A * x * x).sum())


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
