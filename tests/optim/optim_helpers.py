"""Shared test data for tests/optim."""

import torch


def make_params(seed: int = 0):
    """Parameters covering fp32 contiguous, fp32 non-contiguous (transposed), bf16, and bf16 state."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 10, generator=gen)
    b = torch.randn(10, 6, generator=gen).t()  # non-contiguous 6x10 view
    c = torch.randn(6, 10, generator=gen).to(torch.bfloat16)
    d = torch.randn(6, 10, generator=gen)
    return [torch.nn.Parameter(x.clone()) for x in (a, b, c, d)]


def grads_for(params, step: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for p in params:
        g = torch.randn(p.shape, generator=gen).to(p.dtype)
        if not p.is_contiguous():  # gradient with the parameter's strides
            g = g.t().contiguous().t()
        out.append(g)
    return out
