"""LLM-enhanced Bayesian optimisation as optuna samplers.

:class:`LLAMBOSampler` (LLAMBO, arXiv 2402.03921): a language model proposes configurations that should reach a
target score and, as a surrogate, predicts their scores (or whether they are among the best); the sampler
plugs into any optuna study, so storage, pruning and dashboards stay as they are. :class:`TaskContext` says
what is tuned. Needs the ``tune`` extra (optuna, scipy).
"""

from .llambo import ALPHA_STEPS, SURROGATES, LLAMBOSampler, expected_improvement, history_of, target_value, top_labels
from .prompts import TaskContext
from .space import Parsed, check_space, describe_space, format_config, parse_config

__all__ = ["ALPHA_STEPS", "SURROGATES", "LLAMBOSampler", "Parsed", "TaskContext", "check_space", "describe_space",
           "expected_improvement", "format_config", "history_of", "parse_config", "target_value", "top_labels"]
