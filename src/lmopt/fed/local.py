"""First-order local training shared by Ferret and the FedAvg baselines."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .common import ClientWork

OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def local_sgd(work: ClientWork, steps: int, batch_seed: int, make_optimizer: OptimizerFactory,
              n_accum: int = 1, grad_clip: float | None = None) -> dict[str, float]:
    """``steps`` micro-batches; the optimizer steps every ``n_accum`` of them (on the mean gradient).

    As in the released Ferret client: gradients of ``loss / n_accum`` accumulate, ``grad_clip`` (if set)
    clips the accumulated gradient's norm after every micro-batch, and a last incomplete accumulation is
    not applied. Returns the mean loss and the number of non-finite losses.
    """
    for p in work.params:
        p.requires_grad_(True)
        p.grad = None
    opt = make_optimizer(work.params)
    total, finite, bad = 0.0, 0, 0
    try:
        for step, batch in enumerate(work.data.batches(steps, batch_seed)):
            loss = work.loss_fn(batch)
            (loss / n_accum).backward()
            value = float(loss.detach())
            if math.isfinite(value):
                total, finite = total + value, finite + 1
            else:
                bad += 1
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(work.params, grad_clip)
            if step % n_accum == n_accum - 1:
                opt.step()
                opt.zero_grad(set_to_none=True)
    finally:
        for p in work.params:
            p.grad = None
            p.requires_grad_(False)
    return {"loss": total / finite if finite else float("nan"), "non_finite_losses": float(bad)}


def sgd_factory(lr: float, weight_decay: float = 0.0) -> OptimizerFactory:
    """The released clients' optimizer: plain SGD (momentum 0)."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=weight_decay)
