"""OptoPrime (Cheng et al., "Trace is the Next AutoDiff", arXiv 2406.16218, §4; microsoft/Trace).

One optimiser-LM call per step sees the execution trace of a traced program (:mod:`lmopt.prompt.trace`: the
calls, the function definitions, the inputs, the trainable variables, the intermediate values, the output)
and the feedback on its output, and answers with JSON: ``{"reasoning": ..., "suggestion": {name: new
value}}``. :class:`OptoPrime` validates every suggested value against its parameter's kind before applying
it (text: a non-empty string within ``max_value_chars``; number: a finite number; code: Python source that
parses and defines one function — it is compiled, never run here; :func:`~lmopt.prompt.trace.call_code`
runs it in the sandbox) and reports what it rejected and why. An unparseable reply is asked again
(``retries``) and then reported; parameters keep their values. ``memory_size`` past (variables, feedback)
pairs go into the prompt, as OptoPrime's memory.

:class:`OptoPrimePrompt` is the prompt-optimisation use of it with the ``run`` contract of lmopt's prompt
optimisers: the traced program renders the instruction with each minibatch input, the task model answers,
the task metric scores the answers; the feedback is the minibatch score and the expected answers of the
wrong ones; the new instruction is kept unless its validation score is lower.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._json import find_json_object
from ..lm.types import GenerationConfig
from .base import Optimizer, RunContext
from .evaluator import Prompt
from .textual_graph import Engine
from .trace import Node, ancestors, check_code, node, op, param, render_trace

SYSTEM = (
    "You are an optimiser of programs. You see a program's execution trace: #Code lists the calls in the order "
    "they ran, #Definitions what the functions do, #Inputs the constant inputs, #Variables the trainable "
    "values you may change, #Others the intermediate results, #Outputs the result and #Feedback what should "
    "change about it. Reason about how each variable affected the output, then suggest new values for the "
    "variables that should change. Answer with one JSON object and nothing else: "
    '{"reasoning": "<your reasoning>", "suggestion": {"<variable name>": <new value>, ...}}. '
    "A code variable's value is the complete source of its function, as a string.")


@dataclass
class StepReport:
    """What one :meth:`OptoPrime.step` did."""

    applied: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # name → why
    reasoning: str = ""
    parsed: bool = True
    raw: str = ""
    prompt_chars: int = 0


class OptoPrime:
    """The OptoPrime update over trainable :class:`~lmopt.prompt.trace.Node` parameters.

    Args:
        parameters: the trainable nodes (``param(...)``) the optimiser may change; names must be unique.
        engine: ``engine(system, user) -> str``, the optimiser model (``lmopt.prompt.lm_engine(lm)``).
        memory_size: past (variables, feedback) pairs shown in the prompt (0: none).
        retries: re-asks after an unparseable reply.
        max_value_chars: longest text value accepted; also the cut of each value shown in the trace.
    """

    def __init__(self, parameters: Sequence[Node], engine: Engine, *, memory_size: int = 0, retries: int = 1,
                 max_value_chars: int = 2000) -> None:
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("OptoPrime needs at least one trainable parameter")
        names = [p.name for p in self.parameters]
        for p in self.parameters:
            if not (isinstance(p, Node) and p.trainable):
                raise ValueError(f"every parameter must be a trainable node (param(...)), got {p!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got {names}")
        for k, v in (("memory_size", memory_size), ("retries", retries)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{k} must be an int >= 0, got {v!r}")
        self.engine, self.memory_size, self.retries = engine, memory_size, retries
        self.max_value_chars = max_value_chars
        self.memory: list[tuple[dict[str, Any], str]] = []

    def prompt(self, output: Node, feedback: str) -> str:
        used = {id(n) for n in ancestors(output)}
        missing = [p.name for p in self.parameters if id(p) not in used]
        text = render_trace(output, feedback, max_value_chars=self.max_value_chars)
        if missing:
            text += ("\n\nThese variables did not influence this output; leave them out of the suggestion: "
                     + ", ".join(missing))
        if self.memory_size and self.memory:
            past = "\n".join(f"variables {json.dumps(v)} → feedback: {f}" for v, f in self.memory)
            text = f"#Memory (earlier steps, oldest first)\n{past}\n\n{text}"
        return text

    def step(self, output: Node, feedback: str) -> StepReport:
        """Ask for new values from ``output``'s trace and ``feedback``; apply the valid ones."""
        if not isinstance(output, Node):
            raise TypeError(f"step takes the output Node of a traced run, got {type(output).__name__}")
        if not isinstance(feedback, str) or not feedback.strip():
            raise ValueError("step needs non-empty feedback on the output")
        user = self.prompt(output, feedback)
        report = StepReport(prompt_chars=len(user))
        obj = None
        for attempt in range(self.retries + 1):
            ask = user if attempt == 0 else user + ('\n\nReply with only the JSON object {"reasoning": ..., '
                                                    '"suggestion": {...}}.')
            report.raw = self.engine(SYSTEM, ask)
            obj = find_json_object(report.raw)
            if obj is not None and isinstance(obj.get("suggestion"), dict):
                break
            obj = None
        before = {p.name: p.value for p in self.parameters}
        if obj is None:
            report.parsed = False
        else:
            report.reasoning = str(obj.get("reasoning", ""))[:2000]
            by_name = {p.name: p for p in self.parameters}
            for name, value in obj["suggestion"].items():
                target = by_name.get(name)
                if target is None:
                    report.rejected[str(name)] = "not a trainable variable"
                    continue
                try:
                    target.value = self.validate(target, value)
                    report.applied[name] = target.value
                except (TypeError, ValueError) as exc:
                    report.rejected[name] = str(exc)
        if self.memory_size:
            self.memory = (self.memory + [(before, feedback[:500])])[-self.memory_size:]
        return report

    def validate(self, target: Node, value: Any) -> Any:
        """``value`` as a valid value of ``target``'s kind, or ValueError/TypeError saying why not."""
        if target.kind == "number":
            if isinstance(value, str):
                value = float(value.strip())
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"a number is needed, got {value!r}")
            return int(value) if isinstance(target.value, int) and float(value).is_integer() else value
        if not isinstance(value, str):
            raise TypeError(f"a {target.kind} value must be a string, got {type(value).__name__}")
        value = value.strip()
        if not value:
            raise ValueError("empty value")
        if len(value) > self.max_value_chars:
            raise ValueError(f"longer than {self.max_value_chars} characters")
        if target.kind == "code":
            check_code(value)
        return value


class OptoPrimePrompt(Optimizer):
    """Instruction optimisation with OptoPrime (see the module docstring).

    Args:
        batch_size: training examples per step (3).
        steps: update steps at most (the run also ends when the budget is spent).
        memory_size: OptoPrime's memory of past steps (0).
        validate: keep a new instruction only if its validation score is not lower.
        max_new_tokens: length of the optimiser's reply.
    """

    name = "optoprime"
    paper = "arXiv 2406.16218 (Trace / OptoPrime), §4"

    def __init__(self, batch_size: int = 3, steps: int = 12, memory_size: int = 0, validate: bool = True,
                 max_new_tokens: int = 256) -> None:
        for k, v in (("batch_size", batch_size), ("steps", steps), ("max_new_tokens", max_new_tokens)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{k} must be an int >= 1, got {v!r}")
        super().__init__(batch_size=batch_size, steps=steps, memory_size=memory_size, validate=bool(validate),
                         max_new_tokens=max_new_tokens)

    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        train = ctx.splits.train
        if not train:
            raise ValueError("OptoPrime learns from training examples; set split n_train >= 1")
        kept_score, kept = ctx.best
        instruction = param(kept.instruction, "instruction", description="the instruction given to the model")
        cfg = GenerationConfig(max_new_tokens=h["max_new_tokens"])

        def engine(system: str, user: str) -> str:
            return ctx.complete([[{"role": "system", "content": system}, {"role": "user", "content": user}]], cfg,
                                role="optimizer")[0][0]

        opt = OptoPrime([instruction], engine, memory_size=h["memory_size"])
        rng = ctx.rng("optoprime")
        for step in range(1, h["steps"] + 1):
            batch = [train[int(i)] for i in rng.choice(len(train), min(h["batch_size"], len(train)), replace=False)]
            res = ctx.run_batch(Prompt(instruction.value, kept.exemplars), batch, source=f"optoprime step {step}")
            outputs = res.get("raw") or res["predictions"]
            output, feedback = self._trace(ctx, instruction, batch, outputs, res["per_example"])
            report = opt.step(output, feedback)
            ctx.log("optoprime_step", step=step, applied=list(report.applied), rejected=report.rejected,
                    parsed=report.parsed, prompt_chars=report.prompt_chars, batch_score=float(res["score"]))
            if not report.parsed:
                ctx.parse_failures += 1
                ctx.log("parse_failure", what="suggestion", raw=report.raw[:500], score=0.0)
            if "instruction" not in report.applied:
                continue
            new = Prompt(instruction.value, kept.exemplars)
            score = ctx.evaluate(new, source=f"optoprime step {step}")
            ctx.log("optoprime_validate", step=step, candidate=new.instruction, val_score=score,
                    kept_score=kept_score, accepted=not h["validate"] or score >= kept_score)
            if not h["validate"] or score >= kept_score:
                kept, kept_score = new, score
            else:
                instruction.value = kept.instruction

    @staticmethod
    def _trace(ctx: RunContext, instruction: Node, batch: list[Any], outputs: Sequence[str],
               scores: Sequence[float]) -> tuple[Node, str]:
        """The traced program of one minibatch, replayed from the task model's recorded answers."""
        answers = iter(outputs)

        @op
        def format_prompt(instruction: str, question: str) -> str:
            """Places the instruction and the question into the task's prompt template."""
            return Prompt(instruction).render(ctx.task, question)

        @op
        def task_model(prompt: str) -> str:
            """The task language model answers the prompt."""
            return next(answers)

        @op
        def check(answer: str, expected: str, score: float) -> float:
            """Scores the answer against the expected answer with the task's metric (1 is right)."""
            return score

        @op
        def mean_score(*scores: float) -> float:
            """The mean score over the minibatch: the objective, higher is better."""
            return sum(scores) / len(scores)

        checks = []
        for i, (ex, s) in enumerate(zip(batch, scores)):
            q = node(ex.input, f"question{i}")
            answer = task_model(format_prompt(instruction, q))
            checks.append(check(answer, node(str(ex.target), f"expected{i}"), float(s)))
        out = mean_score(*checks)
        wrong = [f"question{i}: expected {ex.target!r}" for i, (ex, s) in enumerate(zip(batch, scores)) if s < 1]
        feedback = (f"The mean score is {out.value:.2f}; 1.00 is the goal. "
                    + ("Wrong answers: " + "; ".join(wrong) + "." if wrong else "Every answer is right.")
                    + " Change the instruction so that the model answers such questions correctly.")
        return out, feedback
