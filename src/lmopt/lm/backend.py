"""The backend interface every language model implements.

A backend does the work and nothing else: caching, usage accounting, budgets and recording are done once,
for every backend, by :class:`lmopt.lm.client.LM`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from .types import Completion, GenerationConfig, Score


class Backend(ABC):
    """A language model. ``name`` identifies it in cache keys and reports (no secrets in it)."""

    name: str

    @abstractmethod
    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[Completion]]:
        """Continue each raw prompt; return ``config.n`` completions per prompt."""

    @abstractmethod
    def chat(self, conversations: Sequence[tuple[tuple[str, str], ...]],
             config: GenerationConfig) -> list[list[Completion]]:
        """Answer each conversation (validated (role, content) tuples); ``config.n`` completions each."""

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[Score]:
        """Log-probability of each continuation after its prompt."""
        raise NotImplementedError(
            f"backend {self.name!r} cannot score continuations (no prompt log-probs); "
            "use generation-based evaluation or a LocalLM"
        )

    @property
    def supports_score(self) -> bool:
        return type(self).score is not Backend.score

    def render_chat(self, conversation: tuple[tuple[str, str], ...]) -> str:
        """The raw prompt text a conversation becomes (chat template, generation prompt included), so that
        the answer's options can be scored (:meth:`lmopt.lm.LM.choose`)."""
        raise NotImplementedError(f"backend {self.name!r} cannot render a conversation as a raw prompt")

    @property
    def supports_choose(self) -> bool:
        """Whether a closed set of answers to a conversation can be scored instead of generated."""
        return self.supports_score and type(self).render_chat is not Backend.render_chat

    def count_tokens(self, text: str) -> int:
        """Token count used for budget estimates; backends with a tokenizer override this."""
        return max(1, (len(text) + 3) // 4)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, threads)."""
