import logging

import numpy as np
import pytest
import torch

from lmopt.fed import ClientData, ClientState, ClientWork, FedAvg, decode, encode, lora_trainables, run_federated


def test_the_global_model_is_the_example_weighted_mean(problem):
    method = FedAvg(lr=0.1, local_steps=3)
    clients = {0: ClientData(list(range(0, 10)), 2), 1: ClientData(list(range(10, 40)), 2)}
    server = method.new_server(problem.params, problem.names)
    replies, trained = {}, {}
    for cid, data in clients.items():
        work = ClientWork(problem.params, problem.names, problem.loss, data)
        replies[cid], _ = method.train_client(decode(encode(server.configure(1, cid))), ClientState([]), work, cid)
        trained[cid] = [p.clone() for p in problem.params]
    server.aggregate(1, replies)
    for i, p in enumerate(server.params):
        expected = 0.25 * trained[0][i].double() + 0.75 * trained[1][i].double()
        torch.testing.assert_close(p, expected.float(), rtol=0, atol=1e-7)
    equal_method = FedAvg(lr=0.1, local_steps=3, equal_weight=True)
    equal = equal_method.new_server(problem.w0, problem.names)
    outcome = equal.aggregate(1, {c: {**r, "fingerprint": equal_method.fingerprint()} for c, r in replies.items()})
    assert outcome.accepted == [0, 1]
    torch.testing.assert_close(equal.params[0], (0.5 * trained[0][0] + 0.5 * trained[1][0]), rtol=0, atol=1e-7)


def test_bytes_are_the_tensors_both_ways(problem):
    res = run_federated(FedAvg(lr=0.1, local_steps=2), problem.params, problem.names, problem.loss,
                        problem.clients(2), 2)
    n = sum(p.numel() for p in problem.params)
    for rec in res.rounds:
        for c in rec.selected:
            assert 4 * n < rec.bytes_down[c] < 4 * n + 200 and 4 * n < rec.bytes_up[c] < 4 * n + 200


def test_non_finite_weights_are_rejected(problem, caplog):
    def transport(r, cid, data):
        if cid == 1:
            msg = decode(data)
            msg["w0"] = np.full_like(msg["w0"], np.inf)
            return encode(msg)
        return data

    with caplog.at_level(logging.WARNING, logger="lmopt.fed"):
        res = run_federated(FedAvg(lr=0.1, local_steps=2), problem.params, problem.names, problem.loss,
                            problem.clients(2), 1, transport=transport)
    assert res.rounds[0].accepted == [0] and "not finite" in res.rounds[0].rejected[1]
    assert all(torch.isfinite(p).all() for p in res.params)


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Linear(6, 8)
        self.down = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_fedavg_of_lora_adapters_trains_only_the_adapters(problem):
    model = TwoLayer()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    params, names = lora_trainables(model, ["up", "down"], r=2, alpha=4)
    assert names and all("lora_" in n for n in names) and len(params) == 4

    def loss(rows):
        r = torch.tensor(rows)
        return torch.nn.functional.cross_entropy(model(problem.X[r]), problem.y[r])

    res = run_federated(FedAvg(lr=0.2, local_steps=5), params, names, loss, problem.clients(2), 3)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n.replace(".base_layer", "")]), n
    n_adapter = sum(p.numel() for p in params)
    assert res.rounds[0].bytes_up[0] < 4 * n_adapter + 300
    assert any(float(p.abs().max()) > 0 for n, p in zip(names, res.params) if "lora_B" in n)  # B moved off 0


def test_lora_needs_existing_targets():
    with pytest.raises(ValueError, match="no module of the model is named"):
        lora_trainables(TwoLayer(), ["q_proj"])
