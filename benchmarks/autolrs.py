"""AutoLRS (arXiv 2105.10762) against constant and cosine LR schedules on the tiny Shakespeare GPT.

All three schedules train AdamW for the same number of real steps on the same batches per seed; AutoLRS
additionally spends ``search_steps`` trial steps (reported, and reported as a total-compute ratio) whose
effects are undone by restoring its snapshot. Reported: final validation loss (median and spread over seeds),
AutoLRS's chosen LR per stage, and its search overhead.

    python -m benchmarks.autolrs [--quick] [--out DIR] [--seeds N] [--steps K]
"""

from __future__ import annotations

import math
from typing import Any

import torch

from benchmarks._common import median_spread, parse_args, save_plot, write_result
from benchmarks._tinygpt import GPT, GPTConfig, evaluate, get_batch, tiny_setup


def _extra(p: Any) -> None:
    p.add_argument("--steps", type=int, default=None, help="real training steps (default 300; quick 40)")
    p.add_argument("--lr", type=float, default=3e-3, help="LR of the constant schedule and peak of the cosine")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def _adamw(model: GPT, lr: float) -> torch.optim.Optimizer:
    mats = [p for p in model.parameters() if p.ndim >= 2]
    vecs = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([dict(params=mats, weight_decay=0.1), dict(params=vecs, weight_decay=0.0)], lr=lr,
                             betas=(0.9, 0.95))


def run(schedule: str, seed: int, steps: int, lr: float, corpus: Any, cfg: GPTConfig, batch: int,
        eval_every: int, eval_batches: int, tau: int, n_trials: int) -> dict[str, Any]:
    from lmopt.optim import AutoLRS

    model = GPT(cfg, seed=seed)
    opt = _adamw(model, lr)
    gen = torch.Generator().manual_seed(10_000 + seed)

    def train_step() -> torch.Tensor:
        x, y = get_batch(corpus.train, batch, cfg.block_size, gen)
        loss = model(x, y)
        loss.backward()
        return loss

    curve: list[tuple[int, float]] = []
    lrs: list[float] = []
    sched = AutoLRS(model, opt, lr_bounds=(1e-4, 3e-2), tau=tau, n_trials=n_trials, seed=seed) \
        if schedule == "autolrs" else None
    warmup = max(1, steps // 10)
    for step in range(steps):
        if sched is not None:
            sched.step(train_step)
        else:
            if schedule == "cosine":
                f = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup)
                                                                               / max(1, steps - warmup)))
                for g in opt.param_groups:
                    g["lr"] = lr * f
            opt.zero_grad(set_to_none=True)
            train_step()
            opt.step()
        lrs.append(float(opt.param_groups[0]["lr"]))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append((step + 1, evaluate(model, corpus.val, batch, eval_batches)))
    out = dict(schedule=schedule, seed=seed, final_val=curve[-1][1], curve=curve, lrs=lrs)
    if sched is not None:
        out.update(search_steps=sched.search_steps,
                   stages=[dict(start=h["start_step"], tau=h["tau"], tau_prime=h["tau_prime"], lr=h["lr"])
                           for h in sched.history])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("autolrs", __doc__.splitlines()[0], default_seeds=3, argv=argv, extra=_extra)
    seeds, steps, corpus, cfg, batch, eval_every, eval_batches = tiny_setup(args, quick_steps=40)
    tau, n_trials = (10, 3) if args.quick else (max(10, steps // 6), 6)
    print(f"autolrs: {steps} steps, {seeds} seed(s); AutoLRS tau0={tau}, {n_trials} trials/stage")
    runs: dict[str, list[dict[str, Any]]] = {"constant": [], "cosine": [], "autolrs": []}
    for seed in range(seeds):
        for schedule in runs:
            r = run(schedule, seed, steps, args.lr, corpus, cfg, batch, eval_every, eval_batches, tau, n_trials)
            runs[schedule].append(r)
            extra = f", search steps {r['search_steps']}" if "search_steps" in r else ""
            print(f"  seed {seed} {schedule:8s}: final val {r['final_val']:.4f}{extra}", flush=True)
    table = {k: median_spread([r["final_val"] for r in v]) for k, v in runs.items()}
    search = [r["search_steps"] for r in runs["autolrs"]]
    _plot(runs, args.out)
    summary = {"steps": steps, "seeds": seeds,
               "final_val_median": {k: round(v["median"], 4) for k, v in table.items()},
               "autolrs_search_steps_median": sorted(search)[len(search) // 2],
               "autolrs_total_compute_ratio": round((steps + sorted(search)[len(search) // 2]) / steps, 2)}
    write_result(args, {"table": table, "runs": runs, "config": cfg.__dict__, "lr": args.lr, "tau0": tau,
                        "n_trials": n_trials}, summary)
    return summary


def _plot(runs: dict[str, list[dict[str, Any]]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    for name, rs in runs.items():
        xs = [s for s, _ in rs[0]["curve"]]
        med = [sorted(r["curve"][i][1] for r in rs)[len(rs) // 2] for i in range(len(xs))]
        ax[0].plot(xs, med, marker=".", label=name)
        ax[1].plot(range(1, len(rs[0]["lrs"]) + 1), rs[0]["lrs"], label=name)
    ax[0].set_xlabel("real training step")
    ax[0].set_ylabel("validation loss (median over seeds)")
    ax[0].legend()
    ax[1].set_yscale("log")
    ax[1].set_xlabel("real training step")
    ax[1].set_ylabel("learning rate (seed 0)")
    ax[1].legend()
    fig.suptitle("AutoLRS vs constant and cosine schedules (AdamW, tiny GPT)")
    save_plot(fig, out, "autolrs.png")


if __name__ == "__main__":
    main()
