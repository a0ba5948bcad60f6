"""Lion and Lion-𝒦.

Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675, Algorithm 2)::

    c = β1·m + (1−β1)·g
    θ ← θ·(1 − η·λ) − η·sign(c)
    m ← β2·m + (1−β2)·g

Lion-𝒦 (Chen, Liang, Liu, Liu, "Lion Secretly Solves Constrained Optimization", arXiv 2310.05898, Eq. (2))
replaces sign(·) by ∇𝒦(·) for a convex 𝒦: x ← x + η(∇𝒦(β1·m̃ − (1−β1)∇f) − λx), m̃ ← β2·m̃ − (1−β2)∇f.
We store m = −m̃ (the Lion sign convention), which gives the same iterates for every odd ∇𝒦 (all kernels
below are odd). With 𝒦 = ‖·‖₁ it is Lion; with decoupled weight decay λ and ‖∇𝒦‖∞ ≤ 1 it solves
min f s.t. ‖x‖∞ ≤ 1/λ (paper, Section 3).

State: one momentum per parameter (4 B/param in fp32, 2 B in bf16). No ε and no bias correction; sign(0)=0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._base import LmoptOptimizer, check_betas, check_lr, check_nonneg, check_state_dtype, scalar

KERNELS = ("l1", "l2", "huber")


def lion_math(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, gsign: torch.Tensor, decay: torch.Tensor,
              lr: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor, kernel: str,
              delta: torch.Tensor) -> None:
    """One Lion-𝒦 step on one tensor (reference maths; also what the compiled path compiles).

    ``decay`` = 1 − lr·λ. ``gsign`` = −1 when maximizing. Arithmetic in fp32, results stored in the dtypes
    of ``p`` and ``m``.
    """
    g32 = g.float() * gsign
    m32 = m.float()
    c = m32 * beta1 + g32 * (1 - beta1)
    if kernel == "l1":  # 𝒦 = ‖x‖₁ → ∇𝒦 = sign (Lion)
        d = torch.sign(c)
    elif kernel == "l2":  # 𝒦 = ‖x‖₂ → ∇𝒦 = x/‖x‖ (per tensor), 0 at 0
        d = c / torch.linalg.vector_norm(c).clamp_min(1e-30)
    else:  # Huber-smoothed ℓ1: ∇𝒦 = clip(x/δ, −1, 1)
        d = torch.clamp(c / delta, -1.0, 1.0)
    p.copy_(p.float() * decay - lr * d)
    m.copy_(m32 * beta2 + g32 * (1 - beta2))


class LionK(LmoptOptimizer):
    """Lion-𝒦 (arXiv 2310.05898) with the kernel ∇𝒦 chosen by name.

    Args:
        params: parameters or param groups.
        lr: η (default 1e-4; use 3–10× smaller than AdamW's).
        betas: (β1, β2) = (0.9, 0.99).
        weight_decay: λ, decoupled as in the paper: θ ← θ(1 − ηλ) (use 3–10× larger than AdamW's).
        kernel: ``"l1"`` (sign; Lion), ``"l2"`` (∇‖x‖₂ per tensor) or ``"huber"`` (clip(x/δ, −1, 1)).
        huber_delta: δ of the Huber kernel.
        maximize: ascend instead of descend.
        state_dtype: dtype of the momentum (None: the parameter's; torch.bfloat16 halves the state).
        impl: ``"auto"`` | ``"reference"`` | ``"compiled"`` (see :mod:`lmopt.optim`).
    """

    _moment_keys = ("exp_avg",)

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, kernel: str = "l1", huber_delta: float = 1e-3,
                 maximize: bool = False, state_dtype: torch.dtype | None = None, impl: str = "auto") -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonneg(weight_decay, "weight_decay", "0.1")
        if kernel not in KERNELS:
            raise ValueError(f"Invalid kernel {kernel!r}: choose one of {KERNELS}")
        if not isinstance(huber_delta, (int, float)) or huber_delta <= 0:
            raise ValueError(f"Invalid huber_delta {huber_delta!r}: must be a float > 0")
        check_state_dtype(state_dtype)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, kernel=kernel,
                        huber_delta=huber_delta, maximize=maximize, state_dtype=state_dtype)
        super().__init__(params, defaults, impl)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._prep_closure(closure)
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = group["betas"]
            # the l2 kernel normalises by the whole tensor's norm: gather sharded parameters for it
            pairs = (self._whole_params_with_grads(group) if group["kernel"] == "l2"
                     else self._params_with_grads(group))
            for p, g, st in pairs:
                if not st:
                    self._zero_state(st, group, p, "exp_avg")
                st["step"] += 1
                self._run(lion_math, p.device, p, g, st["exp_avg"],
                          scalar(-1.0 if group["maximize"] else 1.0, p), scalar(1.0 - lr * group["weight_decay"], p),
                          scalar(lr, p), scalar(beta1, p), scalar(beta2, p), group["kernel"],
                          scalar(group["huber_delta"], p))
        return loss


class Lion(LionK):
    """Lion (arXiv 2302.06675, Algorithm 2): Lion-𝒦 with 𝒦 = ‖·‖₁. Same arguments as :class:`LionK`."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, state_dtype: torch.dtype | None = None,
                 impl: str = "auto") -> None:
        super().__init__(params, lr, betas, weight_decay, kernel="l1", maximize=maximize,
                         state_dtype=state_dtype, impl=impl)
