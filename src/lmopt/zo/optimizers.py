"""Zeroth-order optimizers with a torch.optim API: ``opt.step(closure)``, the closure returns the loss.

Every optimizer here is the estimator core (:class:`~lmopt.zo.estimator.ZOEstimator`) composed with an
update rule from :mod:`lmopt.zo.rules`. A step

1. queries the closure around the current parameters (perturbing them in place, chunk by chunk, and
   restoring them bit-exactly after every query — see :mod:`lmopt.zo.perturb`);
2. keeps the estimate as ``(seed, coefficient)`` pairs;
3. regenerates the directions chunk by chunk and applies the rule.

Peak extra memory is one chunk of ``z`` (plus the rule's state: none for ZO-SGD and ZO-signSGD, ``d``
floats for momentum, ``2d`` for R-AdaZO, ``3d`` for ZO-AdaMM).

The closure runs under ``torch.no_grad()`` and must not call ``backward()``::

    opt = ZOSGD(model.parameters(), lr=1e-6, mu=1e-3)
    def closure():
        return loss_fn(model(batch.x), batch.y)
    loss = opt.step(closure)
    opt.last_step  # {"loss", "projected_grads", "queries", "total_queries", ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from . import rules
from .directions import chunk_bounds
from .estimator import Estimate, ZOEstimator
from .perturb import compute_dtype, flat_view, restore_chunk_

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def _check_lr(lr: Any) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")


def _check_betas(betas: Any) -> None:
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    for name, b in (("beta1", b1), ("beta2", b2)):
        if not (isinstance(b, (int, float)) and 0.0 <= b < 1.0):
            raise ValueError(f"{name} must be in [0, 1), got {b!r}")


class ZOOptimizer(torch.optim.Optimizer):
    """Base class: param groups + estimator + a chunked update rule (override :meth:`_update_chunk`).

    Estimator arguments (shared by all groups, since one direction spans all parameters): ``mu``, ``q``,
    ``directions``, ``difference``, ``baseline``, ``history``, ``reuse``, ``seed``, ``perturb``,
    ``chunk_size`` — see :class:`~lmopt.zo.estimator.ZOEstimator`.
    """

    state_keys: tuple[str, ...] = ()

    def __init__(self, params: ParamsT, defaults: dict[str, Any], *, mu: float, q: int, directions: str,
                 difference: str, baseline: str, history: int = 0, reuse: bool = False, seed: int = 0,
                 perturb: str = "exact", chunk_size: int = 1 << 20) -> None:
        _check_lr(defaults.get("lr"))
        if defaults.get("weight_decay", 0.0) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {defaults['weight_decay']!r}")
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_lr(group["lr"])
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(f"zeroth-order optimizers need floating-point parameters, got {p.dtype}")
        self.estimator = ZOEstimator(mu=mu, q=q, directions=directions, difference=difference,
                                     baseline=baseline, history=history, reuse=reuse, seed=seed,
                                     perturb=perturb, chunk_size=chunk_size)
        self.zo_state: dict[int, dict[str, torch.Tensor]] = {}
        self.zo_step = 0
        self.total_queries = 0
        self.last_step: dict[str, Any] = {}
        self._check_devices()

    # ------------------------------------------------------------------ helpers
    def _indexed(self) -> list[tuple[int, torch.Tensor]]:
        out = []
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                out.append((i, p))
                i += 1
        return out

    def _check_devices(self) -> None:
        devices = {p.device for _, p in self._indexed()}
        if len(devices) > 1:
            names = ", ".join(sorted(str(d) for d in devices))
            raise ValueError(
                f"all parameters of a zeroth-order optimizer must be on one device (one direction spans all "
                f"of them), got {names}: move the model with .to(device) or build one optimizer per device"
            )

    @property
    def mu(self) -> float:
        return self.estimator.mu

    # ------------------------------------------------------------------ data parallelism
    def distribute(self, process_group: Any = None) -> ZOOptimizer:
        """Data parallelism over ``torch.distributed`` (already initialised): every rank holds the same
        parameters and evaluates the same seeded perturbations on its own shard of the batch; each query's
        loss is averaged over the ranks with one all-reduce of one float, so every rank computes the same
        estimate and takes the same step. With equal shard sizes this is the single-process step on the
        whole batch. The first step checks that the parameters agree across ranks. Returns ``self``.

        Every rank must call ``step`` the same number of times (the all-reduce is collective); a closure
        that raises on one rank only leaves the others waiting.
        """
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("distribute() needs torch.distributed initialised first: call "
                               "torch.distributed.init_process_group(...) (torchrun sets the environment)")
        world = dist.get_world_size(process_group)
        device = next(p for _, p in self._indexed()).device
        if dist.get_backend(process_group) == "nccl" and device.type != "cuda":
            raise RuntimeError("the nccl backend reduces CUDA tensors: move the model to its GPU first")

        def mean_over_ranks(value: float) -> float:
            t = torch.tensor([value], dtype=torch.float64, device=device)
            dist.all_reduce(t, group=process_group)
            return float(t.item()) / world

        self.estimator.reduce = mean_over_ranks
        self._dist = (process_group, device)
        self._dist_checked = False
        return self

    def _check_same_parameters(self) -> None:
        """One all-reduce of a checksum: ranks whose parameters differ would silently diverge."""
        import torch.distributed as dist

        group, device = self._dist
        total = sum(float(p.detach().double().sum()) for _, p in self._indexed())
        t = torch.tensor([total, -total, float(self.zo_step), -float(self.zo_step)], dtype=torch.float64,
                         device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        if float(t[0]) != total or float(-t[1]) != total or float(t[2]) != -float(t[3]):
            raise RuntimeError(
                "zeroth-order data parallelism needs identical parameters and step counts on every rank, but "
                "they differ: build the model from the same seed, or broadcast it from rank 0 "
                "(torch.distributed.broadcast of each parameter) before the first step"
            )
        self._dist_checked = True

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> float:  # type: ignore[override]
        """One zeroth-order step; ``closure()`` computes and returns the loss (no backward)."""
        if closure is None or not callable(closure):
            raise ValueError(
                f"{type(self).__name__}.step needs a closure that computes and returns the loss, e.g. "
                "opt.step(lambda: loss_fn(model(x), y)); a zeroth-order optimizer has no gradients to read"
            )
        self._check_devices()
        if getattr(self, "_dist", None) is not None and not self._dist_checked:
            self._check_same_parameters()
        indexed = self._indexed()
        # the last perturbation is undone inside the update pass (one pass over the parameters fewer)
        est = self.estimator.estimate(closure, indexed, self.zo_step, defer_restore=True)
        self.apply_estimate(est)
        return est.loss

    def apply_estimate(self, est: Estimate) -> None:
        """Apply a seed-space estimate with this optimizer's rule (chunk by chunk) and log the step.

        A perturbation left applied by ``estimate(defer_restore=True)`` is undone in the same pass."""
        pending = est.pending_restore
        self._pending_entries = pending[2].by_chunk() if pending is not None else {}
        idx = 0
        for group in self.param_groups:
            for p in group["params"]:
                self._update_param(p, idx, group, est)
                idx += 1
        self.zo_step += 1
        self.total_queries += est.queries
        self.last_step = {
            "step": self.zo_step, "loss": est.loss, "projected_grads": list(est.projected_grads),
            "queries": est.queries, "total_queries": self.total_queries, "baseline": est.baseline,
            "directions_in_estimate": len(est.seeds), "restore_log_numel": est.restore_log_numel,
        }

    def _state_for(self, idx: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.zo_state.get(idx)
        if st is None:
            cdt = compute_dtype(p.dtype)
            st = {k: torch.zeros(p.numel(), dtype=cdt, device=p.device) for k in self.state_keys}
            self.zo_state[idx] = st
        return st

    def _update_param(self, p: torch.Tensor, idx: int, group: dict[str, Any], est: Estimate) -> None:
        flat = flat_view(p)
        cdt = compute_dtype(flat.dtype)
        st = self._state_for(idx, p)
        sampler = self.estimator.sampler
        pending = est.pending_restore
        entries = self._pending_entries
        for ci, start, end in chunk_bounds(flat.numel(), sampler.chunk_size):
            seg = flat[start:end]
            known = None
            if pending is not None:  # undo the last perturbation exactly, reusing its chunk of z for g
                z = sampler.chunk_into(pending[0], idx, ci, end - start, flat.device, name="z_pending")
                restore_chunk_(seg, z, pending[1], entries.get((idx, start)))
                known = (pending[0], z)
            g = self.estimator.materialize_chunk(est, idx, ci, end - start, flat.device, cdt, known)
            x = seg if seg.dtype == cdt else seg.to(cdt)
            self._update_chunk(x, g, {k: v[start:end] for k, v in st.items()}, group)
            if x is not seg:
                seg.copy_(x)

    def _update_chunk(self, x: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor],
                      group: dict[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        sd = super().state_dict()
        sd["zo"] = {
            "step": self.zo_step, "total_queries": self.total_queries, "config": self.estimator.config(),
            "estimator": self.estimator.state_dict(),
            "state": {i: {k: v.clone() for k, v in st.items()} for i, st in self.zo_state.items()},
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        sd = dict(state_dict)
        zo = sd.pop("zo", None)
        if zo is None:
            raise ValueError("this state_dict has no 'zo' entry: it was not saved by a lmopt.zo optimizer")
        mine = self.estimator.config()
        diff = {k: (v, mine.get(k)) for k, v in zo["config"].items() if mine.get(k) != v}
        if diff:
            raise ValueError(f"state_dict was saved with a different estimator configuration "
                             f"(saved, current): {diff}; build the optimizer with the saved settings")
        super().load_state_dict(sd)
        self.zo_step = int(zo["step"])
        self.total_queries = int(zo["total_queries"])
        self.estimator.load_state_dict(zo["estimator"])
        params = dict(self._indexed())
        self.zo_state = {}
        for i, st in zo["state"].items():
            p = params[int(i)]
            self.zo_state[int(i)] = {k: v.to(device=p.device).clone() for k, v in st.items()}


class ZOSGD(ZOOptimizer):
    """ZO-SGD / MeZO (Malladi et al., arXiv 2305.17333, Algorithm 1).

    Defaults follow MeZO: two-sided Gaussian differences, ``mu`` (MeZO's ``eps``) 1e-3, one direction per
    step, constant lr. With ``q=1``, ``difference="two-sided"``, no reuse and ``perturb="mezo"`` the step is
    MeZO's bit for bit; the default ``perturb="exact"`` evaluates ``f(theta - mu z)`` from the exact
    ``theta`` rather than from ``theta + mu z - 2 mu z`` and restores the parameters without drift.
    Weight decay is MeZO's coupled form; pass param groups with ``weight_decay=0`` for biases and norms
    (:func:`lmopt.zo.param_groups` does that).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-6, *, weight_decay: float = 0.0, mu: float = 1e-3,
                 q: int = 1, directions: str = "gaussian", difference: str = "two-sided", baseline: str = "f",
                 history: int = 0, reuse: bool = False, seed: int = 0, perturb: str = "exact",
                 chunk_size: int = 1 << 20) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, mu=mu, q=q, directions=directions,
                         difference=difference, baseline=baseline, history=history, reuse=reuse, seed=seed,
                         perturb=perturb, chunk_size=chunk_size)

    def _update_chunk(self, x, g, state, group):
        rules.zo_sgd_(x, g, lr=group["lr"], weight_decay=group["weight_decay"])


class ZOSGDMomentum(ZOOptimizer):
    """ZO-SGD with heavy-ball momentum (ZO-Bench, arXiv 2402.11592, "ZO-SGD-MMT"); one ``d``-sized buffer."""

    state_keys = ("momentum_buffer",)

    def __init__(self, params: ParamsT, lr: float = 1e-6, momentum: float = 0.9, *, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, mu: float = 1e-3, q: int = 1,
                 directions: str = "gaussian", difference: str = "two-sided", baseline: str = "f",
                 history: int = 0, reuse: bool = False, seed: int = 0, perturb: str = "exact",
                 chunk_size: int = 1 << 20) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "nesterov": nesterov,
                    "weight_decay": weight_decay}
        super().__init__(params, defaults, mu=mu, q=q, directions=directions,
                         difference=difference, baseline=baseline, history=history, reuse=reuse, seed=seed,
                         perturb=perturb, chunk_size=chunk_size)

    def _update_chunk(self, x, g, state, group):
        rules.zo_sgd_momentum_(x, g, state["momentum_buffer"], lr=group["lr"], momentum=group["momentum"],
                               dampening=group["dampening"], nesterov=group["nesterov"],
                               weight_decay=group["weight_decay"])


class ZOSignSGD(ZOOptimizer):
    """ZO-signSGD (Liu et al., arXiv 1810.10128, Algorithm 1): coordinate-wise sign of the averaged estimate.

    The paper's estimator averages ``q`` one-sided (``f(x)`` baseline) or two-sided directional
    differences before taking the sign; the default here is two-sided with ``q=4``.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, *, weight_decay: float = 0.0, mu: float = 1e-3,
                 q: int = 4, directions: str = "gaussian", difference: str = "two-sided", baseline: str = "f",
                 history: int = 0, reuse: bool = False, seed: int = 0, perturb: str = "exact",
                 chunk_size: int = 1 << 20) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, mu=mu, q=q, directions=directions,
                         difference=difference, baseline=baseline, history=history, reuse=reuse, seed=seed,
                         perturb=perturb, chunk_size=chunk_size)

    def _update_chunk(self, x, g, state, group):
        rules.zo_sign_sgd_(x, g, lr=group["lr"], weight_decay=group["weight_decay"])


class ZOAdaMM(ZOOptimizer):
    """ZO-AdaMM (Chen et al., arXiv 1910.06513, Algorithm 1 with the identity projection).

    Estimator as in the paper: ``g = d/(mu q) sum_j [f(x + mu u_j) - f(x)] u_j``, ``u`` uniform on the unit
    sphere (``directions="sphere"``, ``difference="one-sided"``, ``baseline="f"``: ``q + 1`` queries).
    AMSGrad-style ``vhat = max(vhat, v)``, no bias correction. State: ``m``, ``v``, ``vhat`` — three
    ``d``-sized fp32 tensors, so for an LLM it costs three model copies (unlike MeZO / ZO-SGD).
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), *,
                 eps: float = 1e-8, weight_decay: float = 0.0, mu: float = 5e-3, q: int = 1,
                 directions: str = "sphere", difference: str = "one-sided", baseline: str = "f",
                 history: int = 0, reuse: bool = False, seed: int = 0, perturb: str = "exact",
                 chunk_size: int = 1 << 20) -> None:
        _check_betas(betas)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay},
                         mu=mu, q=q, directions=directions, difference=difference, baseline=baseline,
                         history=history, reuse=reuse, seed=seed, perturb=perturb, chunk_size=chunk_size)

    def _update_chunk(self, x, g, state, group):
        b1, b2 = group["betas"]
        rules.zo_adamm_(x, g, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"], lr=group["lr"],
                        beta1=b1, beta2=b2, eps=group["eps"], weight_decay=group["weight_decay"])


class RAdaZO(ZOOptimizer):
    """R-AdaZO (Shu et al., "Refining Adaptive Zeroth-Order Optimization at Ease", arXiv 2502.01014, Alg. 1).

    Same estimator as ZO-AdaMM (sphere directions, ``f(x)`` baseline); ``v`` tracks ``m^2`` instead of
    ``g^2``; ``x <- x - lr m / (sqrt(v) + eps)`` without bias correction. Defaults from the official code:
    lr 1e-3, betas (0.9, 0.999) (its README uses beta2 = 0.99), eps 1e-8, ``mu`` 5e-3, ``q`` 2.
    Unlike the reference code, one direction spans all tensors (the reference perturbs and queries each
    tensor separately, 2 q #tensors queries per step) and directions come from a device-local generator.
    State: ``m`` and ``v``, two ``d``-sized fp32 tensors.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), *,
                 eps: float = 1e-8, weight_decay: float = 0.0, mu: float = 5e-3, q: int = 2,
                 directions: str = "sphere", difference: str = "one-sided", baseline: str = "f",
                 history: int = 0, reuse: bool = False, seed: int = 0, perturb: str = "exact",
                 chunk_size: int = 1 << 20) -> None:
        _check_betas(betas)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay},
                         mu=mu, q=q, directions=directions, difference=difference, baseline=baseline,
                         history=history, reuse=reuse, seed=seed, perturb=perturb, chunk_size=chunk_size)

    def _update_chunk(self, x, g, state, group):
        b1, b2 = group["betas"]
        rules.r_adazo_(x, g, state["exp_avg"], state["exp_avg_sq"], lr=group["lr"], beta1=b1, beta2=b2,
                       eps=group["eps"], weight_decay=group["weight_decay"])


class ZoAR(ZOOptimizer):
    """ZoAR: zeroth-order optimisation with Averaged baseline and query Reuse (Qiu, Xie, Yan, Yang, Shu,
    "Zeroth-Order Optimization is Secretly Single-Step Policy Optimization", arXiv 2506.14460).

    Source: the paper's full text could not be read where this was written, only its abstract, which says
    that ZO with the two-point estimator is single-step policy optimisation (policy ``N(theta, mu^2 I)``,
    reward ``-f``, REINFORCE with baseline ``f(theta)``) and that ZoAR adds two PO-style variance
    reductions: an *averaged baseline built from historical queries* and *query reuse* as in experience
    replay. What is implemented, and why each choice follows from that description:

    * one-sided queries ``y = f(theta + mu z)``, ``q`` fresh Gaussian directions per step (default 2: the
      same 2 queries per step as two-point ZO-SGD), and no ``f(theta)`` query, since the averaged baseline
      replaces it;
    * a pool of the fresh pairs and the ``(seed, value)`` pairs of the last ``history`` steps (default 4),
      so ``M = q (history + 1)`` pairs once the buffer is full; only seeds and scalars are stored;
    * the baseline of pair ``i`` is the **leave-one-out** mean of the other ``M - 1`` values. The abstract
      does not say whether a query's own value is in its baseline; including it would shrink every
      estimate by ``1 - 1/M`` (0.9 at the defaults, 0.5 at ``M = 2``), while REINFORCE with a baseline is
      unbiased only if the baseline does not depend on the sampled action, which leave-one-out gives;
    * the estimate ``g = 1/M sum_i (y_i - b_i)/mu * z(seed_i)`` uses every pair in the pool (reuse), with
      no importance weight for the iterate having moved since a reused query was taken: the history is a
      few steps and the iterates move little, a small bias for a large variance reduction;
    * the update is plain SGD on ``g`` with MeZO's weight decay, ``theta <- theta - lr (g + wd theta)``.

    ``tests/zo/test_zoar.py`` transcribes this rule independently and follows the same 30-step trajectory on
    a moving point; it also shows the variance reduction against two-point ZO-SGD at equal queries and the
    unbiasedness of the leave-one-out baseline at a fixed point.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, *, weight_decay: float = 0.0, mu: float = 5e-3,
                 q: int = 2, history: int = 4, directions: str = "gaussian", seed: int = 0,
                 perturb: str = "exact", chunk_size: int = 1 << 20) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, mu=mu, q=q, directions=directions,
                         difference="one-sided", baseline="average", history=history, reuse=True, seed=seed,
                         perturb=perturb, chunk_size=chunk_size)

    def _update_chunk(self, x, g, state, group):
        rules.zo_sgd_(x, g, lr=group["lr"], weight_decay=group["weight_decay"])


OPTIMIZERS: dict[str, type[ZOOptimizer]] = {
    "zo-sgd": ZOSGD, "zo-sgd-momentum": ZOSGDMomentum, "zo-signsgd": ZOSignSGD, "zo-adamm": ZOAdaMM,
    "r-adazo": RAdaZO, "zoar": ZoAR,
}
