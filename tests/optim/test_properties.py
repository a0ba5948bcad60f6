"""Properties from the papers and convergence from a fixed start."""

import math

import pytest
import torch

from lmopt.optim import APOLLO, SOAP, AdaBelief, APOLLOMini, EXAdam, Lion, LionK, Muon


def _cosine(opt, base_lrs, t, total):
    for g, lr in zip(opt.param_groups, base_lrs):
        g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * t / total))


def _rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


@pytest.mark.parametrize("cls,kw,steps", [
    (Lion, dict(lr=3e-3), 2000),
    (LionK, dict(lr=3e-3, kernel="huber", huber_delta=1e-2), 3000),
    (AdaBelief, dict(lr=3e-2, rectify=False, eps=1e-12), 3000),
    (EXAdam, dict(lr=3e-2), 3000),
    (SOAP, dict(lr=5e-2, weight_decay=0.0, precondition_1d=True), 1500),
])
def test_reaches_rosenbrock_minimum(cls, kw, steps):
    x = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=torch.float64))
    opt = cls([x], impl="reference", **kw)
    base = [g["lr"] for g in opt.param_groups]
    for t in range(steps):
        _cosine(opt, base, t, steps)
        opt.zero_grad()
        _rosenbrock(x).backward()
        opt.step()
    assert torch.allclose(x.detach(), torch.ones(2, dtype=torch.float64), atol=3e-2), x.detach()


@pytest.mark.parametrize("cls,kw", [
    (Muon, dict(lr=0.05, ns_dtype=torch.float32)),
    (APOLLO, dict(lr=0.05, rank=4, update_proj_gap=20)),
    (APOLLOMini, dict(lr=0.01, update_proj_gap=20)),
    (SOAP, dict(lr=0.1, weight_decay=0.0)),
    (Lion, dict(lr=0.05)),
    (AdaBelief, dict(lr=0.05)),  # official defaults: rectified, SGD steps while N_sma < 5
])
def test_reaches_matrix_quadratic_minimum(cls, kw):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(12, 16, generator=gen)
    scales = torch.linspace(0.5, 2.0, 16)
    w = torch.nn.Parameter(torch.zeros(12, 16))
    opt = cls([w], impl="reference", **kw)
    base = [g["lr"] for g in opt.param_groups]
    steps = 400
    for t in range(steps):
        _cosine(opt, base, t, steps)
        opt.zero_grad()
        (0.5 * ((w - target) ** 2 * scales).sum()).backward()
        opt.step()
    err = float((w.detach() - target).norm() / target.norm())
    assert err < 0.02, err


def test_lionk_box_constraint_linf_to_inverse_wd():
    # min ½‖x − a‖² with |a_i| > 1/λ for some i: Lion-𝒦 with wd λ solves it subject to ‖x‖∞ ≤ 1/λ
    lam = 2.0
    a = torch.tensor([3.0, -4.0, 0.2, -0.1, 10.0])
    for kernel in ("l1", "huber"):
        x = torch.nn.Parameter(torch.zeros(5))
        opt = LionK([x], lr=0.01, weight_decay=lam, kernel=kernel, impl="reference")
        base = [0.01]
        for t in range(2000):
            _cosine(opt, base, t, 2000)
            opt.zero_grad()
            (0.5 * ((x - a) ** 2).sum()).backward()
            opt.step()
        xs = x.detach()
        assert float(xs.abs().max()) == pytest.approx(1 / lam, abs=0.02), (kernel, xs)
        torch.testing.assert_close(xs[[0, 1, 4]], torch.tensor([0.5, -0.5, 0.5]), atol=0.02, rtol=0)
        torch.testing.assert_close(xs[[2, 3]], a[[2, 3]], atol=0.03, rtol=0)


def test_apollo_state_is_low_rank():
    wide = torch.nn.Parameter(torch.randn(32, 64))
    tall = torch.nn.Parameter(torch.randn(64, 32))
    bias = torch.nn.Parameter(torch.randn(64))
    opt = APOLLO([dict(params=[wide, tall], rank=8), dict(params=[bias], apollo=False)], impl="reference")
    mini = APOLLOMini([wide2 := torch.nn.Parameter(torch.randn(32, 64))], impl="reference")
    for p in (wide, tall, bias, wide2):
        p.grad = torch.randn_like(p)
    opt.step()
    mini.step()
    assert opt.state[wide]["exp_avg"].shape == (8, 64) and opt.state[wide]["exp_avg_sq"].shape == (8, 64)
    assert opt.state[tall]["exp_avg"].shape == (64, 8)
    assert mini.state[wide2]["exp_avg"].shape == (1, 64)
    assert opt.state[bias]["exp_avg"].shape == (64,)
    for st in (opt.state[wide], opt.state[tall], mini.state[wide2]):
        assert st["proj_seed"].dtype == torch.int64 and st["proj_seed"].numel() == 1
        assert all(isinstance(v, torch.Tensor) for v in st.values())
    bytes_mini = sum(v.numel() * v.element_size() for k, v in mini.state[wide2].items() if k != "step")
    assert bytes_mini / wide2.numel() < 0.3  # (2·64·4 + 4 + 8) / 2048


def test_apollo_projection_regenerated_from_seed_every_gap():
    w = torch.nn.Parameter(torch.randn(8, 16))
    opt = APOLLO([w], rank=2, update_proj_gap=3, impl="reference")
    seen = []
    for _ in range(7):
        w.grad = torch.randn_like(w)
        opt.step()
        seen.append(opt._proj_cache[w][2].clone())
    assert torch.equal(seen[0], seen[2]) and not torch.equal(seen[2], seen[3])
    assert torch.equal(seen[3], seen[5]) and not torch.equal(seen[5], seen[6])
    st = opt.state[w]
    again = opt.projection(w, int(st["proj_seed"]) * 7919 + 2, 2, left=True)
    assert torch.equal(again, seen[6])
    assert seen[0].shape == (8, 2)
    assert float(seen[0].var()) == pytest.approx(1 / 2, rel=0.6)  # N(0, 1/r)


def test_apollo_norm_growth_limiter_caps_growth():
    w = torch.nn.Parameter(torch.zeros(8, 16))
    opt = APOLLO([w], lr=1.0, rank=2, impl="reference", norm_growth_limit=1.01)
    w.grad = torch.ones(8, 16) * 1e-3
    opt.step()
    n1 = float(opt.state[w]["grad_norm"])
    w.grad = torch.ones(8, 16) * 1e3  # a 10⁶× larger gradient
    opt.step()
    n2 = float(opt.state[w]["grad_norm"])
    assert n2 == pytest.approx(1.01 * n1, rel=1e-4)


def test_muon_does_not_touch_grad_and_orthogonalises():
    w = torch.nn.Parameter(torch.zeros(16, 8))
    opt = Muon([w], lr=1.0, momentum=0.0, nesterov=False, ns_dtype=torch.float32, adjust_lr="none")
    g = torch.randn(16, 8)
    w.grad = g.clone()
    opt.step()
    assert torch.equal(w.grad, g)
    sv = torch.linalg.svdvals(w.detach())
    assert 0.6 <= float(sv.min()) and float(sv.max()) <= 1.2


def test_adabelief_eps_in_state_flag_changes_state():
    p0 = torch.randn(5)
    out = {}
    for flag in (True, False):
        p = torch.nn.Parameter(p0.clone())
        opt = AdaBelief([p], eps=1e-3, eps_in_state=flag, impl="reference")
        p.grad = torch.ones(5)
        opt.step()
        out[flag] = opt.state[p]["exp_avg_var"].clone()
    torch.testing.assert_close(out[True] - out[False], torch.full((5,), 1e-3))
