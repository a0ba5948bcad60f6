"""SOAP against the official algorithm (github.com/nikhilvyas/SOAP), transcribed below for one matrix.

Both official revisions are covered: the current one keeps the first moment in the eigenbasis (it projects
m back to the original space and forward again around every preconditioner update), the first release
keeps m as the EMA of raw gradients and projects it for each update. Both build L and R by lerping from
zero, skip the first call, refresh the eigenbasis every ``freq`` Adam steps with one power iteration after
sorting by the estimated eigenvalues, and decay the weights after the step.
"""

import pytest
import torch

from lmopt.optim import SOAP


def official_soap(w0, grads, lr, b1, b2, eps, wd, freq, sh_beta, momentum):
    """The official update, written out for a single 2-D parameter (both sides preconditioned)."""
    w = w0.clone()
    L = torch.zeros(w.shape[0], w.shape[0])
    R = torch.zeros(w.shape[1], w.shape[1])
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    ql = qr = None
    t = 0

    def eigvecs(a):  # eigenvectors by descending eigenvalue
        return torch.flip(torch.linalg.eigh(a + 1e-30 * torch.eye(a.shape[0]))[1], [1])

    for g in grads:
        if ql is None:  # the first call only builds the preconditioner
            L = L.lerp(g @ g.T, 1 - sh_beta)
            R = R.lerp(g.T @ g, 1 - sh_beta)
            ql, qr = eigvecs(L), eigvecs(R)
            continue
        gr = ql.T @ g @ qr  # gradient in the eigenbasis
        t += 1
        m = b1 * m + (1 - b1) * (gr if momentum == "rotated" else g)
        v = b2 * v + (1 - b2) * gr**2
        mr = m if momentum == "rotated" else ql.T @ m @ qr
        step = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        w = w - step * (ql @ (mr / (v.sqrt() + eps)) @ qr.T)
        w = w - lr * wd * w
        if momentum == "rotated":
            m = ql @ m @ qr.T  # back to the original space before the basis may change
        L = L.lerp(g @ g.T, 1 - sh_beta)
        R = R.lerp(g.T @ g, 1 - sh_beta)
        if t % freq == 0:
            new = []
            for dim, (a, q) in enumerate(((L, ql), (R, qr))):
                order = torch.argsort(torch.diag(q.T @ a @ q), descending=True)
                v = v.index_select(dim, order)
                new.append(torch.linalg.qr(a @ q[:, order])[0])
            ql, qr = new
        if momentum == "rotated":
            m = ql.T @ m @ qr
    return w


def _grads(n, shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * (1 + 0.05 * t) for t in range(n)]


@pytest.mark.parametrize("momentum", ["rotated", "original"])
@pytest.mark.parametrize("kw", [dict(lr=1e-2, weight_decay=0.01, precondition_frequency=3),
                                dict(lr=3e-3, weight_decay=0.0, precondition_frequency=10, shampoo_beta=0.9)])
def test_soap_matches_the_official_update_over_40_steps(momentum, kw):
    grads = _grads(41, (9, 6))
    w0 = torch.randn(9, 6, generator=torch.Generator().manual_seed(3))
    sh = kw.get("shampoo_beta", 0.95)
    ref = official_soap(w0, grads, kw["lr"], 0.95, 0.95, 1e-8, kw["weight_decay"], kw["precondition_frequency"],
                        sh, momentum)
    w = torch.nn.Parameter(w0.clone())
    opt = SOAP([w], momentum=momentum, impl="reference", **kw)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), ref, rtol=1e-5, atol=1e-6)
    assert float((w.detach() - w0).abs().max()) > 1e-2  # it moved: the comparison is not vacuous


def test_rotated_momentum_stays_the_ema_of_gradients_across_refreshes():
    grads = _grads(30, (8, 5), seed=1)
    w = torch.nn.Parameter(torch.zeros(8, 5))
    opt = SOAP([w], lr=1e-3, precondition_frequency=4, weight_decay=0.0, impl="reference")
    ema = torch.zeros(8, 5)
    for i, g in enumerate(grads):
        w.grad = g.clone()
        opt.step()
        if i:  # the first call builds the preconditioner only
            ema = 0.95 * ema + 0.05 * g
    st = opt.state[w]
    assert st["step"] == 29  # 7 refreshes happened
    torch.testing.assert_close(st["Q0"] @ st["exp_avg"] @ st["Q1"].T, ema, rtol=1e-4, atol=1e-5)


def test_preconditioner_is_lerped_from_zero_on_the_first_call():
    g = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    w = torch.nn.Parameter(torch.zeros(6, 4))
    opt = SOAP([w], shampoo_beta=0.9, impl="reference")
    w.grad = g
    opt.step()
    torch.testing.assert_close(opt.state[w]["GG0"], 0.1 * g @ g.T)
    torch.testing.assert_close(opt.state[w]["GG1"], 0.1 * g.T @ g)


def test_unknown_momentum_variant_is_rejected():
    with pytest.raises(ValueError, match="momentum must be 'rotated'"):
        SOAP([torch.nn.Parameter(torch.zeros(2, 2))], momentum="shifted")
