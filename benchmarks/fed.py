"""Federated tuning of the embedded SmolLM2-135M on tweets sentiment: FedKSeed, FedKSeed-Pro, Ferret, FedAvg.

    python -m benchmarks.fed [--quick] [--out DIR] [--seeds N] [--clients N] [--rounds R] [--alphas A,B]

The tweets task (3 classes) is split over ``--clients`` clients with label skew: per class, the examples
are divided in Dirichlet(α) proportions (α = 0.5: skewed, α = 100: nearly iid; a draw is redone until every
client has at least 4 examples). Prompt-based classification as in ``benchmarks.zo_finetune``: the label
word with the highest next-token logit; loss = cross-entropy over the three label logits. The trained slice
is restricted (``--train``, default the top layer's attention output projection + the final norm) and the
29 frozen layers below are run once and cached, so every method trains the same tensors on the same cached
states (the cached path is checked against the full model).

Every method gets the same rounds, the same clients per round and the same local steps (``--local-steps``
micro-batches of ``--batch``): FedKSeed and FedKSeed-Pro (ZO steps, K = 4096 seeds), Ferret (SGD, K = 200
seeds, server lr 10, clip 10: the released script's settings), FedAvg of the trained slice and FedAvg of
LoRA adapters (r = 8 on the same projection) with SGD. Client learning rates are chosen per method from
×3 grids by validation loss after ``--tune-rounds`` rounds on a tuning seed that is not reported
(FedKSeed-Pro uses FedKSeed's); an optimum at a grid edge is flagged. Reported per run: test accuracy after
each round, bytes per client per round (each way, exact payload sizes), client compute seconds per
client-round (local training + catching up on missed rounds + projection), server seconds per round.
Ferret's reconstruction of a real client update is measured too (recovered fraction, relative error).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import numpy as np
import torch

from benchmarks._common import grid_choice, median_spread, parse_args, save_plot, tuning_and_report_seeds, write_result
from benchmarks.zo_finetune import LABEL_WORDS, CachedTop, cache_hidden, encode, evaluate_split, gather_rows

METHODS = ("fedkseed", "fedkseed-pro", "ferret", "fedavg", "fedavg-lora")
GRIDS = {"fedkseed": (3e-4, 1e-3, 3e-3), "ferret": (1e-3, 3e-3, 1e-2), "fedavg": (1e-2, 3e-2, 1e-1),
         "fedavg-lora": (1e-1, 3e-1, 1.0)}


def _extra(p: Any) -> None:
    p.add_argument("--clients", type=int, default=8, help="number of clients (default 8)")
    p.add_argument("--per-round", type=int, default=4, help="clients sampled per round (default 4)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per reported run (default 20, quick 2)")
    p.add_argument("--tune-rounds", type=int, default=None, help="rounds per tuning run (default 4, quick 1)")
    p.add_argument("--local-steps", type=int, default=None, help="local steps per client and round (default 20)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--alphas", default="0.5,100", help="Dirichlet concentrations of the label skew")
    p.add_argument("--per-class", type=int, default=160, help="training tweets per class before the split")
    p.add_argument("--train", default="layers.0.self_attn.o_proj.weight,norm.weight",
                   help="comma-separated trained tensors of the cached top layer")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--ferret-seeds", type=int, default=200, help="Ferret's K (released script: 200)")
    p.add_argument("--fedkseed-seeds", type=int, default=4096, help="FedKSeed's K (paper default 4096)")


def dirichlet_split(labels: np.ndarray, n_clients: int, alpha: float, seed: int, min_size: int = 4
                    ) -> list[list[int]]:
    """Per class, split its indices over the clients in Dirichlet(alpha) proportions (redrawn until every
    client has ``min_size`` examples)."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_clients))[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise RuntimeError(f"no Dirichlet({alpha}) split gives every one of {n_clients} clients {min_size} examples")


class Setup:
    """Cached states of train/validation/test, the top layer and its trained slice."""

    def __init__(self, args: Any, per_class: int, n_val: int, n_test: int) -> None:
        from lmopt.assets import load_causal_lm
        from lmopt.data import load_task

        t0 = time.perf_counter()
        model, tok = load_causal_lm()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        task = load_task("tweets")
        splits = task.split(seed=0, n_train=3 * per_class, n_val=n_val, n_test=n_test)
        label_ids = [tok.encode(w, add_special_tokens=False)[0] for w in LABEL_WORDS]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.data = {}
        for name, exs in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
            ids, labels = encode(tok, task, exs)
            self.data[name] = (cache_hidden(model, ids, 1, pad), labels)
        self.top = CachedTop(model, 1, label_ids)
        with torch.no_grad():
            ids = [tok.encode(task.template.format(instruction=task.instruction, exemplars="", input=e.input),
                              add_special_tokens=False)[-96:] for e in splits.test[:4]]
            full = torch.stack([model(input_ids=torch.tensor([x])).logits[0, -1, label_ids] for x in ids])
            chunks, lasts = self.data["test"][0]
            self.max_dev = float((full - self.top(chunks[0][:4], lasts[:4])).abs().max())
        if self.max_dev > 1e-3:
            raise RuntimeError(f"cached top-layer path deviates from the full model by {self.max_dev}")
        self.load_seconds = time.perf_counter() - t0
        named = dict(self.top.named_parameters())
        self.names = [n.strip() for n in args.train.split(",") if n.strip()]
        unknown = [n for n in self.names if n not in named]
        if unknown or not self.names:
            raise SystemExit(f"--train names no tensor of the top layer: {unknown or self.names}; "
                             f"choose from {sorted(named)}")
        self.params = [named[n] for n in self.names]
        self.initial = [p.detach().clone() for p in self.params]

    def reset(self) -> None:
        with torch.no_grad():
            for p, q in zip(self.params, self.initial):
                p.copy_(q)

    def loss_fn(self, top: torch.nn.Module):
        cache, labels = self.data["train"]

        def loss(rows: list[int]) -> torch.Tensor:
            r = torch.tensor(rows)
            h, last = gather_rows(cache[0], cache[1], r)
            return torch.nn.functional.cross_entropy(top(h, last), labels[r])

        return loss

    def evaluate(self, top: torch.nn.Module, splits: tuple[str, ...]) -> dict[str, float]:
        out = {}
        for name in splits:
            acc, loss = evaluate_split(top, self.data[name][0], self.data[name][1])
            out[name], out[f"{name}_loss"] = acc, loss
        return out


def make_method(name: str, lr: float, args: Any, seed: int) -> Any:
    from lmopt.fed import FedAvg, FedKSeed, Ferret

    steps = args.local_steps
    if name in ("fedkseed", "fedkseed-pro"):
        return FedKSeed(num_seeds=args.fedkseed_seeds, lr=lr, local_steps=steps, seed=seed,
                        importance_sampling=name == "fedkseed-pro")
    if name == "ferret":
        return Ferret(num_seeds=args.ferret_seeds, lr=lr, local_steps=steps, n_accum=1, seed=seed)
    return FedAvg(lr=lr, local_steps=steps, seed=seed)


def run_one(setup: Setup, name: str, lr: float, args: Any, alpha: float, seed: int, rounds: int,
            splits: tuple[str, ...]) -> dict[str, Any]:
    from lmopt.fed import ClientData, lora_trainables, run_federated

    setup.reset()
    labels = setup.data["train"][1].numpy()
    parts = dirichlet_split(labels, args.clients, alpha, seed)
    clients = {k: ClientData(rows, args.batch) for k, rows in enumerate(parts)}
    top, params, names = setup.top, setup.params, setup.names
    if name == "fedavg-lora":
        top = copy.deepcopy(setup.top)
        target = sorted({n.split(".")[-2] for n in setup.names if n.endswith(".weight") and "norm" not in n})
        params, names = lora_trainables(top, target, r=8, alpha=16, seed=seed)
    method = make_method(name, lr, args, seed)
    t0 = time.perf_counter()
    res = run_federated(method, params, names, setup.loss_fn(top), clients, rounds, clients_per_round=args.per_round,
                        seed=seed, evaluate=lambda: setup.evaluate(top, splits))
    wall = time.perf_counter() - t0
    cum = res.cumulative_bytes_per_client()
    curve = [{"round": 0, "cum_bytes_per_client": 0.0, **res.initial_metrics}]
    for rec, c in zip(res.rounds, cum):
        curve.append({"round": rec.round, "cum_bytes_per_client": c, **rec.metrics})
    down = [float(np.mean([r.bytes_down[c] for c in r.selected])) for r in res.rounds]
    up = [float(np.mean([r.bytes_up.get(c, 0) for c in r.selected])) for r in res.rounds]
    client_s = [s for r in res.rounds for s in r.client_seconds.values()]
    return {"method": name, "alpha": alpha, "seed": seed, "lr": lr, "curve": curve, "final": curve[-1],
            "bytes_down_per_client_round": statistics.fmean(down), "bytes_up_per_client_round": statistics.fmean(up),
            "bytes_per_client_round": statistics.fmean(d + u for d, u in zip(down, up)),
            "client_seconds_per_client_round": statistics.fmean(client_s),
            "server_seconds_per_round": statistics.fmean(r.server_seconds for r in res.rounds),
            "rejected": sum(len(r.rejected) for r in res.rounds), "dropped": sum(len(r.dropped) for r in res.rounds),
            "trained_params": int(sum(p.numel() for p in params)), "wall_seconds": wall}


def measure_reconstruction(setup: Setup, args: Any, lr: float, trials: int) -> dict[str, Any]:
    """Project one real client update (FedAvg's local SGD from w0) and reconstruct it as Ferret's server does."""
    from lmopt.fed import ClientData, ClientWork, reconstruction_error
    from lmopt.fed.local import local_sgd, sgd_factory

    setup.reset()
    labels = setup.data["train"][1].numpy()
    rows = dirichlet_split(labels, args.clients, 100.0, 0)[0]
    work = ClientWork(setup.params, setup.names, setup.loss_fn(setup.top), ClientData(rows, args.batch))
    local_sgd(work, args.local_steps, 0, sgd_factory(lr))
    deltas = [a - b.detach() for a, b in zip(setup.initial, setup.params)]
    big = max(range(len(deltas)), key=lambda i: deltas[i].numel())  # the largest group, alone in its group
    delta = deltas[big].reshape(-1)
    setup.reset()
    out = {"tensor": setup.names[big], "d": int(delta.numel()), "num_seeds": args.ferret_seeds,
           "delta_norm": float(delta.norm())}
    for label, kind, slr, clip in (("truncated, server lr 1, no clip", "truncated", 1.0, None),
                                   ("truncated, server lr 10, clip 10 (released)", "truncated", 10.0, 10.0),
                                   ("unbiased, server lr 1, no clip", "unbiased", 1.0, None)):
        out[label] = reconstruction_error(delta, args.ferret_seeds, kind, trials=trials, server_lr=slr, clip_norm=clip)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args("fed", __doc__.splitlines()[0], default_seeds=3, argv=argv, extra=_extra)
    seeds = args.seeds or (1 if args.quick else 3)
    if args.quick:
        args.clients, args.per_round = min(args.clients, 4), min(args.per_round, 2)
        args.ferret_seeds = min(args.ferret_seeds, 20)
    rounds = args.rounds or (2 if args.quick else 20)
    tune_rounds = args.tune_rounds or (1 if args.quick else 4)
    args.local_steps = args.local_steps or (3 if args.quick else 20)
    per_class, n_val, n_test = (8, 15, 30) if args.quick else (args.per_class, 60, 150)
    alphas = [float(a) for a in args.alphas.split(",")]
    if args.quick:
        alphas = alphas[:1]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {METHODS}")
    grids = {m: (g[1],) if args.quick else g for m, g in GRIDS.items()}
    setup = Setup(args, per_class, n_val, n_test)
    tuning_seed, report_seeds = tuning_and_report_seeds(seeds)
    zero_shot = setup.evaluate(setup.top, ("validation", "test"))
    results: dict[str, Any] = {
        "setup": {"model": "SmolLM2-135M-Instruct (fp32), top layer on cached states", "trained": setup.names,
                  "trained_params": int(sum(p.numel() for p in setup.params)), "clients": args.clients,
                  "per_round": args.per_round, "rounds": rounds, "tune_rounds": tune_rounds,
                  "local_steps": args.local_steps, "batch": args.batch, "alphas": alphas,
                  "n_train": int(len(setup.data["train"][1])), "n_val": n_val, "n_test": n_test,
                  "ferret_seeds": args.ferret_seeds, "fedkseed_seeds": args.fedkseed_seeds,
                  "cached_path_max_abs_dev": setup.max_dev, "cache_seconds": setup.load_seconds,
                  "tuning_seed": tuning_seed, "grids": grids},
        "zero_shot": zero_shot, "tuning": {}, "runs": [],
    }
    from rich.progress import Progress

    tuned = [m for m in methods if m != "fedkseed-pro" or "fedkseed" not in methods]
    n_tune = sum(len(grids["fedkseed" if m == "fedkseed-pro" else m]) for m in tuned)
    with Progress() as progress:
        total = n_tune + len(methods) * len(alphas) * len(report_seeds)
        bar = progress.add_task("tuning + federated runs", total=total)
        lrs: dict[str, float] = {}
        for m in tuned:
            grid_name = "fedkseed" if m == "fedkseed-pro" else m
            scores = {}
            for lr in grids[grid_name]:
                run = run_one(setup, m, lr, args, alphas[0], tuning_seed, tune_rounds, ("validation",))
                loss = run["final"]["validation_loss"]
                scores[lr] = loss if loss == loss else float("inf")  # a diverged (nan) run loses
                progress.advance(bar)
            choice = grid_choice(scores)
            lrs[m] = choice["best"]
            results["tuning"][m] = {"validation_loss": scores, **choice}
        if "fedkseed-pro" in methods and "fedkseed" in methods:
            lrs["fedkseed-pro"] = lrs["fedkseed"]
        results["setup"]["lr"] = lrs
        for alpha in alphas:
            for seed in report_seeds:
                for m in methods:
                    results["runs"].append(run_one(setup, m, lrs[m], args, alpha, seed, rounds, ("test",)))
                    progress.advance(bar)
    if "ferret" in methods:
        fedavg_lr = lrs.get("fedavg", lrs["ferret"])
        results["reconstruction"] = measure_reconstruction(setup, args, fedavg_lr, trials=1 if args.quick else 3)
    table: dict[str, Any] = {}
    for alpha in alphas:
        for m in methods:
            runs = [r for r in results["runs"] if r["method"] == m and r["alpha"] == alpha]
            table[f"{m}@{alpha:g}"] = {
                "test_acc": median_spread([r["final"]["test"] for r in runs]),
                "test_loss": median_spread([r["final"]["test_loss"] for r in runs]),
                "bytes_per_client_round": median_spread([r["bytes_per_client_round"] for r in runs]),
                "bytes_up_per_client_round": median_spread([r["bytes_up_per_client_round"] for r in runs]),
                "client_seconds": median_spread([r["client_seconds_per_client_round"] for r in runs]),
                "server_seconds": median_spread([r["server_seconds_per_round"] for r in runs]),
                "rounds_to_best": median_spread([max(r["curve"], key=lambda c: c["test"])["round"] for r in runs]),
            }
    results["table"] = table
    _plot(results, args.out, methods, alphas)
    summary = {"zero_shot_test": zero_shot["test"], "seeds": seeds, "rounds": rounds, "lr": lrs,
               "lr_at_grid_edge": {m: t["edge"] for m, t in results["tuning"].items() if t["edge"]},
               **{f"{k}_test": v["test_acc"]["median"] for k, v in table.items()},
               **{f"{k}_bytes": v["bytes_per_client_round"]["median"] for k, v in table.items()}}
    write_result(args, results, summary)


def _plot(results: dict[str, Any], out: str, methods: list[str], alphas: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 3.6), squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(METHODS)}
    for ax, alpha in zip(axes[0], alphas):
        for m in methods:
            for i, r in enumerate(r for r in results["runs"] if r["method"] == m and r["alpha"] == alpha):
                xs = [max(c["cum_bytes_per_client"], 1.0) for c in r["curve"]]
                ax.plot(xs, [c["test"] for c in r["curve"]], color=colors[m], alpha=0.8, marker=".",
                        label=m if i == 0 else None)
        ax.axhline(results["zero_shot"]["test"], color="k", ls="--", lw=1, label="zero-shot")
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_xlabel("cumulative bytes per client (both ways)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"Dirichlet alpha = {alpha:g}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_plot(fig, out, "fed.png")


if __name__ == "__main__":
    main()
