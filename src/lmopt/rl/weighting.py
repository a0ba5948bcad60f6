"""Dynamic reward weighting for multi-objective GRPO (Lu et al., arXiv 2509.11452, §3).

Two ways of changing the reward weights ``w`` (TRL's ``trainer.reward_weights``) during training:

* **Hypervolume-guided** (§3.1): keep a buffer of the non-dominated objective vectors seen so far; for the
  current objective vector ``v`` compute the hypervolume gain ``dHV = HV(buffer + v) - HV(buffer)`` against
  a reference point and scale the base weights by ``meta = 0.5 + 1.5 * tanh(dHV / hv_scale)``, so that
  steps that push the Pareto front out are rewarded up to 2x and steps that do not are damped to 0.5x.
  Because the factor is common to all objectives it only changes the update size: TRL's per-group or
  per-batch std scaling divides it out again, and Adam largely ignores it. It acts with
  ``scale_rewards="none"`` and a plain-SGD-like optimiser.
* **Gradient-based** (§3.2): with ``g_i`` the policy gradient of objective ``i`` alone,
  ``s_i = sum_j <g_i, g_j>`` (how much objective ``i`` agrees with the joint direction, its own squared
  norm included) and the weights take a mirror-descent (exponentiated-gradient) step
  ``w <- softmax(log w + step)``. The step, ``normaliser=``:

  - ``"official"`` (default, the authors' code): each ``g_i`` is first clipped to norm ``max_grad_norm``
    (their actor's gradient clipping, 1.0) and ``step = lr * s / reg`` with ``lr`` the policy's current
    learning rate and ``reg = 1e-5`` (their ``regularization_factor``); their runs also restrict ``g_i`` to
    a slice of the layers (``target_layer_ids``) and may average ``s`` over several steps before a step;
  - ``"sum-norm"``: ``step = lr * s / ||sum_j g_j||^2`` (the ``s_i / rho`` sum to 1: a scale-free step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def hypervolume(points: Sequence[Sequence[float]] | torch.Tensor, ref: Sequence[float]) -> float:
    """Exact hypervolume (maximisation) dominated by ``points`` above the reference point ``ref``.

    Recursive slicing over the last objective; exact in any dimension, fast for the small fronts used here.

    >>> hypervolume([[1.0, 2.0], [2.0, 1.0]], [0.0, 0.0])
    3.0
    """
    pts = torch.as_tensor(points, dtype=torch.float64)
    refv = torch.as_tensor(ref, dtype=torch.float64)
    if pts.numel() == 0:
        return 0.0
    if pts.dim() != 2 or pts.shape[1] != refv.numel():
        raise ValueError(f"points must have shape (n, {refv.numel()}) to match ref; got {tuple(pts.shape)}")
    pts = pts[(pts > refv).all(dim=1)]
    return _hv(pts, refv)


def _hv(pts: torch.Tensor, ref: torch.Tensor) -> float:
    if pts.shape[0] == 0:
        return 0.0
    if pts.shape[1] == 1:
        return float(pts[:, 0].max() - ref[0])
    order = torch.argsort(pts[:, -1], descending=True)
    pts = pts[order]
    total = 0.0
    for i in range(pts.shape[0]):
        upper = pts[i, -1]
        lower = pts[i + 1, -1] if i + 1 < pts.shape[0] else ref[-1]
        height = float(upper - lower)
        if height > 0:
            total += height * _hv(pts[: i + 1, :-1], ref[:-1])
    return total


def pareto_front(points: torch.Tensor) -> torch.Tensor:
    """The non-dominated rows of ``points`` (maximisation)."""
    pts = torch.as_tensor(points, dtype=torch.float64)
    if pts.shape[0] == 0:
        return pts
    keep = []
    for i in range(pts.shape[0]):
        others = torch.cat([pts[:i], pts[i + 1:]])
        dominated = ((others >= pts[i]).all(dim=1) & (others > pts[i]).any(dim=1)).any()
        dup_earlier = (pts[:i] == pts[i]).all(dim=1).any() if i else torch.tensor(False)
        if not dominated and not dup_earlier:
            keep.append(i)
    return pts[keep]


class HypervolumeWeighting:
    """Hypervolume-guided weight adaptation (arXiv 2509.11452, §3.1); see the module docstring."""

    def __init__(self, base_weights: Sequence[float], ref: Sequence[float] | None = None,
                 hv_scale: float = 1.0) -> None:
        w = torch.as_tensor(base_weights, dtype=torch.float32)
        if w.dim() != 1 or w.numel() < 2:
            raise ValueError("base_weights needs one weight per objective (at least two objectives)")
        if torch.any(w < 0):
            raise ValueError("base_weights must be non-negative")
        if hv_scale <= 0:
            raise ValueError(f"hv_scale must be > 0, got {hv_scale}")
        self.base_weights = w
        self.ref = (torch.zeros(w.numel(), dtype=torch.float64) if ref is None
                    else torch.as_tensor(ref, dtype=torch.float64))
        if self.ref.numel() != w.numel():
            raise ValueError(f"ref has {self.ref.numel()} coordinates but there are {w.numel()} objectives")
        self.hv_scale = float(hv_scale)
        self.buffer = torch.empty(0, w.numel(), dtype=torch.float64)
        self.meta = 1.0
        self.weights = w.clone()

    def update(self, objectives: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Feed the current objective vector; returns the new weights (base weights times the meta factor)."""
        v = torch.as_tensor(objectives, dtype=torch.float64).reshape(1, -1)
        if v.shape[1] != self.base_weights.numel():
            raise ValueError(f"expected {self.base_weights.numel()} objective values, got {v.shape[1]}")
        if torch.isnan(v).any():
            raise ValueError("objective values must not be NaN")
        before = hypervolume(self.buffer, self.ref)
        merged = pareto_front(torch.cat([self.buffer, v]))
        delta = hypervolume(merged, self.ref) - before
        self.buffer = merged
        self.meta = 0.5 + 1.5 * math.tanh(delta / self.hv_scale)
        self.weights = self.base_weights * self.meta
        return self.weights.clone()


NORMALISERS = ("official", "sum-norm")


def clip_to_norm(g: torch.Tensor, max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """``g`` scaled down to norm ``max_norm`` when longer (torch's ``clip_grad_norm_`` rule)."""
    norm = float(g.norm())
    return g * min(1.0, max_norm / (norm + eps))


def gradient_scores(grads: Sequence[torch.Tensor] | torch.Tensor, max_grad_norm: float | None = None) -> torch.Tensor:
    """``s_i = sum_j <g_i, g_j>`` for (K, P) flattened per-objective gradients, each first clipped to
    ``max_grad_norm`` when given."""
    g = torch.stack([torch.as_tensor(x).reshape(-1).double() for x in grads]) if not isinstance(grads, torch.Tensor) \
        else grads.double().reshape(grads.shape[0], -1)
    if max_grad_norm is not None:
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        g = torch.stack([clip_to_norm(x, max_grad_norm) for x in g])
    return g @ g.sum(dim=0)


def gradient_weight_update(weights: torch.Tensor, grads: Sequence[torch.Tensor] | torch.Tensor | None,
                           lr: float = 1.0, eps: float = 1e-12, *, normaliser: str = "official",
                           reg: float = 1e-5, max_grad_norm: float | None = 1.0,
                           scores: torch.Tensor | None = None) -> torch.Tensor:
    """One gradient-based weight step (arXiv 2509.11452, §3.2): ``softmax(log w + step)`` (module docstring).

    ``grads`` holds one flattened policy gradient per objective (K, P); or pass precomputed (e.g. averaged)
    ``scores`` from :func:`gradient_scores` with ``grads=None``. With ``normaliser="official"``, ``lr`` is the
    policy's learning rate, ``reg`` the regulariser and ``max_grad_norm`` the per-objective clip; with
    ``"sum-norm"``, ``lr`` is the weight step size and the gradients are not clipped. Weights must be
    non-negative with a positive sum.
    """
    if normaliser not in NORMALISERS:
        raise ValueError(f"normaliser must be one of {NORMALISERS}, got {normaliser!r}")
    w = torch.as_tensor(weights, dtype=torch.float64)
    if torch.any(w < 0) or float(w.sum()) <= 0:
        raise ValueError("gradient-based weighting needs non-negative weights with a positive sum")
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if normaliser == "official" and reg <= 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    if scores is None:
        if grads is None:
            raise ValueError("pass the per-objective gradients or their scores")
        n = len(grads) if not isinstance(grads, torch.Tensor) else grads.shape[0]
        if n != w.numel():
            raise ValueError(f"need one gradient per objective: {n} gradients for {w.numel()} weights")
        if normaliser == "sum-norm":
            g = torch.stack([torch.as_tensor(x).reshape(-1).double() for x in grads]) \
                if not isinstance(grads, torch.Tensor) else grads.double().reshape(grads.shape[0], -1)
            total = g.sum(dim=0)
            rho = float(total @ total)
            if rho <= eps:
                return (w / w.sum()).float()
            step = lr * (g @ total) / rho
            return torch.softmax(torch.log(w.clamp_min(1e-30)) + step, dim=0).float()
        scores = gradient_scores(grads, max_grad_norm)
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if scores.numel() != w.numel():
        raise ValueError(f"need one score per objective: {scores.numel()} scores for {w.numel()} weights")
    if normaliser == "sum-norm":
        raise ValueError("normaliser='sum-norm' needs the gradients (its normaliser is ||sum_j g_j||^2)")
    return torch.softmax(torch.log(w.clamp_min(1e-30)) + lr * scores / reg, dim=0).float()
