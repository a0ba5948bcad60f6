"""Counter-based directions (Rademacher, counter Gaussian) and the fused two-pass ZO step."""

import pytest
import torch

from lmopt.zo import ZOSGD, DirectionSampler, ZOEstimator, perturb_, restore_

CPU = torch.device("cpu")


@pytest.mark.parametrize("kind", ["rademacher", "gaussian-counter"])
def test_counter_directions_are_seeded_and_chunk_size_free(kind):
    a = DirectionSampler(kind, chunk_size=1000).full(7, 2, (5000,), CPU)
    b = DirectionSampler(kind, chunk_size=333).full(7, 2, (5000,), CPU)
    if kind == "rademacher":
        assert torch.equal(a, b)  # exact integers: the chunking does not matter
        assert set(a.unique().tolist()) == {-1.0, 1.0}
    else:  # vector and scalar loops may round log/cos differently in the last bit
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    other_seed = DirectionSampler(kind).full(8, 2, (5000,), CPU)
    other_tensor = DirectionSampler(kind).full(7, 3, (5000,), CPU)
    for other in (other_seed, other_tensor):  # unrelated streams: correlation ~ 1/sqrt(n)
        assert abs(float((a * other).mean())) < 0.06


def test_counter_gaussian_moments():
    z = DirectionSampler("gaussian-counter").full(1, 0, (200_000,), CPU).double()
    assert abs(float(z.mean())) < 0.01
    assert float(z.var()) == pytest.approx(1.0, abs=0.02)
    assert float((z**4).mean()) == pytest.approx(3.0, abs=0.1)  # Gaussian kurtosis, not Rademacher's 1


@pytest.mark.parametrize("kind", ["rademacher", "gaussian-counter"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_restore_with_counter_directions(kind, dtype):
    x = (torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    before = x.clone()
    sampler = DirectionSampler(kind, chunk_size=3000)
    for seed in range(5):
        log = perturb_([(0, x)], seed, 1e-3, sampler, exact=True)
        assert not torch.equal(x, before)
        restore_([(0, x)], seed, 1e-3, sampler, log)
        assert torch.equal(x, before)


def test_rademacher_estimator_is_unbiased_on_a_quadratic():
    a = torch.linspace(0.5, 2.0, 12, dtype=torch.float64)
    x = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64)
    est = ZOEstimator(mu=1e-3, q=1, directions="rademacher", seed=2)
    total = torch.zeros_like(x)
    for t in range(2000):
        e = est.estimate(lambda: float(0.5 * (a * x * x).sum()), [(0, x)], step=t)
        total += est.materialize(e, [(0, x)])[0]
    torch.testing.assert_close(total / 2000, a * x, rtol=0, atol=0.15)


def test_fused_step_generates_each_chunk_three_times_and_matches_the_unfused_step(monkeypatch):
    """Two-sided ZO-SGD with q=1: +mu z, then (restore + perturb -mu z) in one pass, then (restore + update)
    in one pass: 3 generations of each chunk of z instead of 5, with the same result bit for bit."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.Tanh(), torch.nn.Linear(20, 1))
    data = torch.randn(16, 30)
    ref = [p.detach().clone() for p in model.parameters()]

    def closure_for(params):
        def closure():
            h = torch.tanh(data @ params[0].T + params[1])
            return (h @ params[2].T + params[3]).pow(2).mean()
        return closure

    fused = [torch.nn.Parameter(p.clone()) for p in ref]
    opt = ZOSGD(fused, lr=0.05, mu=1e-2, chunk_size=256, seed=4)
    calls = []
    real = DirectionSampler.chunk_into

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DirectionSampler, "chunk_into", counting)
    opt.step(closure_for(fused))
    n_chunks = sum(-(-p.numel() // 256) for p in fused)
    assert len(calls) == 3 * n_chunks
    monkeypatch.setattr(DirectionSampler, "chunk_into", real)
    for _ in range(9):
        opt.step(closure_for(fused))
    plain = [torch.nn.Parameter(p.clone()) for p in ref]
    opt2 = ZOSGD(plain, lr=0.05, mu=1e-2, chunk_size=256, seed=4)
    for _ in range(10):  # the unfused sequence: estimate with everything restored, then the update
        est = opt2.estimator.estimate(closure_for(plain), opt2._indexed(), opt2.zo_step)
        opt2.apply_estimate(est)
    for a, b in zip(fused, plain):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, r) for a, r in zip(fused, ref))
