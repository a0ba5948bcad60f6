"""Experiment recipes: the YAML files run by ``lmopt run``.

A recipe is a mapping with a ``kind`` that selects the experiment (``evaluate`` here; ``prompt`` for
prompt optimisation) and the common sections below. Unknown keys are errors, so a typo never silently
changes an experiment.

.. code-block:: yaml

    name: tweets-prompts          # used in the run id
    kind: evaluate
    seed: 0
    model: {backend: local, id: null, batch_size: 8}    # id null = embedded SmolLM2-135M-Instruct
    cache: true                   # persistent call cache (re-runs cost zero LM calls)
    budget: {task: {calls: 5000}} # per role and/or total; the run stops before exceeding it
    task: {name: tweets, split: {seed: 0, n_train: 16, n_val: 0, n_test: 90}}
    prompts:
      - {name: zero-shot, instruction: "Classify the sentiment ..."}
      - {name: 3-shot, instruction: "...", n_exemplars: 3}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class RecipeError(ValueError):
    """A recipe file is missing, unreadable or invalid (the message says where and what to fix)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    backend: Literal["local", "openai", "replay"] = "local"
    id: str | None = Field(None, description="HF id / folder (local), model name (openai); null = embedded")
    batch_size: int = Field(8, ge=1)
    device: str = "cpu"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # OpenAI-compatible servers only (see lmopt.lm.OpenAICompatibleLM); split_n also for a replay of one
    split_n: bool = False
    max_concurrency: int = Field(8, ge=1)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    replay_path: str | None = None
    replay_name: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        if self.backend == "openai" and not self.id:
            raise ValueError("backend 'openai' needs id: the model name the server serves")
        if self.backend == "replay" and not (self.replay_path and self.replay_name):
            raise ValueError("backend 'replay' needs replay_path and replay_name")
        server_only = [f for f in ("split_n", "max_concurrency", "timeout", "max_retries")
                       if f in self.model_fields_set and not (f == "split_n" and self.backend == "replay")]
        if self.backend != "openai" and server_only:
            raise ValueError(f"{', '.join(server_only)} only apply to backend 'openai', not {self.backend!r}")
        return self


class SplitSpec(_Strict):
    seed: int = 0
    n_train: int = Field(16, ge=0)
    n_val: int = Field(0, ge=0)
    n_test: int = Field(60, ge=1)


class TaskSpec(_Strict):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    split: SplitSpec = Field(default_factory=SplitSpec)


class PromptSpec(_Strict):
    name: str
    instruction: str | None = Field(None, description="null = the task's default instruction")
    n_exemplars: int = Field(0, ge=0)
    mode: Literal["auto", "score", "generate"] = "auto"
    chat: bool = False


class EvaluateRecipe(_Strict):
    name: str
    kind: Literal["evaluate"]
    seed: int = 0
    model: ModelSpec = Field(default_factory=ModelSpec)
    cache: bool = True
    budget: dict[str, dict[str, int]] = Field(default_factory=dict)
    task: TaskSpec
    prompts: list[PromptSpec] = Field(min_length=1)

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        from .lm.usage import Budget

        Budget.from_dict(v)  # raises with the reason, before any model is loaded
        return v

    @field_validator("prompts")
    @classmethod
    def _unique_names(cls, v: list[PromptSpec]) -> list[PromptSpec]:
        return unique(v, [p.name for p in v], "prompt names must be unique")


def unique(items: Any, keys: list[Any], message: str) -> Any:
    """``items`` unchanged when ``keys`` has no repeats; else a ValueError with ``message`` and the keys."""
    if len(set(keys)) != len(keys):
        raise ValueError(f"{message}, got {keys}")
    return items


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a mapping (its ``kind`` is checked; the rest by the experiment)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {str(p)!r} does not exist; pass the path of a YAML recipe "
                          "(examples in recipes/) or run `lmopt demo`")
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {str(p)!r} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise RecipeError(f"recipe {str(p)!r} must be a YAML mapping with at least 'name' and 'kind'")
    for key in ("name", "kind"):
        if key not in cfg:
            raise RecipeError(f"recipe {str(p)!r} has no {key!r} field")
    return cfg


def validate_evaluate(cfg: dict[str, Any], source: str = "recipe") -> EvaluateRecipe:
    try:
        return EvaluateRecipe.model_validate(cfg)
    except ValidationError as exc:
        raise RecipeError(f"{source} is invalid:\n{_pretty(exc)}") from None


def _pretty(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        lines.append(f"  - {loc}: {err['msg']}")
    return "\n".join(lines)


def recipe_id(cfg: dict[str, Any]) -> str:
    """Stable run id: the recipe name plus a short hash of its content (same recipe → same run dir)."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(cfg.get("name", "run")))[:40]
    return f"{safe}-{hashlib.sha256(blob).hexdigest()[:8]}"
