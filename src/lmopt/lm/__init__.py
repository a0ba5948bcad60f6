"""Language-model layer: backends, the ``LM`` façade (cache, usage, budgets, recording) and embedders.

Heavy backends are imported lazily: ``from lmopt.lm import LocalLM`` imports transformers only then.
"""

from __future__ import annotations

from typing import Any

from .backend import Backend
from .client import LM
from .scripted import ScriptedBackend
from .types import Completion, GenerationConfig, Message, Score
from .usage import Budget, BudgetExceeded, Limits, UsageMeter

_LAZY = {
    "LocalLM": ".local",
    "Embedder": ".embed",
    "OpenAICompatibleLM": ".openai_compat",
    "CallCache": ".cache",
    "JsonlRecorder": ".replay",
    "ReplayBackend": ".replay",
}

__all__ = ["LM", "Backend", "Budget", "BudgetExceeded", "Completion", "GenerationConfig", "Limits", "Message",
           "Score", "ScriptedBackend", "UsageMeter", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'lmopt.lm' has no attribute {name!r}")
