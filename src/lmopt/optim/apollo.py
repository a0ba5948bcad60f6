"""APOLLO and APOLLO-Mini (Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv 2412.05270,
Algorithm 1), written from the paper.

For a 2-D weight W (m×n) in a group with ``apollo=True`` and gradient G:

    P ~ N(0, 1/r), regenerated from a stored seed every ``update_proj_gap`` steps (never stored)
    R = PᵀG (r×n) if m < n, else R = G·Pᵀ (m×r)          (the shorter side is projected to rank r)
    M ← β1·M + (1−β1)·R ;  V ← β2·V + (1−β2)·R² ;  R̃ = M/(√V + ε)
    s = ‖R̃‖/(‖R‖ + 1e-8), per channel (the full-size side; APOLLO) or per tensor (APOLLO-Mini)
    G̃ = G·s                                             (the raw full-rank gradient, rescaled)
    norm-growth limiter: if ‖G̃‖ > γ·‖G̃_prev‖ then G̃ ← G̃·γ‖G̃_prev‖/‖G̃‖   (γ = 1.01)
    W ← W − η·√(1−β2ᵗ)/(1−β1ᵗ)·√α·G̃ ;  W ← W − η·λ·W

with α the ``scale`` (1 for APOLLO, 128 for APOLLO-Mini, where the rank-1 estimate underestimates the
scaling). State per matrix: M and V of size r×n (or m×r), the previous norm and the projection seed.
Parameters in groups with ``apollo=False`` (embeddings, norms, biases) run AdamW with the same betas/eps.

Behaviours of the official code (zhuhanqing/APOLLO, ``apollo_torch``) and their flags:

* the projected update above is the official one (ε on the uncorrected √V, bias corrections in the step
  size, decay after the step; scaling before or after the limiter gives the same update);
* ``aux_adamw``: the ``apollo=False`` groups run torch.optim.AdamW's rule (``"torch"``, default) or the
  official code's (``"official"``: ε on the uncorrected √v and the decay applied after the step);
* ``proj_seeds``: ``"lmopt"`` (default) derives the seed of refresh k from (``seed``, parameter index, k) and
  draws P on the CPU, so P is the same on every device; ``"official"`` starts from the parameter's 1-based
  index over all groups, advances the seed at each refresh by the official chain (the last of 15 int64
  draws of a generator seeded with the previous seed) and draws P on the parameter's device, which
  reproduces official trajectories (on CUDA the official draw is a CUDA generator's);
* ``cache_projection``: P is regenerated at each refresh and kept in memory until the next (True, the
  official behaviour: r·min(m, n) floats per matrix, reported by :meth:`APOLLO.projection_bytes`), or
  regenerated from the seed at every step (False: no resident P, one draw per matrix per step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ._adamw import adamw_step
from ._base import (
    LmoptOptimizer,
    check_betas,
    check_lr,
    check_nonneg,
    check_pos_int,
    check_state_dtype,
    gather_full,
    scalar,
    write_shard,
)


def apollo_math(p: torch.Tensor, g: torch.Tensor, proj: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                prev_norm: torch.Tensor, gsign: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor,
                eps: torch.Tensor, step_size: torch.Tensor, decay: torch.Tensor, limit: torch.Tensor,
                left: bool, per_channel: bool, use_limiter: bool) -> None:
    """One APOLLO step on one matrix. ``proj`` is P (m×r) when ``left`` else (r×n).

    The norm of the scaled gradient G·s is computed from per-channel sums of squares of G (‖G·s‖² =
    Σ_c s_c²‖G_c‖²) rather than from G·s itself, so the full-size matrix is read by the projection and one
    reduction and written once, by the final update."""
    g32 = g.float()  # the sign of a maximisation is applied to the small R and to the update's coefficient,
    r = (proj.mT @ g32 if left else g32 @ proj.mT) * gsign  # so no full-size copy of G is written
    m32 = m.float() * beta1 + r * (1 - beta1)
    v32 = v.float() * beta2 + r * r * (1 - beta2)
    m.copy_(m32)
    v.copy_(v32)
    r_tilde = m32 / (torch.sqrt(v32) + eps)
    if per_channel:
        dim = 0 if left else 1  # channels are the unprojected side
        s = torch.linalg.vector_norm(r_tilde, dim=dim, keepdim=True) / (
            torch.linalg.vector_norm(r, dim=dim, keepdim=True) + 1e-8)
        norm = torch.sqrt((s * s * (g32 * g32).sum(dim=dim, keepdim=True)).sum())
    else:
        s = torch.linalg.vector_norm(r_tilde) / (torch.linalg.vector_norm(r) + 1e-8)
        norm = s * torch.linalg.vector_norm(g32)
    coef = s * (step_size * gsign)
    if use_limiter:
        ratio = norm / (prev_norm + 1e-8)
        factor = torch.where(prev_norm > 0, torch.clamp(ratio, min=limit) / limit, torch.ones_like(ratio))
        coef = coef / factor
        prev_norm.copy_(norm / factor)
    p.copy_((p.float() - coef * g32) * decay)


def official_next_seed(seed: int) -> int:
    """The official code's seed chain: the last of 15 uniform int64 draws in [0, 2⁶³−1) of a CPU generator
    seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, torch.iinfo(torch.int64).max, (15,), generator=gen)[-1])


def _resolve_rank(rank: float, shape: torch.Size) -> int:
    short = min(shape[0], shape[1])
    r = max(1, int(round(rank * short))) if isinstance(rank, float) else int(rank)
    if r >= short:
        raise ValueError(
            f"APOLLO rank {r} is not smaller than the shorter side of a {tuple(shape)} weight; use a smaller "
            "rank (an int, or a float fraction such as 0.25) or put this parameter in a group with apollo=False"
        )
    return r


class APOLLO(LmoptOptimizer):
    """APOLLO (arXiv 2412.05270).

    Args:
        params: parameters or groups; groups with ``apollo=True`` (the default) must contain 2-D weights only;
            other groups (``apollo=False``) run AdamW. :func:`lmopt.optim.apollo_param_groups` builds them.
        lr: η (1e-3). betas: (0.9, 0.999). eps: ε (1e-6). weight_decay: λ, applied after the step.
        rank: projection rank r: an int, or a float in (0, 1) as a fraction of the shorter side (0.25 ≈ d/4).
        scale_type: ``"channel"`` (APOLLO) or ``"tensor"`` (APOLLO-Mini).
        scale: α; the update is multiplied by √α (1 for APOLLO, 128 for APOLLO-Mini).
        update_proj_gap: steps between projection refreshes (200).
        norm_growth_limit: γ of the norm-growth limiter (1.01); None disables it.
        seed: base seed of the projections (each matrix gets its own seed derived from it).
        aux_adamw: ``"torch"`` | ``"official"``: the AdamW rule of ``apollo=False`` groups (module doc).
        proj_seeds: ``"lmopt"`` | ``"official"``: how projection seeds are chained (module doc).
        cache_projection: keep each P between refreshes (True) or regenerate it every step (False).
        maximize, state_dtype, impl: see :mod:`lmopt.optim`.
    """

    _moment_keys = ("exp_avg", "exp_avg_sq")
    _cpu_keys = ("step", "proj_seed")
    _fp32_keys = ("grad_norm",)
    _group_key_hints = {
        "proj": "mark projected groups with apollo=True and the others with apollo=False (a group without "
                "the key is projected)",
        "proj_type": "the projected side is always the shorter one (the official 'std' type)",
        "scale_front": "scaling before or after the norm-growth limiter gives the same update here",
    }

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, rank: float = 0.25, scale_type: str = "channel",
                 scale: float = 1.0, update_proj_gap: int = 200, norm_growth_limit: float | None = 1.01,
                 seed: int = 0, aux_adamw: str = "torch", proj_seeds: str = "lmopt", cache_projection: bool = True,
                 maximize: bool = False, state_dtype: torch.dtype | None = None, impl: str = "auto") -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonneg(eps, "eps", "1e-6")
        check_nonneg(weight_decay, "weight_decay", "0.01")
        if isinstance(rank, bool) or not isinstance(rank, (int, float)):
            raise ValueError(f"Invalid rank {rank!r}: an int >= 1 or a float fraction in (0, 1)")
        if isinstance(rank, float) and not 0.0 < rank < 1.0:
            raise ValueError(f"Invalid rank {rank!r}: a float rank is a fraction of the shorter side, in (0, 1)")
        if isinstance(rank, int) and rank < 1:
            raise ValueError(f"Invalid rank {rank!r}: an int rank must be >= 1")
        if scale_type not in ("channel", "tensor"):
            raise ValueError(f"Invalid scale_type {scale_type!r}: use 'channel' (APOLLO) or 'tensor' (APOLLO-Mini)")
        if not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"Invalid scale {scale!r}: must be a float > 0 (1 for APOLLO, 128 for APOLLO-Mini)")
        check_pos_int(update_proj_gap, "update_proj_gap")
        if norm_growth_limit is not None and (not isinstance(norm_growth_limit, (int, float))
                                              or norm_growth_limit < 1.0):
            raise ValueError(f"Invalid norm_growth_limit {norm_growth_limit!r}: a float >= 1 (1.01), or None")
        if not isinstance(seed, int):
            raise ValueError(f"Invalid seed {seed!r}: must be an int")
        check_state_dtype(state_dtype)
        if aux_adamw not in ("torch", "official"):
            raise ValueError(f"Invalid aux_adamw {aux_adamw!r}: use 'torch' or 'official'")
        if proj_seeds not in ("lmopt", "official"):
            raise ValueError(f"Invalid proj_seeds {proj_seeds!r}: use 'lmopt' or 'official'")
        self.aux_adamw, self.proj_seeds, self.cache_projection = aux_adamw, proj_seeds, bool(cache_projection)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, rank=rank,
                        scale_type=scale_type, scale=scale, update_proj_gap=update_proj_gap,
                        norm_growth_limit=norm_growth_limit, seed=seed, apollo=True, maximize=maximize,
                        state_dtype=state_dtype)
        super().__init__(params, defaults, impl)
        self._proj_cache: dict[torch.Tensor, tuple[int, int, torch.Tensor]] = {}
        for group in self.param_groups:
            if group["apollo"]:
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(
                            f"APOLLO projects 2-D weights but got a parameter of shape {tuple(p.shape)}; put it in "
                            "a group with apollo=False (AdamW), or build the groups with "
                            "lmopt.optim.apollo_param_groups(model)"
                        )
                    _resolve_rank(group["rank"], p.shape)

    def projection(self, p: torch.Tensor, seed: int, rank: int, left: bool) -> torch.Tensor:
        """P ~ N(0, 1/r) for ``p`` from ``seed``: (m×r) for left projection, (r×n) for right."""
        shape = (p.shape[0], rank) if left else (rank, p.shape[1])
        device = p.device if self.proj_seeds == "official" else torch.device("cpu")
        gen = torch.Generator(device=device).manual_seed(seed)
        mat = torch.randn(shape, generator=gen, dtype=torch.float32, device=device) / math.sqrt(rank)
        return mat.to(p.device)

    def projection_bytes(self) -> int:
        """Bytes of the projections kept in memory between refreshes (0 with ``cache_projection=False``)."""
        return sum(c[2].numel() * c[2].element_size() for c in self._proj_cache.values())

    def _refresh_seed(self, st: dict[str, Any], t: int, gap: int) -> int:
        """The seed of the projection used at step ``t`` (advancing the official chain at a refresh)."""
        if self.proj_seeds == "official":
            if t > 1 and (t - 1) % gap == 0:
                st["proj_seed"] = torch.tensor(official_next_seed(int(st["proj_seed"].item())), dtype=torch.int64)
            return int(st["proj_seed"].item())
        return int(st["proj_seed"].item()) * 7919 + (t - 1) // gap

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._prep_closure(closure)
        index = 0
        for group in self.param_groups:
            if not group["apollo"]:
                for p in group["params"]:
                    index += 1
                    g = self._grad(p)
                    if g is not None:
                        adamw_step(self, p, g, group, group["betas"], group["eps"], self.aux_adamw == "official")
                continue
            lr = float(group["lr"])
            beta1, beta2 = group["betas"]
            gap = group["update_proj_gap"]
            for param in group["params"]:
                index += 1
                g = self._grad(param)
                if g is None:
                    continue
                p, g = gather_full(param), gather_full(g)  # projections need whole matrices
                rank = _resolve_rank(group["rank"], p.shape)
                left = p.shape[0] < p.shape[1]
                st = self.state[param]
                if not st:
                    sd = self._state_dtype(group, p)
                    shape = (rank, p.shape[1]) if left else (p.shape[0], rank)
                    st["step"] = self._step_tensor()
                    base = index if self.proj_seeds == "official" else group["seed"] * 1_000_003 + index
                    st["proj_seed"] = torch.tensor(base, dtype=torch.int64)
                    st["exp_avg"] = torch.zeros(shape, dtype=sd, device=p.device)
                    st["exp_avg_sq"] = torch.zeros(shape, dtype=sd, device=p.device)
                    st["grad_norm"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["step"] += 1
                t = int(st["step"].item())
                seed = self._refresh_seed(st, t, gap)
                cached = self._proj_cache.get(param)
                if cached is None or cached[0] != seed or cached[1] != rank:
                    cached = (seed, rank, self.projection(p, seed, rank, left))
                    if self.cache_projection:
                        self._proj_cache[param] = cached
                step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) * math.sqrt(group["scale"])
                limit = group["norm_growth_limit"]
                self._run(apollo_math, p.device, p, g, cached[2], st["exp_avg"], st["exp_avg_sq"],
                          st["grad_norm"], scalar(-1.0 if group["maximize"] else 1.0, p), scalar(beta1, p),
                          scalar(beta2, p), scalar(group["eps"], p), scalar(step_size, p),
                          scalar(1.0 - lr * group["weight_decay"], p), scalar(limit or 1.0, p), left,
                          group["scale_type"] == "channel", limit is not None, flat=False)
                write_shard(param, p)
        return loss


class APOLLOMini(APOLLO):
    """APOLLO-Mini (arXiv 2412.05270, Section 4): rank 1, per-tensor scaling, α = 128."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, rank: float = 1, scale: float = 128.0,
                 update_proj_gap: int = 200, norm_growth_limit: float | None = 1.01, seed: int = 0,
                 aux_adamw: str = "torch", proj_seeds: str = "lmopt", cache_projection: bool = True,
                 maximize: bool = False, state_dtype: torch.dtype | None = None, impl: str = "auto") -> None:
        super().__init__(params, lr, betas, eps, weight_decay, rank=rank, scale_type="tensor", scale=scale,
                         update_proj_gap=update_proj_gap, norm_growth_limit=norm_growth_limit, seed=seed,
                         aux_adamw=aux_adamw, proj_seeds=proj_seeds, cache_projection=cache_projection,
                         maximize=maximize, state_dtype=state_dtype, impl=impl)
