"""AutoLRS: loss forecast, snapshot/restore, stage doubling and LR choice on a quadratic."""

import math

import pytest
import torch

from lmopt.optim import AutoLRS, forecast_exponential

pytest.importorskip("optuna")


def test_forecast_recovers_exponential():
    xs = range(1, 21)
    losses = [2.0 * math.exp(-0.15 * x) + 0.5 for x in xs]
    assert forecast_exponential(losses, 200) == pytest.approx(0.5, abs=0.01)
    assert forecast_exponential(losses, 20) == pytest.approx(losses[-1], abs=0.01)
    assert forecast_exponential([1.0, float("nan"), 0.5], 10) == math.inf
    with pytest.raises(ValueError, match="at least one"):
        forecast_exponential([], 5)


def _setup(seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(20, generator=gen)
    w = torch.nn.Parameter(torch.zeros(20))
    model = torch.nn.Module()
    model.w = w
    noise = torch.Generator().manual_seed(seed + 1)

    def train_step():
        g = torch.randn(20, generator=noise) * 0.01
        loss = 0.5 * ((w - target) ** 2).sum() + (g * w).sum()
        loss.backward()
        return loss

    return model, w, target, train_step


def test_search_restores_snapshot_and_stages_double():
    model, w, target, train_step = _setup()
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    sched = AutoLRS(model, opt, lr_bounds=(1e-3, 1.5), tau=10, n_trials=4, min_tau_prime=5)
    sched.step(train_step)
    assert sched.search_steps == 4 * 5 and sched.steps_done == 1
    chosen = sched.history[0]["lr"]
    assert 1e-3 <= chosen <= 1.5
    # The trials were undone (weights and momentum): w is one real step from w=0 with an empty momentum
    # buffer, on the 21st noise draw (the 20 trial steps consumed the first 20): w = lr * (target - g).
    noise = torch.Generator().manual_seed(1)
    for _ in range(20):
        torch.randn(20, generator=noise)
    g = torch.randn(20, generator=noise) * 0.01
    assert torch.allclose(w.detach(), chosen * (target - g), atol=1e-6)
    for _ in range(9 + 20):
        sched.step(train_step)
    assert [h["tau"] for h in sched.history] == [10, 20]
    assert [h["start_step"] for h in sched.history] == [0, 10]


def test_picks_a_good_lr_on_a_quadratic():
    model, w, target, train_step = _setup()
    opt = torch.optim.SGD([w], lr=1.0)
    sched = AutoLRS(model, opt, lr_bounds=(1e-4, 1.5), tau=40, n_trials=8, seed=0)
    while sched.steps_done < 40:
        sched.step(train_step)
    # on ½‖w − t‖² tiny LRs barely move in 40 steps so the search must move away from them
    assert 0.05 < sched.history[0]["lr"] <= 1.5
    assert float((w.detach() - target).norm() / target.norm()) < 0.05


def test_bad_arguments():
    model, w, _, _ = _setup()
    opt = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="lr_bounds"):
        AutoLRS(model, opt, lr_bounds=(1e-1, 1e-3))
    with pytest.raises(ValueError, match="tau"):
        AutoLRS(model, opt, tau=0)


def test_stages_cap_at_max_tau_then_forecast_validation_loss():
    model, w, target, train_step = _setup()
    opt = torch.optim.SGD([w], lr=0.1)
    calls = []

    def val_loss():
        calls.append(sched.search_steps)
        return 7.0  # a constant validation series forecasts exactly 7

    sched = AutoLRS(model, opt, lr_bounds=(1e-3, 1.0), tau=10, max_tau=20, n_trials=3, tau_prime_frac=0.5,
                    min_tau_prime=5, val_loss=val_loss, val_points=5)
    while sched.steps_done < 10 + 20 + 20 + 1:
        sched.step(train_step)
    assert [h["tau"] for h in sched.history] == [10, 20, 20, 20]
    first = sched.history[0]
    assert all(t["on"] == "train" for t in first["trials"])  # before the cap: training loss
    capped = sched.history[1]
    assert capped["tau_prime"] == 10 and all(t["on"] == "val" for t in capped["trials"])
    assert [t["forecast"] for t in capped["trials"]] == pytest.approx([7.0] * 3)
    assert len(calls) == 3 * 3 * 5  # three capped stages × 3 trials × 5 evaluations, none before the cap


def test_max_tau_must_hold_the_first_stage():
    model, w, _, _ = _setup()
    with pytest.raises(ValueError, match="max_tau"):
        AutoLRS(model, torch.optim.SGD([w], lr=0.1), tau=100, max_tau=50)
