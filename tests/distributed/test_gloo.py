"""lmopt's optimizers under torch.distributed on 2 CPU processes (gloo) against one process on the whole
batch: first-order optimizers under DDP and FSDP2 (sharded DTensor parameters), zeroth-order optimizers
with one all-reduced float per query. float64 models, so the only differences are reduction orders."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from dist_workers import batches, make_model, make_optimizer, train_first_order, train_zo, worker

dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch built without gloo")

NAMES = ["lion", "lionk_l2", "adabelief", "exadam", "muon", "soap", "apollo"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(2, _free_port(), str(out), NAMES), nprocs=2, join=True)
    refused = [(out / f"refused{r}.txt").read_text() == "True" for r in range(2)]
    return torch.load(out / "results.pt"), refused


def _single_process_first_order(name):
    model = make_model()
    opt = make_optimizer(name, model)
    train_first_order(name, model, opt, rank=0, world=1)
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
@pytest.mark.parametrize("name", NAMES)
def test_first_order_matches_one_process(distributed_results, name, wrap):
    results, _ = distributed_results
    expected = _single_process_first_order(name)
    start = [p.detach() for p in make_model().parameters()]
    for got, exp, p0 in zip(results[f"{name}/{wrap}"], expected, start):
        assert float((exp - p0).abs().max()) > 1e-4  # the run moved the weights
        torch.testing.assert_close(got, exp, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["zo-sgd", "zoar"])
def test_zeroth_order_data_parallel_matches_one_process(distributed_results, name):
    from lmopt.zo import ZOSGD, ZoAR

    results, _ = distributed_results
    model = make_model()
    opt = {"zo-sgd": ZOSGD, "zoar": ZoAR}[name](model.parameters(), lr=0.05, seed=3)
    train_zo(model, opt, rank=0, world=1)
    start = [p.detach() for p in make_model().parameters()]
    for got, exp, p0 in zip(results[name], model.parameters(), start):
        assert float((exp.detach() - p0).abs().max()) > 1e-5
        torch.testing.assert_close(got, exp.detach(), rtol=1e-9, atol=1e-11)


def test_ranks_with_different_parameters_are_refused(distributed_results):
    _, refused = distributed_results
    assert refused == [True, True]


def test_batches_split_evenly():
    assert all(x.shape[0] % 2 == 0 for x, _ in batches())
