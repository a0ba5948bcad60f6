"""Prompt optimisation on top of :mod:`lmopt.lm`, :mod:`lmopt.data` and :mod:`lmopt.bandits`.

>>> from lmopt.prompt import EASE                                     # doctest: +SKIP
>>> result = EASE().run(task, lm, budget=165)                          # doctest: +SKIP
>>> result.best_prompt, result.test_score, result.usage                # doctest: +SKIP
"""

from .base import Optimizer, PromptBudget, PromptOptimizationResult, RunContext, StopRun, prompt_text
from .evaluator import EvalResult, Prompt, evaluate_prompt
from .expo import EXPO, BernoulliBandit, SequentialResult
from .features import HashingEmbedder
from .greater import GReaTer
from .methods import APE, EASE, INSTINCT, OPRO, RandomSearch, generate_instructions
from .optoprime import OptoPrime, OptoPrimePrompt
from .parsing import parse_proposal
from .promst import PROMST
from .spo import SPO
from .textgrad import TextGrad, TextualGradientDescent
from .textual_graph import Variable, aggregate, backward, call_function, llm_call, lm_engine

METHODS = {"random": RandomSearch, "ape": APE, "opro": OPRO, "ease": EASE, "instinct": INSTINCT, "spo": SPO,
           "textgrad": TextGrad, "greater": GReaTer, "optoprime": OptoPrimePrompt,
           "promst": PROMST}

__all__ = ["APE", "EASE", "EXPO", "GReaTer", "INSTINCT", "METHODS", "OPRO", "PROMST", "SPO", "BernoulliBandit",
           "EvalResult", "HashingEmbedder", "OptoPrime", "OptoPrimePrompt", "Optimizer", "Prompt", "PromptBudget",
           "PromptOptimizationResult", "RandomSearch", "RunContext", "SequentialResult", "StopRun", "TextGrad",
           "TextualGradientDescent", "Variable", "aggregate", "backward", "call_function", "evaluate_prompt",
           "generate_instructions", "llm_call", "lm_engine", "parse_proposal", "prompt_text"]
