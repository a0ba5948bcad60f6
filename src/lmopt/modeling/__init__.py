"""LLMs that solve optimisation problems: natural language → optimisation model → solver.

:class:`OptimizationModeler` (strategies ``formulation``, ``code``, ``expert``; self-debug; self-consistency)
on top of the structured five-element :class:`Formulation` (validated; its linear expressions parsed, never
evaluated), :func:`solve` on HiGHS, SCIP or Pyomo, and :func:`run_sandboxed`, the limited subprocess in which
every model-written program runs (see :mod:`lmopt.modeling.sandbox`). Embedded word problems:
:func:`lmopt.modeling.problems.load_problems`; public benchmarks: :func:`lmopt.modeling.data.load_benchmark`.
"""

from .formulation import Formulation, LinearModel, ModelError, linearize, parse_formulation
from .pipeline import STRATEGIES, ModelingResult, OptimizationModeler
from .sandbox import SandboxLimits, SandboxResult, run_sandboxed
from .solvers import SOLVERS, Solution, solve

__all__ = ["SOLVERS", "STRATEGIES", "Formulation", "LinearModel", "ModelError", "ModelingResult",
           "OptimizationModeler", "SandboxLimits", "SandboxResult", "Solution", "linearize", "parse_formulation",
           "run_sandboxed", "solve"]
