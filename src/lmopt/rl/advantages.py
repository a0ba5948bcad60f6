"""Group-relative advantages: TRL's GRPO formula and COPO's consistency-aware blend.

``grpo_advantages`` reproduces, operation for operation, the ``sum_then_normalize`` branch of TRL's
``GRPOTrainer._generate_and_score_completions`` (TRL 0.24–1.x): weighted sum of the reward columns (NaN
ignored), per-group mean, Bessel-corrected std (per group for ``"group"``/``"none"``, over the whole batch for
``"batch"``), ``(r - mean) / (std + 1e-4)`` unless ``scale_rewards="none"``, NaN advantages set to 0.

``copo_advantages`` implements COPO (Han et al., arXiv 2508.04138, §3: global consistency-aware reward,
entropy-gated blend): per prompt the global reward ``R_g = mean(r_i) * c`` with the optional consistency
factor ``c = 1 - lambda * H`` (``H`` the entropy, in bits, of the group's final answers and
``lambda = (1 - 1/n) / log2(n)``), the global advantage is the z-score of ``R_g`` across the prompts of the
batch (unbiased std, ``+ 1e-6``, as the authors' code), and the per-sample advantage is
``(1 - w_i) * A_global + w_i * A_local``. Two gates, named as in the authors' code:

* ``"soft"`` (the paper's equation): ``w_i = sigmoid(k (H - b))``;
* ``"soft-with-zero"`` (the authors' released run): ``w_i = sigmoid(k (H - b)) * [r_i != 0]``, so a sample
  whose reward is 0 learns from the global advantage alone.

Settings as named presets (:data:`COPO_PRESETS`): ``"released"`` — the authors' run: ``soft-with-zero``,
``k = 5``, ``b = 1``, no consistency factor; ``"paper"`` — the paper's equations with ``k = 1``,
``b = 0.5`` and the consistency factor. The paper blends the two *losses*; since the clipped policy-gradient
loss is linear in the advantage while the importance ratio lies inside the clip range, blending the
advantages gives the same gradient whenever every update is on-policy: TRL's ``num_iterations=1`` and
``steps_per_generation <= gradient_accumulation_steps`` (each generation consumed within one optimiser step).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import torch

_SCALES = ("group", "batch", "none")
EPS_STD = 1e-4  # TRL's constant in the advantage denominator
EPS_GLOBAL = 1e-6  # the COPO code's constant in the global advantage's denominator
COPO_GATES = ("soft", "soft-with-zero")
COPO_PRESETS: dict[str, dict[str, Any]] = {
    "released": {"gate": "soft-with-zero", "k": 5.0, "b": 1.0, "consistency": False},
    "paper": {"gate": "soft", "k": 1.0, "b": 0.5, "consistency": True},
}


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (NaN when fewer than two values), as TRL's ``nanstd``."""
    mean = torch.nanmean(x, dim=dim, keepdim=True) if dim is not None else torch.nanmean(x)
    var = torch.nanmean((x - mean) ** 2, dim=dim) if dim is not None else torch.nanmean((x - mean) ** 2)
    count = (~torch.isnan(x)).sum(dim=dim) if dim is not None else (~torch.isnan(x)).sum()
    corr = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.full_like(var, float("nan")))
    return torch.sqrt(var * corr)


def _check_rewards(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() == 1:
        rewards = rewards.unsqueeze(1)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (N,) or (N, num_reward_funcs); got {tuple(rewards.shape)}")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if rewards.shape[0] % num_generations != 0:
        raise ValueError(
            f"the number of rewards ({rewards.shape[0]}) must be a multiple of num_generations "
            f"({num_generations}): rewards come in consecutive groups of num_generations per prompt"
        )
    return rewards.float()


def grpo_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    reward_weights: torch.Tensor | Sequence[float] | None = None,
    scale_rewards: str = "group",
) -> torch.Tensor:
    """TRL's GRPO advantages for rewards laid out as consecutive groups of ``num_generations``.

    ``rewards`` has shape (N,) or (N, K) for K reward functions (NaN = "not applicable", as in TRL).
    Returns a float tensor of shape (N,).

    >>> [round(a, 3) for a in grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2).tolist()]
    [0.707, -0.707, 0.0, 0.0]
    """
    rpf = _check_rewards(rewards, num_generations)
    if scale_rewards not in _SCALES:
        raise ValueError(f"scale_rewards must be one of {_SCALES}, got {scale_rewards!r}")
    k = rpf.shape[1]
    w = torch.ones(k) if reward_weights is None else torch.as_tensor(reward_weights, dtype=torch.float32)
    if w.shape != (k,):
        raise ValueError(f"reward_weights must have one weight per reward function ({k}); got shape {tuple(w.shape)}")
    unscorable = torch.isnan(rpf).all(dim=1)
    r = (rpf * w.unsqueeze(0)).nansum(dim=1)
    r[unscorable] = float("nan")
    grouped = r.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards in ("group", "none"):
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations) if num_generations > 1 else torch.zeros_like(r)
    else:
        std = nanstd(r).expand_as(r) if r.numel() > 1 else torch.zeros_like(r)
    adv = r - mean
    if scale_rewards != "none":
        adv = adv / (std + EPS_STD)
    return torch.nan_to_num(adv, nan=0.0)


def zero_variance_groups(rewards: torch.Tensor, num_generations: int, atol: float = 0.0) -> torch.Tensor:
    """Boolean mask (one per group) of groups whose summed rewards are all equal (within ``atol``)."""
    r = _check_rewards(rewards, num_generations).nansum(dim=1).view(-1, num_generations)
    return (r.max(dim=1).values - r.min(dim=1).values) <= atol


def answer_entropy(answers: Sequence[Hashable]) -> float:
    """Shannon entropy in bits of the empirical distribution of ``answers`` (COPO's consistency measure)."""
    if len(answers) == 0:
        raise ValueError("answer_entropy needs at least one answer")
    n = len(answers)
    return -sum((c / n) * math.log2(c / n) for c in Counter(answers).values())


def copo_settings(preset: str = "released", **overrides: Any) -> dict[str, Any]:
    """The COPO settings of ``preset`` (see :data:`COPO_PRESETS`) with ``overrides`` applied, validated."""
    if preset not in COPO_PRESETS:
        raise ValueError(f"unknown COPO preset {preset!r}; choose one of {', '.join(COPO_PRESETS)}")
    unknown = set(overrides) - set(COPO_PRESETS[preset])
    if unknown:
        raise ValueError(f"unknown COPO setting(s) {sorted(unknown)}; the settings are {sorted(COPO_PRESETS[preset])}")
    out = {**COPO_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if out["gate"] not in COPO_GATES:
        raise ValueError(f"COPO gate must be one of {COPO_GATES}, got {out['gate']!r}")
    return out


def copo_advantages(
    rewards: torch.Tensor,
    answers: Sequence[Hashable],
    num_generations: int,
    reward_weights: torch.Tensor | Sequence[float] | None = None,
    scale_rewards: str = "group",
    consistency: bool = False,
    b: float = 1.0,
    k: float = 5.0,
    return_parts: bool = False,
    gate: str = "soft-with-zero",
):
    """COPO advantages (arXiv 2508.04138): entropy-gated blend of global and local (GRPO) advantages.

    Defaults are the authors' released run (``COPO_PRESETS["released"]``). ``answers`` holds one hashable
    final answer per completion (same order as ``rewards``), used for the group's answer entropy. The
    global advantage needs at least two prompt groups in ``rewards``. With ``return_parts=True`` returns
    ``(advantages, parts)`` where ``parts`` has the per-group ``entropy``, ``global_reward``, and per-sample
    ``weight_local``, ``local`` and ``global``.
    """
    rpf = _check_rewards(rewards, num_generations)
    if len(answers) != rpf.shape[0]:
        raise ValueError(f"need one answer per completion: got {len(answers)} answers for {rpf.shape[0]} rewards")
    if num_generations < 2:
        raise ValueError("COPO needs num_generations >= 2 (the answer entropy of a single sample is always 0)")
    if gate not in COPO_GATES:
        raise ValueError(f"COPO gate must be one of {COPO_GATES}, got {gate!r}")
    n_groups = rpf.shape[0] // num_generations
    if n_groups < 2:
        raise ValueError(
            f"COPO's global advantage is a z-score across prompts, but this batch holds {n_groups} prompt group: "
            "with TRL, make the generation batch hold several prompts (GRPOConfig generation_batch_size, or "
            "steps_per_generation / per_device_train_batch_size, a multiple of num_generations); the "
            "authors' run uses 512 prompts per batch"
        )
    local = grpo_advantages(rpf, num_generations, reward_weights, scale_rewards)
    k_funcs = rpf.shape[1]
    w = torch.ones(k_funcs) if reward_weights is None else torch.as_tensor(reward_weights, dtype=torch.float32)
    r_flat = (rpf * w.unsqueeze(0)).nansum(dim=1)
    r = r_flat.view(-1, num_generations)
    ent = torch.tensor(
        [answer_entropy(answers[g * num_generations:(g + 1) * num_generations]) for g in range(n_groups)]
    )
    lam = (1.0 - 1.0 / num_generations) / math.log2(num_generations)
    c = 1.0 - lam * ent if consistency else torch.ones_like(ent)
    r_global = r.mean(dim=1) * c
    a_global = (r_global - r_global.mean()) / (r_global.std(unbiased=True) + EPS_GLOBAL)
    w_local = torch.sigmoid(k * (ent - b)).repeat_interleave(num_generations)
    if gate == "soft-with-zero":
        w_local = w_local * (r_flat != 0).float()
    a_global_s = a_global.repeat_interleave(num_generations)
    adv = (1.0 - w_local) * a_global_s + w_local * local
    if return_parts:
        return adv, {"entropy": ent, "weight_local": w_local, "global_reward": r_global,
                     "local": local, "global": a_global_s}
    return adv
