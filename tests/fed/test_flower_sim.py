"""One real Flower simulation (Ray on 127.0.0.1) against the in-process loop, and imports without Flower."""

import subprocess
import sys

import pytest
import torch

from lmopt.fed import ClientData, ClientWork, FedKSeed, run_federated

from .conftest import Problem

DATA = {0: list(range(0, 40)), 1: list(range(40, 80))}


def _setup(context):
    problem = Problem()
    part = int(context.node_config["partition-id"])
    work = ClientWork(problem.params, problem.names, problem.loss, ClientData(DATA[part], 4))
    return work, problem.w0


def test_a_flower_simulation_gives_the_in_process_result():
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    from lmopt.fed.flower import client_app, run_simulation, server_app

    method = FedKSeed(num_seeds=64, lr=1e-2, eps=1e-3, local_steps=10)
    problem = Problem()
    local = run_federated(method, problem.params, problem.names, problem.loss,
                          {i: ClientData(d, 4) for i, d in DATA.items()}, 2)
    out = {}
    server = server_app(method, Problem().w0, problem.names, 2, min_nodes=2, on_finish=lambda s: out.update(s=s))
    run_simulation(server, client_app(method, _setup), 2)
    strategy = out["s"]
    assert all(torch.equal(a, b) for a, b in zip(strategy.server.params, local.params))
    assert len(strategy.records) == 2 and all(len(r.accepted) == 2 for r in strategy.records)
    # the same payload sizes as the in-process loop (nodes are sorted like the partitions they hold)
    for sim, loc in zip(strategy.records, local.rounds):
        assert sorted(sim.bytes_up.values()) == sorted(loc.bytes_up.values())
        assert sorted(sim.bytes_down.values()) == sorted(loc.bytes_down.values())


def test_the_maths_imports_without_flower():
    code = (
        "import sys; sys.modules['flwr'] = None\n"
        "import lmopt.fed as f\n"
        "import lmopt.fed.flower as fl\n"
        "try:\n"
        "    fl.client_app(f.FedKSeed(), None)\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "IMPORT-ERROR" in out and "'fed'" in out
