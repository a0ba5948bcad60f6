"""NeuralUCB with a diagonal covariance (Zhou, Li & Gu, ICML 2020, arXiv 1911.04462, Algorithm 1).

Each arm is a feature vector ``x``. A small ReLU MLP ``f(x; θ)`` is fitted to the observed rewards; an arm's
upper confidence bound is ``f(x; θ) + σ(x)`` with (EASE, arXiv 2405.16122, Alg. 1 and its released code)::

    σ(x) = sqrt( Σ_p  λ · ν · g_p(x)² / U_p ),      g(x) = ∂f(x; θ)/∂θ

where ``U`` is the *diagonal* of the design matrix ``Z = λI + Σ_t g(x_t) g(x_t)ᵀ`` of the chosen arms (the
paper's Algorithm 1 keeps the full ``Z``; the diagonal approximation is what both EASE and INSTINCT use to
make it tractable for ~10⁴–10⁵ parameters). The paper's ``γ_t`` exploration weight and ``1/m`` width
scaling are folded into ``ν``. Per-arm gradients are computed for many arms at once with
``torch.func.vmap(torch.func.grad(...))``; the module runs on whatever ``device`` it is given (CPU by
default, never hard-wired to CUDA).

Defaults follow EASE's released code: 3 hidden layers of 100 ReLU units, λ = 0.1, ν = 0.01, and each round
the network restarts from the *same* initial weights (``init_each_fit="same"``; ``"fresh"`` draws new ones
per round) and is retrained for 1000 full-batch Adam iterations at lr 1e-3 on the squared error with weight
decay ``λ / n`` (``n`` observations; ``weight_decay="lam/n"``, or a number). Inputs are z-scored with the
mean and std of the training points (``standardize=True``, as the released code; a constant dimension is
centred and left unscaled, where the released ``std + 1e-30`` would blow it up). INSTINCT
(arXiv 2310.02905) uses one hidden layer, ν = 1 and weights drawn from N(0, 1)
(``NeuralUCB(dim, hidden_layers=1, nu=1.0, init="normal")``). Note the scale of ν: with EASE's ν = 0.01 the
bonus is nearly constant across arms (selection is close to greedy); with INSTINCT's ν = 1 it dominates.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn


def _check_pos(name: str, v: float, allow_zero: bool = False) -> None:
    ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {v!r}")


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op CPU threads (tiny MLPs are slower multi-threaded), then restore."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class NeuralUCB:
    """NeuralUCB over a fixed or changing set of arms given as feature rows.

    Typical loop (one round = fit, choose, observe)::

        bandit = NeuralUCB(dim=X.shape[1], seed=0)
        for t in range(T):
            bandit.fit()                      # re-initialise + retrain on all observations so far
            i = bandit.select(X, exclude=chosen)
            bandit.update(X[i], reward(i))    # adds the observation and g(x)² to the diagonal U

    Args:
        dim: feature dimension.
        hidden: width of each hidden layer.
        hidden_layers: number of hidden ReLU layers (EASE: 3; INSTINCT: 1).
        lam: λ, the ridge / prior precision (initial value of every ``U_p``).
        nu: ν, the exploration scale.
        train_steps: Adam iterations per :meth:`fit`.
        lr: Adam learning rate.
        reset_each_fit: re-initialise the network before each fit (the EASE/INSTINCT practice); otherwise
            warm-start from the previous parameters.
        init_each_fit: ``"same"`` (the initial weights every round, the released code) or ``"fresh"``
            (round ``k`` draws from ``(seed, k)``).
        init: ``"torch"`` (PyTorch's default Linear init) or ``"normal"`` (every weight and bias from
            N(0, 1), INSTINCT's released code).
        weight_decay: Adam weight decay, ``"lam/n"`` (λ over the number of observations, the released code)
            or a number (0 disables it).
        standardize: z-score the features with the training points' mean and std before the network.
        seed: seeds network initialisation, so runs are reproducible.
        device, dtype: where the surrogate lives (e.g. ``"cuda"``); inputs are moved there.
        grad_batch: arms per vmap chunk when computing per-arm gradients (bounds memory).
        cpu_threads: intra-op threads used while training/evaluating on CPU (default 1: the surrogate is
            tiny and thread synchronisation dominates); ``None`` leaves torch's setting alone.
    """

    def __init__(self, dim: int, *, hidden: int = 100, hidden_layers: int = 3, lam: float = 0.1,
                 nu: float = 0.01, train_steps: int = 1000, lr: float = 1e-3, reset_each_fit: bool = True,
                 init_each_fit: str = "same", init: str = "torch", weight_decay: float | str = "lam/n",
                 standardize: bool = True, seed: int = 0, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, grad_batch: int = 256, cpu_threads: int | None = 1) -> None:
        for name, v in (("dim", dim), ("hidden", hidden), ("hidden_layers", hidden_layers),
                        ("grad_batch", grad_batch)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(train_steps, int) or train_steps < 0:
            raise ValueError(f"train_steps must be an int >= 0, got {train_steps!r}")
        _check_pos("lam", lam)
        _check_pos("nu", nu, allow_zero=True)
        _check_pos("lr", lr)
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if init_each_fit not in ("same", "fresh"):
            raise ValueError(f"init_each_fit must be 'same' or 'fresh', got {init_each_fit!r}")
        if init not in ("torch", "normal"):
            raise ValueError(f"init must be 'torch' or 'normal', got {init!r}")
        if weight_decay != "lam/n":
            _check_pos("weight_decay", weight_decay, allow_zero=True)
        self.init_each_fit, self.init_kind, self.weight_decay = init_each_fit, init, weight_decay
        self.standardize = standardize
        self._mu = torch.zeros(dim, device=torch.device(device) if device is not None else "cpu", dtype=dtype)
        self._sd = torch.ones_like(self._mu)
        self.dim, self.hidden, self.hidden_layers = dim, hidden, hidden_layers
        self.lam, self.nu, self.train_steps, self.lr = float(lam), float(nu), train_steps, float(lr)
        self.reset_each_fit = reset_each_fit
        self.seed = seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.grad_batch = grad_batch
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        self.net = self._build()
        self._fits = 0
        self.n_params = sum(p.numel() for p in self.net.parameters())
        self.U = torch.full((self.n_params,), self.lam, device=self.device, dtype=dtype)
        self.X: list[torch.Tensor] = []
        self.y: list[float] = []
        self._init(0)

    # -- network ----------------------------------------------------------------------------------
    def _build(self) -> nn.Sequential:
        layers: list[nn.Module] = []
        d = self.dim
        for _ in range(self.hidden_layers):
            layers += [nn.Linear(d, self.hidden), nn.ReLU()]
            d = self.hidden
        layers.append(nn.Linear(d, 1))
        return nn.Sequential(*layers).to(device=self.device, dtype=self.dtype)

    def _init(self, k: int) -> None:
        """The initial weights of round ``k`` (PyTorch's default Linear init, or N(0, 1) with
        ``init="normal"``), drawn from a generator seeded by ``(seed, k)``."""
        g = torch.Generator(device="cpu").manual_seed((self.seed * 1_000_003 + k) % (2**63))
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    if self.init_kind == "normal":
                        w = torch.randn(m.weight.shape, dtype=self.dtype, generator=g)
                        b = torch.randn(m.bias.shape, dtype=self.dtype, generator=g)
                    else:
                        bound = 1.0 / math.sqrt(m.in_features)
                        w = torch.empty(m.weight.shape, dtype=self.dtype).uniform_(-bound, bound, generator=g)
                        b = torch.empty(m.bias.shape, dtype=self.dtype).uniform_(-bound, bound, generator=g)
                    m.weight.copy_(w.to(self.device))
                    m.bias.copy_(b.to(self.device))

    def _scaled(self, t: torch.Tensor) -> torch.Tensor:
        """Features as the network sees them: z-scored with the training points' statistics."""
        return (t - self._mu) / self._sd if self.standardize else t

    def _as_tensor(self, X: Sequence[Sequence[float]] | np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(X, dtype=np.float64) if not isinstance(X, torch.Tensor) else X)
        t = t.to(device=self.device, dtype=self.dtype)
        if t.ndim == 1:
            t = t.unsqueeze(0)
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise ValueError(f"features must have shape (n, {self.dim}), got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError("features contain NaN or inf; check the embedder / hidden states")
        return t

    # -- public API -------------------------------------------------------------------------------
    @property
    def n_observations(self) -> int:
        return len(self.y)

    def fit(self) -> float:
        """(Re-)train the surrogate on all observations; returns the final training MSE (0 when no data)."""
        self._fits += 1
        if self.reset_each_fit:
            self._init(0 if self.init_each_fit == "same" else self._fits)
        if not self.y:
            return 0.0
        X = torch.stack(self.X)
        if self.standardize:
            self._mu = X.mean(dim=0)
            sd = X.std(dim=0, unbiased=False) if X.shape[0] > 1 else torch.zeros_like(self._mu)
            # a constant dimension carries no information: centre it and leave it unscaled
            self._sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
        if self.train_steps == 0:
            return 0.0
        X = self._scaled(X)
        y = torch.tensor(self.y, device=self.device, dtype=self.dtype)
        wd = self.lam / len(self.y) if self.weight_decay == "lam/n" else float(self.weight_decay)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=wd)
        loss = torch.zeros((), device=self.device)
        with _cpu_threads(self.cpu_threads):
            for _ in range(self.train_steps):
                opt.zero_grad(set_to_none=True)
                loss = ((self.net(X).squeeze(-1) - y) ** 2).mean()
                loss.backward()
                opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def mean(self, X: Sequence[Sequence[float]] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Surrogate prediction ``f(x; θ)`` for each row."""
        return self.net(self._scaled(self._as_tensor(X))).squeeze(-1).cpu().double().numpy()

    def gradients(self, X: Sequence[Sequence[float]] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Per-arm gradients ``∂f(x; θ)/∂θ`` flattened to shape ``(n, n_params)`` (torch.func, chunked)."""
        from torch.func import functional_call, grad, vmap

        Xt = self._scaled(self._as_tensor(X))
        params = {k: v.detach() for k, v in self.net.named_parameters()}

        def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.net, p, (x.unsqueeze(0),)).squeeze()

        per_arm = vmap(grad(f), in_dims=(None, 0))
        chunks = []
        with _cpu_threads(self.cpu_threads):
            for s in range(0, Xt.shape[0], self.grad_batch):
                g = per_arm(params, Xt[s: s + self.grad_batch])
                chunks.append(torch.cat([g[k].reshape(g[k].shape[0], -1) for k in params], dim=1))
        return torch.cat(chunks, dim=0)

    def ucb(self, X: Sequence[Sequence[float]] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, sigma)`` for each row; the UCB score is ``mean + sigma``."""
        Xt = self._as_tensor(X)
        mu = self.mean(Xt)
        sig = []
        for s in range(0, Xt.shape[0], self.grad_batch):
            g = self.gradients(Xt[s: s + self.grad_batch])
            sig.append(torch.sqrt((self.lam * self.nu * g * g / self.U).sum(dim=1)).cpu().double().numpy())
        return mu, np.concatenate(sig)

    def select(self, X: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
               exclude: Sequence[int] | None = None) -> int:
        """Index of the row with the largest UCB (ties → lowest index), skipping ``exclude``."""
        mu, sig = self.ucb(X)
        score = mu + sig
        if exclude:
            ex = [i for i in exclude if 0 <= i < len(score)]
            score[ex] = -np.inf
        if not np.isfinite(score).any():
            raise ValueError("no candidate left to select: every arm is excluded")
        return int(np.argmax(score))

    def update(self, x: Sequence[float] | np.ndarray | torch.Tensor, reward: float) -> None:
        """Record ``(x, reward)`` and add ``g(x)²`` (gradient under the current network) to ``U``."""
        if not (isinstance(reward, (int, float)) and math.isfinite(reward)):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        xt = self._as_tensor(x)
        if xt.shape[0] != 1:
            raise ValueError(f"update takes one arm's features, got {xt.shape[0]} rows")
        g = self.gradients(xt)[0]
        self.U += g * g
        self.X.append(xt[0])
        self.y.append(float(reward))

    def add_observation(self, x: Sequence[float] | np.ndarray | torch.Tensor, reward: float) -> None:
        """Record an observation without touching ``U`` (e.g. the random initial design)."""
        if not (isinstance(reward, (int, float)) and math.isfinite(reward)):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        self.X.append(self._as_tensor(x)[0])
        self.y.append(float(reward))
