"""A deterministic backend driven by Python functions: for tests and examples that need no model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .backend import Backend
from .types import Completion, GenerationConfig, Score

GenerateFn = Callable[[str, GenerationConfig, int], str]
ScoreFn = Callable[[str, str], float]


def render_chat(conversation: Sequence[tuple[str, str]]) -> str:
    """Plain-text rendering of a conversation, used by backends without a chat template."""
    return "".join(f"<|{role}|>\n{content}\n" for role, content in conversation) + "<|assistant|>\n"


class ScriptedBackend(Backend):
    """Answers with ``respond(prompt, config, sample_index)``; chat is rendered with :func:`render_chat`.

    ``score_fn(prompt, continuation)`` gives log-probs when scoring is needed. ``calls`` counts the
    backend invocations (prompts/conversations/scores), which tests use to check caching and budgets.
    Token counts are whitespace word counts.
    """

    def __init__(self, respond: GenerateFn, score_fn: ScoreFn | None = None, name: str = "scripted") -> None:
        if not callable(respond):
            raise TypeError("respond must be callable(prompt, config, sample_index) -> str")
        self._respond = respond
        self._score_fn = score_fn
        self.name = name
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def _complete(self, prompt: str, config: GenerationConfig) -> list[Completion]:
        self.calls += 1
        out = []
        for j in range(config.n):
            text = self._respond(prompt, config, j)
            if not isinstance(text, str):
                raise TypeError(f"scripted respond() must return str, got {type(text).__name__}")
            for s in config.stop:
                text = text.split(s, 1)[0]
            words = text.split()
            finish = "length" if len(words) > config.max_new_tokens else "stop"
            text = " ".join(words[: config.max_new_tokens]) if finish == "length" else text
            out.append(Completion(text, self.count_tokens(prompt), len(text.split()), finish))
        return out

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[Completion]]:
        return [self._complete(p, config) for p in prompts]

    def chat(self, conversations: Sequence[tuple[tuple[str, str], ...]],
             config: GenerationConfig) -> list[list[Completion]]:
        return [self._complete(render_chat(c), config) for c in conversations]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[Score]:
        if self._score_fn is None:
            return super().score(prompts, continuations)
        self.calls += len(prompts)
        return [Score(float(self._score_fn(p, c)), self.count_tokens(c), self.count_tokens(p))
                for p, c in zip(prompts, continuations)]

    @property
    def supports_score(self) -> bool:
        return self._score_fn is not None

    def render_chat(self, conversation: tuple[tuple[str, str], ...]) -> str:
        return render_chat(conversation)
