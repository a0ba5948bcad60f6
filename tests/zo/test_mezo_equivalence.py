"""ZO-SGD with q=1, two-sided, no reuse is MeZO (arXiv 2305.17333, Alg. 1) bit for bit."""

import torch

from lmopt.zo import ZOSGD, DirectionSampler, param_groups


def _model():
    gen = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(10, 24), torch.nn.LayerNorm(24), torch.nn.ReLU(),
                            torch.nn.Linear(24, 3))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return m


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 10, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def mezo_reference_step(model, named, loss_fn, seed, eps, lr, wd, sampler):
    """A literal transcription of MeZO's zo_perturb_parameters / zo_step / zo_update, with the direction of
    tensor i regenerated from (seed, i) instead of torch.manual_seed on the global RNG."""

    def perturb(scaling):
        for i, (_, p) in enumerate(named):
            z = sampler.full(seed, i, p.shape, p.device)
            p.data = p.data + scaling * z * eps

    perturb(1)
    loss1 = loss_fn()
    perturb(-2)
    loss2 = loss_fn()
    projected_grad = ((loss1 - loss2) / (2 * eps)).item()
    perturb(1)
    for i, (name, p) in enumerate(named):
        z = sampler.full(seed, i, p.shape, p.device)
        if "bias" not in name and "layer_norm" not in name and "layernorm" not in name and name != "1.weight":
            p.data = p.data - lr * (projected_grad * z + wd * p.data)
        else:
            p.data = p.data - lr * (projected_grad * z)
    return loss1, projected_grad


def test_bit_for_bit_with_mezo_reference():
    x, y = _data()
    ref, mine = _model(), _model()
    named_ref = list(ref.named_parameters())
    lr, eps, wd = 1e-2, 1e-3, 0.1
    groups = param_groups(mine, weight_decay=wd, no_decay=("bias", "1.weight"))
    # same parameter order as the reference: decay group first, then the no-decay group
    order = [n for g in groups for p in g["params"] for n, q in mine.named_parameters() if q is p]
    named_ref = [(n, dict(named_ref)[n]) for n in order]
    opt = ZOSGD(groups, lr=lr, mu=eps, q=1, difference="two-sided", perturb="mezo", seed=5, chunk_size=37)
    sampler = DirectionSampler("gaussian", chunk_size=37)
    for step in range(12):
        seed = opt.estimator.direction_seed(step, 0)
        _, ref_pg = mezo_reference_step(ref, named_ref, lambda: torch.nn.functional.cross_entropy(ref(x), y),
                                       seed, eps, lr, wd, sampler)
        loss = opt.step(lambda: torch.nn.functional.cross_entropy(mine(x), y))
        assert opt.last_step["projected_grads"] == [ref_pg] and opt.last_step["queries"] == 2
        for (n, p), q in zip(named_ref, [dict(mine.named_parameters())[n] for n in order]):
            assert torch.equal(p, q), f"step {step}: {n} differs"
        assert loss > 0.0
    # and the optimisation did move the weights
    assert not torch.equal(dict(mine.named_parameters())["0.weight"], _model()[0].weight)


def test_exact_mode_equals_mezo_update_on_exact_evaluations():
    """Default perturb='exact': g = (f(theta+eps z) - f(theta-eps z)) / (2 eps) from the exact theta, then
    MeZO's update theta - lr (g z + wd theta)."""
    x, y = _data()
    model = _model()
    loss_fn = torch.nn.functional.cross_entropy
    opt = ZOSGD(model.parameters(), lr=1e-2, mu=1e-3, weight_decay=0.05, seed=3)
    sampler = DirectionSampler("gaussian")
    for step in range(5):
        params = [p.detach().clone() for p in model.parameters()]
        seed = opt.estimator.direction_seed(step, 0)
        zs = [sampler.full(seed, i, p.shape, p.device) for i, p in enumerate(params)]
        keys = [n for n, _ in model.named_parameters()]

        def f_at(sign, keys=keys, params=params, zs=zs):
            state = {k: p + sign * (z * 1e-3) for k, p, z in zip(keys, params, zs)}
            return loss_fn(torch.func.functional_call(model, state, (x,)), y)

        pg = ((f_at(1) - f_at(-1)) / (2 * 1e-3)).item()
        opt.step(lambda: loss_fn(model(x), y))
        assert opt.last_step["projected_grads"][0] == pg
        for p0, z, p in zip(params, zs, model.parameters()):
            assert torch.equal(p, p0 - 1e-2 * (pg * z + 0.05 * p0))
