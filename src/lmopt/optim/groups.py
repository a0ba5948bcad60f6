"""Param-group helpers: Muon for hidden matrices with AdamW for the rest; APOLLO for chosen 2-D modules.

Both return ``(optimizer_cls, kwargs)`` pairs usable as ``optimizer_cls_and_kwargs`` of the Hugging Face
``Trainer`` (the kwargs carry ``params``, which the Trainer uses instead of its own groups), or the groups
alone for a plain ``torch`` loop.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .apollo import APOLLO
from .muon import Muon

_HEAD_NAMES = ("lm_head", "head", "classifier", "score", "output", "wte", "wpe", "embed")


def _embedding_and_head_params(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            ids.add(id(module.weight))
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                mod = fn()
            except (NotImplementedError, AttributeError):
                mod = None
            if mod is not None and getattr(mod, "weight", None) is not None:
                ids.add(id(mod.weight))
    return ids


def _is_head_name(name: str) -> bool:
    leaf = name.split(".")[-2] if name.count(".") else name
    return any(leaf == h or leaf.startswith(h) for h in _HEAD_NAMES)


def muon_param_groups(model: nn.Module, *, lr: float = 0.02, weight_decay: float = 0.0, adamw_lr: float = 3e-4,
                      adamw_weight_decay: float = 0.0, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Groups for :class:`Muon`: ≥2-D hidden weights → Muon; embeddings, the output head, 1-D params and
    names matching a regex in ``exclude`` → AdamW (``use_muon=False``). Shared (tied) tensors appear once."""
    special = _embedding_and_head_params(model)
    hidden, rest, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_rest = (p.ndim < 2 or id(p) in special or _is_head_name(name)
                   or any(re.search(pat, name) for pat in exclude))
        (rest if is_rest else hidden).append(p)
    if not hidden:
        raise ValueError("muon_param_groups found no ≥2-D hidden weights in the model; use AdamW instead")
    groups = [dict(params=hidden, lr=lr, weight_decay=weight_decay, use_muon=True)]
    if rest:
        groups.append(dict(params=rest, lr=adamw_lr, weight_decay=adamw_weight_decay, use_muon=False))
    return groups


def apollo_param_groups(model: nn.Module, *, target_modules: tuple[str, ...] = (r"attn", r"mlp"),
                        rank: float = 0.25, weight_decay: float = 0.0, **group_kwargs: Any) -> list[dict[str, Any]]:
    """Groups for :class:`APOLLO`: 2-D weights of modules whose name matches a regex in ``target_modules``
    (and are not embeddings/heads) → projected; everything else → AdamW (``apollo=False``)."""
    special = _embedding_and_head_params(model)
    proj, rest, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        short = min(p.shape) if p.ndim == 2 else 0
        r = max(1, int(round(rank * short))) if isinstance(rank, float) else rank
        ok = (p.ndim == 2 and id(p) not in special and any(re.search(t, name) for t in target_modules)
              and r < short)
        (proj if ok else rest).append(p)
    if not proj:
        raise ValueError(f"apollo_param_groups matched no 2-D weights with target_modules={target_modules}")
    groups = [dict(params=proj, apollo=True, rank=rank, weight_decay=weight_decay, **group_kwargs)]
    if rest:
        groups.append(dict(params=rest, apollo=False, weight_decay=0.0))
    return groups


def muon_for_trainer(model: nn.Module, **kwargs: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``optimizer_cls_and_kwargs`` for the HF Trainer: (Muon, {params: muon_param_groups(model), ...}).

    Keyword arguments go to :func:`muon_param_groups` (lr, weight_decay, adamw_lr, ...) or, when they are
    Muon constructor options (momentum, ns_steps, adjust_lr, ...), to :class:`Muon`.
    """
    group_keys = {"lr", "weight_decay", "adamw_lr", "adamw_weight_decay", "exclude"}
    gk = {k: v for k, v in kwargs.items() if k in group_keys}
    ok = {k: v for k, v in kwargs.items() if k not in group_keys}
    return Muon, {"params": muon_param_groups(model, **gk), **ok}


def apollo_for_trainer(model: nn.Module, *, mini: bool = False, lr: float = 1e-3, **kwargs: Any
                       ) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``optimizer_cls_and_kwargs`` for the HF Trainer with APOLLO (or APOLLO-Mini when ``mini``)."""
    from .apollo import APOLLOMini

    group_keys = {"target_modules", "rank", "weight_decay"}
    gk = {k: v for k, v in kwargs.items() if k in group_keys}
    ok = {k: v for k, v in kwargs.items() if k not in group_keys}
    if mini:
        gk.setdefault("rank", 1)
        gk["scale_type"] = "tensor"
        gk.setdefault("scale", ok.pop("scale", 128.0))
    return (APOLLOMini if mini else APOLLO), {"params": apollo_param_groups(model, **gk), "lr": lr, **ok}
