"""Beta-Bernoulli Thompson sampling (Thompson 1933; Agrawal & Goyal, COLT 2012, Alg. 1–2).

Each arm ``i`` keeps a ``Beta(α_i, β_i)`` posterior over its success probability, starting from the prior
``Beta(α₀, β₀)``. ``select()`` draws ``θ_i ~ Beta(α_i, β_i)`` for every arm and plays ``argmax θ_i``.
For a binary reward ``r``: ``α_i += r``, ``β_i += 1 − r``. Rewards in ``[0, 1]`` are handled as in
Agrawal & Goyal's Algorithm 2: a Bernoulli trial with success probability ``r`` is drawn and used as the
binary reward (``binarize=True``, the default); ``binarize=False`` adds the fractional ``r``/``1 − r``
instead (deterministic, same posterior mean). ``select_batch(k)`` plays the ``k`` largest draws (used to
pick several prompts per step in RL prompt selection). Draws come from a seeded numpy Generator.
"""

from __future__ import annotations

import math

import numpy as np


class BetaBernoulliTS:
    """Thompson sampling for ``n_arms`` Bernoulli (or [0, 1]-valued) arms."""

    def __init__(self, n_arms: int, *, alpha0: float = 1.0, beta0: float = 1.0, binarize: bool = True,
                 seed: int = 0) -> None:
        if not isinstance(n_arms, int) or n_arms < 1:
            raise ValueError(f"n_arms must be a positive int, got {n_arms!r}")
        for name, v in (("alpha0", alpha0), ("beta0", beta0)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        self.n_arms = n_arms
        self.alpha = np.full(n_arms, float(alpha0))
        self.beta = np.full(n_arms, float(beta0))
        self.binarize = binarize
        self.rng = np.random.default_rng(seed)

    def sample(self) -> np.ndarray:
        """One posterior draw per arm."""
        return self.rng.beta(self.alpha, self.beta)

    def select(self) -> int:
        return int(np.argmax(self.sample()))

    def select_batch(self, k: int) -> list[int]:
        if not isinstance(k, int) or not 1 <= k <= self.n_arms:
            raise ValueError(f"k must be an int in [1, {self.n_arms}], got {k!r}")
        draws = self.sample()
        return [int(i) for i in np.argsort(-draws, kind="stable")[:k]]

    def update(self, arm: int, reward: float) -> None:
        if not isinstance(arm, (int, np.integer)) or not 0 <= arm < self.n_arms:
            raise ValueError(f"arm must be an int in [0, {self.n_arms}), got {arm!r}")
        if not (isinstance(reward, (int, float)) and 0.0 <= reward <= 1.0):
            raise ValueError(f"Thompson sampling needs rewards in [0, 1], got {reward!r}")
        r = float(self.rng.random() < reward) if self.binarize else float(reward)
        self.alpha[arm] += r
        self.beta[arm] += 1.0 - r

    def posterior_mean(self) -> np.ndarray:
        return self.alpha / (self.alpha + self.beta)
