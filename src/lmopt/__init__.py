"""lmopt: optimisation of language-model systems — weights, prompts and RL rewards.

Subpackages (dependencies point downwards only): ``optim`` and ``zo`` (weights), ``bandits``, ``lm``
(language-model backends, cache, budgets), ``data`` (tasks), ``prompt`` (prompt optimisers), ``rl``
(reward shaping for RL fine-tuning), ``modeling`` (word problem → optimisation model → solver) and ``bo``
(LLM-guided Bayesian optimisation as optuna samplers). Heavy dependencies are imported lazily by the modules
that need them.
"""

__version__ = "0.1.0"
