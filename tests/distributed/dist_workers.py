"""Worker processes for the torch.distributed tests (2 CPU ranks, gloo): each trains on its half of every
batch and rank 0 saves the final whole parameters for the parent test to compare with one process."""

from __future__ import annotations

import os

import torch

STEPS = 6
BATCH = 8


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 8, generator=gen, dtype=torch.float64),
             torch.randn(BATCH, 4, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    import lmopt.optim as lo

    mats = [p for p in model.parameters() if p.ndim == 2]
    vecs = [p for p in model.parameters() if p.ndim == 1]
    if name == "muon":
        return lo.Muon([dict(params=mats), dict(params=vecs, use_muon=False)], lr=0.05, ns_dtype=torch.float64)
    if name == "apollo":
        return lo.APOLLO([dict(params=mats, rank=2, update_proj_gap=3), dict(params=vecs, apollo=False)], lr=0.05)
    if name == "soap":
        return lo.SOAP(model.parameters(), lr=0.01, precondition_frequency=2)
    if name == "lionk_l2":
        return lo.LionK(model.parameters(), lr=0.01, kernel="l2", weight_decay=0.1)
    cls = {"lion": lo.Lion, "adabelief": lo.AdaBelief, "exadam": lo.EXAdam}[name]
    return cls(model.parameters(), lr=0.01)


def train_first_order(name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, world: int
                      ) -> None:
    half = BATCH // world
    for x, y in batches():
        xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs), ys).backward()
        opt.step()


def train_zo(model: torch.nn.Module, opt, rank: int, world: int) -> None:
    half = BATCH // world
    for x, y in batches():
        xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        opt.step(lambda xs=xs, ys=ys: torch.nn.functional.mse_loss(model(xs), ys))


def worker(rank: int, world: int, port: int, out_dir: str, names: list[str]) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from lmopt.zo import ZOSGD, ZoAR

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    results: dict[str, list[torch.Tensor]] = {}
    for name in names:
        for wrap in ("ddp", "fsdp2"):
            model = make_model()
            if wrap == "fsdp2":
                for layer in (model[0], model[2]):
                    fully_shard(layer, mesh=mesh)
                fully_shard(model, mesh=mesh)
                net = model
            else:
                net = DistributedDataParallel(model)
            opt = make_optimizer(name, model)
            train_first_order(name, net, opt, rank, world)
            results[f"{name}/{wrap}"] = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone()
                                         for p in model.parameters()]
    for name, cls in (("zo-sgd", ZOSGD), ("zoar", ZoAR)):
        model = make_model()
        opt = cls(model.parameters(), lr=0.05, seed=3).distribute()
        train_zo(model, opt, rank, world)
        results[name] = [p.detach().clone() for p in model.parameters()]
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    # the parameter check: rank 1 with different weights must be refused on both ranks
    model = make_model()
    if rank == 1:
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
    opt = ZOSGD(model.parameters(), lr=0.05).distribute()
    try:
        opt.step(lambda: model(torch.zeros(1, 8, dtype=torch.float64)).sum())
        refused = False
    except RuntimeError as exc:
        refused = "identical parameters" in str(exc)
    with open(os.path.join(out_dir, f"refused{rank}.txt"), "w") as fh:
        fh.write(str(refused))
    dist.destroy_process_group()
