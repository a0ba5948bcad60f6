"""Synthetic black-box test functions used by the ZO literature (ZoRD, R-AdaZO, ZoAR).

Each function maps a 1-D tensor ``x`` of any dimension ``d`` to a scalar tensor, is normalised by ``d``
(or is a mean already) so that values stay O(1) as ``d`` grows, and has global minimum 0 at
:attr:`SyntheticFunction.optimum`. The problems are unconstrained: there is no box and nothing is clipped;
only the fixed start ``start(d)`` used by the tests and by ``benchmarks.zo_synthetic`` is drawn in a box
(once, from a fixed-seed generator, uniform in ``[-r, r]^d`` around 0).

Ackley: ``"ackley"`` is the standard definition (a = 20, b = 0.2, c = 2π); the ZoRD and R-AdaZO
experiment code uses c = π, available as ``"ackley_pi"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def quadratic(x: torch.Tensor) -> torch.Tensor:
    """``mean(x_i^2)``; minimum 0 at 0."""
    return (x * x).mean()


def levy(x: torch.Tensor) -> torch.Tensor:
    """Levy function divided by ``d``; minimum 0 at ``x = 1``."""
    w = 1.0 + (x - 1.0) / 4.0
    head = torch.sin(math.pi * w[0]) ** 2
    mid = ((w[:-1] - 1.0) ** 2 * (1.0 + 10.0 * torch.sin(math.pi * w[:-1] + 1.0) ** 2)).sum()
    tail = (w[-1] - 1.0) ** 2 * (1.0 + torch.sin(2.0 * math.pi * w[-1]) ** 2)
    return (head + mid + tail) / x.numel()


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """Rosenbrock function divided by ``d``; minimum 0 at ``x = 1``."""
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum() / x.numel()


def ackley(x: torch.Tensor, c: float = 2.0 * math.pi) -> torch.Tensor:
    """Ackley function (a = 20, b = 0.2, c = 2π by default); minimum 0 at 0."""
    a = -20.0 * torch.exp(-0.2 * torch.sqrt((x * x).mean()))
    b = -torch.exp(torch.cos(c * x).mean())
    return a + b + 20.0 + math.e


def ackley_pi(x: torch.Tensor) -> torch.Tensor:
    """Ackley with c = π, as in the ZoRD / R-AdaZO experiment code; minimum 0 at 0."""
    return ackley(x, math.pi)


@dataclass(frozen=True)
class SyntheticFunction:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    radius: float
    optimum_value: float  # the coordinate value of the minimiser (all coordinates equal)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def optimum(self, d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.full((d,), self.optimum_value, dtype=dtype)

    def start(self, d: int, dtype: torch.dtype = torch.float64, seed: int = 2024) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return (torch.rand(d, generator=gen, dtype=torch.float64) * 2.0 - 1.0).mul_(self.radius).to(dtype)


FUNCTIONS: dict[str, SyntheticFunction] = {
    "quadratic": SyntheticFunction("quadratic", quadratic, 2.0, 0.0),
    "levy": SyntheticFunction("levy", levy, 4.0, 1.0),
    "rosenbrock": SyntheticFunction("rosenbrock", rosenbrock, 1.0, 1.0),
    "ackley": SyntheticFunction("ackley", ackley, 2.0, 0.0),
    "ackley_pi": SyntheticFunction("ackley_pi", ackley_pi, 2.0, 0.0),
}
