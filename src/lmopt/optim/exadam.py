"""EXAdam (Adly, "EXAdam: The Power of Adaptive Cross-Moments", arXiv 2412.20302, Algorithm 1 of v2).

Per step t::

    θ ← θ·(1 − η·λ)
    m ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
    d1 = 1 + β2ᵗ·v/(v+ε) ;  d2 = 1 + β1ᵗ·m²/(m²+ε)
    m̃ = d1·m/(1−β1ᵗ) ;  ṽ = d2·v/(1−β2ᵗ) ;  g̃ = d1·g/(1−β1ᵗ)
    θ ← θ − η·(m̃ + g̃)/(√ṽ + ε)

The paper's v1 also grew the step size with t; v2 and the official code dropped it, and so do we.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._base import LmoptOptimizer, check_betas, check_lr, check_nonneg, check_state_dtype, scalar


def exadam_math(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, gsign: torch.Tensor,
                decay: torch.Tensor, lr: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor,
                beta1_t: torch.Tensor, beta2_t: torch.Tensor, eps: torch.Tensor) -> None:
    """One EXAdam step on one tensor (fp32 arithmetic)."""
    g32 = g.float() * gsign
    p32 = p.float() * decay
    m32 = m.float() * beta1 + g32 * (1 - beta1)
    v32 = v.float() * beta2 + g32 * g32 * (1 - beta2)
    m.copy_(m32)
    v.copy_(v32)
    d1 = 1 + beta2_t * (v32 / (v32 + eps))
    m2 = m32 * m32
    d2 = 1 + beta1_t * (m2 / (m2 + eps))
    bc1 = 1 - beta1_t
    bc2 = 1 - beta2_t
    m_tilde = d1 * m32 / bc1
    v_tilde = d2 * v32 / bc2
    g_tilde = d1 * g32 / bc1
    p.copy_(p32 - lr * (m_tilde + g_tilde) / (torch.sqrt(v_tilde) + eps))


class EXAdam(LmoptOptimizer):
    """EXAdam (arXiv 2412.20302). Defaults lr 1e-3, betas (0.9, 0.999), eps 1e-8, decoupled wd 0.

    Args: see :class:`lmopt.optim.AdaBelief`; ``weight_decay`` is decoupled, θ ← θ(1 − ηλ), as in the
    official code.
    """

    _moment_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 state_dtype: torch.dtype | None = None, impl: str = "auto") -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonneg(eps, "eps", "1e-8")
        check_nonneg(weight_decay, "weight_decay", "0.01")
        check_state_dtype(state_dtype)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize,
                        state_dtype=state_dtype)
        super().__init__(params, defaults, impl)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._prep_closure(closure)
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = group["betas"]
            for p, g, st in self._params_with_grads(group):
                if not st:
                    self._zero_state(st, group, p, "exp_avg", "exp_avg_sq")
                st["step"] += 1
                t = int(st["step"].item())
                self._run(exadam_math, p.device, p, g, st["exp_avg"], st["exp_avg_sq"],
                          scalar(-1.0 if group["maximize"] else 1.0, p),
                          scalar(1.0 - lr * group["weight_decay"], p), scalar(lr, p), scalar(beta1, p),
                          scalar(beta2, p), scalar(beta1**t, p), scalar(beta2**t, p), scalar(group["eps"], p))
        return loss
