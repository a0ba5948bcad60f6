"""AdamW maths (Loshchilov & Hutter, arXiv 1711.05101) used for the auxiliary groups of Muon and APOLLO."""

from __future__ import annotations

from typing import Any

import torch

from ._base import scalar


def adamw_math(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, gsign: torch.Tensor,
               decay: torch.Tensor, step_size: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor,
               bc2_sqrt: torch.Tensor, eps: torch.Tensor, official: bool) -> None:
    """θ ← θ(1−ηλ) − η/(1−β1ᵗ) · m/(√v/√(1−β2ᵗ) + ε), as torch.optim.AdamW; with ``official`` the
    APOLLO/GaLore code's variant: θ ← (θ − η·√(1−β2ᵗ)/(1−β1ᵗ) · m/(√v + ε))·(1−ηλ) (ε on the uncorrected
    √v, decay after the step)."""
    g32 = g.float() * gsign
    m32 = m.float() * beta1 + g32 * (1 - beta1)
    v32 = v.float() * beta2 + g32 * g32 * (1 - beta2)
    m.copy_(m32)
    v.copy_(v32)
    if official:
        p.copy_((p.float() - step_size * bc2_sqrt * (m32 / (torch.sqrt(v32) + eps))) * decay)
    else:
        p.copy_(p.float() * decay - step_size * (m32 / (torch.sqrt(v32) / bc2_sqrt + eps)))


def adamw_step(opt: Any, p: torch.Tensor, g: torch.Tensor, group: dict[str, Any], betas: tuple[float, float],
               eps: float, official: bool = False) -> None:
    """Initialise state if needed and run one AdamW step for ``p`` through ``opt._run``."""
    st = opt.state[p]
    if "exp_avg" not in st:
        opt._zero_state(st, group, p, "exp_avg", "exp_avg_sq")
    st["step"] += 1
    t = int(st["step"].item())
    lr = float(group["lr"])
    beta1, beta2 = betas
    opt._run(adamw_math, p.device, p, g, st["exp_avg"], st["exp_avg_sq"],
             scalar(-1.0 if group["maximize"] else 1.0, p), scalar(1.0 - lr * group["weight_decay"], p),
             scalar(lr / (1.0 - beta1**t), p), scalar(beta1, p), scalar(beta2, p),
             scalar((1.0 - beta2**t) ** 0.5, p), scalar(eps, p), bool(official))
