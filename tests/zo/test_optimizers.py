"""Update rules, convergence from a fixed start, determinism, checkpoints and error messages."""

import math

import pytest
import torch

from lmopt.zo import (
    OPTIMIZERS,
    ZOSGD,
    NonFiniteLossError,
    RAdaZO,
    ZOAdaMM,
    ZoAR,
    ZOClosureError,
    ZOSignSGD,
)
from lmopt.zo.functions import FUNCTIONS

# lr and mu per method that decrease both problems from the fixed start (chosen by a small sweep)
SETTINGS = {
    "quadratic": {"zo-sgd": (0.03, 5e-3), "zo-sgd-momentum": (3e-3, 5e-3), "zo-signsgd": (1e-2, 5e-3),
                  "zo-adamm": (3e-2, 5e-3), "r-adazo": (1e-2, 5e-3), "zoar": (0.1, 5e-2)},
    "rosenbrock": {"zo-sgd": (1e-3, 5e-3), "zo-sgd-momentum": (3e-4, 5e-3), "zo-signsgd": (1e-2, 5e-3),
                   "zo-adamm": (1e-2, 5e-3), "r-adazo": (3e-3, 5e-3), "zoar": (1e-3, 5e-2)},
}


@pytest.mark.parametrize("fname,d,factor", [("quadratic", 50, 0.85), ("rosenbrock", 10, 0.1)])
@pytest.mark.parametrize("method", sorted(OPTIMIZERS))
def test_every_method_decreases_from_fixed_start(fname, d, factor, method):
    f = FUNCTIONS[fname]
    x = f.start(d)
    f0 = float(f(x))
    lr, mu = SETTINGS[fname][method]
    opt = OPTIMIZERS[method]([x], lr=lr, mu=mu, seed=1)
    for _ in range(300):
        opt.step(lambda: f(x))
    assert float(f(x)) < factor * f0


def test_seed_determinism():
    f = FUNCTIONS["levy"]
    runs = []
    for seed in (4, 4, 5):
        x = f.start(30)
        opt = RAdaZO([x], lr=1e-2, seed=seed)
        for _ in range(20):
            opt.step(lambda x=x: f(x))
        runs.append(x.clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("method", sorted(OPTIMIZERS))
def test_state_dict_round_trip_resumes_identically(method):
    f = FUNCTIONS["rosenbrock"]
    lr, mu = SETTINGS["rosenbrock"][method]
    x = f.start(12)
    opt = OPTIMIZERS[method]([x], lr=lr, mu=mu, seed=3)
    for _ in range(10):
        opt.step(lambda: f(x))
    sd = opt.state_dict()
    x_ckpt = x.clone()
    for _ in range(10):
        opt.step(lambda: f(x))
    straight = x.clone()

    y = x_ckpt.clone()
    opt2 = OPTIMIZERS[method]([y], lr=lr, mu=mu, seed=3)
    opt2.load_state_dict(sd)
    for _ in range(10):
        opt2.step(lambda: f(y))
    assert torch.equal(y, straight)
    assert opt2.total_queries == opt.total_queries


def test_state_dict_rejects_other_configuration():
    x = torch.zeros(4)
    sd = ZOSGD([x], lr=0.1, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        ZOSGD([x], lr=0.1, seed=2).load_state_dict(sd)


def test_rules_match_formulas_on_materialised_estimate():
    """R-AdaZO and ZO-AdaMM against their update equations written out with the full estimate."""
    f = FUNCTIONS["ackley"]
    for cls in (RAdaZO, ZOAdaMM):
        x = f.start(20)
        opt = cls([x], lr=1e-2, betas=(0.8, 0.9), eps=1e-6, seed=2)
        m = torch.zeros(20, dtype=torch.float64)
        v = torch.zeros(20, dtype=torch.float64)
        vhat = torch.zeros(20, dtype=torch.float64)
        for t in range(5):
            ref = x.clone()
            est = opt.estimator.estimate(lambda x=x: f(x), [(0, x)], step=t)
            g = opt.estimator.materialize(est, [(0, x)])[0].double()
            opt.apply_estimate(est)
            m = 0.8 * m + 0.2 * g
            if cls is RAdaZO:
                v = 0.9 * v + 0.1 * m * m
                ref = ref - 1e-2 * m / (v.sqrt() + 1e-6)
            else:
                v = 0.9 * v + 0.1 * g * g
                vhat = torch.maximum(vhat, v)
                ref = ref - 1e-2 * m / (vhat.sqrt() + 1e-6)
            torch.testing.assert_close(x, ref, rtol=1e-10, atol=1e-12)


def test_sign_sgd_is_coordinatewise_sign_of_averaged_estimate():
    f = FUNCTIONS["quadratic"]
    x = f.start(15)
    opt = ZOSignSGD([x], lr=0.01, q=3, seed=0)
    before = x.clone()
    est = opt.estimator.estimate(lambda: f(x), [(0, x)], step=0)
    g = opt.estimator.materialize(est, [(0, x)])[0]
    opt.apply_estimate(est)
    torch.testing.assert_close(x, before - 0.01 * torch.sign(g))
    assert len(est.seeds) == 3


def test_sphere_and_one_sided_defaults_of_adaptive_methods():
    x = torch.zeros(3)
    assert RAdaZO([x]).estimator.config()["directions"] == "sphere"
    assert RAdaZO([x]).estimator.queries_per_step() == 3  # q=2 plus f(x)
    assert ZoAR([x]).estimator.queries_per_step() == 2  # averaged baseline: no f(x) query


def test_non_finite_loss_raises_and_restores():
    x = torch.ones(5)
    opt = ZOSGD([x], lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        return float("nan") if len(calls) == 2 else float(x.sum())

    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        opt.step(closure)
    assert torch.equal(x, torch.ones(5))


def test_closure_calling_backward_is_rejected():
    w = torch.nn.Parameter(torch.ones(3))
    opt = ZOSGD([w], lr=0.1)

    def closure():
        loss = (w * w).sum()
        loss.backward()
        return loss

    with pytest.raises(ZOClosureError, match="backward"):
        opt.step(closure)
    assert torch.equal(w.detach(), torch.ones(3))


def test_closure_must_return_scalar_and_step_needs_closure():
    x = torch.ones(3)
    opt = ZOSGD([x], lr=0.1)
    with pytest.raises(ZOClosureError, match="scalar"):
        opt.step(lambda: x * 2)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


@pytest.mark.parametrize("kwargs,match", [
    ({"mu": 0.0}, "mu"), ({"mu": float("nan")}, "mu"), ({"lr": -1.0}, "lr"), ({"lr": float("inf")}, "lr"),
    ({"q": 0}, "q"), ({"directions": "cauchy"}, "directions"), ({"difference": "central"}, "difference"),
    ({"perturb": "fast"}, "perturb"), ({"reuse": True, "history": 2}, "one-sided"),
])
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ZOSGD([torch.zeros(2)], **kwargs)


def test_invalid_betas():
    with pytest.raises(ValueError, match="beta2"):
        RAdaZO([torch.zeros(2)], betas=(0.9, 1.0))


def test_mismatched_devices():
    with pytest.raises(ValueError, match="one device"):
        ZOSGD([torch.zeros(2), torch.zeros(2, device="meta")], lr=0.1)


def test_logging_fields():
    x = FUNCTIONS["quadratic"].start(10)
    opt = ZoAR([x], lr=1e-2, q=2, history=3)
    for _ in range(4):
        loss = opt.step(lambda: FUNCTIONS["quadratic"](x))
    info = opt.last_step
    assert info["step"] == 4 and info["queries"] == 2 and info["total_queries"] == 8
    assert len(info["projected_grads"]) == 2 and info["directions_in_estimate"] == 8
    assert math.isfinite(loss) and info["loss"] == loss


def test_no_decay_patterns_default_and_mezo():
    from lmopt.zo.select import MEZO_NO_DECAY_PATTERNS, param_groups

    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.input_layernorm.weight",
             "model.norm.weight", "lm_head.bias"]
    named = [(n, torch.nn.Parameter(torch.zeros(2))) for n in names]

    def decayed(groups):
        ids = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        return [n for n, p in named if id(p) in ids]

    assert decayed(param_groups(named, weight_decay=0.1)) == [names[0]]
    # MeZO's trainer decays the final norm (its name has no 'layernorm'/'layer_norm')
    assert decayed(param_groups(named, weight_decay=0.1, no_decay=MEZO_NO_DECAY_PATTERNS)) == [names[0], names[2]]


def test_ackley_variants():
    x = torch.full((8,), 0.5, dtype=torch.float64)
    base = -20 * math.exp(-0.2 * 0.5) + 20 + math.e
    assert float(FUNCTIONS["ackley"](x)) == pytest.approx(base - math.exp(-1.0))  # cos(2π·0.5) = −1
    assert float(FUNCTIONS["ackley_pi"](x)) == pytest.approx(base - 1.0)  # cos(π·0.5) = 0
    assert float(FUNCTIONS["ackley_pi"](torch.zeros(8, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)
