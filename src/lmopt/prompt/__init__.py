"""Prompt optimisation on top of :mod:`lmopt.lm`, :mod:`lmopt.data` and :mod:`lmopt.bandits`.

>>> from lmopt.prompt import EASE                                     # doctest: +SKIP
>>> result = EASE().run(task, lm, budget=165)                          # doctest: +SKIP
>>> result.best_prompt, result.test_score, result.usage                # doctest: +SKIP
"""

from .base import Optimizer, PromptBudget, PromptOptimizationResult, RunContext, StopRun, prompt_text
from .evaluator import EvalResult, Prompt, evaluate_prompt
from .expo import EXPO, BernoulliBandit, SequentialResult
from .features import HashingEmbedder
from .methods import APE, EASE, INSTINCT, OPRO, RandomSearch, generate_instructions
from .parsing import parse_proposal
from .spo import SPO

METHODS = {"random": RandomSearch, "ape": APE, "opro": OPRO, "ease": EASE, "instinct": INSTINCT, "spo": SPO}

__all__ = ["APE", "EASE", "EXPO", "BernoulliBandit", "SequentialResult",
           "INSTINCT", "METHODS", "OPRO", "SPO", "EvalResult", "HashingEmbedder", "Optimizer",
           "Prompt", "PromptBudget", "PromptOptimizationResult", "RandomSearch", "RunContext", "StopRun",
           "evaluate_prompt", "generate_instructions", "parse_proposal", "prompt_text"]
