"""Natural language → optimisation model → solver → answer, with a language model through :mod:`lmopt.lm`.

Strategies (each a chat with the model; every call is cached, budgeted and replayable like any ``LM`` call):

- ``"formulation"`` (LLMOPT, arXiv 2410.13213): the model writes the five-element formulation as JSON; lmopt
  validates it, compiles it and solves it with HiGHS. No model-written code runs at all.
- ``"code"`` (LLMOPT's second step): the model writes a Python program that solves the problem (with
  ``highspy`` or ``pyomo``) and sets ``result = {"status": ..., "objective": ...}``; it runs in
  :func:`~lmopt.modeling.sandbox.run_sandboxed`.
- ``"expert"`` (ORThought's expert-guided single prompt, ZJU-TSELab/ORThought): one prompt that walks the
  model through an operations-research expert's steps (understand, define, formulate, check) before the
  code, run in the sandbox. ORThought's released prompt asks for Gurobipy code returning the objective from
  a function; lmopt's (its own wording) asks for highspy or pyomo, open solvers, and a ``result`` variable.

Self-debug (``debug_rounds``, default 3, as LLMOPT): a parse or validation error, a program that fails, or a
solver status other than optimal is fed back to the model with its previous answer, which it revises.
Self-consistency (``samples`` > 1): that many independent attempts, the answer is the most common objective
(values equal to ``rel_tol`` count as one; ties go to the first).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .._json import find_json_object
from ..lm import LM, GenerationConfig
from .formulation import parse_formulation
from .sandbox import SandboxLimits, run_sandboxed
from .solvers import solve

STRATEGIES = ("formulation", "code", "expert")

_FORMULATION_PROMPT = """Model this optimisation problem. Answer with one JSON object and nothing else, with the keys
"sets", "parameters", "variables", "objective" and "constraints":
- sets: [{{"name": "P", "elements": ["a", "b"]}}]
- parameters: [{{"name": "cost", "indices": ["P"], "values": {{"a": 3, "b": 5}}}}]  (a number when unindexed;
  keys "a,b" for two indices)
- variables: [{{"name": "x", "indices": ["P"], "type": "continuous" | "integer" | "binary", "lower": 0}}]
- objective: {{"sense": "min" | "max", "expression": "sum(cost[p] * x[p] for p in P)"}}
- constraints: [{{"name": "cap", "expression": "sum(x[p] for p in P) <= 10", "for_all": {{}}}}]
Expressions are linear, in Python syntax, over the names you define.

Problem:
{problem}"""

_CODE_PROMPT = """Write a Python program that solves this optimisation problem with highspy or pyomo (both are
installed; there is no network). The program must end by setting
result = {{"status": "optimal", "objective": <the optimal objective value as a number>}}
(use the solver's status word instead of "optimal" if it is not optimal). Answer with the program in one
```python block.

Problem:
{problem}"""

_EXPERT_PROMPT = """You are an operations research expert. Solve the problem below in four steps, writing each:
1. Understand: what is decided, what is the goal, what limits the decisions.
2. Define: the sets, the parameters with their values from the text, and the decision variables with their
   types (continuous, integer, binary) and bounds.
3. Formulate: the objective and every constraint, checking each number against the text.
4. Code: a Python program with highspy or pyomo (installed; no network) that solves the model and ends by
   setting result = {{"status": "optimal", "objective": <value>}}, in one ```python block.

Problem:
{problem}"""

_FEEDBACK = {
    "parse": "Your answer could not be used: {error}\nWrite the whole answer again, corrected, in the same form.",
    "status": "The model you wrote is {error}. Check the data and the constraints against the problem, then "
              "write the whole answer again, corrected, in the same form.",
}


@dataclass
class Attempt:
    """One model answer and what became of it."""

    round: int
    reply: str
    stage: str  # "parse", "run", "status" or "ok"
    status: str | None = None
    objective: float | None = None
    error: str = ""


@dataclass
class ModelingResult:
    """``objective``: the answer (None if no attempt produced an optimal model); ``executed``: some attempt
    produced a model that ran to a solver status; ``samples``: the attempts of every sample."""

    strategy: str
    objective: float | None
    status: str | None
    executed: bool
    samples: list[list[Attempt]] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return max((len(s) for s in self.samples), default=0)


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in a model's reply (a ```json fence first, else anywhere); raises ValueError."""
    obj = find_json_object(text)
    if obj is not None:
        return obj
    raise ValueError("no JSON object found in the answer" if "{" not in text else
                     "the JSON object in the answer does not parse (check quotes, commas and brackets)")


def extract_code(text: str) -> str:
    """The last ```python block of a reply (models often draft first); raises ValueError if there is none."""
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", text, re.S)
    if not blocks:
        raise ValueError("no ```python block found in the answer")
    return blocks[-1]


class OptimizationModeler:
    """Solve word problems with a language model.

    Args:
        lm: the model (an :class:`lmopt.lm.LM`: cache, budget and replay apply).
        strategy: one of :data:`STRATEGIES`.
        debug_rounds: revisions after a failure (0 disables self-debug).
        samples: independent attempts for self-consistency (1: none).
        temperature: sampling temperature of every call (0 = greedy; self-consistency needs > 0).
        max_new_tokens: per reply.
        sandbox: limits for model-written programs (``code`` and ``expert``).
        solver: for ``formulation``: ``highs`` (default), ``scip`` or ``pyomo``.
        rel_tol: objective values this close count as the same answer in the vote.
        seed: base seed of the sampled calls (sample ``k`` uses ``seed + k``).
        debug_context: what a revision sees: ``"last"`` (default) the problem, the latest answer and its
            feedback; ``"full"`` every earlier answer and feedback as well (the context grows by a reply per
            round).
    """

    def __init__(self, lm: LM, strategy: str = "formulation", *, debug_rounds: int = 3, samples: int = 1,
                 temperature: float = 0.0, max_new_tokens: int = 768, sandbox: SandboxLimits | None = None,
                 solver: str = "highs", rel_tol: float = 1e-6, seed: int = 0, debug_context: str = "last") -> None:
        if not isinstance(lm, LM):
            raise TypeError(f"lm must be an lmopt.lm.LM, got {type(lm).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        for name, v, lo in (("debug_rounds", debug_rounds, 0), ("samples", samples, 1),
                            ("max_new_tokens", max_new_tokens, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if debug_context not in ("last", "full"):
            raise ValueError(f"debug_context must be 'last' or 'full', got {debug_context!r}")
        self.debug_context = debug_context
        if samples > 1 and temperature <= 0:
            raise ValueError("self-consistency (samples > 1) needs temperature > 0: greedy samples are identical")
        self.lm, self.strategy, self.debug_rounds, self.samples = lm, strategy, debug_rounds, samples
        self.temperature, self.max_new_tokens, self.solver = float(temperature), max_new_tokens, solver
        self.sandbox = sandbox or SandboxLimits()
        self.rel_tol, self.seed = float(rel_tol), int(seed)

    def solve(self, problem: str) -> ModelingResult:
        if not isinstance(problem, str) or not problem.strip():
            raise ValueError("problem must be a non-empty description of an optimisation problem")
        runs = [self._sample(problem, k) for k in range(self.samples)]
        finals = [r[-1] for r in runs]
        answers = [a.objective for a in finals if a.stage == "ok" and a.objective is not None]
        objective = _vote(answers, self.rel_tol)
        status = "optimal" if objective is not None else next((a.status for a in finals if a.status), None)
        executed = any(a.stage in ("ok", "status") for r in runs for a in r)
        return ModelingResult(self.strategy, objective, status, executed, runs)

    def _sample(self, problem: str, k: int) -> list[Attempt]:
        template = {"formulation": _FORMULATION_PROMPT, "code": _CODE_PROMPT, "expert": _EXPERT_PROMPT}
        messages = [{"role": "user", "content": template[self.strategy].format(problem=problem.strip())}]
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  seed=self.seed + k)
        attempts: list[Attempt] = []
        for rnd in range(self.debug_rounds + 1):
            reply = self.lm.chat(messages, config, role="task")[0][0].text
            attempt = self._evaluate(reply, rnd)
            attempts.append(attempt)
            if attempt.stage == "ok" or rnd == self.debug_rounds:
                break
            kind = "status" if attempt.stage == "status" else "parse"
            # "last": the problem, the latest answer and its feedback, so the context does not grow with
            # the rounds (a small model's window overflows otherwise); "full": every earlier round too
            kept = messages if self.debug_context == "full" else messages[:1]
            messages = [*kept, {"role": "assistant", "content": reply},
                        {"role": "user", "content": _FEEDBACK[kind].format(error=attempt.error)}]
        return attempts

    def _evaluate(self, reply: str, rnd: int) -> Attempt:
        if self.strategy == "formulation":
            try:
                formulation = parse_formulation(extract_json(reply))
            except (ValueError, ValidationError) as exc:
                return Attempt(rnd, reply, "parse", error=_short(exc))
            sol = solve(formulation, self.solver, time_limit_s=self.sandbox.timeout_s)
            if not sol.optimal:
                return Attempt(rnd, reply, "status", sol.status, error=sol.status.replace("_", " or "))
            return Attempt(rnd, reply, "ok", "optimal", sol.objective)
        try:
            code = extract_code(reply)
        except ValueError as exc:
            return Attempt(rnd, reply, "parse", error=str(exc))
        run = run_sandboxed(code, self.sandbox)
        if not run.ok:
            return Attempt(rnd, reply, "run", error=run.error_summary())
        res = run.result
        if not (isinstance(res, dict) and isinstance(res.get("status"), str)):
            return Attempt(rnd, reply, "run", error="the program ran but did not set result = {\"status\": ..., "
                                                    "\"objective\": ...}")
        status = res["status"].strip().lower()
        obj = res.get("objective")
        if status != "optimal":
            return Attempt(rnd, reply, "status", status, error=status)
        if isinstance(obj, bool) or not isinstance(obj, (int, float)):
            return Attempt(rnd, reply, "run", error=f"result['objective'] must be a number, got {obj!r}")
        return Attempt(rnd, reply, "ok", "optimal", float(obj))


def _vote(values: Sequence[float], rel_tol: float) -> float | None:
    """The most common value (within ``rel_tol``); the first of equally common groups."""
    groups: list[list[float]] = []
    for v in values:
        for g in groups:
            if abs(v - g[0]) <= rel_tol * max(1.0, abs(g[0])):
                g.append(v)
                break
        else:
            groups.append([v])
    if not groups:
        return None
    return max(groups, key=len)[0]


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'model'}: {e['msg']}" for e in exc.errors()[:5])
    return str(exc)
