"""OTC — Optimal Tool Call-controlled policy optimisation (Wang et al., arXiv 2504.14870, §3): a reward that
keeps correctness and prefers the fewest tool calls that still solve the task.

With ``m`` the tool calls of a trajectory and ``n`` the optimal number for its question:

* OTC-PPO (no group, ``n`` unknown): ``r_tool = cos(m π / (2m + c))`` — 1 without calls, falling towards 0.
* OTC-GRPO: ``n`` = the fewest calls among the *correct* completions of the question's group;
  ``f(m, n) = 0`` if ``m = n = 0``, ``m`` if ``n = 0``, else ``2nm / (m + n)``;
  ``r_tool = 1`` if ``f = n = 0``, ``cos(m π / (2m + c))`` if ``n = 0``, else ``sin(f π / (2n))`` — 1 at
  ``m = n`` and lower for both fewer and more calls (``m = 0 < n``: 0).
* The reward is ``α · r_tool · r_φ`` with ``r_φ`` the correctness reward, so a wrong answer earns nothing
  whatever its calls.

``c`` (smoothing; default 1.0) and ``α`` (default 1.0): the paper's exact values could not be checked offline
(no released code was reachable); both are named options. ``remember_minimum=True`` keeps, per prompt, the
fewest calls of any correct completion seen so far in training (a running estimate of ``n`` across epochs)
instead of the current group's minimum only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .calc import count_calls


def _check_calls(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be an int >= 0 (a number of tool calls), got {v!r}")
    return v


def otc_ppo_tool_reward(m: int, c: float = 1.0) -> float:
    """``cos(m π / (2m + c))``: OTC-PPO's tool reward for ``m`` calls."""
    _check_calls("m", m)
    if not (isinstance(c, (int, float)) and c > 0):
        raise ValueError(f"c must be a positive number, got {c!r}")
    return math.cos(m * math.pi / (2 * m + c))


def otc_tool_reward(m: int, n: int | None, c: float = 1.0) -> float:
    """OTC-GRPO's tool reward for ``m`` calls when ``n`` is optimal (``n=None``: OTC-PPO's form)."""
    _check_calls("m", m)
    if n is None:
        return otc_ppo_tool_reward(m, c)
    _check_calls("n", n)
    if n == 0:
        return 1.0 if m == 0 else otc_ppo_tool_reward(m, c)
    f = 2.0 * n * m / (m + n)
    return math.sin(f * math.pi / (2 * n))


class OTCReward:
    """A TRL reward function: ``α · r_tool · r_φ`` (see the module docstring).

    Args:
        correctness: a TRL reward function ``(prompts, completions, **columns) -> list[float]`` giving
            ``r_φ`` in [0, 1]; a completion counts as correct for ``n`` when its value is ≥ ``correct_at``.
        num_generations: completions per prompt; TRL passes each prompt's group as consecutive rows.
        mode: ``"grpo"`` (``n`` from the group) or ``"ppo"`` (``n`` unknown: the cosine form).
        count: ``completion -> number of tool calls`` (default: ``<calc>...</calc>`` calls).
        c, alpha: the smoothing constant and the scale α.
        remember_minimum: estimate ``n`` per prompt over the whole run, not the current group alone.

    After each call, ``last`` holds the per-completion calls, ``n`` per group and correctness, and
    ``history`` one summary per call (mean calls, calls per solved completion).
    """

    def __init__(self, correctness: Callable[..., Sequence[float]], num_generations: int, *, mode: str = "grpo",
                 count: Callable[[Any], int] = count_calls, c: float = 1.0, alpha: float = 1.0,
                 correct_at: float = 1.0, remember_minimum: bool = False) -> None:
        if not callable(correctness):
            raise TypeError("correctness must be a TRL reward function (callable)")
        if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
            raise ValueError(f"num_generations must be a positive int, got {num_generations!r}")
        if mode not in ("grpo", "ppo"):
            raise ValueError(f"mode must be 'grpo' or 'ppo', got {mode!r}")
        if not (isinstance(c, (int, float)) and c > 0):
            raise ValueError(f"c must be a positive number, got {c!r}")
        if not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        self.correctness, self.count = correctness, count
        self.num_generations, self.mode, self.c, self.alpha = num_generations, mode, float(c), float(alpha)
        self.correct_at, self.remember_minimum = float(correct_at), remember_minimum
        self._best: dict[str, int] = {}
        self.last: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []
        self.__name__ = f"otc_{mode}"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        G = self.num_generations
        if len(completions) % G:
            raise ValueError(f"{len(completions)} completions do not split into groups of num_generations={G}")
        r_phi = [float(v) for v in self.correctness(prompts, completions, **kwargs)]
        if len(r_phi) != len(completions):
            raise ValueError(f"correctness returned {len(r_phi)} values for {len(completions)} completions")
        calls = [int(self.count(c)) for c in completions]
        out, ns = [], []
        for g in range(0, len(completions), G):
            idx = range(g, g + G)
            if len(prompts) == len(completions) and any(prompts[i] != prompts[g] for i in idx):
                raise ValueError(f"rows {g}..{g + G - 1} do not share one prompt: pass num_generations equal to "
                                 "the trainer's, whose groups TRL passes as consecutive rows")
            n: int | None = None
            if self.mode == "grpo":
                solved = [calls[i] for i in idx if r_phi[i] >= self.correct_at]
                n = min(solved) if solved else None
                if self.remember_minimum:
                    key = repr(prompts[g])
                    if n is not None:
                        self._best[key] = min(n, self._best.get(key, n))
                    n = self._best.get(key, n)
            ns.append(n)
            # no correct completion in the group: with a 0/1 correctness every reward there is 0 whatever n is
            out += [self.alpha * otc_tool_reward(calls[i], n if n is not None else 0, self.c) * r_phi[i]
                    for i in idx]
        solved = [m for m, r in zip(calls, r_phi) if r >= self.correct_at]
        self.last = {"calls": calls, "n": ns, "correctness": r_phi}
        # tool productivity (the paper's metric): correct answers per tool call
        self.history.append({"mean_calls": sum(calls) / len(calls), "solved": len(solved) / len(calls),
                             "calls_per_solved": sum(solved) / len(solved) if solved else float("nan"),
                             "tool_productivity": len(solved) / sum(calls) if sum(calls) else float("nan")})
        return out


__all__ = ["OTCReward", "otc_ppo_tool_reward", "otc_tool_reward"]
