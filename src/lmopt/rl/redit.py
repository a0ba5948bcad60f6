"""ReDit: reward dithering for GRPO-style training (Wei et al., arXiv 2506.18631, §3, Eq. 5–6).

Each reward is perturbed by zero-mean noise *inside* the reward function, before TRL sums the reward
columns and normalises them per group:

* uniform:  ``r + U(-m * R, m * R)``
* gaussian: ``r + N(0, (m * R / sqrt(3))^2)`` (same variance as the uniform case)

where ``R`` is the span of the reward's range (``hi - lo``; 1 for a 0/1 reward) and ``m`` the noise scale
(default 0.02). ``m`` may follow a schedule of the training step ``t`` read from TRL's ``trainer_state``
(``global_step``, and ``max_steps`` for the cosine and "reverse" schedules), as in the paper's code:

* ``constant``:   ``m``
* ``sqrt``:       ``m * (t / 300 + 1) ** -0.5``
* ``exp``:        ``m * 0.99 ** t``
* ``step``:       ``m * 0.5 ** floor(t / step_size)`` (multi-step decay, ``step_size`` default 100)
* ``cosine``:     from ``m_max`` (0.1) down to ``m_min`` (1e-3) over ``max_steps``
* ``reverse_*``:  the same schedule run backwards, ``m_rev(t) = m(T - t)``, i.e. growing noise.

Caution (measured in ``benchmarks.rl_toy``): under TRL's default per-group std scaling, a group whose
rewards were all equal becomes a group of (nearly) unit-variance random advantages whatever ``m`` is,
because the dithered spread is divided by its own std. Small ``m`` does not mean small perturbation of the
update there; it only means the noise does not reorder samples whose rewards differ.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

SCHEDULES = ("constant", "sqrt", "exp", "step", "cosine")
ALL_SCHEDULES = SCHEDULES + tuple(f"reverse_{s}" for s in SCHEDULES)
DISTRIBUTIONS = ("gaussian", "uniform")


def noise_scale(
    schedule: str,
    step: int,
    max_steps: int | None = None,
    m: float = 0.02,
    *,
    sqrt_period: float = 300.0,
    exp_gamma: float = 0.99,
    step_size: int = 100,
    step_gamma: float = 0.5,
    cosine_max: float = 0.1,
    cosine_min: float = 1e-3,
) -> float:
    """The ReDit noise scale ``m_t`` of ``schedule`` at training step ``step`` (see module docstring).

    >>> noise_scale("sqrt", 900, m=0.02)
    0.01
    >>> round(noise_scale("reverse_exp", 0, max_steps=100, m=1.0), 6) == round(0.99 ** 100, 6)
    True
    """
    if schedule not in ALL_SCHEDULES:
        raise ValueError(f"unknown ReDit schedule {schedule!r}; choose one of {', '.join(ALL_SCHEDULES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if m < 0:
        raise ValueError(f"noise scale m must be >= 0, got {m}")
    base = schedule.removeprefix("reverse_")
    needs_total = schedule.startswith("reverse_") or base == "cosine"
    if needs_total:
        if max_steps is None or max_steps <= 0:
            raise ValueError(
                f"schedule {schedule!r} needs the total number of steps: pass max_steps > 0 "
                "(TRL's trainer_state.max_steps is set once training starts)"
            )
        step = min(step, max_steps)
        if schedule.startswith("reverse_"):
            step = max_steps - step
    if base == "constant":
        return float(m)
    if base == "sqrt":
        return float(m * (step / sqrt_period + 1.0) ** -0.5)
    if base == "exp":
        return float(m * exp_gamma**step)
    if base == "step":
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        return float(m * step_gamma ** (step // step_size))
    # cosine annealing from cosine_max to cosine_min over max_steps
    assert max_steps is not None
    frac = step / max_steps
    return float(cosine_min + 0.5 * (cosine_max - cosine_min) * (1.0 + math.cos(math.pi * frac)))


def dither(
    rewards: torch.Tensor,
    scale: float,
    reward_span: float = 1.0,
    distribution: str = "gaussian",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add ReDit noise of scale ``scale`` (relative to ``reward_span``) to a float tensor of rewards.

    NaN rewards (TRL's "not applicable") stay NaN.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if reward_span <= 0:
        raise ValueError(f"reward_span must be > 0 (hi - lo of the reward range), got {reward_span}")
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    half_width = scale * reward_span
    if half_width == 0:
        return rewards.clone()
    if distribution == "uniform":
        u = torch.rand(rewards.shape, generator=generator, dtype=torch.float32)
        noise = (2.0 * u - 1.0) * half_width
    else:
        noise = torch.randn(rewards.shape, generator=generator, dtype=torch.float32) * (half_width / math.sqrt(3.0))
    return rewards + noise


def _trainer_steps(trainer_state: Any) -> tuple[int, int | None]:
    if trainer_state is None:
        return 0, None
    step = int(getattr(trainer_state, "global_step", 0) or 0)
    max_steps = getattr(trainer_state, "max_steps", None)
    return step, (int(max_steps) if max_steps else None)


class ReDitReward:
    """Wrap a TRL reward function so that it returns dithered rewards (arXiv 2506.18631).

    The wrapper has TRL's reward-function signature (``prompts``, ``completions``, ``completion_ids``,
    ``trainer_state``, other dataset columns as keyword arguments) and keeps the wrapped function's
    ``__name__``, so TRL logs it under the same name. Each call logs, through TRL's ``log_metric`` hook
    when present (and always into ``self.history``), the noise scale and the std of the pre-noise rewards
    under ``redit/<name>/noise_scale`` and ``redit/<name>/pre_noise_std``.

    Args:
        reward_func: the reward function to dither (any TRL-style callable returning floats or None).
        m: base noise scale (paper default 0.02). ``m=0`` returns the wrapped rewards unchanged.
        distribution: ``"gaussian"`` (paper's default) or ``"uniform"``.
        schedule: one of ``ALL_SCHEDULES``.
        reward_range: ``(lo, hi)`` of the reward; the noise is scaled by ``hi - lo``.
        seed: seed of the wrapper's own torch.Generator (the global RNG is never used).
        schedule_kwargs: extra keyword arguments for :func:`noise_scale` (``step_size``, ``cosine_max``…).
    """

    def __init__(
        self,
        reward_func: Callable[..., list[float | None]],
        m: float = 0.02,
        distribution: str = "gaussian",
        schedule: str = "constant",
        reward_range: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        **schedule_kwargs: Any,
    ) -> None:
        if not callable(reward_func):
            raise TypeError(
                "ReDitReward wraps a reward *function*; for a reward model, wrap it with "
                "lmopt.rl.RewardModelFunction first"
            )
        if inspect.iscoroutinefunction(reward_func) or inspect.iscoroutinefunction(type(reward_func).__call__):
            raise TypeError("ReDitReward wraps synchronous reward functions; wrap an async one in a sync function")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if schedule not in ALL_SCHEDULES:
            raise ValueError(f"unknown ReDit schedule {schedule!r}; choose one of {', '.join(ALL_SCHEDULES)}")
        if m < 0:
            raise ValueError(f"noise scale m must be >= 0, got {m}")
        lo, hi = reward_range
        if not hi > lo:
            raise ValueError(f"reward_range must be (lo, hi) with hi > lo, got {reward_range}")
        noise_scale(schedule, 0, 1, m, **schedule_kwargs)  # validates schedule_kwargs early
        self.reward_func = reward_func
        self.m = float(m)
        self.distribution = distribution
        self.schedule = schedule
        self.reward_span = float(hi - lo)
        self.schedule_kwargs = schedule_kwargs
        self.generator = torch.Generator().manual_seed(int(seed))
        self.history: list[dict[str, float]] = []
        name = getattr(reward_func, "__name__", type(reward_func).__name__)
        self.__name__ = name
        functools.update_wrapper(self, reward_func, assigned=("__doc__",), updated=())

    def current_scale(self, trainer_state: Any = None) -> float:
        step, max_steps = _trainer_steps(trainer_state)
        if self.schedule.startswith("reverse_") or self.schedule.endswith("cosine"):
            if max_steps is None:
                raise ValueError(
                    f"schedule {self.schedule!r} needs trainer_state.max_steps; call the reward from a TRL "
                    "trainer or pass a trainer_state with max_steps set"
                )
        return noise_scale(self.schedule, step, max_steps, self.m, **self.schedule_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        raw = self.reward_func(*args, **kwargs)
        raw = list(raw)
        trainer_state = kwargs.get("trainer_state")
        scale = self.current_scale(trainer_state) if self.m > 0 else 0.0
        values = torch.tensor([float("nan") if r is None else float(r) for r in raw], dtype=torch.float32)
        noisy = dither(values, scale, self.reward_span, self.distribution, self.generator)
        finite = values[~torch.isnan(values)]
        spread = float(finite.std(unbiased=True)) if finite.numel() > 1 else 0.0
        step, _ = _trainer_steps(trainer_state)
        self.history.append({"step": float(step), "noise_scale": scale, "pre_noise_std": spread})
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"redit/{self.__name__}/noise_scale", scale)
            log_metric(f"redit/{self.__name__}/pre_noise_std", spread)
        if scale == 0.0:
            return raw
        return [None if r is None else float(v) for r, v in zip(raw, noisy.tolist())]
