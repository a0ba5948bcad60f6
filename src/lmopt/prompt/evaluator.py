"""Scoring a prompt on task examples through :class:`lmopt.lm.LM`.

Classification tasks are scored by label log-probability (one ``score`` call per example × label, batched
and cached): the prediction is the label whose continuation is most likely. Other tasks generate (greedy),
parse with the task's parser and apply its metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.multistep import MultiStepTask
from ..data.task import Example, Task
from ..lm.client import LM
from ..lm.types import GenerationConfig

MODES = ("auto", "score", "generate")


@dataclass(frozen=True)
class Prompt:
    """A prompt: an instruction and an ordered tuple of exemplars (order matters, EASE arXiv 2405.16122)."""

    instruction: str
    exemplars: tuple[Example, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str):
            raise TypeError(f"instruction must be a str, got {type(self.instruction).__name__}")
        object.__setattr__(self, "exemplars", tuple(self.exemplars))

    def render(self, task: Task, example: Example | str) -> str:
        return task.format_prompt(self.instruction, self.exemplars, example)

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction,
                "exemplars": [{"input": e.input, "target": e.target} for e in self.exemplars]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        return cls(d["instruction"], tuple(Example(e["input"], e["target"]) for e in d.get("exemplars", [])))


@dataclass
class EvalResult:
    """Mean score over examples, with the per-example scores and parsed predictions."""

    score: float
    per_example: list[float]
    predictions: list[str]
    mode: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.per_example)


def evaluate_prompt(lm: LM, task: Task, prompt: Prompt | str, examples: Sequence[Example], *,
                    mode: str = "auto", role: str = "task", chat: bool = False,
                    max_new_tokens: int | None = None) -> EvalResult:
    """Score ``prompt`` on ``examples`` of ``task``.

    Args:
        mode: ``score`` (label log-probs; classification tasks only), ``generate`` (greedy generation +
            parser + metric) or ``auto`` (score when the task has labels and the LM can score).
        chat: wrap each rendered prompt as one user message of the model's chat template (generation only).
        max_new_tokens: generation length (default: the task's).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not examples:
        raise ValueError("evaluate_prompt needs at least one example; check the split sizes")
    if isinstance(prompt, str):
        prompt = Prompt(prompt)
    if isinstance(task, MultiStepTask):
        if prompt.exemplars:
            raise ValueError(f"task {task.name!r} is multi-step: its prompt is an instruction only, without "
                             "exemplars")
        episodes = task.evaluate(lm, prompt.instruction, examples, role=role)
        scores = [e.score for e in episodes]
        cats = [e.category for e in episodes]
        return EvalResult(sum(scores) / len(scores), scores, [e.to_json() for e in episodes], "episodes",
                          {"categories": {c: cats.count(c) for c in sorted(set(cats))}})
    if mode == "auto":
        mode = "score" if task.is_classification and lm.supports_score and not chat else "generate"
    if mode == "score":
        if not task.is_classification:
            raise ValueError(f"mode='score' needs a classification task with labels; {task.name!r} has none")
        if chat:
            raise ValueError("mode='score' scores raw prompts; chat=True is only for mode='generate'")
        return _by_label_scores(lm, task, prompt, examples, role)
    texts = [prompt.render(task, e) for e in examples]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens or task.max_new_tokens)
    if chat:
        outs = lm.chat([[{"role": "user", "content": t}] for t in texts], cfg, role=role)
    else:
        outs = lm.generate(texts, cfg, role=role)
    preds = [task.parser(o[0].text) for o in outs]
    scores = [float(task.metric(p, e)) for p, e in zip(preds, examples)]
    return EvalResult(sum(scores) / len(scores), scores, preds, "generate",
                      {"raw": [o[0].text for o in outs]})


def _by_label_scores(lm: LM, task: Task, prompt: Prompt, examples: Sequence[Example], role: str) -> EvalResult:
    labels = task.labels or ()
    texts = [prompt.render(task, e) for e in examples]
    # Continuations start with a space: templates end with "...:" and labels are whole words.
    conts = [" " + lab for lab in labels]
    flat = lm.score([t for t in texts for _ in conts], conts * len(texts), role=role)
    preds, scores, margins = [], [], []
    k = len(conts)
    for i, e in enumerate(examples):
        lps = [s.logprob for s in flat[i * k: (i + 1) * k]]
        best = max(range(k), key=lambda j: lps[j])
        preds.append(labels[best])
        scores.append(float(task.metric(labels[best], e)))
        gold = labels.index(e.target) if e.target in labels else None
        if gold is not None:
            margins.append(lps[gold] - max(lp for j, lp in enumerate(lps) if j != gold))
    counts = {lab: preds.count(lab) for lab in labels}
    return EvalResult(sum(scores) / len(scores), scores, preds, "score",
                      {"prediction_counts": counts, "mean_gold_margin": sum(margins) / max(1, len(margins))})
