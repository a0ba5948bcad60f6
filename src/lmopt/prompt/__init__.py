"""Prompt optimisation on top of :mod:`lmopt.lm`, :mod:`lmopt.data` and :mod:`lmopt.bandits`."""

from .evaluator import EvalResult, Prompt, evaluate_prompt

__all__ = ["EvalResult", "Prompt", "evaluate_prompt"]
