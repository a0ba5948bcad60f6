"""LLMs that solve optimisation problems: natural language → optimisation model → solver.

So far: :func:`run_sandboxed`, the limited subprocess in which every model-written program runs (see
:mod:`lmopt.modeling.sandbox`).
"""

from .sandbox import SandboxLimits, SandboxResult, run_sandboxed

__all__ = ["SandboxLimits", "SandboxResult", "run_sandboxed"]
