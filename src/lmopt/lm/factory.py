"""Build an :class:`LM` from a recipe's ``model`` mapping."""

from __future__ import annotations

from typing import Any

from .client import LM
from .usage import Budget, UsageMeter

BACKENDS = ("local", "openai", "replay")


def make_lm(spec: dict[str, Any] | None = None, *, cache: bool | str = True, budget: dict[str, Any] | None = None,
            meter: UsageMeter | None = None) -> LM:
    """``spec`` keys: backend (local | openai | replay), id, batch_size, device, base_url, api_key_env,
    replay_path, replay_name. ``cache`` is True (default cache file), a path, or False."""
    spec = dict(spec or {})
    kind = spec.pop("backend", "local")
    if kind == "local":
        from .local import LocalLM

        backend: Any = LocalLM(spec.get("id"), device=spec.get("device", "cpu"),
                               batch_size=spec.get("batch_size", 8))
    elif kind == "openai":
        from .openai_compat import OpenAICompatibleLM

        if not spec.get("id"):
            raise ValueError("model.backend 'openai' needs model.id (the server's model name)")
        kwargs = {"api_key_env": spec.get("api_key_env", "OPENAI_API_KEY")}
        if spec.get("base_url"):
            kwargs["base_url"] = spec["base_url"]
        backend = OpenAICompatibleLM(spec["id"], **kwargs)
    elif kind == "replay":
        from .replay import ReplayBackend

        if not spec.get("replay_path") or not spec.get("replay_name"):
            raise ValueError("model.backend 'replay' needs model.replay_path and model.replay_name")
        backend = ReplayBackend(spec["replay_path"], name=spec["replay_name"])
    else:
        raise ValueError(f"unknown model backend {kind!r}; choose one of {BACKENDS}")
    store = None
    if cache:
        from .cache import CallCache

        store = CallCache(None if cache is True else cache)
    if meter is not None:
        if budget:
            raise ValueError("pass budget= or meter=, not both")
        return LM(backend, cache=store, meter=meter)
    return LM(backend, cache=store, budget=Budget.from_dict(budget) if budget else None)
