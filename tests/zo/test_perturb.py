"""Directions from seeds, chunked in-place perturbation and bit-exact restore."""

import pytest
import torch

from lmopt.zo import DirectionSampler, ZOEstimator, mix_seed, perturb_, restore_


def _mlp(dtype):
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.to(dtype)


def test_seed_determinism_and_chunk_independence():
    s = DirectionSampler("gaussian", chunk_size=7)
    a = s.full(123, 4, (5, 6), torch.device("cpu"))
    b = s.full(123, 4, (5, 6), torch.device("cpu"))
    assert torch.equal(a, b)
    assert not torch.equal(a, s.full(124, 4, (5, 6), torch.device("cpu")))
    assert not torch.equal(a, s.full(123, 5, (5, 6), torch.device("cpu")))
    # each chunk can be regenerated alone, in any order
    flat = a.view(-1)
    assert torch.equal(s.chunk(123, 4, 2, 7, torch.device("cpu")), flat[14:21])
    assert mix_seed(1, 2) != mix_seed(2, 1)


def test_global_rng_untouched():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    x = torch.ones(100)
    est = ZOEstimator(mu=1e-2, q=3)
    est.estimate(lambda: float((x**2).sum()), [(0, x)], step=0)
    assert torch.equal(torch.rand(3), expected)


def test_sphere_norm_spans_all_tensors():
    s = DirectionSampler("sphere", chunk_size=5)
    ts = [(0, torch.zeros(7)), (1, torch.zeros(3, 4))]
    cpu = torch.device("cpu")
    z = torch.cat([s.full(9, 0, (7,), cpu), s.full(9, 1, (3, 4), cpu).view(-1)])
    assert s.norm(9, ts) == pytest.approx(float(z.norm()), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_exact_restore_module(dtype):
    model = _mlp(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    tensors = list(enumerate(model.parameters()))
    sampler = DirectionSampler("gaussian", chunk_size=100)
    for seed in range(20):
        for scale in (1e-3, -1e-3, 3e-2):
            log = perturb_(tensors, seed, scale, sampler, exact=True)
            assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
            restore_(tensors, seed, scale, sampler, log)
    for p, b in zip(model.parameters(), before):
        assert p.dtype == dtype
        assert torch.equal(p, b), "exact restore must give back the same bits"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mezo_sequence_drifts_but_exact_does_not(dtype):
    """MeZO's +eps, -2eps, +eps leaves the weights changed in low precision (the bug fixed by 'exact')."""
    model = _mlp(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    tensors = list(enumerate(model.parameters()))
    sampler = DirectionSampler("gaussian")
    for seed in range(5):
        perturb_(tensors, seed, 1e-3, sampler, exact=False)
        perturb_(tensors, seed, -2e-3, sampler, exact=False)
        perturb_(tensors, seed, 1e-3, sampler, exact=False)
    drifted = sum(int((p != b).sum()) for p, b in zip(model.parameters(), before))
    assert drifted > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_optimizer_with_zero_lr_leaves_weights_bit_identical(dtype):
    from lmopt.zo import ZOSGD, ZoAR

    model = _mlp(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    for cls in (ZOSGD, ZoAR):
        opt = cls(model.parameters(), lr=0.0, mu=1e-2)
        for _ in range(5):
            opt.step(lambda: model(x).float().pow(2).mean())
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_restore_log_is_small_in_fp32():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 0.02
    log = perturb_([(0, x)], 3, 1e-3, DirectionSampler(), exact=True)
    assert log is not None and log.numel < 0.2 * x.numel()
