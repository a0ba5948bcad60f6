"""Update rules as functional single-chunk references.

Each rule takes a parameter chunk ``x`` (in the compute dtype: fp32, or fp64 for fp64 parameters), the
materialised estimate ``g`` of that chunk, the matching chunks of its state tensors and the group's
hyperparameters, and updates ``x`` and the state in place (``g`` may be used as scratch space). The optimizers in
:mod:`lmopt.zo.optimizers` call them chunk by chunk, so a rule never sees more than one chunk of ``g``.
"""

from __future__ import annotations

import torch


def zo_sgd_(x: torch.Tensor, g: torch.Tensor, *, lr: float, weight_decay: float) -> None:
    """ZO-SGD / MeZO (arXiv 2305.17333, Alg. 1 line "theta <- theta - eta * (g * z + lambda * theta)").

    Written as MeZO writes it (weight decay coupled, inside the bracket) so that one direction, two-sided,
    no reuse reproduces MeZO's update bit for bit. Computed in place in ``g`` (a scratch buffer: it is
    overwritten), with the same roundings as ``x - lr * (g + weight_decay * x)``.
    """
    if weight_decay:
        g.add_(torch.mul(x, weight_decay))
    g.mul_(lr)
    x.sub_(g)


def zo_sgd_momentum_(x: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, *, lr: float, momentum: float,
                     dampening: float, nesterov: bool, weight_decay: float) -> None:
    """ZO-SGD with heavy-ball momentum (torch.optim.SGD's convention; ZO-Bench, arXiv 2402.11592 Sec. 3).

    ``b <- mu_m * b + (1 - dampening) * (g + lambda x)``; ``x <- x - lr * b`` (or the Nesterov form).
    """
    d = g + weight_decay * x if weight_decay else g
    buf.mul_(momentum).add_(d, alpha=1.0 - dampening)
    step = d.add(buf, alpha=momentum) if nesterov else buf
    x.add_(step, alpha=-lr)


def zo_sign_sgd_(x: torch.Tensor, g: torch.Tensor, *, lr: float, weight_decay: float) -> None:
    """ZO-signSGD (Liu et al., arXiv 1810.10128, Alg. 1): ``x <- x - lr * sign(g_hat)`` coordinate-wise.

    ``g_hat`` is the averaged estimate over all ``q`` directions; the sign is taken per coordinate of that
    vector (not ``sign(projected grad) * z``, which is a different method). ``sign(0) = 0``.
    Weight decay is decoupled: ``x <- x (1 - lr lambda)`` first.
    """
    if weight_decay:
        x.mul_(1.0 - lr * weight_decay)
    x.add_(torch.sign(g), alpha=-lr)


def zo_adamm_(x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, vhat: torch.Tensor, *,
              lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """ZO-AdaMM (Chen et al., arXiv 1910.06513, Alg. 1, Euclidean projection = identity).

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``; ``vhat <- max(vhat, v)``;
    ``x <- x - lr m / (sqrt(vhat) + eps)``. No bias correction, as in the paper. The paper has no ``eps``
    (it keeps ``vhat > 0`` by its initialisation); ``eps`` guards coordinates whose ``vhat`` is still 0.
    """
    if weight_decay:
        x.mul_(1.0 - lr * weight_decay)
    m.mul_(beta1).add_(g, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    torch.maximum(vhat, v, out=vhat)
    x.addcdiv_(m, vhat.sqrt().add_(eps), value=-lr)


def r_adazo_(x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, lr: float, beta1: float,
             beta2: float, eps: float, weight_decay: float) -> None:
    """R-AdaZO (Shu et al., arXiv 2502.01014, Alg. 1).

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) m^2`` (the second moment of the *variance-reduced*
    first moment, the paper's refinement); ``x <- x - lr m / (sqrt(v) + eps)``; no bias correction.
    """
    if weight_decay:
        x.mul_(1.0 - lr * weight_decay)
    m.mul_(beta1).add_(g, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(m, m, value=1.0 - beta2)
    x.addcdiv_(m, v.sqrt().add_(eps), value=-lr)
