"""SOAP: Shampoo with Adam in the preconditioner's eigenbasis (Vyas et al., arXiv 2409.11321, Algorithm 3).

For a matrix parameter with gradient G (every dim d ≤ ``max_precond_dim`` gets a preconditioner)::

    first call: L = (1−β_sh)·GGᵀ, R = (1−β_sh)·GᵀG (lerped from zero), Q_L, Q_R = eigenvectors
                (descending eigenvalues); no update  (skip_first_step)
    t ≥ 1:  G′ = Q_Lᵀ G Q_R
            m ← β1·m + (1−β1)·G′ ; v ← β2·v + (1−β2)·G′²      (both in the current eigenbasis)
            N = Q_L (m/(√v+ε)) Q_Rᵀ
            θ ← θ − η·√(1−β2ᵗ)/(1−β1ᵗ)·N ;  θ ← θ − η·λ·θ
            L ← lerp(L, GGᵀ, 1−β_sh) ; R ← lerp(R, GᵀG, 1−β_sh)
            every ``precondition_frequency`` steps: sort Q's columns by the estimated eigenvalues
            diag(QᵀLQ) (permuting v alongside), Q ← QR(L·Q) (one power iteration), and m is carried
            into the new basis (Q_newᵀ Q_old m Q_oldᵀ Q_new), so Q_L m Q_Rᵀ stays the EMA of the gradients

Defaults lr 3e-3, betas (0.95, 0.95), shampoo_beta = β2, eps 1e-8, weight_decay 0.01,
precondition_frequency 10, max_precond_dim 10000. N-D tensors get one preconditioner per dimension.
With ``max_precond_dim=1`` no dimension is preconditioned and SOAP is Adam(β1, β2) after the skipped first
step. ``state["step"]`` counts Adam updates (the skipped step is not counted: the bias corrections use the
number of moment updates, as the official code does).

Official code (github.com/nikhilvyas/SOAP): ``momentum="rotated"`` (default) follows its current revision,
which stores m in the eigenbasis and re-projects it when the basis changes; ``momentum="original"`` follows
its first release, which keeps m as the EMA of the raw gradients and projects it for every update
(G′ is still used for v). The two agree until the first refresh. Decoupled decay after the step, as both.
Not implemented: ``merge_dims``, ``normalize_grads``, ``correct_bias=False``, ``data_format``.
Preconditioner matrices are kept in fp32 whatever the parameter dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._base import LmoptOptimizer, check_beta, check_betas, check_lr, check_nonneg, check_pos_int, check_state_dtype


def _precond_dims(shape: torch.Size, max_dim: int, precondition_1d: bool) -> list[int]:
    if len(shape) == 1 and not precondition_1d:
        return []
    return [i for i, n in enumerate(shape) if n <= max_dim]


def _project(x: torch.Tensor, qs: dict[int, torch.Tensor], back: bool) -> torch.Tensor:
    """Multiply every preconditioned mode of ``x`` by Qᵀ (forward) or Q (back)."""
    for d, q in qs.items():
        x = torch.movedim(torch.tensordot(x, q if back else q.mT, dims=([d], [1])), -1, d)
    return x


def _outer(g: torch.Tensor, d: int) -> torch.Tensor:
    """The mode-d Gram matrix: G_(d) G_(d)ᵀ, contracting all other dims."""
    gd = torch.movedim(g, d, 0).reshape(g.shape[d], -1)
    return gd @ gd.mT


class SOAP(LmoptOptimizer):
    """SOAP (arXiv 2409.11321).

    Args:
        lr: η (3e-3). betas: (β1, β2) = (0.95, 0.95). shampoo_beta: β of L, R (None: β2).
        eps: ε (1e-8). weight_decay: λ (0.01), applied after the step as θ ← θ − ηλθ.
        precondition_frequency: steps between eigenbasis refreshes (10).
        max_precond_dim: dims larger than this are not rotated (10000). precondition_1d: rotate 1-D params.
        skip_first_step: the official first call only builds the preconditioner (True).
        momentum: ``"rotated"`` (the official code's current revision, default) or ``"original"`` (its first
            release): see the module docstring.
        maximize, state_dtype (of m and v), impl: see :mod:`lmopt.optim`.
    """

    _moment_keys = ("exp_avg", "exp_avg_sq")
    _fp32_keys = tuple(f"{k}{i}" for k in ("GG", "Q") for i in range(8))

    def __init__(self, params: Iterable[Any], lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.01, *, shampoo_beta: float | None = None,
                 precondition_frequency: int = 10, max_precond_dim: int = 10000, precondition_1d: bool = False,
                 skip_first_step: bool = True, momentum: str = "rotated", maximize: bool = False,
                 state_dtype: torch.dtype | None = None, impl: str = "auto") -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonneg(eps, "eps", "1e-8")
        check_nonneg(weight_decay, "weight_decay", "0.01")
        if shampoo_beta is not None:
            check_beta(shampoo_beta, "shampoo_beta")
        check_pos_int(precondition_frequency, "precondition_frequency")
        check_pos_int(max_precond_dim, "max_precond_dim")
        check_state_dtype(state_dtype)
        if momentum not in ("rotated", "original"):
            raise ValueError("momentum must be 'rotated' (official code, current) or 'original' (its first release), "
                             f"got {momentum!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, shampoo_beta=shampoo_beta,
                        momentum=momentum, precondition_frequency=precondition_frequency,
                        max_precond_dim=max_precond_dim, precondition_1d=precondition_1d,
                        skip_first_step=skip_first_step, maximize=maximize, state_dtype=state_dtype)
        super().__init__(params, defaults, impl)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim > 8:
                    raise ValueError(f"SOAP supports tensors with up to 8 dims, got shape {tuple(p.shape)}")

    @staticmethod
    def _qs(st: dict[str, Any], dims: list[int]) -> dict[int, torch.Tensor]:
        return {d: st[f"Q{d}"] for d in dims}

    def _update_preconditioner(self, g32: torch.Tensor, st: dict[str, Any], dims: list[int], beta: float,
                               refresh: bool, rotated_momentum: bool) -> None:
        for d in dims:
            st[f"GG{d}"].lerp_(_outer(g32, d), 1 - beta)
        if not refresh:
            return
        old_qs = self._qs(st, dims)
        v = st["exp_avg_sq"]
        for d in dims:
            L, Q = st[f"GG{d}"], st[f"Q{d}"]
            est = (Q * (L @ Q)).sum(0)  # diag(QᵀLQ)
            order = torch.argsort(est, descending=True)
            v = v.index_select(d, order)
            st[f"Q{d}"] = torch.linalg.qr(L @ Q[:, order])[0]
        st["exp_avg_sq"] = v
        if rotated_momentum:  # carry m into the new basis: back to the original space, then forward
            m = _project(_project(st["exp_avg"].float(), old_qs, back=True), self._qs(st, dims), back=False)
            st["exp_avg"].copy_(m)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._prep_closure(closure)
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = group["betas"]
            sh_beta = group["shampoo_beta"] if group["shampoo_beta"] is not None else beta2
            for p, g, st in self._whole_params_with_grads(group):  # matrices need whole tensors
                g32 = -g.float() if group["maximize"] else g.float()
                dims = _precond_dims(p.shape, group["max_precond_dim"], group["precondition_1d"])
                if not st:
                    self._zero_state(st, group, p, "exp_avg", "exp_avg_sq", memory_format=torch.contiguous_format)
                    for d in dims:
                        gg = _outer(g32, d) * (1 - sh_beta)  # lerp from a zero matrix, as every later update
                        st[f"GG{d}"] = gg
                        n = gg.shape[0]
                        eye = torch.eye(n, device=gg.device, dtype=torch.float32)
                        st[f"Q{d}"] = torch.flip(torch.linalg.eigh(gg + 1e-30 * eye)[1], [1])
                    if group["skip_first_step"]:
                        continue
                st["step"] += 1
                t = int(st["step"].item())
                qs = self._qs(st, dims)
                rotated = group["momentum"] == "rotated"
                gp = _project(g32, qs, back=False)
                m = st["exp_avg"].float() * beta1 + (gp if rotated else g32) * (1 - beta1)
                v = st["exp_avg_sq"].float() * beta2 + gp * gp * (1 - beta2)
                st["exp_avg"].copy_(m)
                st["exp_avg_sq"].copy_(v)
                mp = m if rotated else _project(m, qs, back=False)
                n = _project(mp / (torch.sqrt(v) + group["eps"]), qs, back=True)
                step_size = lr * (1 - beta2**t) ** 0.5 / (1 - beta1**t)
                p32 = p.float() - step_size * n
                p32 = p32 - (lr * group["weight_decay"]) * p32
                p.copy_(p32)
                self._update_preconditioner(g32, st, dims, sh_beta, t % group["precondition_frequency"] == 0,
                                            rotated)
        return loss
