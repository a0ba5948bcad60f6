"""Build an :class:`LM` from a recipe's ``model`` mapping."""

from __future__ import annotations

from typing import Any

from .client import LM
from .usage import Budget, UsageMeter

BACKENDS = ("local", "openai", "replay")


def make_lm(spec: dict[str, Any] | None = None, *, cache: bool | str = True, budget: dict[str, Any] | None = None,
            meter: UsageMeter | None = None) -> LM:
    """``spec`` keys: backend (local | openai | replay), id, batch_size, device (local); base_url,
    api_key_env, split_n, max_concurrency, timeout, max_retries (openai); replay_path, replay_name, split_n
    (replay). ``cache`` is True (default cache file), a path, or False."""
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
        kwargs: dict[str, Any] = {"api_key_env": spec.get("api_key_env", "OPENAI_API_KEY")}
        for key in ("split_n", "max_concurrency", "timeout", "max_retries"):
            if spec.get(key) is not None:
                kwargs[key] = spec[key]
        if spec.get("base_url"):
            kwargs["base_url"] = spec["base_url"]
        backend = OpenAICompatibleLM(spec["id"], **kwargs)
    elif kind == "replay":
        from .replay import ReplayBackend

        if not spec.get("replay_path") or not spec.get("replay_name"):
            raise ValueError("model.backend 'replay' needs model.replay_path and model.replay_name")
        backend = ReplayBackend(spec["replay_path"], name=spec["replay_name"],
                                split_n=bool(spec.get("split_n", False)))
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
