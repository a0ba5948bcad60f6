"""HAPO — Heterogeneous Adaptive Policy Optimization (Liu et al., arXiv 2507.21848; starriver030515/HAPO):
token-level treatment of GRPO/DAPO driven by each token's entropy. The maths, in plain torch.

* **Normalised entropy** ``ĥ`` (:func:`entropy_h`): ``h = (log H - q) / s`` with ``q`` the ``pivot``
  quantile (nearest) of the log-entropies of the batch's response tokens (released run: 0.8) and ``s`` the
  root-mean-square of ``log H - q`` over them; positive values are divided by the largest positive one and
  negative values by the magnitude of the most negative one, so ``ĥ ∈ [-1, 1]`` with ``ĥ > 0`` for the
  high-entropy ("forking") tokens and ``ĥ < 0`` for the low-entropy ones, as the paper describes every
  component. **Deviation flag** ``released_sign=True``: the released code multiplies negative ``h`` by
  ``1 / min(h)``, a negative number, so every low-entropy token gets a *positive* ``ĥ`` (``ĥ ∈ [0, 1]``): its
  sampling temperature rises instead of falling, its upper clip range widens and its advantage is
  amplified like a forking token's — the opposite of the mechanism the paper and README describe. Verified
  side by side with the released functions (identical outputs with the flag on).
* **Adaptive temperature sampling** (:func:`entropy_temperature`): each sampled token uses
  ``T (1 + τ ĥ)`` (τ = 0.05), ``ĥ`` clamped to [-1, 1] and computed with the statistics ``(q, s, 1/max⁺,
  1/|min⁻|)`` of the *previous* training step's tokens (the first step samples at ``T``).
* **Token-level group average** (:func:`token_group_advantages`): the group's mean and (population) std of
  the reward are taken over its response *tokens* (each response weighs by its length), not over the
  responses; if any resulting advantage reaches ``|A| ≥ 5`` the group falls back to the usual GRPO
  advantage (mean and unbiased std over responses, as the released ``compute_grpo_outcome_advantage``).
* **Asymmetric adaptive clipping** (:func:`adaptive_clip_ranges`): low-entropy tokens (``ĥ ≤ 0``) get a
  wider lower range ``ε_low (1 - α ĥ)``, high-entropy tokens a wider upper range ``ε_high (1 + α ĥ)``.
* **Differential advantage redistribution** (:func:`redistribute_advantages`): ``A' = A (1 + β ĥ)``;
  high-entropy tokens use ``A'`` only when their ratio left the neutral band
  ``(1 - ε_low/2, 1 + ε_high/2)``, low-entropy tokens only while it is inside.
* **Loss** (:func:`hapo_policy_loss`): the dual-clip PPO token loss with these ranges and advantages
  (``clip_ratio_c`` = 10 in the released recipes), aggregated as a token mean.

Released defaults (recipes): ε_low = ε_high = 0.2, pivot 0.8, α = β = 1, τ = 0.05, ``clip_ratio_c`` 10,
token-mean loss, no KL term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EntropyStats:
    """Statistics of one batch's log-entropies, reused to normalise the next rollout's tokens."""

    quantile: float
    scale: float
    pos_scale: float
    neg_scale: float  # negative: 1 / (most negative h)


def entropy_h(entropy: torch.Tensor, mask: torch.Tensor | None = None, pivot: float = 0.8, eps: float = 1e-8,
              released_sign: bool = False) -> tuple[torch.Tensor, EntropyStats]:
    """``ĥ`` per token (read it on the masked tokens) and the batch statistics. ``entropy``: per-token
    entropy (any shape); ``mask``: the response tokens. ``released_sign``: the released code's scaling of the
    negative side (see the module docstring)."""
    if not 0.0 <= pivot <= 1.0:
        raise ValueError(f"pivot must lie in [0, 1], got {pivot!r}")
    m = (entropy > 0) if mask is None else mask.bool()
    log_h = torch.log(entropy.float().clamp_min(eps))
    vals = log_h[m]
    if vals.numel() == 0:
        q = torch.tensor(0.0)
    else:  # "nearest" quantile: the sorted value at round(pivot * (n - 1))
        q = vals.sort().values[int(round(pivot * (vals.numel() - 1)))]
    h = log_h - q
    n = m.sum().clamp_min(1)
    s = ((h.pow(2) * m).sum() / n).clamp_min(eps).sqrt()
    h = h / s
    pos_max = torch.where(m & (h > 0), h, torch.zeros_like(h)).max().clamp_min(eps)
    neg_min = torch.where(m & (h < 0), h, torch.zeros_like(h)).min().clamp_max(-eps)
    pos_scale = 1.0 / pos_max
    neg_scale = 1.0 / neg_min if released_sign else -1.0 / neg_min  # released: negative h turn positive
    h_hat = torch.where(h > 0, h * pos_scale, h * neg_scale)
    return h_hat, EntropyStats(float(q), float(s), float(pos_scale), float(neg_scale))


def entropy_temperature(logits: torch.Tensor, temperature: float, stats: EntropyStats | None,
                        tau: float = 0.05, eps: float = 1e-6) -> torch.Tensor:
    """Per-row sampling temperature ``T (1 + τ ĥ)`` from the entropy of ``logits`` (shape (..., vocab));
    ``stats=None`` (no previous step yet) gives ``T`` everywhere."""
    shape = logits.shape[:-1]
    if stats is None:
        return torch.full(shape, float(temperature), dtype=torch.float32, device=logits.device)
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    h = (torch.log(ent.clamp_min(eps)) - stats.quantile) / (stats.scale + eps)
    h_hat = torch.where(h > 0, h * stats.pos_scale, h * stats.neg_scale).clamp(-1.0, 1.0)
    return temperature * (1.0 + tau * h_hat)


def token_group_advantages(rewards: torch.Tensor, lengths: torch.Tensor, num_generations: int,
                           eps: float = 1e-6, scale: bool = True, fallback_at: float = 5.0,
                           padded: bool = True) -> torch.Tensor:
    """Per-response advantages with token-weighted group statistics (see the module docstring).
    ``rewards`` and ``lengths`` (response tokens) have one entry per response, groups consecutive.

    ``padded=True`` (default) reproduces the released fallback test, which also looks at the padding
    positions of the group's (responses × max length) matrix, where the normalised value is
    ``-mean / (std + eps)``: responses there are padded to the configured maximum length, so every group
    has padding, and a group whose token mean is ≥ 5 of its stds from 0 falls back as well."""
    r, w = rewards.float().flatten(), lengths.float().flatten()
    G = num_generations
    if r.numel() % G or r.shape != w.shape:
        raise ValueError(f"{r.numel()} rewards / {w.numel()} lengths do not form groups of {G}")
    r, w = r.view(-1, G), w.view(-1, G)
    tot = w.sum(1, keepdim=True).clamp_min(1.0)
    mean = (w * r).sum(1, keepdim=True) / tot
    std = ((w * (r - mean) ** 2).sum(1, keepdim=True) / tot).sqrt()
    adv = (r - mean) / (std + eps) if scale else r - mean
    if G > 1:
        g_mean, g_std = r.mean(1, keepdim=True), r.std(1, keepdim=True)
    else:  # the released GRPO estimator: mean 0, std 1 for a single response
        g_mean, g_std = torch.zeros_like(mean), torch.ones_like(mean)
    grpo = (r - g_mean) / (g_std + eps) if scale else r - g_mean
    far = (adv.abs() >= fallback_at).any(1, keepdim=True)
    if padded:
        far = far | ((mean / (std + eps) if scale else mean).abs() >= fallback_at)
    return torch.where(far, grpo, adv).flatten()


def adaptive_clip_ranges(eps_low: float, eps_high: float, h_hat: torch.Tensor,
                         alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(ε_low, ε_high)``: the lower range widens on low-entropy tokens, the upper on high ones."""
    low = torch.where(h_hat <= 0, eps_low * (1 - alpha * h_hat), torch.full_like(h_hat, eps_low))
    high = torch.where(h_hat > 0, eps_high * (1 + alpha * h_hat), torch.full_like(h_hat, eps_high))
    return low, high


def redistribute_advantages(adv: torch.Tensor, h_hat: torch.Tensor, ratio: torch.Tensor, low: torch.Tensor,
                            high: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """HAPO's differential advantage redistribution (see the module docstring)."""
    scaled = adv * (1 + beta * h_hat)
    neutral = (ratio > 1 - low / 2) & (ratio < 1 + high / 2)
    return torch.where(h_hat > 0, torch.where(neutral, adv, scaled), torch.where(neutral, scaled, adv))


def hapo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                     entropy: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2, clip_ratio_c: float = 10.0,
                     pivot: float = 0.8, adaptive_clip: bool = True, clip_alpha: float = 1.0,
                     adaptive_advantage: bool = True, adv_beta: float = 1.0, released_sign: bool = False,
                     reduce: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """HAPO's per-token dual-clip PPO loss; ``advantages`` (B,) or (B, T). Returns the token-mean loss (or the
    per-token loss with ``reduce=False``) and metrics (clip fractions, mean ĥ)."""
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must exceed 1, got {clip_ratio_c!r}")
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    adv = adv.expand_as(logp)
    ratio = torch.exp(logp - old_logp)
    with torch.no_grad():
        h_hat, _ = entropy_h(entropy.detach(), mask, pivot, released_sign=released_sign)
        low = torch.full_like(ratio, eps_low)
        high = torch.full_like(ratio, eps_high)
        if adaptive_clip:
            low, high = adaptive_clip_ranges(eps_low, eps_high, h_hat, clip_alpha)
        if adaptive_advantage:
            adv = redistribute_advantages(adv, h_hat, ratio, low, high, adv_beta)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
    clipped = torch.maximum(loss1, loss2)
    dual = torch.minimum(-adv * clip_ratio_c, clipped)  # negative advantages: bounded by c·|A|
    per_token = torch.where(adv < 0, dual, clipped)
    m = mask.float()
    n = m.sum().clamp_min(1.0)
    stats = {"clip_frac": float(((loss2 > loss1).float() * m).sum() / n),
             "dual_clip_frac": float(((clipped > -adv * clip_ratio_c) & (adv < 0)).float().mul(m).sum() / n),
             "h_hat_mean": float((h_hat * m).sum() / n)}
    if not reduce:
        return per_token, stats
    return (per_token * m).sum() / n, stats


__all__ = ["EntropyStats", "adaptive_clip_ranges", "entropy_h", "entropy_temperature", "hapo_policy_loss",
           "redistribute_advantages", "token_group_advantages"]
