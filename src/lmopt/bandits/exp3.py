"""Adversarial bandits: EXP3 (Auer, Cesa-Bianchi, Freund & Schapire, SIAM J. Comput. 2002, Fig. 1 "Exp3")
and exponential weights over *estimated* scores as used by EXPO (arXiv 2502.00728, Alg. 1).

EXP3, with ``K`` arms, exploration/learning rate ``γ ∈ (0, 1]`` and rewards in ``[0, 1]``::

    p_i   = (1 − γ) · w_i / Σ_j w_j + γ / K
    x̂_i  = x / p_i   for the pulled arm i (0 for the others)       (importance-weighted estimate)
    w_i  ← w_i · exp(γ · x̂_i / K)

The learning rate: the paper's Corollary 3.2 sets ``γ = min(1, sqrt(K ln K / ((e − 1) g)))`` for a known
upper bound ``g ≥ G_max`` on the best arm's total reward (``g = T`` when rewards are in ``[0, 1]`` and the
horizon ``T`` is known), giving expected regret ``≤ 2 sqrt(e − 1) sqrt(g K ln K)``; :func:`exp3_gamma`
computes it and is the default when ``horizon`` is passed. Weights are kept in log space so long runs
cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def exp3_gamma(n_arms: int, horizon: int) -> float:
    """Auer et al. (2002) Cor. 3.2: ``min(1, sqrt(K ln K / ((e − 1) T)))`` for rewards in [0, 1]."""
    if not isinstance(n_arms, int) or n_arms < 2:
        raise ValueError(f"n_arms must be an int >= 2, got {n_arms!r}")
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    return min(1.0, math.sqrt(n_arms * math.log(n_arms) / ((math.e - 1) * horizon)))


def _softmax(logw: np.ndarray) -> np.ndarray:
    z = np.exp(logw - logw.max())
    return z / z.sum()


class EXP3:
    """EXP3 for ``n_arms`` arms and rewards in ``[0, 1]``.

    Args:
        n_arms: number of arms ``K`` (>= 2).
        gamma: exploration rate / learning rate ``γ`` in (0, 1]. If omitted, ``horizon`` must be given and
            γ follows Auer et al. Cor. 3.2 (:func:`exp3_gamma`).
        horizon: number of rounds, used only to set the default γ.
        seed: seeds the arm draws.

    ``select()`` draws an arm from ``probabilities()``; ``update(arm, reward)`` applies the importance-
    weighted exponential update with the probability the arm had when it was drawn.
    """

    def __init__(self, n_arms: int, gamma: float | None = None, *, horizon: int | None = None,
                 seed: int = 0) -> None:
        if not isinstance(n_arms, int) or n_arms < 2:
            raise ValueError(f"n_arms must be an int >= 2, got {n_arms!r}")
        if gamma is None:
            if horizon is None:
                raise ValueError("give gamma (in (0, 1]) or horizon (rounds) to set it by Auer et al. Cor. 3.2")
            gamma = exp3_gamma(n_arms, horizon)
        if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        self.n_arms, self.gamma = n_arms, float(gamma)
        self.log_w = np.zeros(n_arms)
        self.rng = np.random.default_rng(seed)
        self.t = 0

    def probabilities(self) -> np.ndarray:
        return (1 - self.gamma) * _softmax(self.log_w) + self.gamma / self.n_arms

    def select(self) -> int:
        return int(self.rng.choice(self.n_arms, p=self.probabilities()))

    def update(self, arm: int, reward: float) -> None:
        if not isinstance(arm, (int, np.integer)) or not 0 <= arm < self.n_arms:
            raise ValueError(f"arm must be an int in [0, {self.n_arms}), got {arm!r}")
        if not (isinstance(reward, (int, float)) and 0.0 <= reward <= 1.0):
            raise ValueError(f"EXP3 needs rewards in [0, 1], got {reward!r}; rescale them first")
        p = self.probabilities()[arm]
        self.log_w[arm] += self.gamma * (reward / p) / self.n_arms
        self.t += 1

    def state_dict(self) -> dict:
        return {"log_w": self.log_w.tolist(), "t": self.t, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.log_w = np.asarray(state["log_w"], dtype=float)
        self.t = int(state["t"])
        self.rng.bit_generator.state = state["rng"]


class ExponentialWeights:
    """Sampling ``P(i) ∝ exp(η · S_i)`` from cumulative *estimated* scores ``S`` (EXPO, arXiv 2502.00728).

    EXPO (Alg. 1) cannot observe the reward of unplayed meta-prompts, so instead of EXP3's importance-weighted
    estimate it adds, every round, a neural network's predicted score ``r̂_t(i)`` for *every* arm:
    ``S_i ← S_i + r̂_t(i)``, then samples from the softmax of ``η · S``. The arm set may grow (new candidate
    meta-prompts get ``S = 0`` plus the current round's estimate onwards; pass ``initial`` to start them
    elsewhere).

    Args:
        eta: learning rate ``η`` > 0 (larger → greedier).
        seed: seeds the draws.
    """

    def __init__(self, eta: float, *, seed: int = 0) -> None:
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
        self.eta = float(eta)
        self.S = np.zeros(0)
        self.rng = np.random.default_rng(seed)

    def add_arms(self, n: int, initial: float = 0.0) -> None:
        self.S = np.concatenate([self.S, np.full(n, float(initial))])

    def accumulate(self, estimates: Sequence[float] | np.ndarray) -> None:
        est = np.asarray(estimates, dtype=float)
        if est.shape != self.S.shape:
            raise ValueError(f"need one estimate per arm ({self.S.shape[0]}), got shape {est.shape}")
        if not np.isfinite(est).all():
            raise ValueError("score estimates contain NaN or inf")
        self.S = self.S + est

    def probabilities(self) -> np.ndarray:
        if self.S.size == 0:
            raise ValueError("no arms yet; call add_arms first")
        return _softmax(self.eta * self.S)

    def select(self) -> int:
        return int(self.rng.choice(self.S.size, p=self.probabilities()))
