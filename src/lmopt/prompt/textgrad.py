"""TextGrad (Yuksekgonul et al., arXiv 2406.07496): prompt optimisation by textual gradients.

:class:`TextualGradientDescent` rewrites the trainable :class:`~lmopt.prompt.textual_graph.Variable` s of a
graph from the feedback :func:`~lmopt.prompt.textual_graph.backward` left on them; :class:`TextGrad` is the
released prompt-optimisation loop (zou-group/textgrad, ``evaluation/prompt_optimization.py``) as an lmopt
prompt optimiser with the usual ``run`` contract, budgets, results and resume.

The loop, as released: minibatches of 3 training examples; the task model answers each; a check compares each
answer with the gold one (the loss); backward asks the feedback model first how each *answer* should change
given the check, then how the *prompt* should change given that; one update call rewrites the prompt from
all of the minibatch's feedback; the new prompt is scored on validation and **reverted** when it scores lower
than the current one (ties keep the new one); 4 steps per epoch, 3 epochs. Feedback is asked for every
example, correct ones included (the feedback model is told to suggest no change when the result is right).

Differences from the released code, each a named option (defaults in brackets):

- Bounded context [on]: every feedback is cut to ``max_feedback_chars`` and every context to
  ``max_context_chars``; when a step's feedback still exceeds ``max_total_chars`` it is summarised by one
  optimiser call (``summarize=True``) and then cut. The released code concatenates everything, so the update
  prompt grows with the minibatch and the prompt length; a new value longer than ``max_value_chars`` is
  rejected (the prompt stays), so the prompt cannot grow without bound either. Prompt length per step is
  logged (``textgrad_step`` entries: ``prompt_chars``, ``update_prompt_chars``).
- Momentum: ``momentum_window`` past values of the variable in the update prompt (the released
  ``TextualGradientDescentwithMomentum``; its constructor returns from ``__init__`` when the window is 0 and
  its ``_update_prompt`` returns nothing, so the released class cannot run; here it is the same optimiser),
  and ``gradient_memory`` past feedback blocks (the released ``TextualGradientDescent`` stores them but its
  prompt builder drops the argument, so they never reach the model; here they do).
- An unparseable update (no ``<IMPROVED_VARIABLE>`` tags) is asked again once with a format reminder and then
  logged as a scored failure; the variable keeps its value. The released code raises ``IndexError``.
- Budget: the minibatch answers are charged as 3/n_val of an evaluation (:meth:`RunContext.run_batch`), so
  TextGrad spends the same unit as every other optimiser. Feedback and updates are ``judge`` and
  ``optimizer`` calls (both default to the optimiser LM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..lm.types import GenerationConfig
from .base import Optimizer, RunContext
from .evaluator import Prompt
from .parsing import parse_proposal
from .textual_graph import Engine, Variable, aggregate, backward, call_function, llm_call

UPDATE_SYSTEM = (
    "You improve text variables (prompts, instructions, answers, code) inside an optimisation system, using "
    "feedback from another component. The feedback can be noisy: keep what is important and correct. Respect "
    "the role of the variable and how it is used. Reply with the improved variable between {open} and {close} "
    "tags; the text between the tags replaces the variable as it is.")
SUMMARY_SYSTEM = "You condense feedback without losing any distinct suggestion."


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 15)].rstrip() + " [...truncated]"


@dataclass
class UpdateOutcome:
    """What one :meth:`TextualGradientDescent.step` did to one variable."""

    role: str
    old: str
    new: str | None  # None: the variable kept its value (see ``reason``)
    reason: str  # "updated" | "no_feedback" | "unparsed" | "too_long"
    feedback_chars: int
    update_prompt_chars: int
    summarized: bool
    raw: str = ""


class TextualGradientDescent:
    """Textual gradient descent over ``parameters`` (each a trainable :class:`Variable`).

    Args:
        engine: ``engine(system, user) -> str``, the optimiser model.
        momentum_window: past values of each variable shown in the update prompt (0: none).
        gradient_memory: past feedback blocks of each variable shown in the update prompt (0: none).
        constraints: sentences the new value must respect (e.g. "Keep it under 50 words.").
        max_feedback_chars / max_context_chars / max_total_chars / summarize / max_value_chars: the context
            bounds described in the module docstring.
        tag: the tag pair the new value comes in.
    """

    def __init__(self, parameters: Sequence[Variable], engine: Engine, *, momentum_window: int = 0,
                 gradient_memory: int = 0, constraints: Sequence[str] = (), max_feedback_chars: int = 1000,
                 max_context_chars: int = 1500, max_total_chars: int = 4000, summarize: bool = True,
                 max_value_chars: int = 2000, tag: str = "IMPROVED_VARIABLE") -> None:
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("TextualGradientDescent needs at least one parameter")
        for p in self.parameters:
            if not isinstance(p, Variable) or not p.requires_grad:
                raise ValueError(f"every parameter must be a trainable Variable, got {p!r}")
        for name, v in (("momentum_window", momentum_window), ("gradient_memory", gradient_memory)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name, v in (("max_feedback_chars", max_feedback_chars), ("max_context_chars", max_context_chars),
                        ("max_total_chars", max_total_chars), ("max_value_chars", max_value_chars)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 50:
                raise ValueError(f"{name} must be an int >= 50, got {v!r}")
        self.engine, self.tag = engine, tag
        self.momentum_window, self.gradient_memory = momentum_window, gradient_memory
        self.constraints = list(constraints)
        self.max_feedback_chars, self.max_context_chars = max_feedback_chars, max_context_chars
        self.max_total_chars, self.summarize, self.max_value_chars = max_total_chars, summarize, max_value_chars
        self._past_values: list[list[str]] = [[] for _ in self.parameters]
        self._past_feedback: list[list[str]] = [[] for _ in self.parameters]

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.zero_grad()

    def feedback_block(self, var: Variable) -> tuple[str, bool]:
        """The variable's feedback with its contexts, bounded; ``(text, summarized)``."""
        parts = [f"<CONTEXT>{_cut(g.context, self.max_context_chars)}</CONTEXT>\n"
                 f"<FEEDBACK>{_cut(g.text, self.max_feedback_chars)}</FEEDBACK>" for g in var.gradients]
        text = "\n\n".join(parts)
        if len(text) <= self.max_total_chars:
            return text, False
        if not self.summarize:
            return _cut(text, self.max_total_chars), False
        plain = "\n\n".join(f"- {_cut(g.text, self.max_feedback_chars)}" for g in var.gradients)
        ask = (f"Below is feedback on a {var.role}, collected from several examples. Merge it into one list of "
               f"distinct, concrete suggestions, in at most {self.max_total_chars // 8} words.\n\n{plain}")
        summary = self.engine(SUMMARY_SYSTEM, _cut(ask, 4 * self.max_total_chars)).strip()
        return f"<FEEDBACK>{_cut(summary, self.max_total_chars)}</FEEDBACK>", True

    def update_prompt(self, i: int, feedback: str) -> str:
        var = self.parameters[i]
        text = (f"The variable to improve has this role: <ROLE>{var.role}</ROLE>\n\n"
                f"Its current value:\n<VARIABLE>{var.value}</VARIABLE>\n\n"
                f"How it was used and the feedback it received:\n{feedback}\n\n")
        if self.momentum_window and self._past_values[i]:
            past = "\n".join(f"Step {k + 1}: {v}" for k, v in enumerate(self._past_values[i]))
            text += ("Values of the variable over the last steps, oldest first (the last is the current one):\n"
                     f"<PAST_VALUES>\n{past}\n</PAST_VALUES>\n"
                     "If the feedback keeps repeating across steps, the earlier changes were too small: change "
                     "the variable more.\n\n")
        if self.gradient_memory and self._past_feedback[i]:
            past = "\n".join(f"<PAST_FEEDBACK-{k + 1}>{v}</PAST_FEEDBACK-{k + 1}>"
                             for k, v in enumerate(self._past_feedback[i]))
            text += f"Feedback from earlier steps:\n{past}\n\n"
        if self.constraints:
            text += "The new value must respect:\n" + "\n".join(f"- {c}" for c in self.constraints) + "\n\n"
        return text + (f"Improve the variable ({var.role}) following the feedback. Reply with only the improved "
                       f"variable, as <{self.tag}>the improved variable</{self.tag}>.")

    def step(self) -> list[UpdateOutcome]:
        """Rewrite every parameter that received feedback; one outcome per parameter."""
        system = UPDATE_SYSTEM.format(open=f"<{self.tag}>", close=f"</{self.tag}>")
        outcomes = []
        for i, var in enumerate(self.parameters):
            old = var.value
            if not var.gradients:
                outcomes.append(UpdateOutcome(var.role, old, None, "no_feedback", 0, 0, False))
                continue
            feedback, summarized = self.feedback_block(var)
            if self.momentum_window:  # as released: the window includes the current value, as its last step
                self._past_values[i] = (self._past_values[i] + [old])[-self.momentum_window:]
            user = self.update_prompt(i, feedback)
            raw = self.engine(system, user)
            parsed = parse_proposal(raw, self.tag, max_chars=self.max_value_chars)
            if parsed.text is None and parsed.how != "too_long":
                raw = self.engine(system, user + f"\n\nWrite only the new text between <{self.tag}> and "
                                                 f"</{self.tag}>.")
                parsed = parse_proposal(raw, self.tag, max_chars=self.max_value_chars)
            if self.gradient_memory:  # earlier steps' feedback only (this step's is in the prompt already)
                self._past_feedback[i] = (self._past_feedback[i] + [_cut(var.feedback_text(),
                                                                         self.max_feedback_chars)]
                                          )[-self.gradient_memory:]
            if parsed.text is None:
                reason = "too_long" if parsed.how == "too_long" else "unparsed"
                outcomes.append(UpdateOutcome(var.role, old, None, reason, len(feedback), len(user), summarized,
                                              raw[:500]))
                continue
            var.value = parsed.text
            outcomes.append(UpdateOutcome(var.role, old, parsed.text, "updated", len(feedback), len(user),
                                          summarized))
        return outcomes


def _ctx_engine(ctx: RunContext, role: str, max_new_tokens: int) -> Engine:
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)

    def engine(system: str, user: str) -> str:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return ctx.complete([msgs], cfg, role=role)[0][0]

    return engine


def _instruction_template(ctx: RunContext, example: Any) -> str:
    """The rendered task input with the instruction's place as ``{instruction}`` (other braces escaped)."""
    mark = "\x00INSTRUCTION\x00"
    text = Prompt(mark).render(ctx.task, example)
    return text.replace("{", "{{").replace("}", "}}").replace(mark, "{instruction}")


class TextGrad(Optimizer):
    """TextGrad's prompt-optimisation loop (see the module docstring for the loop and every difference).

    Args:
        batch_size: training examples per step (3).
        steps_per_epoch / epochs: 4 / 3 as released; the run also ends when the budget is spent.
        validate: score each new prompt on validation and revert when it is worse (the released
            ``--run_validation``; on by default as in the paper's prompt-optimisation results). With
            ``validate=False`` every update is kept and only the final prompt is scored.
        role: the role description of the prompt variable.
        momentum_window / gradient_memory / constraints / max_*_chars / summarize: passed to
            :class:`TextualGradientDescent`.
        feedback_tokens / update_tokens: reply lengths of the feedback and update calls.
    """

    name = "textgrad"
    paper = "arXiv 2406.07496 (TextGrad), §3.3 prompt optimisation"

    def __init__(self, batch_size: int = 3, steps_per_epoch: int = 4, epochs: int = 3, validate: bool = True,
                 role: str = "instruction to a language model that answers the task's questions",
                 momentum_window: int = 0, gradient_memory: int = 0, constraints: Sequence[str] = (),
                 max_feedback_chars: int = 1000, max_context_chars: int = 1500, max_total_chars: int = 4000,
                 summarize: bool = True, max_value_chars: int = 1000, feedback_tokens: int = 192,
                 update_tokens: int = 192) -> None:
        for k, v in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch), ("epochs", epochs),
                     ("feedback_tokens", feedback_tokens), ("update_tokens", update_tokens)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{k} must be an int >= 1, got {v!r}")
        super().__init__(batch_size=batch_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
                         validate=bool(validate), role=role, momentum_window=momentum_window,
                         gradient_memory=gradient_memory, constraints=list(constraints),
                         max_feedback_chars=max_feedback_chars, max_context_chars=max_context_chars,
                         max_total_chars=max_total_chars, summarize=bool(summarize), max_value_chars=max_value_chars,
                         feedback_tokens=feedback_tokens, update_tokens=update_tokens)
        # validate the optimiser's options now rather than at the first step
        TextualGradientDescent([Variable("x", "check")], lambda s, u: "", momentum_window=momentum_window,
                               gradient_memory=gradient_memory, max_feedback_chars=max_feedback_chars,
                               max_context_chars=max_context_chars, max_total_chars=max_total_chars,
                               max_value_chars=max_value_chars)

    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        train = ctx.splits.train
        if not train:
            raise ValueError("TextGrad learns from training examples; set split n_train >= 1")
        kept = ctx.best[1]  # the seed prompt, scored by run() before the search; its exemplars are kept
        kept_score = ctx.best[0]
        system = Variable(kept.instruction, h["role"])
        tgd = TextualGradientDescent(
            [system], _ctx_engine(ctx, "optimizer", h["update_tokens"]), momentum_window=h["momentum_window"],
            gradient_memory=h["gradient_memory"], constraints=h["constraints"],
            max_feedback_chars=h["max_feedback_chars"], max_context_chars=h["max_context_chars"],
            max_total_chars=h["max_total_chars"], summarize=h["summarize"], max_value_chars=h["max_value_chars"])
        feedback_engine = _ctx_engine(ctx, "judge", h["feedback_tokens"])
        rng = ctx.rng("textgrad")
        step = 0
        for epoch in range(h["epochs"]):
            order = [int(i) for i in rng.permutation(len(train))]
            for k in range(h["steps_per_epoch"]):
                batch = [train[i] for i in order[k * h["batch_size"]:(k + 1) * h["batch_size"]]]
                if not batch:
                    break
                step += 1
                new = self._step(ctx, tgd, system, feedback_engine, kept, batch, step, epoch)
                if new is None:
                    continue
                if not h["validate"]:
                    kept = new
                    continue
                score = ctx.evaluate(new, source=f"textgrad step {step}")
                accepted = not score < kept_score  # the released rule: strictly worse is reverted, a tie kept
                ctx.log("textgrad_validate", step=step, candidate=new.instruction, val_score=score,
                        kept_score=kept_score, accepted=accepted)
                if accepted:
                    kept, kept_score = new, score
                else:
                    system.value = kept.instruction
        if not h["validate"]:
            ctx.evaluate(kept, source="textgrad final")

    def _step(self, ctx: RunContext, tgd: TextualGradientDescent, system: Variable, feedback_engine: Engine,
              current: Prompt, batch: list[Any], step: int, epoch: int) -> Prompt | None:
        """One minibatch: answers, checks, backward, one update. The new prompt, or None if none came."""
        res = ctx.run_batch(current, batch, source=f"textgrad step {step}")
        outputs = res.get("raw") or res["predictions"]
        tgd.zero_grad()
        losses = []
        for ex, out, score in zip(batch, outputs, res["per_example"]):
            answer = llm_call(lambda s, u, out=out: out, _instruction_template(ctx, ex), {"instruction": system},
                              role="answer of the language model to the question")
            gold = Variable(str(ex.target), "correct answer to the question", requires_grad=False)
            losses.append(call_function(lambda prediction, answer, score=score: f"{score:g}",
                                        {"prediction": answer, "answer": gold},
                                        purpose="scores the prediction against the correct answer (1 is right, "
                                                "0 is wrong)", role="score of the answer"))
        backward(aggregate(losses), feedback_engine)
        (out,) = tgd.step()
        ctx.log("textgrad_step", step=step, epoch=epoch, batch_score=float(res["score"]), reason=out.reason,
                prompt_chars=len(system.value), update_prompt_chars=out.update_prompt_chars,
                feedback_chars=out.feedback_chars, summarized=out.summarized)
        if out.new is None:
            ctx.parse_failures += out.reason == "unparsed"
            ctx.log("parse_failure" if out.reason == "unparsed" else "textgrad_rejected", what="update",
                    raw=out.raw, score=0.0)
            return None
        return Prompt(out.new, current.exemplars)
