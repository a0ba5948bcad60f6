"""AdaBelief (Zhuang et al., arXiv 2010.07468, Algorithm 2), matching the official adabelief-pytorch 0.2.1.

Per step t (decoupled weight decay, the official default)::

    θ ← θ·(1 − η·λ)
    m ← β1·m + (1−β1)·g
    s ← β2·s + (1−β2)·(g − m)² + ε          # official code adds ε into the stored state (eps_in_state)
    not rectified:   θ ← θ − η/(1−β1ᵗ) · m / (√s/√(1−β2ᵗ) + ε)
    rectified (RAdam, N_sma ≥ 5): θ ← θ − η·r_t·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√s + ε)
    rectified (N_sma < 5): θ ← θ − η/(1−β1ᵗ)·m  (degenerated_to_sgd) or no update

with ρ∞ = 2/(1−β2) − 1, N_sma = ρ∞ − 2tβ2ᵗ/(1−β2ᵗ) and r_t = √((N_sma−4)(N_sma−2)ρ∞ / ((ρ∞−4)(ρ∞−2)N_sma)).
The paper's Algorithm 2 adds ε to s as well; the placement of ε in the rectified denominator (no division by
√(1−β2ᵗ) inside it) is the official code's and is kept because it changes results.
With ``amsgrad=True`` and ``rectify=True`` the official code updates the running max but divides by the
current s in the rectified branch (up to 27% of an update with β2 = 0.9); here the max is used in both
branches by default, and ``amsgrad_in_rectified=False`` reproduces the official behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ._base import LmoptOptimizer, check_betas, check_lr, check_nonneg, check_state_dtype, scalar


def adabelief_math(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, s: torch.Tensor, smax: torch.Tensor | None,
                   use_max: bool, gsign: torch.Tensor, decay: torch.Tensor, l2: torch.Tensor, beta1: torch.Tensor,
                   beta2: torch.Tensor, eps_state: torch.Tensor, eps: torch.Tensor, denom_scale: torch.Tensor,
                   adapt_coef: torch.Tensor, sgd_coef: torch.Tensor, decoupled: bool) -> None:
    """One AdaBelief step on one tensor; all step-dependent scalars are precomputed on the host."""
    g32 = g.float() * gsign
    p32 = p.float()
    if decoupled:
        p32 = p32 * decay
    else:  # classic L2 penalty folded into the gradient
        g32 = g32 + l2 * p32
    m32 = m.float() * beta1 + g32 * (1 - beta1)
    r = g32 - m32
    s32 = s.float() * beta2 + r * r * (1 - beta2) + eps_state
    s.copy_(s32)
    if smax is not None:
        s_max = torch.maximum(smax.float(), s32)
        smax.copy_(s_max)
        if use_max:
            s32 = s_max
    m.copy_(m32)
    # Exactly one of the two coefficients is non-zero (adaptive step, or SGD step while N_sma < 5); the
    # masks keep 0/0 of an ε = 0 configuration out of the unused branch.
    adaptive = torch.where(adapt_coef != 0, adapt_coef * (m32 / (torch.sqrt(s32) * denom_scale + eps)), 0.0)
    p.copy_(p32 - adaptive - sgd_coef * m32)


class AdaBelief(LmoptOptimizer):
    """AdaBelief (arXiv 2010.07468) with the official 0.2.1 behaviour as named flags.

    Args:
        lr: η (1e-3). betas: (0.9, 0.999). eps: ε (1e-16; rule of thumb ε_AdaBelief ≈ ε_Adam²).
        weight_decay: λ. weight_decouple: θ ← θ(1−ηλ) (True, official) instead of L2 in the gradient.
        fixed_decay: decouple without the lr factor, θ ← θ(1−λ).
        rectify: RAdam-style rectification (True, official default).
        degenerated_to_sgd: while N_sma < 5 take an SGD-with-momentum step (True) instead of no step.
        amsgrad: keep the running max of s.
        amsgrad_in_rectified: with amsgrad and rectify, divide by the running max in the rectified branch
            too (True); False divides by the current s there, as the official code does.
        eps_in_state: add ε into the stored s each step (True, official) instead of only in the denominator.
        maximize, state_dtype, impl: see :mod:`lmopt.optim`.
    """

    _moment_keys = ("exp_avg", "exp_avg_var", "max_exp_avg_var")

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0, *, weight_decouple: bool = True,
                 fixed_decay: bool = False, rectify: bool = True, degenerated_to_sgd: bool = True,
                 amsgrad: bool = False, amsgrad_in_rectified: bool = True, eps_in_state: bool = True,
                 maximize: bool = False,
                 state_dtype: torch.dtype | None = None, impl: str = "auto") -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonneg(eps, "eps", "1e-16")
        check_nonneg(weight_decay, "weight_decay", "0.01")
        check_state_dtype(state_dtype)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        weight_decouple=weight_decouple, fixed_decay=fixed_decay, rectify=rectify,
                        degenerated_to_sgd=degenerated_to_sgd, amsgrad=amsgrad,
                        amsgrad_in_rectified=amsgrad_in_rectified, eps_in_state=eps_in_state,
                        maximize=maximize, state_dtype=state_dtype)
        super().__init__(params, defaults, impl)

    @staticmethod
    def coefficients(t: int, group: dict[str, Any]) -> tuple[float, float, float]:
        """(denom_scale, adapt_coef, sgd_coef) of step t (host-side maths)."""
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        bc1 = 1.0 - beta1**t
        bc2 = 1.0 - beta2**t
        if not group["rectify"]:
            return 1.0 / math.sqrt(bc2), lr / bc1, 0.0
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        n_sma = rho_inf - 2.0 * t * beta2**t / bc2
        if n_sma >= 5.0:
            r = math.sqrt(bc2 * (n_sma - 4.0) / (rho_inf - 4.0) * (n_sma - 2.0) / n_sma * rho_inf / (rho_inf - 2.0))
            return 1.0, lr * r / bc1, 0.0
        if group["degenerated_to_sgd"]:
            return 1.0, 0.0, lr / bc1
        return 1.0, 0.0, 0.0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._prep_closure(closure)
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"]
            decay = 1.0 - (wd if group["fixed_decay"] else lr * wd)
            for p, g, st in self._params_with_grads(group):
                if not st:
                    self._zero_state(st, group, p, "exp_avg", "exp_avg_var",
                                     *(("max_exp_avg_var",) if group["amsgrad"] else ()))
                st["step"] += 1
                t = int(st["step"].item())
                denom_scale, adapt, sgd = self.coefficients(t, group)
                eps = group["eps"]
                # the official rectified branch (N_sma >= 5 or its SGD fallback) reads the current s
                use_max = not group["rectify"] or group["amsgrad_in_rectified"]
                self._run(adabelief_math, p.device, p, g, st["exp_avg"], st["exp_avg_var"],
                          st.get("max_exp_avg_var"), bool(use_max), scalar(-1.0 if group["maximize"] else 1.0, p),
                          scalar(decay, p), scalar(wd, p), scalar(beta1, p), scalar(beta2, p),
                          scalar(eps if group["eps_in_state"] else 0.0, p), scalar(eps, p),
                          scalar(denom_scale, p), scalar(adapt, p), scalar(sgd, p),
                          bool(group["weight_decouple"]))
        return loss
