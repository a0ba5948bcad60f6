"""Hand-computed steps against the papers' / official formulas (independent float64 arithmetic)."""

import math

import pytest
import torch

from lmopt.optim import SOAP, AdaBelief, EXAdam, Lion, LionK, Muon, newton_schulz

G = torch.tensor([[0.5, -2.0, 0.0], [1e-3, 3.0, -0.25]], dtype=torch.float64)
P0 = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -3.0]], dtype=torch.float64)


def _one_step(cls, p0, g, **kw):
    p = torch.nn.Parameter(p0.clone())
    opt = cls([p], impl="reference", **kw)
    p.grad = g.clone()
    opt.step()
    return p.detach(), opt.state[p]


def test_lion_first_two_steps():
    lr, wd, b1, b2 = 0.1, 0.5, 0.9, 0.99
    p = torch.nn.Parameter(P0.clone())
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd, impl="reference")
    g2 = torch.tensor([[-1.0, 1.0, 2.0], [0.5, -0.5, 0.0]], dtype=torch.float64)
    exp = P0.clone()
    m = torch.zeros_like(P0)
    for g in (G, g2):
        p.grad = g.clone()
        opt.step()
        c = b1 * m + (1 - b1) * g
        exp = exp * (1 - lr * wd) - lr * torch.sign(c)
        m = b2 * m + (1 - b2) * g
    torch.testing.assert_close(p.detach(), exp)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m)
    assert float(p.detach()[0, 2]) == pytest.approx(0.5 * (1 - lr * wd) ** 2 - lr * 1.0)  # sign(0)=0 on step 1


def test_adabelief_first_step_official_non_rectified():
    # Official 0.2.1: s = 0.001·(0.9 g)² + ε; denom = √s/√0.001 + ε → update = lr/0.1 · 0.1g/(0.9|g|) ≈ lr/0.9
    lr, eps = 1e-2, 1e-16
    p, st = _one_step(AdaBelief, P0, G, lr=lr, eps=eps, rectify=False)
    s = 0.001 * (0.9 * G) ** 2 + eps
    denom = s.sqrt() / math.sqrt(0.001) + eps
    exp = P0 - lr / 0.1 * (0.1 * G) / denom
    torch.testing.assert_close(p, exp)
    torch.testing.assert_close(st["exp_avg_var"], s)
    big = G.abs() > 0.1
    torch.testing.assert_close((P0 - p)[big].abs(), torch.full_like(p[big], lr / 0.9))


def test_adabelief_rectified_early_steps_are_sgd_then_adaptive():
    lr = 1e-2
    p, _ = _one_step(AdaBelief, P0, G, lr=lr)  # N_sma(1) = 1 < 5 → p − lr/(1−β1)·m = p − lr·g
    torch.testing.assert_close(p, P0 - lr * G)
    p2, _ = _one_step(AdaBelief, P0, G, lr=lr, degenerated_to_sgd=False)
    torch.testing.assert_close(p2, P0)
    # step 7 is past N_sma ≥ 5 with β2 = 0.999: coefficients from the RAdam formula
    _, adapt, sgd = AdaBelief.coefficients(7, dict(lr=lr, betas=(0.9, 0.999), rectify=True,
                                                   degenerated_to_sgd=True))
    rho = 2 / 0.001 - 1
    n = rho - 2 * 7 * 0.999**7 / (1 - 0.999**7)
    assert n >= 5 and sgd == 0.0
    r = math.sqrt((1 - 0.999**7) * (n - 4) / (rho - 4) * (n - 2) / n * rho / (rho - 2))
    assert adapt == pytest.approx(lr * r / (1 - 0.9**7))


def _adabelief_amsgrad_rectified_by_hand(grads, lr, b1, b2, eps, use_max):
    """AdaBelief with amsgrad and rectification in float64: m, s (ε added into s), smax = max(smax, s);
    past N_sma ≥ 5 the step is lr·r_t·√(1−β2ᵗ)/(1−β1ᵗ)·m/(√d + ε) with d the running max (lmopt) or the
    current s (official); before it an SGD step lr/(1−β1ᵗ)·m."""
    p = P0.clone()
    m = torch.zeros_like(p)
    s = torch.zeros_like(p)
    smax = torch.zeros_like(p)
    rho = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        smax = torch.maximum(smax, s)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        n = rho - 2 * t * b2**t / bc2
        if n >= 5:
            r = math.sqrt(bc2 * (n - 4) / (rho - 4) * (n - 2) / n * rho / (rho - 2))
            d = smax if use_max else s
            p = p - lr * r / bc1 * m / (d.sqrt() + eps)
        else:
            p = p - lr / bc1 * m
    return p


@pytest.mark.parametrize("official", [False, True])
def test_adabelief_amsgrad_with_rectify(official):
    gen = torch.Generator().manual_seed(1)
    # large early gradients then small ones: the running max stays above the current s
    grads = [G * (3.0 if t < 4 else 0.2) + 0.1 * torch.randn(G.shape, generator=gen, dtype=torch.float64)
             for t in range(12)]
    lr, b1, b2, eps = 1e-2, 0.9, 0.7, 1e-8  # β2 = 0.7: ρ∞ = 5.67, so N_sma ≥ 5 after a few steps
    p = torch.nn.Parameter(P0.clone())
    opt = AdaBelief([p], lr=lr, betas=(b1, b2), eps=eps, amsgrad=True, amsgrad_in_rectified=not official,
                    impl="reference")
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _adabelief_amsgrad_rectified_by_hand(grads, lr, b1, b2, eps, use_max=not official)
    other = _adabelief_amsgrad_rectified_by_hand(grads, lr, b1, b2, eps, use_max=official)
    torch.testing.assert_close(p.detach(), expected)
    assert float((expected - other).abs().max()) > 1e-3  # the two behaviours differ on this input


def test_exadam_first_step():
    lr, eps, b1, b2 = 1e-3, 1e-8, 0.9, 0.999
    p, _ = _one_step(EXAdam, P0, G, lr=lr, weight_decay=0.1)
    m, v = (1 - b1) * G, (1 - b2) * G * G
    d1 = 1 + b2 * v / (v + eps)
    d2 = 1 + b1 * m * m / (m * m + eps)
    upd = (d1 * m / (1 - b1) + d1 * G / (1 - b1)) / ((d2 * v / (1 - b2)).sqrt() + eps)
    torch.testing.assert_close(p, P0 * (1 - lr * 0.1) - lr * upd)
    # for |g| ≫ √ε: (1.999 + 19.99)/√1.9 ≈ 15.95 × lr
    assert float((P0 * (1 - lr * 0.1) - p)[1, 1]) == pytest.approx(lr * (1.999 + 19.99) / math.sqrt(1.9), rel=1e-4)


def _ns_float64(x, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315
    t = x.shape[0] > x.shape[1]
    x = x.T if t else x
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if t else x


def test_muon_step_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    lr, beta, wd = 0.02, 0.95, 0.1
    p, st = _one_step(Muon, w0, g, lr=lr, momentum=beta, weight_decay=wd, ns_dtype=torch.float64)
    m = (1 - beta) * g
    u = g + beta * (m - g)  # lerp(g, m, β)
    exp = w0 * (1 - lr * wd) - lr * math.sqrt(6 / 4) * _ns_float64(u)
    torch.testing.assert_close(p, exp)
    torch.testing.assert_close(st["momentum_buffer"], m)


@pytest.mark.parametrize("shape", [(3, 8, 4), (8, 3, 3, 2)])
@pytest.mark.parametrize("nd_weights", ["flatten", "official"])
def test_muon_nd_weights(shape, nd_weights):
    """flatten: one (rows, rest) matrix scaled by √max(1, rows/rest). official (Keller Jordan's code): a 4-D
    weight is flattened for Newton–Schulz but scaled by its last two dims; a 3-D weight is a batch of
    matrices, each orthogonalised and scaled by its own shape."""
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    lr, beta = 0.02, 0.95
    p, _ = _one_step(Muon, w0, g, lr=lr, momentum=beta, ns_dtype=torch.float64, nd_weights=nd_weights)
    u = g + beta * ((1 - beta) * g - g)
    if nd_weights == "official" and len(shape) == 3:
        o = torch.stack([_ns_float64(m) for m in u])
    else:
        o = _ns_float64(u.reshape(shape[0], -1)).reshape(shape)
    rows, cols = (shape[-2], shape[-1]) if nd_weights == "official" else (shape[0], math.prod(shape[1:]))
    exp = w0 - lr * math.sqrt(max(1.0, rows / cols)) * o
    torch.testing.assert_close(p, exp)


def test_newton_schulz_singular_values_in_band():
    gen = torch.Generator().manual_seed(0)
    for shape in [(64, 32), (32, 64), (48, 48), (256, 128)]:
        x = torch.randn(*shape, generator=gen)  # gradient-like (Gaussian) matrices
        sv = torch.linalg.svdvals(newton_schulz(x).float())
        assert 0.6 <= float(sv.min()) and float(sv.max()) <= 1.2, (shape, sv.min(), sv.max())


def test_soap_with_max_precond_dim_1_is_adam_after_first_step():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(5, 7, generator=gen)
    w0 = torch.randn(5, 7, generator=gen)
    ws, wa = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    soap = SOAP([ws], lr=1e-2, max_precond_dim=1, weight_decay=0.0, impl="reference")
    adam = torch.optim.Adam([wa], lr=1e-2, betas=(0.95, 0.95), eps=1e-8, foreach=False)

    def grad(w):
        return 2 * (w.detach() - target) * torch.arange(1, 8)

    ws.grad = grad(ws)
    soap.step()  # first step: preconditioner only
    torch.testing.assert_close(ws.detach(), w0, rtol=0, atol=0)
    for _ in range(10):
        ws.grad, wa.grad = grad(ws), grad(wa)
        soap.step()
        adam.step()
        torch.testing.assert_close(ws.detach(), wa.detach(), rtol=1e-5, atol=1e-6)
    assert float(soap.state[ws]["step"]) == 10.0


def test_soap_rotation_is_used_and_differs_from_adam():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 7, generator=gen)
    g = torch.randn(5, 7, generator=gen)
    p, st = _one_step(SOAP, w0, g, skip_first_step=False, weight_decay=0.0)
    # with the eigenbasis of the single gradient, G' = Q_LᵀGQ_R is diagonal: only min(m, n) moments are non-zero
    assert int((st["exp_avg"].abs() > 1e-6).sum()) == 5
    assert set(k for k in st if k.startswith("Q")) == {"Q0", "Q1"}


def test_lionk_l2_kernel_moves_by_lr_in_l2_norm():
    lr = 0.1
    p, _ = _one_step(LionK, P0, G, lr=lr, kernel="l2")
    assert float((p - P0).norm()) == pytest.approx(lr, rel=1e-6)


@pytest.mark.parametrize("mini", [False, True])
def test_apollo_two_steps_by_hand(mini):
    """W ← (W − η·√(1−β2ᵗ)/(1−β1ᵗ)·√α·G·s)(1−ηλ) with s = ‖M/(√V+ε)‖/‖R‖ per channel (APOLLO) or per tensor
    (APOLLO-Mini), R the rank-r projection of G on the short side (here the 6 rows: R = PᵀG)."""
    from lmopt.optim import APOLLO, APOLLOMini

    gen = torch.Generator().manual_seed(4)
    w0 = torch.randn(6, 10, generator=gen)
    grads = [torch.randn(6, 10, generator=gen) for _ in range(2)]
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-6, 0.1
    w = torch.nn.Parameter(w0.clone())
    kw = dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, norm_growth_limit=None, impl="reference")
    opt = APOLLOMini([w], **kw) if mini else APOLLO([w], rank=2, **kw)
    alpha = 128.0 if mini else 1.0
    ref = w0.clone()
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        p = opt._proj_cache[w][2]  # (6, r): the projection drawn from the stored seed
        r = p.T @ g
        m = b1 * m + (1 - b1) * r
        v = b2 * v + (1 - b2) * r * r
        rt = m / (v.sqrt() + eps)
        if mini:
            s = rt.norm() / (r.norm() + 1e-8)
        else:  # one scale per column: the unprojected side
            s = rt.norm(dim=0, keepdim=True) / (r.norm(dim=0, keepdim=True) + 1e-8)
        ref = (ref - lr * (1 - b2**t) ** 0.5 / (1 - b1**t) * alpha**0.5 * g * s) * (1 - lr * wd)
        torch.testing.assert_close(w.detach(), ref, rtol=1e-5, atol=1e-6)
    assert float((w.detach() - w0).abs().max()) > 1e-3
