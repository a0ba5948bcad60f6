"""A tiny classification problem shared by the federated tests."""

from __future__ import annotations

import pytest
import torch

from lmopt.fed import ClientData


class Problem:
    """Logistic regression on 6 features: a linear layer whose weight and bias are the trained tensors."""

    def __init__(self, n: int = 80, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(n, 6, generator=g)
        self.y = (self.X[:, 0] + 0.5 * self.X[:, 1] > 0).long()
        self.lin = torch.nn.Linear(6, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(2, 6, generator=g) * 0.1)
            self.lin.bias.zero_()
        self.lin.to(dtype)
        self.X = self.X.to(dtype)
        for p in self.lin.parameters():
            p.requires_grad_(False)
        self.params = [self.lin.weight, self.lin.bias]
        self.names = ["weight", "bias"]
        self.w0 = [p.detach().clone() for p in self.params]

    def loss(self, rows: list[int]) -> torch.Tensor:
        r = torch.tensor(rows)
        return torch.nn.functional.cross_entropy(self.lin(self.X[r]), self.y[r])

    def reset(self) -> None:
        with torch.no_grad():
            for p, q in zip(self.params, self.w0):
                p.copy_(q)

    def accuracy(self) -> dict[str, float]:
        with torch.no_grad():
            return {"accuracy": float((self.lin(self.X).argmax(1) == self.y).float().mean())}

    def clients(self, k: int, batch: int = 4) -> dict[int, ClientData]:
        n = len(self.y) // k
        return {i: ClientData(list(range(i * n, (i + 1) * n)), batch) for i in range(k)}


@pytest.fixture
def problem() -> Problem:
    return Problem()
