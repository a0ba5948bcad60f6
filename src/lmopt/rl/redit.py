"""ReDit: reward dithering for GRPO-style training (Wei et al., arXiv 2506.18631, §3, Eq. 5–6).

Each reward is perturbed by zero-mean noise *inside* the reward function, before TRL sums the reward
columns and normalises them per group:

* uniform:  ``r + U(-m * R, m * R)`` (the default: the authors' m = 0.02 runs use uniform noise)
* gaussian: ``r + N(0, (m * R / sqrt(3))^2)`` (same variance as the uniform case)

where ``R`` is the span of the reward's range (``hi - lo``; 1 for a 0/1 reward) and ``m`` the noise scale
(default 0.02). ``m`` may follow a schedule of the training step ``t`` read from TRL's ``trainer_state``
(``global_step``, and ``max_steps`` for the "reverse" schedules). The defaults are the values of the
authors' experiment code, each a named argument of :func:`noise_scale`:

* ``constant``:   ``m``
* ``sqrt``:       ``m * (t / 300 + 1) ** -0.5``
* ``exp``:        ``max(m * 0.99 ** t, exp_floor)`` with ``exp_floor = 1e-3``
* ``step``:       ``m * 0.5 ** k`` with ``k`` the number of milestones (2000, 4000, 6000, 8000) passed;
  ``step_size=s`` decays every ``s`` steps instead (no milestones)
* ``cosine``:     from ``cosine_max`` (0.1) down to ``cosine_min`` (1e-3) over ``cosine_horizon`` steps
  (8000, then constant at ``cosine_min``); ``cosine_horizon=None`` anneals over ``max_steps``
* ``reverse_*``:  the same schedule run backwards, ``m_rev(t) = m(T - t)`` with ``T = max_steps``.

Noise streams: every wrapper draws from its own ``torch.Generator`` whose seed is derived (a hash) from one
run seed (``seed``, default 0), the wrapper's stream key (the reward function's name, plus an occurrence
number when several wrappers in a process share a name and run seed) and the data-parallel rank (read from
``torch.distributed`` or the ``RANK`` environment variable at the first call). So two dithered reward
functions add independent noise, every rank draws different noise, and a run is reproducible from its seed.

Caution (measured in ``benchmarks.rl_toy``): under TRL's default per-group std scaling, a group whose
rewards were all equal becomes a group of (nearly) unit-variance random advantages whatever ``m`` is,
because the dithered spread is divided by its own std. Small ``m`` does not mean small perturbation of the
update there; it only means the noise does not reorder samples whose rewards differ. TRL's own
``rewards/...`` and ``frac_reward_zero_std`` logs see the *dithered* rewards; the wrapper logs the clean
ones as ``redit/<name>/clean_mean`` and ``redit/<name>/clean_frac_zero_std``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

SCHEDULES = ("constant", "sqrt", "exp", "step", "cosine")
ALL_SCHEDULES = SCHEDULES + tuple(f"reverse_{s}" for s in SCHEDULES)
DISTRIBUTIONS = ("gaussian", "uniform")
# the authors' experiment code: exp decay floored at 1e-3, step decay halving at fixed milestones, cosine
# annealing over a fixed horizon of 8000 steps
EXP_FLOOR = 1e-3
STEP_MILESTONES = (2000, 4000, 6000, 8000)
COSINE_HORIZON = 8000


def noise_scale(
    schedule: str,
    step: int,
    max_steps: int | None = None,
    m: float = 0.02,
    *,
    sqrt_period: float = 300.0,
    exp_gamma: float = 0.99,
    exp_floor: float = EXP_FLOOR,
    step_milestones: Sequence[int] = STEP_MILESTONES,
    step_size: int | None = None,
    step_gamma: float = 0.5,
    cosine_max: float = 0.1,
    cosine_min: float = 1e-3,
    cosine_horizon: int | None = COSINE_HORIZON,
) -> float:
    """The ReDit noise scale ``m_t`` of ``schedule`` at training step ``step`` (see module docstring).

    >>> noise_scale("sqrt", 900, m=0.02)
    0.01
    >>> noise_scale("step", 4500, m=0.02)
    0.005
    """
    if schedule not in ALL_SCHEDULES:
        raise ValueError(f"unknown ReDit schedule {schedule!r}; choose one of {', '.join(ALL_SCHEDULES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if m < 0:
        raise ValueError(f"noise scale m must be >= 0, got {m}")
    if exp_floor < 0:
        raise ValueError(f"exp_floor must be >= 0, got {exp_floor}")
    if step_size is not None and step_size < 1:
        raise ValueError(f"step_size must be >= 1 (or None for the milestones), got {step_size}")
    if list(step_milestones) != sorted(step_milestones) or any(int(x) < 1 for x in step_milestones):
        raise ValueError(f"step_milestones must be increasing positive steps, got {tuple(step_milestones)}")
    if cosine_horizon is not None and cosine_horizon < 1:
        raise ValueError(f"cosine_horizon must be >= 1 (or None for max_steps), got {cosine_horizon}")
    base = schedule.removeprefix("reverse_")
    reverse = schedule.startswith("reverse_")
    needs_total = reverse or (base == "cosine" and cosine_horizon is None)
    if needs_total and (max_steps is None or max_steps <= 0):
        raise ValueError(
            f"schedule {schedule!r} needs the total number of steps: pass max_steps > 0 "
            "(TRL's trainer_state.max_steps is set once training starts)"
            + ("" if reverse else ", or a fixed cosine_horizon")
        )
    if reverse:
        assert max_steps is not None
        step = max_steps - min(step, max_steps)
    if base == "constant":
        return float(m)
    if base == "sqrt":
        return float(m * (step / sqrt_period + 1.0) ** -0.5)
    if base == "exp":
        return float(max(m * exp_gamma**step, exp_floor))
    if base == "step":
        k = step // step_size if step_size is not None else sum(step >= int(x) for x in step_milestones)
        return float(m * step_gamma**k)
    horizon = cosine_horizon if cosine_horizon is not None else max_steps
    assert horizon is not None
    frac = min(step, horizon) / horizon
    return float(cosine_min + 0.5 * (cosine_max - cosine_min) * (1.0 + math.cos(math.pi * frac)))


def dither(
    rewards: torch.Tensor,
    scale: float,
    reward_span: float = 1.0,
    distribution: str = "uniform",
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


def stream_seed(run_seed: int, key: str, rank: int = 0) -> int:
    """A 63-bit generator seed for noise stream ``key`` on data-parallel ``rank`` of run ``run_seed``."""
    digest = hashlib.sha256(f"lmopt.redit|{int(run_seed)}|{key}|{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def current_rank() -> int:
    """The data-parallel rank of this process: torch.distributed's when initialised, else ``$RANK``, else 0."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0") or 0)


_KEYS_LOCK = threading.Lock()
_KEYS_SEEN: Counter[tuple[int, str]] = Counter()


def _claim_stream_key(run_seed: int, name: str) -> str:
    """``name`` for the first wrapper of that name and run seed in this process, ``name#k`` for the k-th repeat."""
    with _KEYS_LOCK:
        k = _KEYS_SEEN[(run_seed, name)]
        _KEYS_SEEN[(run_seed, name)] += 1
    return name if k == 0 else f"{name}#{k}"


def _trainer_steps(trainer_state: Any) -> tuple[int, int | None]:
    if trainer_state is None:
        return 0, None
    step = int(getattr(trainer_state, "global_step", 0) or 0)
    max_steps = getattr(trainer_state, "max_steps", None)
    return step, (int(max_steps) if max_steps else None)


def _frac_zero_std(values: torch.Tensor, prompts: Sequence[Any] | None) -> float | None:
    """Fraction of prompt groups (runs of equal consecutive prompts, TRL's layout) whose rewards are all equal."""
    if prompts is None or len(prompts) != values.numel() or values.numel() == 0:
        return None
    groups, tied, start = 0, 0, 0
    for i in range(1, values.numel() + 1):
        if i == values.numel() or prompts[i] != prompts[start]:
            g = values[start:i]
            g = g[~torch.isnan(g)]
            groups += 1
            tied += int(g.numel() < 2 or bool((g.max() - g.min()) == 0))
            start = i
    return tied / groups


class ReDitReward:
    """Wrap a TRL reward function so that it returns dithered rewards (arXiv 2506.18631).

    The wrapper has TRL's reward-function signature (``prompts``, ``completions``, ``completion_ids``,
    ``trainer_state``, other dataset columns as keyword arguments) and keeps the wrapped function's
    ``__name__``, so TRL logs it under the same name. Each call logs, through TRL's ``log_metric`` hook
    when present (and always into ``self.history``), under ``redit/<name>/``: ``noise_scale``,
    ``pre_noise_std`` (std of the clean rewards), ``clean_mean`` and ``clean_frac_zero_std`` (fraction of
    prompt groups whose clean rewards are tied; TRL's ``frac_reward_zero_std`` counts the dithered ones).

    Args:
        reward_func: the reward function to dither (any TRL-style callable returning floats or None).
        m: base noise scale (paper default 0.02). ``m=0`` returns the wrapped rewards unchanged.
        distribution: ``"uniform"`` (the authors' runs) or ``"gaussian"``.
        schedule: one of ``ALL_SCHEDULES``.
        reward_range: ``(lo, hi)`` of the reward; the noise is scaled by ``hi - lo``.
        seed: the run seed; the noise stream is derived from it, ``stream`` and the rank (module docstring).
        stream: the stream key (default: the reward function's name, numbered on repeats).
        rank: the data-parallel rank (default: read at the first call, see :func:`current_rank`).
        schedule_kwargs: extra keyword arguments for :func:`noise_scale` (``step_milestones``,
            ``cosine_horizon``, ``exp_floor``…).
    """

    def __init__(
        self,
        reward_func: Callable[..., list[float | None]],
        m: float = 0.02,
        distribution: str = "uniform",
        schedule: str = "constant",
        reward_range: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        *,
        stream: str | None = None,
        rank: int | None = None,
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
        if rank is not None and rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        try:
            noise_scale(schedule, 0, 1, m, **schedule_kwargs)  # validates schedule_kwargs early
        except TypeError as err:
            raise TypeError(f"unknown ReDit schedule argument: {err}") from None
        self.reward_func = reward_func
        self.m = float(m)
        self.distribution = distribution
        self.schedule = schedule
        self.reward_span = float(hi - lo)
        self.schedule_kwargs = schedule_kwargs
        self.seed = int(seed)
        name = getattr(reward_func, "__name__", type(reward_func).__name__)
        self.__name__ = name
        self.stream = stream if stream is not None else _claim_stream_key(self.seed, name)
        self._rank = rank
        self._generator: torch.Generator | None = None
        self.history: list[dict[str, float]] = []
        functools.update_wrapper(self, reward_func, assigned=("__doc__",), updated=())

    @property
    def generator(self) -> torch.Generator:
        """This wrapper's noise generator, created at first use (the rank is known by then)."""
        if self._generator is None:
            rank = self._rank if self._rank is not None else current_rank()
            self._rank = rank
            self._generator = torch.Generator().manual_seed(stream_seed(self.seed, self.stream, rank))
        return self._generator

    def current_scale(self, trainer_state: Any = None) -> float:
        step, max_steps = _trainer_steps(trainer_state)
        needs_total = self.schedule.startswith("reverse_") or (
            self.schedule == "cosine" and self.schedule_kwargs.get("cosine_horizon", COSINE_HORIZON) is None)
        if needs_total and max_steps is None:
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
        clean_mean = float(finite.mean()) if finite.numel() else float("nan")
        tied = _frac_zero_std(values, kwargs.get("prompts", args[0] if args else None))
        step, _ = _trainer_steps(trainer_state)
        entry = {"step": float(step), "noise_scale": scale, "pre_noise_std": spread, "clean_mean": clean_mean}
        if tied is not None:
            entry["clean_frac_zero_std"] = tied
        self.history.append(entry)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for key in ("noise_scale", "pre_noise_std", "clean_mean", "clean_frac_zero_std"):
                if key in entry:
                    log_metric(f"redit/{self.__name__}/{key}", entry[key])
        if scale == 0.0:
            return raw
        return [None if r is None else float(v) for r, v in zip(raw, noisy.tolist())]
