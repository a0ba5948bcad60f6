"""Value types shared by every language-model backend: generation settings, completions, scores."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Message = Mapping[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

ROLES_CHAT = ("system", "user", "assistant")


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. ``temperature == 0`` means greedy decoding.

    ``n`` samples are drawn per prompt; sample ``i`` is reproducible from ``(seed, i)`` on backends that
    support seeding, and is cached under its own key so that n > 1 never returns one sample n times.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive int, got {self.n!r}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 with temperature 0 would return the same greedy text n times; "
                             "set temperature > 0 to sample")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        # 1 and 1.0 must give the same cache key.
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key_fields(self) -> dict[str, Any]:
        """Fields that change the output of one sample (``n`` excluded: each sample has its own key)."""
        d = asdict(self)
        d.pop("n")
        d["stop"] = list(self.stop)
        if self.greedy:  # greedy output does not depend on these
            d.pop("seed")
            d.pop("top_p")
        return d


@dataclass(frozen=True)
class Completion:
    """One generated sample and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    cached: bool = False


@dataclass(frozen=True)
class Score:
    """Log-probability of a continuation given a prompt (natural log, summed over continuation tokens)."""

    logprob: float
    continuation_tokens: int
    prompt_tokens: int
    cached: bool = False

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(1, self.continuation_tokens)


@dataclass(frozen=True)
class Request:
    """One unit of work for a backend, used for cache keys, budgets and recordings."""

    kind: str  # "generate" | "chat" | "score"
    model: str
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    continuation: str | None = None
    config: GenerationConfig | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def validate_messages(conversation: Sequence[Message]) -> tuple[tuple[str, str], ...]:
    """Check one chat conversation and return it as a hashable tuple of (role, content)."""
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise TypeError("a conversation must be a list of {'role': ..., 'content': ...} dicts, "
                        f"got {type(conversation).__name__}")
    if not conversation:
        raise ValueError("a conversation must contain at least one message")
    out = []
    for i, m in enumerate(conversation):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES_CHAT:
            raise ValueError(f"message {i} has role {m['role']!r}; expected one of {ROLES_CHAT}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} content must be a str, got {type(m['content']).__name__}")
        out.append((m["role"], m["content"]))
    return tuple(out)
