"""Ferret against a transcription of the released ``FerretFramework`` (allen4747/Ferret).

The transcription restates the released ``_group_parameters``, ``project_update`` and ``update``: the
grouping by 0.9 × the median size, ``max(int(||Δ_g|| / max ||Δ|| · K), 2)`` seeds per group, coordinates
``<Δ_g, b> · d_g / n_g`` with ``b`` a standard normal truncated to ±1/sqrt(d_g) drawn from the seed, and the
server step ``w -= lr_s · clip(c · b, 10)`` per (seed, group).
"""

import logging
import math

import numpy as np
import pytest
import torch

from lmopt.fed import ClientState, ClientWork, Ferret, decode, encode, reconstruction_error, run_federated
from lmopt.fed.ferret import group_tensors, truncated_variance


def released_groups(numels):
    target = int(0.9 * np.median(numels))
    groups, cur, size = [], [], 0
    for i, n in enumerate(numels):
        if size + n > target and cur:
            groups.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += n
    return groups + ([cur] if cur else [])


def released_base(seed, d):
    torch.manual_seed(seed)  # the released code seeds torch's global generator
    base = torch.empty(d)
    return torch.nn.init.trunc_normal_(base, mean=0.0, std=1.0, a=-1 / d ** 0.5, b=1 / d ** 0.5)


def released_project(old, new, groups, pool, chosen_per_group):
    deltas = [torch.cat([(old[i] - new[i]).flatten() for i in g]) for g in groups]
    top = max([1e-8] + [float(d.norm()) for d in deltas])
    coords = []
    for g, d in enumerate(deltas):
        n = max(int(float(d.norm()) / top * len(pool)), 2)
        chosen = chosen_per_group[g]
        assert len(chosen) == n
        c = torch.zeros(len(pool))
        for k in chosen:
            c[k] = torch.sum(d * released_base(int(pool[k]), d.numel()))
        coords.append(c * (d.numel() / n))
    return torch.stack(coords, dim=1)  # K x G


def released_update(params, groups, pool, coords, slr, max_norm=10.0):
    for k, s in enumerate(pool):
        for g, group in enumerate(groups):
            size = sum(params[i].numel() for i in group)
            base = released_base(int(s), size) * coords[k, g]
            norm = torch.linalg.norm(base)
            coef = max_norm / (norm + 1e-8)
            if coef < 1:
                base = base * coef
            start = 0
            for i in group:
                params[i].sub_(slr * base[start:start + params[i].numel()].view_as(params[i]))
                start += params[i].numel()


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4), torch.nn.Linear(4, 4))
    return [p.detach().clone() for p in net.parameters()]


def test_grouping_matches_the_released_rule():
    for numels in ([128, 16, 64, 4], [10, 10, 10, 10, 100], [5], [3, 3, 3, 40, 1, 1]):
        assert group_tensors(numels) == released_groups(numels)


def test_truncated_variance():
    from scipy.stats import truncnorm

    for a in (0.05, 0.5, 2.0):
        assert abs(truncated_variance(a) - truncnorm.var(-a, a)) < 1e-12
    for a in (1e-4, 9.99e-4, 1.001e-3, 1e-2):  # both sides of the series/closed-form switch
        assert abs(truncated_variance(a) / (a * a / 3) - (1 - 2 * a * a / 15)) < 1e-9


def test_projection_and_reconstruction_match_the_released_code(mlp):
    method = Ferret(num_seeds=30, seed=3)
    old = mlp
    g = torch.Generator().manual_seed(1)
    new = [p + 0.05 * torch.randn(p.shape, generator=g) for p in old]
    groups = method.groups(old)
    parts = method.project([a - b for a, b in zip(old, new)], groups, np.random.default_rng(5))
    expected = released_project(old, new, groups, method.pool, [idx.tolist() for idx, _ in parts])
    mine = np.zeros((30, len(groups)), dtype=np.float32)
    for gi, (idx, val) in enumerate(parts):
        mine[idx, gi] = val
    assert np.array_equal(mine, expected.numpy())
    # the server step, large enough that the clip at norm 10 acts on some terms
    coords = expected * 400
    ref = [p.clone() for p in new]
    released_update(ref, groups, method.pool, coords, slr=10.0)
    out = [p.clone() for p in new]
    k, gi = np.nonzero(coords.numpy())
    method.reconstruct_(out, groups, k, gi, coords.numpy()[k, gi], 10.0)
    assert all(torch.equal(a, b) for a, b in zip(ref, out))
    terms = [float(torch.linalg.norm(released_base(int(method.pool[a]), sum(old[i].numel() for i in groups[b]))
                                     * coords[a, b])) for a, b in zip(k, gi)]
    assert max(terms) > 10 > min(terms)  # both branches of the clip were exercised


def test_the_truncated_basis_recovers_a_third():
    d = 64
    delta = torch.randn(d, generator=torch.Generator().manual_seed(0))
    out = reconstruction_error(delta, num_seeds=200, kind="truncated", trials=100)
    assert abs(out["recovered_fraction"] - d * truncated_variance(d ** -0.5)) < 0.03
    assert abs(out["recovered_fraction"] - 1 / 3) < 0.03


def test_the_unbiased_basis_is_unbiased_with_the_stated_variance():
    """E[Δ̂] = Δ, and E||Δ̂ - Δ||² / ||Δ||² = (d - 2 + m4) / n with m4 = d² E[b_i⁴] = 9/5 for the
    (almost uniform) truncated normal: (d - 0.2) / n."""
    d, n, trials = 32, 16, 400
    delta = torch.randn(d, generator=torch.Generator().manual_seed(0))
    out = reconstruction_error(delta, num_seeds=n, kind="unbiased", trials=trials)
    predicted = (d - 0.2) / n
    assert abs(out["relative_squared_error"] - predicted) < 0.12 * predicted
    # unbiased: the mean gain is 1 within its Monte-Carlo error (the gain's sd is sqrt(predicted / d))
    se = math.sqrt(predicted / d / trials)
    assert abs(out["recovered_fraction"] - 1.0) < 4 * se
    truncated = reconstruction_error(delta, num_seeds=n, kind="truncated", trials=trials)
    assert abs(truncated["recovered_fraction"] - 1 / 3) < 4 * se


def test_every_replica_of_the_global_model_is_identical(problem):
    method = Ferret(num_seeds=20, lr=0.1, local_steps=4, n_accum=2, grad_clip=1.0)
    states = {}
    orig = method.train_client

    def spy(message, state, work, cid):
        reply, new_state = orig(message, state, work, cid)
        states[(message["round"], cid)] = new_state
        return reply, new_state

    method.train_client = spy
    snapshots = {}
    run_federated(method, problem.params, problem.names, problem.loss, problem.clients(3), 4, join_round={2: 3},
                  on_round=lambda rec: snapshots.update({rec.round: [p.clone() for p in problem.params]}))
    assert states[(3, 2)].synced_round == 2  # the late joiner caught up over two rounds
    for (r, cid), st in states.items():
        if r > 1:
            assert all(torch.equal(a, b) for a, b in zip(st.params, snapshots[r - 1])), (r, cid)


def test_server_lr_schedules():
    lin = Ferret(server_lr=10.0, server_lr_min=1.0, server_lr_schedule="linear", rounds=4)
    assert [lin.round_server_lr(r) for r in (1, 2, 3, 4)] == [10.0, 7.75, 5.5, 3.25]
    cos = Ferret(server_lr=10.0, server_lr_schedule="cosine", rounds=2)
    assert cos.round_server_lr(1) == 10.0 and abs(cos.round_server_lr(2) - 5.0) < 1e-12
    with pytest.raises(ValueError, match="rounds="):
        Ferret(server_lr_schedule="linear")


def test_server_momentum_keeps_past_coordinates(problem):
    method = Ferret(num_seeds=20, lr=0.1, local_steps=3, n_accum=1, server_momentum=0.5)
    server = method.new_server(problem.params, problem.names)
    work = ClientWork(problem.params, problem.names, problem.loss, problem.clients(1)[0])
    reply, _ = method.train_client(server.configure(1, 0), ClientState.initial(problem.w0), work, 0)
    server.aggregate(1, {0: reply})
    first = server.buffer.copy()
    server.aggregate(2, {})
    np.testing.assert_array_equal(server.buffer, 0.5 * first)


def _corrupt(fn):
    def transport(r, cid, data):
        if (r, cid) == (2, 1):
            msg = decode(data)
            fn(msg)
            return encode(msg)
        return data
    return transport


def _nan(msg):
    msg["g0_val"] = np.full_like(msg["g0_val"], np.nan)


def _repeat(msg):
    msg["g0_idx"] = np.full_like(msg["g0_idx"], msg["g0_idx"][0])


def _out_of_pool(msg):
    msg["g0_idx"] = (msg["g0_idx"] + 20).astype(msg["g0_idx"].dtype)


def _groups(msg):
    msg["num_groups"] = 7


@pytest.mark.parametrize("fn, reason", [(_nan, "not finite"), (_repeat, "repeated"), (_out_of_pool, "outside the pool"),
                                        (_groups, "parameter groups")])
def test_faulty_replies_are_rejected(problem, caplog, fn, reason):
    method = Ferret(num_seeds=20, lr=0.1, local_steps=3, n_accum=1)
    with caplog.at_level(logging.WARNING, logger="lmopt.fed"):
        res = run_federated(method, problem.params, problem.names, problem.loss, problem.clients(2), 3,
                            transport=_corrupt(fn))
    assert res.rounds[1].accepted == [0] and reason in res.rounds[1].rejected[1] and reason in caplog.text
    assert all(torch.isfinite(p).all() for p in res.params)
    problem.reset()
    ref = run_federated(method, problem.params, problem.names, problem.loss, problem.clients(2), 3,
                        transport=lambda r, c, b: None if (r, c) == (2, 1) else b)
    assert all(torch.equal(a, b) for a, b in zip(res.params, ref.params))


def test_ferret_learns_the_toy_problem(problem):
    before = problem.accuracy()["accuracy"]
    run_federated(Ferret(num_seeds=40, lr=0.2, local_steps=10, n_accum=1), problem.params, problem.names,
                  problem.loss, problem.clients(2), 6)
    assert problem.accuracy()["accuracy"] > max(before + 0.2, 0.85)


@pytest.mark.parametrize("kwargs, match", [({"basis": "gauss"}, "basis"), ({"server_momentum": 1.0}, "momentum"),
                                           ({"min_seeds": 500}, "min_seeds"), ({"clip_norm": 0.0}, "clip_norm")])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Ferret(**kwargs)
