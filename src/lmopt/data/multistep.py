"""Multi-step tasks: each example is an episode in which the model acts several times (PROMST's setting,
arXiv 2402.08702). The episode's score, its outcome category and a rule-written feedback on what went wrong
come from the environment, not from a reference answer.

:class:`MultiStepTask` is a :class:`~lmopt.data.task.Task` whose evaluation runs episodes
(:func:`lmopt.prompt.evaluate_prompt` dispatches to :meth:`MultiStepTask.evaluate`), so every prompt
optimiser can be run on it; PROMST also reads the episodes' categories and feedback. Each prediction is the
episode's outcome as JSON (``category``, ``feedback``, ``steps``, ``actions``).

:func:`number_walk` is the embedded task: start from a number and reach a target exactly with actions
``add N`` / ``subtract N`` (N from 1 to 9) within a few steps; all episodes of an evaluation advance in
lockstep, one batched model call per step.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .task import Example, Task

_ACTION = re.compile(r"\b(add|subtract)\s+(-?\d+)\b", re.IGNORECASE)


@dataclass
class Episode:
    """The outcome of one episode."""

    score: float
    category: str  # "success" or one of the task's error categories
    feedback: str  # rule-written, for the prompt optimiser ("" on success)
    steps: int
    actions: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"score": self.score, "category": self.category, "feedback": self.feedback,
                           "steps": self.steps, "actions": self.actions})


@dataclass
class MultiStepTask(Task):
    """A task of episodes. Subclasses implement :meth:`evaluate`; ``categories`` maps each error category to
    its rule-written feedback (what a human would tell the prompt writer about that kind of failure)."""

    categories: Mapping[str, str] = field(default_factory=dict)
    max_steps: int = 6

    def evaluate(self, lm: Any, instruction: str, examples: Sequence[Example], role: str = "task"
                 ) -> list[Episode]:  # pragma: no cover - abstract
        raise NotImplementedError


def _walk_score(start: int, target: int, value: int) -> float:
    """1 at the target, falling linearly to 0 at the start's distance (or further)."""
    d0 = abs(target - start)
    return 1.0 if value == target else max(0.0, 1.0 - abs(target - value) / max(1, d0))


@dataclass
class NumberWalk(MultiStepTask):
    """Reach ``target`` from ``start`` exactly (see :func:`number_walk`)."""

    def observation(self, instruction: str, start: int, target: int, history: list[tuple[str, int]],
                    value: int) -> str:
        done = "".join(f"{a} -> {v}\n" for a, v in history)
        rules = ("Rules: each action is 'add N' or 'subtract N' with N a whole number from 1 to 9. "
                 f"At most {self.max_steps} actions.")
        return (f"{instruction}\n\n{rules}\nStart: {start}. Target: {target}.\n{done}"
                f"Current number: {value}. Next action:")

    def evaluate(self, lm: Any, instruction: str, examples: Sequence[Example], role: str = "task"
                 ) -> list[Episode]:
        from ..lm.types import GenerationConfig

        cfg = GenerationConfig(max_new_tokens=self.max_new_tokens, stop=("\n",))
        states = []
        for e in examples:
            s, t = int(e.meta["start"]), int(e.meta["target"])
            states.append({"start": s, "target": t, "value": s, "history": [], "visited": {s}, "end": None})
        for _ in range(self.max_steps):
            live = [st for st in states if st["end"] is None]
            if not live:
                break
            prompts = [self.observation(instruction, st["start"], st["target"], st["history"], st["value"])
                       for st in live]
            outs = lm.generate(prompts, cfg, role=role)
            for st, o in zip(live, outs):
                m = _ACTION.search(o[0].text)
                if m is None:
                    st["end"] = "format"
                    st["bad"] = o[0].text.strip()[:80]
                    continue
                verb, n = m.group(1).lower(), int(m.group(2))
                if not 1 <= n <= 9:
                    st["end"] = "invalid"
                    st["bad"] = m.group(0)
                    continue
                st["value"] += n if verb == "add" else -n
                st["history"].append((f"{verb} {n}", st["value"]))
                if st["value"] == st["target"]:
                    st["end"] = "success"
                elif st["value"] in st["visited"]:
                    st["end"] = "loop"
                st["visited"].add(st["value"])
        episodes = []
        for st in states:
            cat = st["end"] or "step_limit"
            actions = [a for a, _ in st["history"]]
            fb = ""
            if cat != "success":
                walk = "; ".join(f"{a} -> {v}" for a, v in st["history"]) or "no valid action"
                bad = f" The reply was {st['bad']!r}." if st.get("bad") else ""
                fb = (f"Episode: start {st['start']}, target {st['target']}. {self.categories[cat]}{bad} "
                      f"Actions taken: {walk}.")
            score = 1.0 if cat == "success" else _walk_score(st["start"], st["target"], st["value"])
            episodes.append(Episode(score, cat, fb, len(st["history"]), actions))
        return episodes


NUMBER_WALK_CATEGORIES = {
    "format": "The reply did not contain an action written as 'add N' or 'subtract N'.",
    "invalid": "The action used a number outside 1 to 9.",
    "loop": "The walk came back to a number it had already visited, so it moved away from the target.",
    "step_limit": "The target was not reached within the allowed number of actions.",
}


def number_walk(size: int = 60, seed: int = 0, max_steps: int = 6) -> NumberWalk:
    """The embedded multi-step task: ``size`` episodes (start, target) with the target 5 to 30 away, so that
    1 to 4 well-chosen actions reach it; ``max_steps`` actions at most."""
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an int >= 4, got {size!r}")
    rng = random.Random(f"number_walk:{seed}")
    examples = []
    for _ in range(size):
        start = rng.randint(0, 60)
        target = start + rng.choice([-1, 1]) * rng.randint(5, 30)
        examples.append(Example(f"start {start}, target {target}", str(target),
                                meta={"start": start, "target": target}))
    return NumberWalk(name="number_walk", examples=examples, instruction="Choose actions that reach the target.",
                      max_new_tokens=8, categories=NUMBER_WALK_CATEGORIES, max_steps=max_steps,
                      description="reach a target number with add/subtract actions (multi-step)")
