"""Batch UCB over a fixed set of arms scored on samples, as in APE's prompt evaluation (Zhou et al., ICLR 2023,
arXiv 2211.01910, §3.1 "Efficient score estimation"; the authors' ``UCBBanditAlgo``).

Each round picks the ``n`` arms with the largest upper confidence bound and scores each on a sample of
``m`` examples. Counts are kept in *examples*, not pulls::

    count_i ← count_i + m,   total_i ← total_i + m · (mean score of arm i on its sample)
    mean_i  = total_i / count_i                     (0 for an arm never scored)
    ucb_i   = mean_i + c · sqrt( ln(Σ_j (count_j + 1e-3)) / (count_i + 1e-3) )

The first round (all counts 0) picks ``n`` distinct arms uniformly at random. Ties (e.g. among arms not yet
scored) are broken as the authors' code breaks them: by numpy's default ``argsort``, reversed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EPS = 1e-3  # the authors' offset on counts (keeps unscored arms finite and first in line)


class BatchUCB:
    """UCB over ``n_arms`` arms whose rewards arrive as means over samples of examples.

    Args:
        n_arms: number of arms (candidate prompts), >= 1.
        c: exploration weight (APE: 1.0).
        seed: seeds the random first round.
    """

    def __init__(self, n_arms: int, c: float = 1.0, *, seed: int = 0) -> None:
        if not isinstance(n_arms, int) or isinstance(n_arms, bool) or n_arms < 1:
            raise ValueError(f"n_arms must be a positive int, got {n_arms!r}")
        if not isinstance(c, (int, float)) or c < 0:
            raise ValueError(f"c must be a number >= 0, got {c!r}")
        self.n_arms, self.c = n_arms, float(c)
        self._rng = np.random.default_rng(seed)
        self.counts = np.zeros(n_arms)
        self.totals = np.zeros(n_arms)

    def means(self) -> np.ndarray:
        """Mean score per arm over every example it was scored on (0 where never scored)."""
        return np.divide(self.totals, self.counts, out=np.zeros_like(self.totals), where=self.counts != 0)

    def ucb(self) -> np.ndarray:
        counts = self.counts + _EPS
        return self.means() + self.c * np.sqrt(np.log(counts.sum()) / counts)

    def choose(self, n: int) -> list[int]:
        """The ``n`` arms to score this round (all of them when ``n >= n_arms``)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        n = min(n, self.n_arms)
        if not self.counts.any():
            return [int(i) for i in self._rng.choice(self.n_arms, n, replace=False)]
        return [int(i) for i in np.argsort(self.ucb())[::-1][:n]]

    def update(self, arms: Sequence[int], mean_scores: Sequence[float], n_samples: int) -> None:
        """Record that each arm in ``arms`` scored ``mean_scores[k]`` on average over ``n_samples`` examples."""
        if len(arms) != len(mean_scores):
            raise ValueError(f"got {len(arms)} arms but {len(mean_scores)} scores")
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        for i, s in zip(arms, mean_scores):
            if not 0 <= i < self.n_arms:
                raise IndexError(f"arm {i} is out of range for {self.n_arms} arms")
            self.counts[i] += n_samples
            self.totals[i] += n_samples * float(s)

    def best(self) -> int:
        """The arm with the highest mean (ties broken as in :meth:`choose`)."""
        return int(np.argsort(self.means())[::-1][0])
