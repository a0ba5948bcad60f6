"""SimPO and f-DPO configured as their papers and authors' code define them, on TRL's own trainers.

TRL implements both losses; what goes wrong is the configuration:

* **SimPO** (Meng, Xia & Chen, arXiv 2405.14734, Eq. 6):
  ``L = -log σ(β/|y_w| log π(y_w|x) - β/|y_l| log π(y_l|x) - γ)``, no reference model. TRL runs it as
  ``CPOConfig(loss_type="simpo")``, whose defaults add a behaviour-cloning NLL term (``cpo_alpha=1.0``),
  take γ as an absolute margin (``simpo_gamma``), and use β=0.1, γ=0.5. The authors' trainer is
  parametrised by β and the ratio γ/β (``gamma_beta_ratio``; its loss is ``-log σ(β (Δ - γ/β))``) with
  defaults β=2.0, γ/β=0.25 and no SFT term. :func:`simpo_config` takes the authors' parameters and returns
  the equivalent ``CPOConfig`` (``cpo_alpha=0``, ``simpo_gamma = β · γ/β``); :data:`SIMPO_PRESETS` holds
  the released per-model settings.
* **f-DPO** (Wang et al., arXiv 2309.16240, Thm. 1 and Table 1): the DPO loss with the log-ratio replaced by
  ``f'(u)`` of an f-divergence, ``u = π(y|x) / π_ref(y|x)``:
  ``L = -log σ(β f'(u_w) - β f'(u_l))``. Reverse KL gives DPO (``f'(u) = log u + 1``), forward KL
  ``f'(u) = -1/u``, Jensen–Shannon ``f'(u) = log(2u / (1 + u))``, and the α-divergence, α ∈ (0, 1),
  ``f'(u) = (1 - u^(-α)) / α``. TRL's ``DPOConfig.f_divergence_type`` has all four, but its
  ``f_alpha_divergence_coef`` is ``1 - α`` in the paper's notation (TRL uses ``f'(u) = (u^(c-1) - 1)/(c - 1)``);
  at the default 0.5 the two agree. :func:`fdpo_config` takes the paper's α and converts it.

:func:`simpo_loss` and :func:`fdpo_loss` are the papers' formulas on given log-probabilities (for checks and
for users with their own training loop); the tests pin TRL's trainers with these configurations to them.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .._deps import require

# Released SimPO training configurations (beta, gamma_beta_ratio, learning_rate), one epoch, cosine schedule,
# warm-up ratio 0.1, effective batch 128 in every one of them.
SIMPO_PRESETS: dict[str, dict[str, float]] = {
    "mistral-7b-base": {"beta": 2.0, "gamma_beta_ratio": 0.8, "learning_rate": 3e-7},
    "mistral-7b-instruct": {"beta": 2.5, "gamma_beta_ratio": 0.1, "learning_rate": 5e-7},
    "llama-3-8b-base": {"beta": 2.0, "gamma_beta_ratio": 0.5, "learning_rate": 6e-7},
    "llama-3-8b-instruct": {"beta": 2.5, "gamma_beta_ratio": 0.55, "learning_rate": 1e-6},
    "llama-3-8b-instruct-v2": {"beta": 10.0, "gamma_beta_ratio": 0.3, "learning_rate": 1e-6},
    "gemma-2-9b-it": {"beta": 10.0, "gamma_beta_ratio": 0.5, "learning_rate": 8e-7},
}

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
_TRL_DIVERGENCE = {"reverse_kl": "reverse_kl", "forward_kl": "forward_kl", "js": "js_divergence",
                   "alpha": "alpha_divergence"}


def _check(name: str, v: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False,
           hi_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must lie in {left}{lo}, {hi}{right}, got {v!r}")
    return float(v)


def simpo_config(beta: float | None = None, gamma_beta_ratio: float | None = None, *, preset: str | None = None,
                 label_smoothing: float = 0.0, sft_weight: float = 0.0, **cpo_kwargs: Any) -> Any:
    """A TRL ``CPOConfig`` that trains pure SimPO with the authors' parametrisation.

    Args:
        beta: β of SimPO's reward ``β/|y| log π(y|x)`` (authors' default 2.0; released runs 2.0–10).
        gamma_beta_ratio: γ/β, the target margin over β (default 0.25; released runs 0.1–0.8).
        preset: one of :data:`SIMPO_PRESETS` (a released model's β, γ/β and learning rate, plus its cosine
            schedule with 10% warm-up and one epoch); explicit ``beta`` / ``gamma_beta_ratio`` /
            ``cpo_kwargs`` override it.
        label_smoothing: the conservative-loss ε in [0, 0.5) (default 0, as released).
        sft_weight: weight of the NLL term on chosen responses (TRL's ``cpo_alpha``; SimPO: 0).
        cpo_kwargs: any other ``CPOConfig`` field (``output_dir``, batch sizes, ``max_steps``, ...).
    """
    cpo = require("trl.experimental.cpo", "trl")
    values: dict[str, Any] = {"beta": 2.0, "gamma_beta_ratio": 0.25}
    extra: dict[str, Any] = {}
    if preset is not None:
        if preset not in SIMPO_PRESETS:
            raise ValueError(f"unknown SimPO preset {preset!r}; choose from {sorted(SIMPO_PRESETS)}")
        p = SIMPO_PRESETS[preset]
        values = {"beta": p["beta"], "gamma_beta_ratio": p["gamma_beta_ratio"]}
        # transformers 5 takes a warm-up ratio as a float warmup_steps; 4.x has warmup_ratio
        warm = "warmup_ratio" if "warmup_ratio" in {f.name for f in dataclasses.fields(cpo.CPOConfig)} \
            else "warmup_steps"
        extra = {"learning_rate": p["learning_rate"], "lr_scheduler_type": "cosine", warm: 0.1,
                 "num_train_epochs": 1}
    if beta is not None:
        values["beta"] = beta
    if gamma_beta_ratio is not None:
        values["gamma_beta_ratio"] = gamma_beta_ratio
    b = _check("beta", values["beta"], 0.0, lo_open=True)
    ratio = _check("gamma_beta_ratio", values["gamma_beta_ratio"], 0.0)
    ls = _check("label_smoothing", label_smoothing, 0.0, 0.5)
    sw = _check("sft_weight", sft_weight, 0.0)
    for key in ("loss_type", "simpo_gamma", "cpo_alpha"):
        if key in cpo_kwargs:
            raise ValueError(f"{key} is set by simpo_config (SimPO loss, γ = β·gamma_beta_ratio, "
                             "cpo_alpha = sft_weight); pass gamma_beta_ratio / sft_weight instead")
    return cpo.CPOConfig(**{**extra, **cpo_kwargs, "loss_type": "simpo", "beta": b, "simpo_gamma": b * ratio,
                            "cpo_alpha": sw, "label_smoothing": ls})


def fdpo_config(divergence: str = "reverse_kl", alpha: float = 0.5, **dpo_kwargs: Any) -> Any:
    """A TRL ``DPOConfig`` for f-DPO with ``divergence`` in :data:`DIVERGENCES`; ``alpha`` is the paper's α of
    the α-divergence (in (0, 1); α → 0 approaches reverse KL, α → 1 forward KL), converted to TRL's
    coefficient ``1 - α``. Other ``DPOConfig`` fields (``beta``, ``loss_type``, ...) pass through."""
    trl = require("trl", "trl")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    for key in ("f_divergence_type", "f_alpha_divergence_coef"):
        if key in dpo_kwargs:
            raise ValueError(f"{key} is set by fdpo_config; pass divergence= and alpha= (the paper's α) instead")
    a = _check("alpha", alpha, 0.0, 1.0, lo_open=True)
    return trl.DPOConfig(**dpo_kwargs, f_divergence_type=_TRL_DIVERGENCE[divergence],
                         f_alpha_divergence_coef=1.0 - a)


def f_prime(log_u: torch.Tensor, divergence: str, alpha: float = 0.5) -> torch.Tensor:
    """``f'(u)`` of the f-divergence at ``u = exp(log_u)`` (f-DPO Table 1; additive constants kept)."""
    if divergence == "reverse_kl":
        return log_u + 1.0
    if divergence == "forward_kl":
        return -torch.exp(-log_u)
    if divergence == "js":
        return math.log(2.0) + log_u - torch.log1p(torch.exp(log_u))
    if divergence == "alpha":
        _check("alpha", alpha, 0.0, 1.0, lo_open=True)
        return (1.0 - torch.exp(-alpha * log_u)) / alpha
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")


def fdpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, beta: float = 0.1, divergence: str = "reverse_kl",
              alpha: float = 0.5) -> torch.Tensor:
    """Per-pair f-DPO loss from sequence log-probabilities (sums over the response tokens)."""
    d = f_prime(policy_chosen - ref_chosen, divergence, alpha) - f_prime(policy_rejected - ref_rejected,
                                                                          divergence, alpha)
    return -F.logsigmoid(beta * d)


def simpo_loss(chosen_avg_logp: torch.Tensor, rejected_avg_logp: torch.Tensor, beta: float = 2.0,
               gamma_beta_ratio: float = 0.25, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair SimPO loss from length-averaged log-probabilities (``log π(y|x) / |y|``)."""
    z = beta * (chosen_avg_logp - rejected_avg_logp) - beta * gamma_beta_ratio
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def self_preference_pairs(prompts: Sequence[Any], samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                          *, threshold: float = 1.0, pairs_per_prompt: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """Preference rows ``{"prompt", "chosen", "rejected"}`` from a model's own samples: for each prompt, a
    chosen sample scoring ≥ ``threshold`` and a rejected one below it, drawn without replacement among the
    distinct texts (up to ``pairs_per_prompt`` pairs). Prompts whose samples are all right or all wrong give
    no pair. The rows are what TRL's DPO/CPO trainers take."""
    if not (len(prompts) == len(samples) == len(scores)):
        raise ValueError(f"prompts, samples and scores differ in length: {len(prompts)}, {len(samples)}, "
                         f"{len(scores)}")
    if isinstance(pairs_per_prompt, bool) or not isinstance(pairs_per_prompt, int) or pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be a positive int, got {pairs_per_prompt!r}")
    rng = random.Random(f"pairs:{seed}")
    rows = []
    for i, (prompt, texts, vals) in enumerate(zip(prompts, samples, scores)):
        if len(texts) != len(vals):
            raise ValueError(f"prompt {i}: {len(texts)} samples but {len(vals)} scores")
        good = list(dict.fromkeys(t for t, v in zip(texts, vals) if v >= threshold))
        bad = list(dict.fromkeys(t for t, v in zip(texts, vals) if v < threshold))
        rng.shuffle(good)
        rng.shuffle(bad)
        rows += [{"prompt": prompt, "chosen": c, "rejected": r} for c, r in zip(good, bad)][:pairs_per_prompt]
    return rows


__all__ = ["DIVERGENCES", "SIMPO_PRESETS", "f_prime", "fdpo_config", "fdpo_loss", "self_preference_pairs",
           "simpo_config", "simpo_loss"]
