"""MoPPS: model-predictive prompt selection (Qu et al., arXiv 2507.04632, §4, Alg. 1).

Each prompt ``tau`` keeps a Beta posterior over its success rate under the current policy. After a group
of ``n`` completions with success rate ``s`` (``n * s`` successes) the posterior is updated with decay
``lam`` towards the prior ``Beta(alpha0, beta0)`` (the paper's Eq. for the discounted update, default
prior 1, 1)::

    alpha <- lam * alpha + (1 - lam) * alpha0 + n * s
    beta  <- lam * beta  + (1 - lam) * beta0  + n * (1 - s)

To build a batch of ``B`` prompts, a success rate ``g ~ Beta(alpha, beta)`` is drawn for every candidate
(Thompson sampling) and the ``B`` candidates with the smallest ``(g - target)^2`` are kept (``target``
0.5: prompts of intermediate difficulty give the most informative GRPO groups). Candidates, as in the
authors' code (``tasksampler.ts_ratio``): the next ``int(candidate_ratio * B)`` prompts of a shuffled pass
over the pool (a new shuffle when a pass cannot fill a candidate set, like a data loader with
``drop_last``); the released math scripts use ratio 16, the default here. ``candidate_ratio=None`` makes
every prompt a candidate for every batch. The posterior and the random draws use a seeded
``numpy.random.Generator`` (torch has no seeded Beta sampler); the global RNGs are never touched.

:class:`MoPPSSampler` yields dataset indices in the layout of TRL's ``RepeatSampler`` (each chosen prompt
``mini_repeat_count`` times in a row, each chunk of ``batch_size`` prompts ``repeat_count`` times) for
plain PyTorch loops. A ``DataLoader`` pulls indices ahead of training (and ``accelerate`` prefetches one
batch), so a batch drawn through a sampler is chosen before the previous batch's rewards are in; the
authors' loop selects after the update. :class:`lmopt.rl.trainers.MoPPSGRPOTrainer` therefore selects each
generation batch when it is generated, from the posterior that already holds every earlier batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class MoPPS:
    """Per-prompt Beta posteriors with discounted updates and Thompson-sampling batch selection."""

    def __init__(
        self,
        num_prompts: int,
        lam: float = 1.0,
        alpha0: float = 1.0,
        beta0: float = 1.0,
        target: float = 0.5,
        candidate_ratio: float | None = 16.0,
        seed: int = 0,
    ) -> None:
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"decay lam must lie in [0, 1] (1 = no forgetting), got {lam}")
        if alpha0 <= 0 or beta0 <= 0:
            raise ValueError(f"the Beta prior needs alpha0 > 0 and beta0 > 0, got {alpha0}, {beta0}")
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target success rate must lie in [0, 1], got {target}")
        if candidate_ratio is not None and not candidate_ratio >= 1.0:
            raise ValueError(f"candidate_ratio must be >= 1 (candidates per chosen prompt) or None (whole pool), "
                             f"got {candidate_ratio}")
        self.num_prompts = num_prompts
        self.lam = float(lam)
        self.alpha0 = float(alpha0)
        self.beta0 = float(beta0)
        self.target = float(target)
        self.candidate_ratio = None if candidate_ratio is None else float(candidate_ratio)
        self.alpha = np.full(num_prompts, self.alpha0)
        self.beta = np.full(num_prompts, self.beta0)
        self.rng = np.random.default_rng(seed)
        self._order = np.empty(0, dtype=np.int64)  # the current shuffled pass over the pool
        self._pos = 0

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean success rate of every prompt."""
        return self.alpha / (self.alpha + self.beta)

    def update(self, indices: Sequence[int], success_rates: Sequence[float], n: int | Sequence[int]) -> None:
        """Update the posteriors of ``indices`` after groups of ``n`` completions with ``success_rates``.

        A prompt that appears several times in ``indices`` is updated once per occurrence, in order.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        s = np.asarray(success_rates, dtype=np.float64).reshape(-1)
        ns = np.broadcast_to(np.asarray(n, dtype=np.float64), s.shape)
        if idx.shape != s.shape:
            raise ValueError(f"need one success rate per index: {idx.size} indices, {s.size} rates")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_prompts):
            raise IndexError(f"prompt index out of range [0, {self.num_prompts}): {idx.min()}..{idx.max()}")
        if np.any((s < 0) | (s > 1)) or np.any(np.isnan(s)):
            raise ValueError("success rates must lie in [0, 1]; threshold or rescale the rewards first")
        if np.any(ns < 1):
            raise ValueError("group sizes n must be >= 1")
        for i, si, ni in zip(idx.tolist(), s.tolist(), ns.tolist()):
            self.alpha[i] = self.lam * self.alpha[i] + (1 - self.lam) * self.alpha0 + ni * si
            self.beta[i] = self.lam * self.beta[i] + (1 - self.lam) * self.beta0 + ni * (1 - si)

    def candidates(self, batch_size: int) -> np.ndarray:
        """The candidate prompts for the next batch: the next slice of the shuffled pass, or the whole pool."""
        if self.candidate_ratio is None:
            return np.arange(self.num_prompts)
        m = min(int(self.candidate_ratio * batch_size), self.num_prompts)
        if self._pos + m > self._order.size:
            self._order = self.rng.permutation(self.num_prompts)
            self._pos = 0
        out = self._order[self._pos:self._pos + m]
        self._pos += m
        return out

    def select(self, batch_size: int) -> list[int]:
        """Choose ``batch_size`` distinct prompts by Thompson sampling (closest sampled rate to ``target``)."""
        if not 1 <= batch_size <= self.num_prompts:
            raise ValueError(f"batch_size must lie in [1, num_prompts={self.num_prompts}], got {batch_size}")
        cand = self.candidates(batch_size)
        g = self.rng.beta(self.alpha[cand], self.beta[cand])
        order = np.argsort((g - self.target) ** 2, kind="stable")
        return cand[order[:batch_size]].tolist()

    def state_dict(self) -> dict:
        return {"alpha": self.alpha.copy(), "beta": self.beta.copy(), "rng": self.rng.bit_generator.state,
                "order": self._order.copy(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        if len(state["alpha"]) != self.num_prompts:
            raise ValueError(f"state has {len(state['alpha'])} prompts, this MoPPS has {self.num_prompts}")
        self.alpha = np.asarray(state["alpha"], dtype=np.float64).copy()
        self.beta = np.asarray(state["beta"], dtype=np.float64).copy()
        self.rng.bit_generator.state = state["rng"]
        self._order = np.asarray(state.get("order", np.empty(0)), dtype=np.int64).copy()
        self._pos = int(state.get("pos", 0))


class MoPPSSampler(Sampler[int]):
    """A drop-in for TRL's ``RepeatSampler`` whose prompt chunks are chosen by :class:`MoPPS`.

    Yields ``num_batches`` chunks; each chunk is ``batch_size`` prompts from ``mopps.select``, repeated
    ``repeat_count`` times, each prompt ``mini_repeat_count`` times in a row, exactly RepeatSampler's layout.
    ``num_batches`` defaults to ``num_prompts // batch_size`` (one "epoch" of the same length as
    RepeatSampler's).
    """

    def __init__(
        self,
        mopps: MoPPS,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        num_batches: int | None = None,
    ) -> None:
        if mini_repeat_count < 1 or batch_size < 1 or repeat_count < 1:
            raise ValueError("mini_repeat_count, batch_size and repeat_count must all be >= 1")
        if batch_size > mopps.num_prompts:
            raise ValueError(
                f"batch_size ({batch_size} prompts per generation batch) exceeds the pool ({mopps.num_prompts})"
            )
        self.mopps = mopps
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.num_batches = num_batches if num_batches is not None else mopps.num_prompts // batch_size
        if self.num_batches < 1:
            raise ValueError("num_batches must be >= 1")

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.num_batches):
            chunk = self.mopps.select(self.batch_size)
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return self.num_batches * self.batch_size * self.mini_repeat_count * self.repeat_count


def group_success_rates(rewards: torch.Tensor, num_generations: int, threshold: float | None = None) -> torch.Tensor:
    """Per-group success rates from (N,) rewards: mean of ``reward >= threshold``, or of the rewards themselves
    when ``threshold`` is None (they must then lie in [0, 1], e.g. a 0/1 correctness reward)."""
    r = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
    if r.numel() % num_generations:
        raise ValueError(f"{r.numel()} rewards are not a multiple of num_generations={num_generations}")
    if threshold is None:
        if torch.any((r < 0) | (r > 1)):
            raise ValueError(
                "rewards outside [0, 1] cannot be read as success probabilities; pass success_threshold"
            )
        s = r
    else:
        s = torch.where(torch.isnan(r), r, (r >= threshold).float())
    return torch.nan_to_num(torch.nanmean(s.view(-1, num_generations), dim=1), nan=0.0)
