"""AutoLRS: automatic learning-rate schedule search during training (Jin et al., "AutoLRS: Automatic
Learning-Rate Schedule by Bayesian Optimization on the Fly", ICLR 2021, arXiv 2105.10762, Algorithm 1).

Training is split into stages; stage k lasts τ_k steps at one constant LR and τ_{k+1} = 2·τ_k until τ reaches
``max_tau`` (8000, the official code's cap), after which stages keep that length. At the start of a stage the
model and optimizer are snapshotted; Bayesian optimisation over log(LR) then proposes ``n_trials`` LRs; each
is trained for τ′ = ``tau_prime_frac``·τ_k steps (at least ``min_tau_prime``) from the snapshot, an
exponential a·e^{b·x} + c is fitted to that trial's losses and extrapolated to step τ_k, and the snapshot is
restored. The LR with the lowest forecast is used for the stage.

Once τ is capped, the official code forecasts *validation* loss: pass ``val_loss`` (a callable returning the
validation loss) and each capped-stage trial evaluates it ``val_points`` times (every τ′/16 steps in the
official code) and forecasts that series to τ. Without ``val_loss`` the training loss is used throughout.

Differences from the official implementation (a socket server, ``autolrs_server.py``, driving an external
training job), all of which change which LR is picked:

* the search runs in-process, snapshotting and restoring ``model.state_dict()`` and
  ``optimizer.state_dict()``;
* BO: optuna's Gaussian-process sampler with log-EI and ``n_startup_trials`` random points; the official
  server uses scikit-optimize's GP with LCB at κ = 10⁶ (in effect pure exploration by uncertainty) and one
  initial point, and never proposes an LR it has tried;
* forecaster: a least-squares fit of a·e^{b·x} + c over a grid of decay rates b ≤ 0 (exact in (a, c) per
  b), on the raw trial losses. The official one first smooths the series with an iterated quadratic
  spline that drops the 3% largest residuals, then fits the exponential; it needs about 25 points, hence
  ``min_tau_prime=25``;
* defaults: the first stage is τ = 100 steps here (the official 1000 with 100-step trials suits
  ImageNet-scale runs; pass ``tau=1000`` for it); trial steps consume training batches like real steps and
  are counted in :attr:`AutoLRS.search_steps`;
* the official server aborts a trial whose loss exceeds the stage's initial loss in the validation stage;
  here a non-finite loss ends a trial (forecast +inf).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch

from lmopt._deps import require


def forecast_exponential(losses: list[float], horizon: int) -> float:
    """Fit y ≈ a·e^{b·x} + c (x = 1..n, b ≤ 0) by least squares over a grid of b and return y(horizon).

    For a fixed b the model is linear in (a, c), so each grid point is solved exactly; b = 0 degenerates to
    the mean. Non-finite losses forecast +inf.
    """
    n = len(losses)
    if n == 0:
        raise ValueError("forecast_exponential needs at least one loss")
    y = torch.tensor(losses, dtype=torch.float64)
    if not bool(torch.isfinite(y).all()):
        return math.inf
    if n < 3:
        return float(y[-1])
    x = torch.arange(1, n + 1, dtype=torch.float64)
    best = (float(((y - y.mean()) ** 2).sum()), float(y.mean()), 0.0)

    def fit(bs: torch.Tensor) -> None:
        nonlocal best
        for b in bs.tolist():
            e = torch.exp(b * x)
            A = torch.stack([e, torch.ones_like(e)], dim=1)
            sol = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1)
            resid = float(((A @ sol - y) ** 2).sum())
            if resid < best[0]:
                best = (resid, float(sol[0]) * math.exp(b * horizon) + float(sol[1]), b)

    fit(-torch.logspace(-4, 0.5, 46, dtype=torch.float64))  # coarse grid over the decay rate
    if best[2] < 0:  # refine around the best rate (±1 coarse step = ×10^0.1)
        fit(best[2] * torch.logspace(-0.1, 0.1, 41, dtype=torch.float64))
    return best[1]


class AutoLRS:
    """In-process AutoLRS scheduler for a plain training loop.

    Example::

        def train_step():                 # forward + backward on the next batch; returns the loss
            x, y = next(batches)
            loss = model(x, y)
            loss.backward()
            return loss

        sched = AutoLRS(model, optimizer, lr_bounds=(1e-4, 1e-1), tau=100)
        while sched.steps_done < total_steps:
            loss = sched.step(train_step)  # searches at stage boundaries, then takes one real step

    Args:
        model, optimizer: what is trained (snapshots cover both).
        lr_bounds: (min, max) LR of the log-uniform search space.
        tau: length of the first stage in steps (doubles per stage until ``max_tau``).
        n_trials: LRs evaluated per stage (paper ~10). tau_prime_frac: trial length as a fraction of τ (0.1).
        min_tau_prime: the shortest trial (25: the official forecaster needs about that many points).
        max_tau: the longest stage (8000, official); None doubles forever.
        val_loss: callable returning the validation loss; used by the trials of capped stages (official).
        val_points: validation evaluations per trial in capped stages (16, official: every τ′/16 steps).
        seed: seed of the BO sampler.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 lr_bounds: tuple[float, float] = (1e-4, 1e-1), tau: int = 100, *, n_trials: int = 10,
                 tau_prime_frac: float = 0.1, min_tau_prime: int = 25, max_tau: int | None = 8000,
                 val_loss: Callable[[], Any] | None = None, val_points: int = 16, n_startup_trials: int = 3,
                 seed: int = 0) -> None:
        lo, hi = lr_bounds
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"Invalid lr_bounds {lr_bounds!r}: need 0 < min < max, e.g. (1e-4, 1e-1)")
        if not isinstance(tau, int) or tau < 1:
            raise ValueError(f"Invalid tau {tau!r}: the first stage length must be an int >= 1")
        if not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"Invalid n_trials {n_trials!r}: must be an int >= 1")
        if not 0 < tau_prime_frac <= 1:
            raise ValueError(f"Invalid tau_prime_frac {tau_prime_frac!r}: must be in (0, 1]")
        if max_tau is not None and (not isinstance(max_tau, int) or max_tau < tau):
            raise ValueError(f"Invalid max_tau {max_tau!r}: an int >= tau ({tau}), or None for no cap")
        if val_loss is not None and not callable(val_loss):
            raise ValueError("val_loss must be a callable returning the validation loss, or None")
        if not isinstance(val_points, int) or val_points < 3:
            raise ValueError(f"Invalid val_points {val_points!r}: the forecast needs an int >= 3")
        if not isinstance(min_tau_prime, int) or min_tau_prime < 1:
            raise ValueError(f"Invalid min_tau_prime {min_tau_prime!r}: must be an int >= 1")
        self.val_loss, self.val_points = val_loss, val_points
        self.model, self.optimizer = model, optimizer
        self.lr_bounds = (float(lo), float(hi))
        self.tau, self.n_trials, self.tau_prime_frac = tau, n_trials, tau_prime_frac
        self.min_tau_prime, self.max_tau = min_tau_prime, max_tau
        self.n_startup_trials, self.seed = n_startup_trials, seed
        self.steps_done = 0
        self.search_steps = 0
        self.stage = -1
        self._stage_left = 0
        self._stage_tau = tau
        self.history: list[dict[str, Any]] = []
        self._base_ratios = self._group_ratios()

    def _group_ratios(self) -> list[float]:
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        ref = lrs[0] if lrs[0] > 0 else 1.0
        return [lr / ref for lr in lrs]

    def set_lr(self, lr: float) -> None:
        """Set the LR of every param group, keeping the groups' original ratios to the first group."""
        for g, r in zip(self.optimizer.param_groups, self._base_ratios):
            g["lr"] = lr * r

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())

    def _restore(self, snap: tuple[dict[str, Any], dict[str, Any]]) -> None:
        self.model.load_state_dict(snap[0])
        self.optimizer.load_state_dict(copy.deepcopy(snap[1]))

    def _one_step(self, train_step: Callable[[], Any]) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = train_step()
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            self.optimizer.step()
        return value

    def _validation(self) -> float:
        was_training = self.model.training
        with torch.no_grad():
            value = self.val_loss()
        self.model.train(was_training)
        return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)

    def _search(self, train_step: Callable[[], Any], tau: int) -> float:
        optuna = require("optuna", "tune")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.GPSampler(seed=self.seed + self.stage,
                                            n_startup_trials=min(self.n_startup_trials, self.n_trials))
        study = optuna.create_study(direction="minimize", sampler=sampler)
        tau_prime = max(self.min_tau_prime, int(round(self.tau_prime_frac * tau)))
        # capped stages with a validation callable forecast validation loss (the official "val stage")
        use_val = self.val_loss is not None and self.max_tau is not None and tau >= self.max_tau
        val_every = max(1, tau_prime // self.val_points)
        snap = self._snapshot()
        trials = []
        for _ in range(self.n_trials):
            trial = study.ask()
            lr = trial.suggest_float("lr", *self.lr_bounds, log=True)
            self.set_lr(lr)
            losses, series = [], []
            for i in range(tau_prime):
                losses.append(self._one_step(train_step))
                self.search_steps += 1
                if not math.isfinite(losses[-1]):
                    break
                if use_val and (i + 1) % val_every == 0:
                    series.append(self._validation())
            finished = len(losses) == tau_prime and math.isfinite(losses[-1])
            if use_val:
                pred = forecast_exponential(series, tau // val_every) if finished and series else math.inf
            else:
                pred = forecast_exponential(losses, tau) if finished else math.inf
            study.tell(trial, pred if math.isfinite(pred) else 1e30)
            trials.append(dict(lr=lr, forecast=pred, last_loss=losses[-1], on="val" if use_val else "train"))
            self._restore(snap)
        best = min(trials, key=lambda t: t["forecast"])
        self.history.append(dict(stage=self.stage, start_step=self.steps_done, tau=tau, tau_prime=tau_prime,
                                 lr=best["lr"], trials=trials))
        return best["lr"]

    def step(self, train_step: Callable[[], Any]) -> float:
        """Take one real training step (searching first when a new stage starts); return its loss.

        ``train_step()`` must run forward and backward on the next batch and return the loss; it must not
        call ``optimizer.step()`` or ``zero_grad()`` (AutoLRS does).
        """
        if self._stage_left == 0:
            self.stage += 1
            tau = self._stage_tau
            self.set_lr(self._search(train_step, tau))
            self._stage_left = tau
            self._stage_tau = min(2 * tau, self.max_tau) if self.max_tau else 2 * tau
        loss = self._one_step(train_step)
        self.steps_done += 1
        self._stage_left -= 1
        return loss
