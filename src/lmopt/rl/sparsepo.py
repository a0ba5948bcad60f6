"""SparsePO — preference optimisation with learned sparse token masks (Christopoulou et al., arXiv 2410.05102;
released code: huawei-noah/HEBO, ``SparsePO/``). Maths and the mask network in plain torch; the TRL trainer
is :class:`lmopt.rl.sparsepo_trainer.SparsePOTrainer`.

With per-token log-ratios ``ℓ_t = log π(y_t) - log π_ref(y_t)`` and per-token reference-weighted log-ratios
``k_t = Σ_v π_ref(v) (log π(v) - log π_ref(v))`` (minus the token-level KL(π_ref ‖ π)) over the response
tokens, and masks ``m^u``, ``m^d`` ≥ 0 predicted per token:

    u = Σ_t m^u_t ℓ_t (chosen) - Σ_t m^u_t ℓ_t (rejected)
    d = Σ_t m^d_t k_t (chosen) - Σ_t m^d_t k_t (rejected)
    L = -log σ(β (u - d)) + λ_u (‖m^u_chosen‖₁ + ‖m^u_rejected‖₁) + λ_d (‖m^d_chosen‖₁ + ‖m^d_rejected‖₁)

as in the released trainer (all ones for ``m^d`` with ``λ = 0`` is TDPO-style token-level DPO; a mask of ones
on ``u`` only, with ``d`` off, is DPO). The mask network (:class:`TokenMask`, the released ``simple_all``)
reads the *reference* model's hidden states of every layer at the position that predicts the token: a
shared LayerNorm, one linear unit + ReLU per layer, a bias-free linear mix over layers + ReLU. ReLU makes
the masks exactly sparse. ``common`` (the released "sparse-common") shares one mask between the two terms;
``independent`` trains two.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TokenMask(nn.Module):
    """Per-token mask from the hidden states of ``num_layers`` layers (the released ``SimpleMaskAllLayers``).

    ``dropout`` defaults to 0: the released module has p = 0.1, but the released trainer's
    ``disable_dropout`` (on by default, as in TRL) sets every dropout of the policy, masks included, to 0.
    """

    def __init__(self, hidden_size: int, num_layers: int, dropout: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        for k, v in (("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.heads = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.mixer = nn.Linear(num_layers, 1, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """``states``: one (B, T, hidden) tensor per layer → mask (B, T), ≥ 0."""
        if len(states) != len(self.heads):
            raise ValueError(f"expected hidden states of {len(self.heads)} layers, got {len(states)}")
        per_layer = [self.drop(F.relu(head(self.norm(x.to(self.norm.weight.dtype)))))
                     for head, x in zip(self.heads, states)]
        return self.drop(F.relu(self.mixer(torch.cat(per_layer, dim=-1)))).squeeze(-1)


def sparsepo_loss(logratio: torch.Tensor, ref_kl: torch.Tensor, response_mask: torch.Tensor,
                  reward_mask: torch.Tensor | None, kl_mask: torch.Tensor | None, beta: float = 0.1,
                  l1_reward: float = 0.0, l1_kl: float = 0.0, use_kl: bool = True) -> dict[str, torch.Tensor]:
    """Per-pair SparsePO loss. Every tensor is (2B, T) with the B chosen rows first, then the B rejected
    ones; ``ref_kl`` holds ``k_t``; a mask of None means all ones (no mask on that term); ``use_kl=False``
    drops ``d``. Returns ``loss`` (B,) and the implicit rewards."""
    m = response_mask.float()
    if logratio.shape != m.shape or ref_kl.shape != m.shape:
        raise ValueError(f"shapes differ: logratio {tuple(logratio.shape)}, ref_kl {tuple(ref_kl.shape)}, "
                         f"mask {tuple(m.shape)}")
    if m.shape[0] % 2:
        raise ValueError("rows must be B chosen followed by B rejected")
    ones = torch.ones_like(m)
    mu = ones if reward_mask is None else reward_mask
    md = ones if kl_mask is None else kl_mask
    r = (mu * logratio * m).sum(-1)
    k = (md * ref_kl * m).sum(-1) if use_kl else torch.zeros_like(r)
    r_c, r_r = r.chunk(2)
    k_c, k_r = k.chunk(2)
    loss = -F.logsigmoid(beta * ((r_c - r_r) - (k_c - k_r)))
    if reward_mask is not None and l1_reward:
        n = (reward_mask * m).abs().sum(-1)
        loss = loss + l1_reward * (n.chunk(2)[0] + n.chunk(2)[1])
    if kl_mask is not None and l1_kl and use_kl:
        n = (kl_mask * m).abs().sum(-1)
        loss = loss + l1_kl * (n.chunk(2)[0] + n.chunk(2)[1])
    return {"loss": loss, "chosen_rewards": beta * (r_c + k_c), "rejected_rewards": beta * (r_r + k_r)}


__all__ = ["TokenMask", "sparsepo_loss"]
