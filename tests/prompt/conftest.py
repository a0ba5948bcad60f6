"""A toy classification task and a scripted LM whose accuracy depends on the prompt, so optimisers can
be checked end to end without a model: every exemplar whose input carries GOOD raises the accuracy."""

from __future__ import annotations

import hashlib
import random
import re

import pytest

from lmopt.data import Example, Task
from lmopt.lm import LM, ScriptedBackend


def make_task(n: int = 80, seed: int = 0) -> Task:
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        tag = " GOOD" if i % 4 == 0 else ""
        examples.append(Example(f"item {i}{tag}", rng.choice(["yes", "no"])))
    return Task(name="toy", examples=examples, labels=("yes", "no"), instruction="Answer yes or no.",
                max_new_tokens=8)


def _h(*parts: str) -> float:
    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:8], 16) / 2**32


def quality(prompt: str) -> float:
    head = prompt.rsplit("Input:", 1)[0]
    good = len(re.findall(r"Input: item \d+ GOOD", head))
    return min(1.0, 0.3 + 0.12 * good + (0.1 if "carefully" in head else 0.0))


class ToyLM:
    """respond/score functions plus switches that tests flip (garbage proposals, interruption)."""

    def __init__(self, task: Task, proposals: str = "tags") -> None:
        self.targets = {e.input: e.target for e in task.examples}
        self.proposals = proposals
        self.fail_after: int | None = None
        self.backend = ScriptedBackend(self.respond, self.score, name="toy")

    def _maybe_interrupt(self) -> None:
        if self.fail_after is not None and self.backend.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")

    def _answer(self, prompt: str) -> str:
        m = re.findall(r"Input: (.+)\nOutput:", prompt)
        if not m:
            return "yes"
        inp = m[-1].strip()
        target = self.targets.get(inp, "yes")
        ok = _h(prompt.rsplit("Input:", 1)[0], inp) < quality(prompt)
        return target if ok else ("no" if target == "yes" else "yes")

    def respond(self, prompt: str, config, j: int) -> str:
        self._maybe_interrupt()
        if "<choose>" in prompt:
            return "<choose>B</choose>" if _h(prompt, str(config.seed)) < 0.5 else "I pick A. <choose>A</choose>"
        if "</INS>" in prompt or "</prompt>" in prompt:
            if self.proposals == "garbage":
                return "Sure! Here is something without any format."
            v = int(_h(prompt, str(config.seed), str(j)) * 1000)
            word = "carefully " if v % 3 == 0 else ""
            if "</INS>" in prompt:
                return f"<INS>Think {word}and answer yes or no ({v}).</INS>"
            return f"Here you go: <prompt>Decide {word}whether the answer is yes or no ({v}).</prompt>"
        return self._answer(prompt)

    def score(self, prompt: str, continuation: str) -> float:
        self._maybe_interrupt()
        return 0.0 if continuation.strip() == self._answer(prompt) else -2.0


@pytest.fixture
def toy_task() -> Task:
    return make_task()


@pytest.fixture
def toy_lm(toy_task):
    t = ToyLM(toy_task)
    return t, LM(t.backend)
