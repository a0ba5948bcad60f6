"""A small computation graph of text variables with textual "gradients" (TextGrad, arXiv 2406.07496, §2).

A :class:`Variable` holds a string (a prompt, an instruction, an answer). Operations record how variables
were produced: :func:`llm_call` (a language model answered a template filled with variables, under an
optional system-prompt variable), :func:`call_function` (a Python function such as an exact-match check
turned variables into a string) and :func:`aggregate` (several losses seen as one, TextGrad's ``sum``).
:func:`backward` walks the graph from a loss in reverse topological order and, for every operation, asks a
feedback LM how each of its trainable inputs should change so that its output improves; that feedback (the
"textual gradient") lands in ``variable.gradients`` with the conversation it refers to. An optimiser such as
:class:`lmopt.prompt.textgrad.TextualGradientDescent` then rewrites the trainable variables from it.

An *engine* is any callable ``engine(system, user) -> str``: :func:`lm_engine` wraps an :class:`lmopt.lm.LM`
(budgets, cache and replay included); inside a prompt-optimiser run the calls go through the run's journal.

>>> # doctest: +SKIP
>>> system = Variable("Answer the question.", role="system prompt of the answering model")
>>> answer = llm_call(task_engine, "{question}", {"question": Variable(q, "question", requires_grad=False)},
...                   system=system, role="answer to the question")
>>> loss = call_function(lambda a: "correct" if gold in a else f"wrong: the answer is {gold}",
...                      {"a": answer}, purpose="compares the answer with the gold answer")
>>> backward(loss, feedback_engine); system.gradients
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Engine = Callable[[str, str], str]

FEEDBACK_SYSTEM = (
    "You give feedback inside an optimisation system that improves text variables: prompts, instructions, "
    "answers or code. Given how a variable was used and what came of it, explain what is wrong with the "
    "variable and how to change it so that the objective improves. Give reasons and concrete changes; do not "
    "write a new version of the variable, another component does that. If the variable already works (the "
    "result is correct), say so in one sentence and suggest no change.")


@dataclass(frozen=True)
class Feedback:
    """One textual gradient: the feedback and the conversation it is about (shown to the optimiser)."""

    text: str
    context: str


class Variable:
    """A text value in the graph.

    Args:
        value: the text.
        role: what the text is, in a few words ("system prompt of the answering model"): every feedback and
            update prompt names the variable by its role.
        requires_grad: whether feedback is computed for it (the trainable variables, and everything computed
            from them, which the graph sets itself).
    """

    def __init__(self, value: str, role: str, requires_grad: bool = True) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Variable holds a str, got {type(value).__name__}")
        if not isinstance(role, str) or not role.strip():
            raise ValueError("a Variable needs a role: a few words saying what the text is")
        self.value, self.role, self.requires_grad = value, role, bool(requires_grad)
        self.predecessors: tuple[Variable, ...] = ()
        self.grad_fn: Callable[[Variable, Engine], None] | None = None
        self.gradients: list[Feedback] = []

    def zero_grad(self) -> None:
        self.gradients = []

    def feedback_text(self) -> str:
        """All feedback received, one block per gradient."""
        return "\n\n".join(g.text for g in self.gradients)

    def __repr__(self) -> str:
        short = self.value if len(self.value) <= 60 else self.value[:57] + "..."
        return f"Variable({short!r}, role={self.role!r}, requires_grad={self.requires_grad})"


def _derived(value: str, role: str, preds: Sequence[Variable], grad_fn: Callable[[Variable, Engine], None]
             ) -> Variable:
    out = Variable(value, role, requires_grad=any(p.requires_grad for p in preds))
    out.predecessors = tuple(preds)
    out.grad_fn = grad_fn
    return out


def _downstream(out: Variable) -> str:
    """How the feedback prompt describes what became of ``out``."""
    if out.gradients:
        return (f"That output was then used as the {out.role}, and it received this feedback:\n"
                f"<OUTPUT_FEEDBACK>{out.feedback_text()}</OUTPUT_FEEDBACK>\n\n"
                "Say how the variable below should change so that the output improves in the way the feedback "
                "asks.")
    return (f"That output is the {out.role}: the objective itself. Say how the variable below should change so "
            "that this objective improves, and nothing else.")


def _ask_feedback(engine: Engine, inputs: Sequence[Variable], conversation: str, out: Variable) -> None:
    """Feedback for each trainable input of an operation, given the operation and what became of ``out``."""
    for var in inputs:
        if var.requires_grad:
            user = (f"Give feedback on the variable whose role is: {var.role}.\n\n{conversation}\n\n"
                    f"{_downstream(out)}\n\n<VARIABLE>{var.value}</VARIABLE>")
            var.gradients.append(Feedback(engine(FEEDBACK_SYSTEM, user).strip(), conversation))


def llm_call(engine: Engine, template: str, variables: Mapping[str, Variable] | None = None, *,
             system: Variable | None = None, role: str = "response of the language model") -> Variable:
    """The engine's reply to ``template.format(**values)`` under the system prompt ``system``.

    Backward: each trainable variable among ``system`` and ``variables`` gets feedback on how it should change,
    given the call (system prompt, input, output) and the feedback the output received downstream.
    """
    variables = dict(variables or {})
    for k, v in variables.items():
        if not isinstance(v, Variable):
            raise TypeError(f"variable {k!r} must be a Variable, got {type(v).__name__}")
    try:
        user = template.format(**{k: v.value for k, v in variables.items()})
    except KeyError as exc:
        raise ValueError(f"the template names {exc} but variables has only {sorted(variables)}") from None
    sys_text = system.value if system is not None else ""
    reply = engine(sys_text, user)
    preds = ([system] if system is not None else []) + list(variables.values())

    def grad_fn(out: Variable, fb_engine: Engine) -> None:
        conversation = (f"A language model was called like this:\n<LM_SYSTEM_PROMPT>{sys_text}</LM_SYSTEM_PROMPT>\n"
                        f"<LM_INPUT>{user}</LM_INPUT>\n<LM_OUTPUT>{out.value}</LM_OUTPUT>")
        _ask_feedback(fb_engine, preds, conversation, out)

    return _derived(reply, role, preds, grad_fn)


def call_function(fn: Callable[..., Any], variables: Mapping[str, Variable], *, purpose: str,
                  role: str = "evaluation result") -> Variable:
    """``str(fn(**values))`` as a variable (e.g. an exact-match check as the loss).

    Backward: each trainable input gets feedback given the inputs, the function's ``purpose`` and its output.
    """
    variables = dict(variables)
    if not variables:
        raise ValueError("call_function needs at least one input variable")
    value = str(fn(**{k: v.value for k, v in variables.items()}))
    preds = list(variables.values())

    def grad_fn(out: Variable, fb_engine: Engine) -> None:
        shown = "\n".join(f"<INPUT name={k!r} role={v.role!r}>{v.value}</INPUT>" for k, v in variables.items())
        conversation = (f"A function that {purpose} was run on these inputs:\n{shown}\n"
                        f"<FUNCTION_OUTPUT>{out.value}</FUNCTION_OUTPUT>")
        _ask_feedback(fb_engine, preds, conversation, out)

    return _derived(value, role, preds, grad_fn)


def aggregate(losses: Sequence[Variable], role: str = "sum of the losses") -> Variable:
    """Several losses as one (TextGrad's ``sum``): backward hands the aggregate's own feedback, if any, to
    every input, so that each loss then computes its feedback as the objective."""
    losses = list(losses)
    if not losses:
        raise ValueError("aggregate needs at least one loss")

    def grad_fn(out: Variable, fb_engine: Engine) -> None:
        if out.gradients:
            for p in losses:
                if p.requires_grad:
                    p.gradients.extend(out.gradients)

    return _derived("\n".join(v.value for v in losses), role, losses, grad_fn)


def topological_order(root: Variable) -> list[Variable]:
    """Every variable ``root`` depends on, each after all its predecessors (``root`` last)."""
    order: list[Variable] = []
    seen: set[int] = set()
    stack: list[tuple[Variable, bool]] = [(root, False)]
    while stack:
        v, expanded = stack.pop()
        if expanded:
            order.append(v)
            continue
        if id(v) in seen:
            continue
        seen.add(id(v))
        stack.append((v, True))
        for p in reversed(v.predecessors):
            if id(p) not in seen:
                stack.append((p, False))
    return order


def backward(loss: Variable, engine: Engine) -> list[Variable]:
    """Propagate feedback from ``loss`` to every trainable variable, visiting operations in reverse
    topological order (an output's feedback is complete before its inputs are criticised). Returns the
    variables whose operation ran, in the order visited."""
    if not isinstance(loss, Variable):
        raise TypeError(f"backward takes a Variable, got {type(loss).__name__}")
    visited = []
    for v in reversed(topological_order(loss)):
        if v.grad_fn is not None and v.requires_grad:
            v.grad_fn(v, engine)
            visited.append(v)
    return visited


def lm_engine(lm: Any, *, role: str = "optimizer", max_new_tokens: int = 256, temperature: float = 0.0,
              seed: int = 0) -> Engine:
    """An engine over :class:`lmopt.lm.LM`: one chat call per request (system message only when non-empty)."""
    from ..lm.types import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)

    def engine(system: str, user: str) -> str:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return lm.chat([msgs], cfg, role=role)[0][0].text

    return engine
