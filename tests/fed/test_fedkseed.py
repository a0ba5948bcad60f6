"""FedKSeed / FedKSeed-Pro against a transcription of the released client and server (zhenqincn/FedKSeed).

The transcription below restates, in this file's own words, what the released ``MeZOFramework.zo_step``,
``zo_update``, ``Server.aggregate_seed_pool`` and ``Server.calculate_probabilities`` compute; the random
direction of a seed is lmopt's seeded Gaussian (the released code draws it from torch's global generator).
"""

import logging

import numpy as np
import pytest
import torch

from lmopt.fed import ClientState, ClientWork, FedKSeed, decode, encode, run_federated
from lmopt.fed.common import client_seed
from lmopt.zo import ZOSGD
from lmopt.zo.directions import DirectionSampler, mix_seed

from .conftest import Problem

SAMPLER = DirectionSampler("gaussian")


def z(seed, i, p):
    return SAMPLER.full(seed, i, p.shape, p.device)


def released_client(params, loss, batches, seeds, lr, eps):
    """One client of the released code: MeZO's +eps / -2 eps / +eps sequence, then the update with z."""
    pool = {}
    with torch.no_grad():
        for batch, s in zip(batches, seeds):
            for i, p in enumerate(params):
                p.copy_(p + eps * z(s, i, p))
            l1 = loss(batch)
            for i, p in enumerate(params):
                p.copy_(p + (-2 * eps) * z(s, i, p))
            l2 = loss(batch)
            for i, p in enumerate(params):
                p.copy_(p + eps * z(s, i, p))
            g = ((l1 - l2) / (2 * eps)).item()
            for i, p in enumerate(params):
                p.copy_(p - lr * (g * z(s, i, p)))
            pool[s] = pool.get(s, 0.0) + g
    return pool


def released_rebuild(w0, seed_pool, lr):
    """The released server: start from w0 and apply every seed's accumulated value."""
    params = [w.clone() for w in w0]
    for s, g in seed_pool.items():
        if g != 0.0:
            for i, p in enumerate(params):
                p.copy_(p - lr * (g * z(s, i, p)))
    return params


def run_round(method, problem, clients, server, r, states):
    replies = {}
    for cid, data in clients.items():
        msg = decode(encode(server.configure(r, cid)))
        work = ClientWork(problem.params, problem.names, problem.loss, data)
        rep, states[cid] = method.train_client(msg, states.get(cid) or ClientState.initial(problem.w0), work, cid)
        replies[cid] = decode(encode(rep))
    return replies


def test_matches_the_released_client_and_server_bit_for_bit(problem):
    method = FedKSeed(num_seeds=32, lr=0.05, eps=1e-3, local_steps=12, perturb="mezo", seed=1)
    clients = problem.clients(2)
    clients[1] = type(clients[1])(list(range(40, 70)), 4)  # unequal sizes: example-count weights matter
    server = method.new_server(problem.params, problem.names)
    replies, locals_ = {}, {}
    for cid, data in clients.items():
        msg = server.configure(1, cid)
        work = ClientWork(problem.params, problem.names, problem.loss, data)
        replies[cid], _ = method.train_client(msg, ClientState.initial(problem.w0), work, cid)
        locals_[cid] = [p.clone() for p in problem.params]
    server.aggregate(1, replies)

    total = sum(len(d) for d in clients.values())
    seed_pool = {int(s): 0.0 for s in method.pool}  # the released seed pool: every candidate, pool order
    for cid, data in clients.items():
        problem.reset()
        seeds = [int(method.pool[i]) for i in replies[cid]["idx"]]
        batches = data.batches(method.local_steps, mix_seed(client_seed(method.seed, 1, cid), 1))
        local = released_client(problem.params, problem.loss, batches, seeds, method.lr, method.eps)
        assert all(torch.equal(a, b) for a, b in zip(problem.params, locals_[cid]))
        for s, g in local.items():
            seed_pool[s] = seed_pool.get(s, 0.0) + g * (len(data) / total)
    expected = released_rebuild(problem.w0, seed_pool, method.lr)
    assert all(torch.equal(a, b) for a, b in zip(expected, server.params))


def test_several_rounds_match_the_released_rebuild_from_w0(problem):
    """lmopt applies each round's sums to the last model; the released code rebuilds from w0 with the
    all-round sums: without weight decay the same sum of updates (up to float rounding)."""
    method = FedKSeed(num_seeds=16, lr=0.05, eps=1e-3, local_steps=10, seed=2)
    server = _server_after(method, problem, 4)
    seed_pool = {int(s): 0.0 for s in method.pool}
    for _, idx, val in server.history:
        for i, v in zip(idx, val):
            seed_pool[int(method.pool[i])] += float(v)
    expected = released_rebuild(problem.w0, seed_pool, method.lr)
    for a, b in zip(expected, server.params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert max(float((a - w).abs().max()) for a, w in zip(server.params, problem.w0)) > 1e-3  # it did move


def test_runs_are_deterministic(problem):
    method = FedKSeed(num_seeds=16, lr=0.05, eps=1e-3, local_steps=5, importance_sampling=True)
    first = run_federated(method, problem.params, problem.names, problem.loss, problem.clients(3), 3,
                          clients_per_round=2)
    problem.reset()
    again = run_federated(method, problem.params, problem.names, problem.loss, problem.clients(3), 3,
                          clients_per_round=2)
    assert all(torch.equal(a, b) for a, b in zip(first.params, again.params))
    assert [r.selected for r in first.rounds] == [r.selected for r in again.rounds]


def _server_after(method, problem, rounds):
    server = method.new_server(problem.params, problem.names)
    states = {}
    clients = problem.clients(3)
    for r in range(1, rounds + 1):
        server.aggregate(r, run_round(method, problem, clients, server, r, states))
    return server


def test_replaying_a_clients_pairs_reproduces_its_model_exactly(problem):
    method = FedKSeed(num_seeds=8, lr=0.05, eps=1e-3, local_steps=25, weight_decay=0.01)
    data = problem.clients(1)[0]
    work = ClientWork(problem.params, problem.names, problem.loss, data)
    server = method.new_server(problem.params, problem.names)
    reply, _ = method.train_client(server.configure(1, 0), ClientState.initial(problem.w0), work, 0)
    trained = [p.clone() for p in problem.params]
    assert len(set(reply["idx"].tolist())) < len(reply["idx"])  # seeds repeat: order matters
    replica = [w.clone() for w in problem.w0]
    method.replay(replica, problem.names, reply["idx"], reply["val"])
    assert all(torch.equal(a, b) for a, b in zip(replica, trained))
    wrong = [w.clone() for w in problem.w0]
    method.replay(wrong, problem.names, reply["idx"][::-1], reply["val"][::-1])
    assert not all(torch.equal(a, b) for a, b in zip(wrong, trained))


def test_one_client_equals_mezo():
    """One client, R rounds of tau steps: the global model is MeZO run for R*tau steps on the same seeds.

    In float64: in float32 the rounding difference of the server's per-seed sums is amplified by the next
    round's finite differences (loss resolution / 2 eps), which would hide a real discrepancy."""
    problem = Problem(dtype=torch.float64)
    method = FedKSeed(num_seeds=4096, lr=0.05, eps=1e-3, local_steps=10)
    clients = problem.clients(1)
    seen = []
    res = run_federated(method, problem.params, problem.names, problem.loss, clients, 3,
                        transport=lambda r, c, b: seen.append(decode(b)) or b)
    problem.reset()
    opt = ZOSGD(problem.params, lr=method.lr, mu=method.eps)
    for r, reply in enumerate(seen, start=1):
        batches = clients[0].batches(method.local_steps, mix_seed(client_seed(method.seed, r, 0), 1))
        for batch, i in zip(batches, reply["idx"]):
            opt.estimator.direction_seed = lambda step, j, s=int(method.pool[i]): s
            opt.step(lambda b=batch: problem.loss(b))
    for a, b in zip(problem.params, res.params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the scalars travel as float32
    assert max(float((a - w).abs().max()) for a, w in zip(res.params, problem.w0)) > 1e-2


def test_pro_probabilities_follow_the_released_rule(problem):
    method = FedKSeed(num_seeds=6, importance_sampling=True, bias_loss_clip=2.0)
    abs_sum = np.array([0.0, 1.0, 4.0, 0.5, 2.0, 3.0])
    count = np.array([1.0, 2.0, 2.0, 1.0, 1.0, 3.0])
    # released: mean of |clip(history)|, min-max normalised, softmax
    mean = abs_sum / count
    norm = (mean - mean.min()) / (mean.max() + 1e-10 - mean.min())
    expected = np.exp(norm) / np.exp(norm).sum()
    np.testing.assert_allclose(method.probabilities(abs_sum, count), expected, rtol=1e-12)


def test_pro_draws_seeds_with_large_gradients_more_often(problem):
    method = FedKSeed(num_seeds=4, lr=1e-3, eps=1e-3, local_steps=300, importance_sampling=True)
    server = method.new_server(problem.params, problem.names)
    server.abs_sum[:] = [0.0, 0.0, 0.0, 50.0]  # seed 3 has had large |g|
    msg = server.configure(1, 0)
    np.testing.assert_allclose(msg["probs"], [1 / (3 + np.e)] * 3 + [np.e / (3 + np.e)], rtol=1e-6)
    work = ClientWork(problem.params, problem.names, problem.loss, problem.clients(1)[0])
    reply, _ = method.train_client(msg, ClientState.initial(problem.w0), work, 0)
    share = float(np.mean(reply["idx"] == 3))
    assert abs(share - np.e / (3 + np.e)) < 0.08
    before = server.count.copy()
    server.aggregate(1, {0: reply})
    assert server.count.sum() - before.sum() == len(reply["idx"])  # every step's |g| enters the history


def _spy(method):
    """Record every (message, client, new state) the clients see."""
    seen = []
    orig = method.train_client

    def train(message, state, work, cid):
        reply, new_state = orig(message, state, work, cid)
        seen.append((message, cid, new_state))
        return reply, new_state

    method.train_client = train
    return seen


def test_late_joiner_replays_the_history_exactly(problem):
    method = FedKSeed(num_seeds=64, lr=0.05, eps=1e-3, local_steps=5)
    snapshots = {}
    seen = _spy(method)
    run_federated(method, problem.params, problem.names, problem.loss, problem.clients(4), 5, join_round={3: 4},
                  on_round=lambda rec: snapshots.update({rec.round: [p.clone() for p in problem.params]}))
    msg, _, state = [x for x in seen if x[1] == 3][0]
    assert msg["round"] == 4 and msg["upd_rounds"].tolist() == [1, 2, 3] and "ckpt_round" not in msg
    assert state.synced_round == 3 and all(torch.equal(a, b) for a, b in zip(state.params, snapshots[3]))


def test_late_joiner_from_a_checkpoint(problem):
    method = FedKSeed(num_seeds=64, lr=0.05, eps=1e-3, local_steps=5, replay_limit=1, checkpoint_every=2)
    snapshots = {}
    seen = _spy(method)
    res = run_federated(method, problem.params, problem.names, problem.loss, problem.clients(4), 5,
                        join_round={3: 4},
                        on_round=lambda rec: snapshots.update({rec.round: [p.clone() for p in problem.params]}))
    msg, _, state = [x for x in seen if x[1] == 3][0]
    assert msg["ckpt_round"] == 2 and msg["upd_rounds"].tolist() == [3]
    assert state.synced_round == 3 and all(torch.equal(a, b) for a, b in zip(state.params, snapshots[3]))
    n_params = sum(p.numel() for p in problem.params)
    assert res.rounds[3].bytes_down[3] - res.rounds[3].bytes_down[0] >= 4 * n_params  # the checkpoint, counted


def _corrupt(field, value):
    def transport(r, cid, data):
        if r == 2 and cid == 1:
            msg = decode(data)
            msg[field] = value(msg[field])
            return encode(msg)
        return data
    return transport


@pytest.mark.parametrize("transport, reason", [
    (_corrupt("idx", lambda a: (a + 64).astype(np.uint16)), "outside the pool"),
    (_corrupt("val", lambda a: np.full_like(a, np.nan)), "not finite"),
    (_corrupt("idx", lambda a: a[:-1]), "do not pair up"),
    (lambda r, c, b: b[:10] if (r, c) == (2, 1) else b, "malformed message"),
    (lambda r, c, b: None if (r, c) == (2, 1) else b, None),
])
def test_faulty_replies_are_excluded_and_logged(problem, caplog, transport, reason):
    method = FedKSeed(num_seeds=64, lr=0.05, eps=1e-3, local_steps=6)
    clients = problem.clients(2)
    with caplog.at_level(logging.WARNING, logger="lmopt.fed"):
        res = run_federated(method, problem.params, problem.names, problem.loss, clients, 3, transport=transport)
    rec = res.rounds[1]
    assert rec.accepted == [0]
    if reason is None:
        assert rec.dropped == {1: "no reply"}
    else:
        assert reason in rec.rejected[1] and reason in caplog.text
    assert res.rounds[2].accepted == [0, 1]  # the faulty client is back, caught up, in round 3
    # round 2's update is client 0's alone: a clean run where only client 0 replies in round 2 agrees
    problem.reset()
    ref = run_federated(method, problem.params, problem.names, problem.loss, clients, 3,
                        transport=lambda r, c, b: None if (r, c) == (2, 1) else b)
    assert all(torch.equal(a, b) for a, b in zip(res.params, ref.params))


def test_a_nan_loss_skips_the_step(problem):
    method = FedKSeed(num_seeds=16, lr=0.05, eps=1e-3, local_steps=10)
    calls = {"n": 0}

    def loss(rows):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == 3 else problem.loss(rows)

    work = ClientWork(problem.params, problem.names, loss, problem.clients(1)[0])
    server = method.new_server(problem.params, problem.names)
    reply, _ = method.train_client(server.configure(1, 0), ClientState.initial(problem.w0), work, 0)
    assert reply["skipped"] == 1 and len(reply["idx"]) == 9
    assert all(torch.isfinite(p).all() for p in problem.params)


def test_a_crashing_client_is_dropped_not_the_round(problem, caplog):
    method = FedKSeed(num_seeds=16, lr=0.05, eps=1e-3, local_steps=3)
    clients = problem.clients(2)
    bad = type(clients[1])(["not a row"], 1)
    with caplog.at_level(logging.WARNING, logger="lmopt.fed"):
        res = run_federated(method, problem.params, problem.names, problem.loss, {0: clients[0], 1: bad}, 2)
    assert res.rounds[0].accepted == [0] and 1 in res.rounds[0].dropped and "failed" in caplog.text


def test_a_mismatched_configuration_is_rejected(problem):
    a = FedKSeed(num_seeds=16, local_steps=3)
    b = FedKSeed(num_seeds=16, local_steps=3, lr=0.5)
    server = a.new_server(problem.params, problem.names)
    work = ClientWork(problem.params, problem.names, problem.loss, problem.clients(1)[0])
    with pytest.raises(ValueError, match="different fedkseed configuration"):
        b.train_client(server.configure(1, 0), ClientState.initial(problem.w0), work, 0)


def test_a_client_missing_rounds_fails_clearly(problem):
    method = FedKSeed(num_seeds=16, lr=0.05, eps=1e-3, local_steps=3)
    server = _server_after(method, problem, 2)
    msg = server.configure(3, 0)
    msg["upd_rounds"], msg["upd_counts"] = msg["upd_rounds"][:0], msg["upd_counts"][:0]
    msg["upd_idx"], msg["upd_val"] = msg["upd_idx"][:0], msg["upd_val"][:0]
    work = ClientWork(problem.params, problem.names, problem.loss, problem.clients(1)[0])
    with pytest.raises(ValueError, match="holds round 0, but the round starts from round 2"):
        method.train_client(msg, ClientState.initial(problem.w0), work, 0)


@pytest.mark.parametrize("kwargs, match", [({"num_seeds": 0}, "num_seeds"), ({"lr": -1.0}, "lr"),
                                           ({"eps": 0.0}, "eps"), ({"perturb": "x"}, "perturb"),
                                           ({"local_steps": 1.5}, "local_steps")])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FedKSeed(**kwargs)


def test_a_client_with_other_initial_weights_is_refused(problem):
    method = FedKSeed(num_seeds=16, lr=0.05, eps=1e-3, local_steps=3)
    server = method.new_server(problem.params, problem.names)
    work = ClientWork(problem.params, problem.names, problem.loss, problem.clients(1)[0])
    other = ClientState.initial([w + 1e-3 for w in problem.w0])
    with pytest.raises(ValueError, match="initial weights differ from the server's"):
        method.train_client(server.configure(1, 0), other, work, 0)
    method.train_client(server.configure(1, 0), ClientState.initial(problem.w0), work, 0)  # the same w0 is fine
