"""Muon: momentum orthogonalised by Newton–Schulz (K. Jordan et al., 2024, "Muon: An optimizer for hidden
layers in neural networks", kellerjordan.github.io/posts/muon; analysed in arXiv 2502.16982, Moonlight).

For a 2-D (or flattened conv) weight W with gradient G::

    m ← β·m + (1−β)·G                       (lerp)
    u = β·m + (1−β)·G  if nesterov else m
    O = NS5(u)   (bf16; transpose if rows > cols; X ← X/(‖X‖_F + 1e-7);
                  5 × { A = XXᵀ ; X ← aX + (bA + cA²)X },  (a, b, c) = (3.4445, −4.7750, 2.0315))
    W ← W·(1 − ηλ) − η·s·O

with the LR scale s named by ``adjust_lr``: ``"original"`` s = √max(1, rows/cols) (Keller Jordan's code),
``"match_rms_adamw"`` s = 0.2·√max(rows, cols) (Moonlight, arXiv 2502.16982 Eq. 4), ``"none"`` s = 1.
Weights with more than two dims are handled as named by ``nd_weights``: ``"flatten"`` (default) views every
such weight as one (rows, prod(rest)) matrix and scales by that matrix's shape; ``"official"`` does what Keller
Jordan's code does: a 4-D (conv) weight is flattened for Newton–Schulz but its LR scale is taken from its last
two dims (kh/kw, so 1 for square kernels), and any other N-D weight is a batch of matrices over its last two
dims, each orthogonalised on its own (0.22–1.33× the flattened update norm on typical shapes).
Non-matrix parameters, embeddings and the output head belong in groups with ``use_muon=False``, which run
AdamW (lr 3e-4, betas (0.9, 0.95), eps 1e-10 by default); :func:`lmopt.optim.muon_param_groups` builds them.
Unlike the reference code, ``p.grad`` is never modified.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ._adamw import adamw_step
from ._base import (
    LmoptOptimizer,
    check_beta,
    check_betas,
    check_lr,
    check_nonneg,
    check_pos_int,
    check_state_dtype,
    gather_full,
    write_shard,
)

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR = ("original", "match_rms_adamw", "none")
ND_WEIGHTS = ("flatten", "official")


def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal factor UVᵀ of ``g`` (…, rows, cols) with quintic Newton–Schulz.

    Works on a single matrix or a batch (leading dims). The result has ``g``'s shape and the dtype ``dtype``;
    its singular values lie roughly in [0.68, 1.14] (the iteration is tuned for speed, not exactness).
    """
    if g.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(dtype)
    transposed = g.shape[-2] > g.shape[-1]
    if transposed:
        x = x.mT
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + eps)
    # B = bA + cA² and aX + BX as fused multiply-adds (addmm / baddbmm): the same maths with fewer passes
    # over the matrices than separate scalings and additions
    mm = torch.addmm if x.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        A = x @ x.mT
        B = mm(A, A, A, beta=b, alpha=c)
        x = mm(x, B, x, beta=a)
    if transposed:
        x = x.mT
    return x


def _lr_scale(rows: int, cols: int, mode: str) -> float:
    if mode == "original":
        return math.sqrt(max(1.0, rows / cols))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class Muon(LmoptOptimizer):
    """Muon for ≥2-D hidden weights, with AdamW for groups marked ``use_muon=False``.

    Args:
        params: parameters or groups; a group may set ``use_muon=False`` (AdamW) and its own lr/wd.
        lr: Muon's η (0.02). momentum: β (0.95). nesterov: use the Nesterov look-ahead (True).
        weight_decay: decoupled λ, W ← W(1 − ηλ).
        ns_steps: Newton–Schulz iterations (5). ns_coefficients: (a, b, c). ns_dtype: bf16 (as the reference).
        adjust_lr: LR scaling mode ``"original"`` | ``"match_rms_adamw"`` | ``"none"`` (see module doc).
        adamw_lr: lr of ``use_muon=False`` groups that do not set one (3e-4).
        adamw_betas, adamw_eps: AdamW's betas (0.9, 0.95) and ε (1e-10).
        nd_weights: ``"flatten"`` | ``"official"``: how weights with more than 2 dims are orthogonalised and
            scaled (see the module doc).
        maximize, state_dtype, impl: see :mod:`lmopt.optim`. The fast path orthogonalises all same-shape
        matrices of a group in one batched Newton–Schulz.
    """

    _moment_keys = ("momentum_buffer", "exp_avg", "exp_avg_sq")
    _group_key_hints = {"betas": "AdamW groups (use_muon=False) take adamw_betas",
                        "eps": "AdamW groups (use_muon=False) take adamw_eps"}

    def __init__(self, params: Iterable[Any], lr: float = 0.02, momentum: float = 0.95,
                 weight_decay: float = 0.0, *, nesterov: bool = True, ns_steps: int = 5,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 ns_dtype: torch.dtype = torch.bfloat16, adjust_lr: str = "original", adamw_lr: float = 3e-4,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-10,
                 nd_weights: str = "flatten", maximize: bool = False, state_dtype: torch.dtype | None = None,
                 impl: str = "auto") -> None:
        check_lr(lr)
        check_lr(adamw_lr)
        check_beta(momentum, "momentum")
        check_nonneg(weight_decay, "weight_decay", "0.01")
        check_pos_int(ns_steps, "ns_steps")
        if len(tuple(ns_coefficients)) != 3:
            raise ValueError(f"Invalid ns_coefficients {ns_coefficients!r}: expected three floats (a, b, c)")
        if adjust_lr not in ADJUST_LR:
            raise ValueError(f"Invalid adjust_lr {adjust_lr!r}: choose one of {ADJUST_LR}")
        if ns_dtype not in (torch.bfloat16, torch.float32, torch.float16, torch.float64):
            raise ValueError(f"Invalid ns_dtype {ns_dtype!r}: use torch.bfloat16 or torch.float32")
        if nd_weights not in ND_WEIGHTS:
            raise ValueError(f"Invalid nd_weights {nd_weights!r}: choose one of {ND_WEIGHTS}")
        check_betas(adamw_betas, name="adamw_betas")
        check_nonneg(adamw_eps, "adamw_eps", "1e-10")
        check_state_dtype(state_dtype)
        params = list(params)
        if params and isinstance(params[0], dict):
            params = [dict(g, lr=g.get("lr", adamw_lr)) if g.get("use_muon", True) is False else g for g in params]
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients), ns_dtype=ns_dtype,
                        adjust_lr=adjust_lr, use_muon=True, adamw_betas=tuple(adamw_betas), adamw_eps=adamw_eps,
                        nd_weights=nd_weights, maximize=maximize, state_dtype=state_dtype)
        super().__init__(params, defaults, impl)
        for group in self.param_groups:
            if group["use_muon"]:
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(
                            f"Muon orthogonalises matrices but got a parameter of shape {tuple(p.shape)}; put "
                            "1-D parameters (biases, norms) in a group with use_muon=False, or build the "
                            "groups with lmopt.optim.muon_param_groups(model)"
                        )

    @staticmethod
    def _momentum(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Update the buffer and return the (Nesterov) direction in the Newton–Schulz dtype, as the matrix
        (or batch of matrices) that Newton–Schulz orthogonalises."""
        beta = group["momentum"]
        g32 = g.float()
        if group["maximize"]:
            g32 = -g32
        if buf.dtype == torch.float32:  # in place, as torch.optim.Muon
            b32 = buf.lerp_(g32, 1 - beta)
        else:
            b32 = buf.float().lerp(g32, 1 - beta)
            buf.copy_(b32)
        u = g32.lerp(b32, beta) if group["nesterov"] else b32
        u = u.to(group["ns_dtype"])  # before any batching copy: half the bytes to move
        if u.ndim == 2 or group["nd_weights"] == "flatten" or u.ndim == 4:
            return u.reshape(u.shape[0], -1)
        return u  # official: a batch of matrices over the last two dims

    @staticmethod
    def _apply(p: torch.Tensor, o: torch.Tensor, group: dict[str, Any]) -> None:
        lr = float(group["lr"])
        # the LR scale reads the orthogonalised matrix's shape, or (official) the weight's last two dims
        dims = p.shape if group["nd_weights"] == "official" else o.shape
        scale = _lr_scale(dims[-2], dims[-1], group["adjust_lr"])
        if p.dtype == torch.float32:  # in place; the bf16 update is widened by the addition itself
            p.mul_(1.0 - lr * group["weight_decay"]).add_(o.reshape(p.shape), alpha=-lr * scale)
            return
        p32 = p.float() * (1.0 - lr * group["weight_decay"]) - (lr * scale) * o.float().reshape(p.shape)
        p.copy_(p32)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._prep_closure(closure)
        for group in self.param_groups:
            if not group["use_muon"]:
                for p, g, _ in self._params_with_grads(group):
                    adamw_step(self, p, g, group, group["adamw_betas"], group["adamw_eps"])
                continue
            ns = dict(steps=group["ns_steps"], coefficients=group["ns_coefficients"], dtype=group["ns_dtype"])
            batched = self.impl != "reference"
            pending: dict[tuple[tuple[int, ...], torch.device], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            updated: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, whole tensor) to write back
            for param, g, st in self._params_with_grads(group):
                p, g = gather_full(param), gather_full(g)  # Newton–Schulz needs whole matrices
                updated.append((param, p))
                if not st:
                    self._zero_state(st, group, p, "momentum_buffer")
                st["step"] += 1
                u = self._momentum(p, g, st["momentum_buffer"], group)
                if batched:
                    pending.setdefault((tuple(u.shape), p.device), []).append((p, u))
                else:
                    self._apply(p, newton_schulz(u, **ns), group)
            for items in pending.values():
                if len(items) == 1:
                    self._apply(items[0][0], newton_schulz(items[0][1], **ns), group)
                    continue
                out = newton_schulz(torch.stack([u for _, u in items]), **ns)
                for (p, _), o in zip(items, out.unbind(0)):
                    self._apply(p, o, group)
            for param, p in updated:
                write_shard(param, p)
        return loss
