"""Bandit algorithms shared by prompt optimisation (:mod:`lmopt.prompt`) and RL prompt selection.

They know nothing of language models: arms are rows of a feature matrix (:class:`NeuralUCB`) or integer
indices (:class:`EXP3`, :class:`ExponentialWeights`, :class:`BetaBernoulliTS`, :class:`BatchUCB`). Every
random choice comes from the ``seed`` given at construction.
"""

from .batch_ucb import BatchUCB
from .exp3 import EXP3, ExponentialWeights, exp3_gamma
from .neural_ucb import NeuralUCB
from .thompson import BetaBernoulliTS

__all__ = ["BatchUCB", "EXP3", "ExponentialWeights", "NeuralUCB", "BetaBernoulliTS", "exp3_gamma"]
