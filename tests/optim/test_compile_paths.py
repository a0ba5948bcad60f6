"""The compiled path keeps working across many shapes, dtypes and kernels, and a failed compilation moves
only that kernel to the reference, never other optimizers.

torch._dynamo gives up on a function after 8 recompilations; before signatures had their own code objects
and Parameters were passed as plain tensors, 9 matrix shapes (APOLLO) or 9 kernel×dtype combinations
(Lion-𝒦) exhausted it, and the failure then switched every lmopt optimizer in the process to the reference.
"""

import warnings

import pytest
import torch

from lmopt.optim import APOLLO, AdaBelief, Lion, LionK, _base
from lmopt.optim.apollo import apollo_math
from lmopt.optim.lion import lion_math


@pytest.fixture
def no_fallback(fast_impl):
    before = dict(_base._COMPILE_FAILED)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch.compile failed")
        yield
    assert _base._COMPILE_FAILED == before


def _with_grads(params):
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def _reference_copy(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def test_apollo_compiles_once_for_many_matrix_shapes(no_fallback):
    torch.manual_seed(0)
    params = _with_grads([torch.nn.Parameter(torch.randn(8 + i, 16 + 2 * i)) for i in range(11)])
    ref = _reference_copy(params)
    for r, p in zip(ref, params):
        r.grad = p.grad.clone()
    APOLLO(params, lr=1e-2, rank=2, impl="auto").step()
    APOLLO(ref, lr=1e-2, rank=2, impl="reference").step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
    assert sum(1 for key in _base._COMPILED if key[0] is apollo_math) >= 1


def test_lionk_kernels_and_dtypes_beyond_the_recompile_limit(no_fallback):
    combos = [(k, dt) for k in ("l1", "l2", "huber") for dt in (torch.float32, torch.bfloat16, torch.float16)]
    assert len(combos) > 8
    for kernel, dtype in combos:
        p = _with_grads([torch.nn.Parameter(torch.randn(5, 7).to(dtype))])[0]
        LionK([p], lr=1e-2, kernel=kernel, impl="auto").step()
    keys = {key[1] for key in _base._COMPILED if key[0] is lion_math}
    assert len(keys) >= len(combos)


def test_a_failed_kernel_leaves_other_optimizers_compiled(fast_impl, monkeypatch):
    real = _base.compiled
    used = []

    def fake(fn, signature=()):
        if fn is lion_math:
            def broken(*args):
                raise RuntimeError("simulated toolchain failure")
            return broken
        used.append(fn)
        return real(fn, signature)

    monkeypatch.setattr(_base, "compiled", fake)
    monkeypatch.setattr(_base, "_COMPILE_FAILED", {})
    p = _with_grads([torch.nn.Parameter(torch.randn(6))])[0]
    before = p.detach().clone()
    with pytest.warns(RuntimeWarning, match="simulated toolchain failure"):
        Lion([p], lr=0.1).step()
    torch.testing.assert_close(p.detach(), before - 0.1 * torch.sign(p.grad))  # the reference ran
    q = _with_grads([torch.nn.Parameter(torch.randn(6))])[0]
    AdaBelief([q], lr=0.1).step()
    assert used and used[-1].__name__ == "adabelief_math"
    assert all(key[0] is lion_math for key in _base._COMPILE_FAILED)
