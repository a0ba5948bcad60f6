"""Unbiasedness of the estimator core: the mean over many seeds matches grad F_mu."""

import math

import pytest
import torch

from lmopt.zo import ZOEstimator


def _mean_and_se(est_kwargs, f, x, n):
    est = ZOEstimator(**est_kwargs)
    gs = []
    for t in range(n):
        e = est.estimate(lambda: f(x), [(0, x)], step=t)
        gs.append(est.materialize(e, [(0, x)])[0].double())
    g = torch.stack(gs)
    return g.mean(0), g.std(0) / math.sqrt(n), e


A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64))
B = torch.tensor([0.5, -1.0, 0.0, 2.0, 1.0, -0.5], dtype=torch.float64)
X0 = torch.tensor([1.0, -0.5, 0.3, 0.2, -1.0, 0.7], dtype=torch.float64)


def quad(x):
    return float(0.5 * x @ A @ x + B @ x)


@pytest.mark.parametrize("kwargs", [
    {"difference": "two-sided", "directions": "gaussian"},
    {"difference": "one-sided", "baseline": "f", "directions": "gaussian"},
    {"difference": "two-sided", "directions": "sphere"},
    {"difference": "one-sided", "baseline": "f", "directions": "sphere", "q": 2},
])
def test_unbiased_on_quadratic(kwargs):
    x = X0.clone()
    grad = A @ x + B
    mean, se, _ = _mean_and_se({"mu": 0.1, **kwargs}, quad, x, 2000)
    assert torch.all((mean - grad).abs() <= 5 * se + 1e-9), (mean, grad, se)
    assert torch.equal(x, X0)  # the point itself was never changed


def test_matches_smoothed_gradient_not_plain_gradient():
    """f = sum sin(x_i): grad F_mu = cos(x) exp(-mu^2/2); the estimator targets F_mu (Stein's identity)."""
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    mu = 1.0
    mean, se, _ = _mean_and_se({"mu": mu, "difference": "two-sided"}, lambda v: float(torch.sin(v).sum()), x,
                               4000)
    smoothed = torch.cos(x) * math.exp(-mu * mu / 2)
    assert torch.all((mean - smoothed).abs() <= 5 * se)
    assert torch.any((mean - torch.cos(x)).abs() > 5 * se)


def test_queries_per_step():
    x = torch.ones(4, dtype=torch.float64)
    cases = [({"q": 3, "difference": "two-sided"}, 6),
             ({"q": 3, "difference": "one-sided", "baseline": "f"}, 4),
             ({"q": 3, "difference": "one-sided", "baseline": "average", "history": 2}, 3)]
    for kwargs, n in cases:
        calls: list[int] = []

        def closure(calls=calls):
            calls.append(1)
            return float(x.sum())

        est = ZOEstimator(mu=1e-2, **kwargs)
        e = est.estimate(closure, [(0, x)], step=0)
        assert e.queries == n == len(calls) == est.queries_per_step()


def test_reuse_buffer_is_seed_space_and_bounded():
    x = torch.ones(50, dtype=torch.float64)
    est = ZOEstimator(mu=1e-2, q=2, difference="one-sided", baseline="average", history=3, reuse=True)
    sizes = []
    for t in range(6):
        e = est.estimate(lambda: float((x**2).sum()), [(0, x)], step=t)
        sizes.append(len(e.seeds))
    assert sizes == [2, 4, 6, 8, 8, 8]  # fresh q=2 plus up to 3 past steps of 2
    buf = est.state_dict()["buffer"]
    assert len(buf) == 3
    assert all(isinstance(s, int) and isinstance(v, float) for step in buf for s, v, _ in step)
