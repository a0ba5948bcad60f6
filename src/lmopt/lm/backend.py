"""The backend interface every language model implements.

A backend does the work and nothing else: caching, usage accounting, budgets and recording are done once,
for every backend, by :class:`lmopt.lm.client.LM`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

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

    # The ``*_each`` forms hand every result to ``on_result(index, result)`` as soon as it exists, so that a
    # caller can cache and charge it even if a later request of the same batch fails. Backends that answer
    # requests one by one (HTTP servers) override them; batched backends deliver a whole batch at once.
    def generate_each(self, prompts: Sequence[str], config: GenerationConfig,
                      on_result: Callable[[int, list[Completion]], None]) -> None:
        for i, comps in enumerate(self.generate(prompts, config)):
            on_result(i, comps)

    def chat_each(self, conversations: Sequence[tuple[tuple[str, str], ...]], config: GenerationConfig,
                  on_result: Callable[[int, list[Completion]], None]) -> None:
        for i, comps in enumerate(self.chat(conversations, config)):
            on_result(i, comps)

    def score_each(self, prompts: Sequence[str], continuations: Sequence[str],
                   on_result: Callable[[int, Score], None]) -> None:
        for i, s in enumerate(self.score(prompts, continuations)):
            on_result(i, s)

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

    def key_options(self, config: GenerationConfig) -> dict[str, Any]:
        """Backend settings that change the outputs of a request with ``config`` and so belong in its cache
        key (empty for most backends; ``OpenAICompatibleLM(split_n=True)`` returns ``{"split_n": True}`` when
        ``config.n > 1``). Cache keys of requests it returns nothing for stay as they were."""
        return {}

    def count_tokens(self, text: str) -> int:
        """Token count used for budget estimates; backends with a tokenizer override this."""
        return max(1, (len(text) + 3) // 4)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, threads)."""
