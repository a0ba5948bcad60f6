"""Choosing which parameters a zeroth-order optimizer perturbs (full model, named modules, LoRA adapters).

ZO fine-tuning of a subset (PEFT-style, e.g. LoRA adapters via ``peft``; see MeZO, arXiv 2305.17333,
Sec. 3 "MeZO with PEFT") shrinks the direction's dimension ``d``, which lowers the estimator's variance
(it grows with ``d``) and the time spent regenerating directions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

#: lmopt's default: no weight decay on biases and on every normalisation weight (``norm`` matches
#: LLaMA/SmolLM2's final ``model.norm.weight`` too, ``ln_`` GPT-2's ``ln_f``).
NO_DECAY_PATTERNS = ("bias", "norm", "layer_norm", "layernorm", "ln_")
#: MeZO's own rule (its trainer skips decay for names containing these, case-sensitive): the final
#: ``model.norm.weight`` of LLaMA-style models and GPT-2's ``ln_*`` weights *are* decayed.
MEZO_NO_DECAY_PATTERNS = ("bias", "layer_norm", "layernorm")


def named_zo_parameters(model: torch.nn.Module, *, include: Sequence[str] | None = None,
                        exclude: Sequence[str] = (), lora: bool = False,
                        trainable_only: bool = True) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` pairs to perturb, deduplicated (tied weights appear once).

    Args:
        include: regular expressions (``re.search``) on parameter names; ``None`` keeps all.
        exclude: regular expressions of names to drop.
        lora: keep only LoRA adapter weights (names containing ``lora_``, as peft names them).
        trainable_only: drop parameters with ``requires_grad=False`` (peft freezes the base model).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inc = [re.compile(p) for p in include] if include is not None else None
    exc = [re.compile(p) for p in exclude]
    out: list[tuple[str, torch.nn.Parameter]] = []
    for name, p in model.named_parameters():  # named_parameters already skips duplicates (tied weights)
        if trainable_only and not p.requires_grad:
            continue
        if lora and "lora_" not in name:
            continue
        if inc is not None and not any(r.search(name) for r in inc):
            continue
        if any(r.search(name) for r in exc):
            continue
        out.append((name, p))
    if not out:
        what = "LoRA adapter weights (names with 'lora_')" if lora else "parameters"
        raise ValueError(
            f"no {what} selected (include={include}, exclude={list(exclude)}, "
            f"trainable_only={trainable_only}): "
            "check the names with [n for n, _ in model.named_parameters()]"
            + ("; wrap the model with peft.get_peft_model(model, LoraConfig(...)) first" if lora else "")
        )
    return out


def param_groups(model_or_named: torch.nn.Module | Iterable[tuple[str, torch.nn.Parameter]], *,
                 weight_decay: float = 0.0, no_decay: Sequence[str] = NO_DECAY_PATTERNS,
                 **select: Any) -> list[dict[str, Any]]:
    """Two param groups, with and without weight decay.

    ``no_decay``: name substrings that get no decay; :data:`NO_DECAY_PATTERNS` (default: biases and all norm
    weights) or :data:`MEZO_NO_DECAY_PATTERNS` (MeZO's trainer, which decays e.g. ``model.norm.weight``).
    lmopt's default matches names case-insensitively; with MeZO's patterns the match is case-sensitive, as
    MeZO's is.
    """
    named = (named_zo_parameters(model_or_named, **select) if isinstance(model_or_named, torch.nn.Module)
             else list(model_or_named))
    decay, plain = [], []
    for name, p in named:
        key = name if tuple(no_decay) == MEZO_NO_DECAY_PATTERNS else name.lower()
        (plain if any(k in key for k in no_decay) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups
