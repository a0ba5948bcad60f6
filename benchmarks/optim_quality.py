"""Optimizer quality on a tiny char-level GPT (Shakespeare), following "Fantastic Pretraining Optimizers"
(arXiv 2509.02046): every optimizer gets its own LR sweep, a fixed step budget with warm-up + cosine decay,
and is compared at the end of training (final validation loss, median over seeds) and by the number of steps
it needs to reach AdamW's final validation loss.

Protocol: for each optimizer, sweep its LR grid on a tuning seed that is not reported; the LR with the
lowest final validation loss is then run on the reported seeds (an optimum at the grid's edge is flagged).
Every run sees the same batches for a given seed.

    python -m benchmarks.optim_quality [--quick] [--out DIR] [--seeds N] [--steps K]
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from benchmarks._common import grid_choice, median_spread, parse_args, save_plot, tuning_and_report_seeds, write_result
from benchmarks._tinygpt import GPT, tiny_setup
from lmopt.tinygpt import optimizers, train_run


def _extra(p: Any) -> None:
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; quick 20)")
    p.add_argument("--only", default=None, help="comma-separated optimizer names to run (default: all)")
    p.add_argument("--size", default="1m", choices=["1m", "small"],
                   help="model: 4 layers x 144 (1.02M parameters, default) or 2 x 64 (106k); --quick uses small")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the model is tiny and the CPU shared; more threads only spin)")


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    for step, val in curve:
        if val <= target:
            return step
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("optim_quality", __doc__.splitlines()[0], default_seeds=3, argv=argv, extra=_extra)
    seeds, steps, corpus, cfg, batch, eval_every, eval_batches = tiny_setup(args, quick_steps=20, size=args.size)
    opts = optimizers()
    tune_seed, report_seeds = tuning_and_report_seeds(seeds)
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        unknown = [k for k in keep if k not in opts]
        if unknown:
            raise SystemExit(f"--only: unknown optimizer(s) {unknown}; choose from {list(opts)}")
        opts = {k: v for k, v in opts.items() if k in keep}
    n_params = sum(p.numel() for p in GPT(cfg).parameters())
    print(f"optim_quality: GPT {n_params / 1e3:.0f}k params, {steps} steps x batch {batch}x{cfg.block_size}, "
          f"{seeds} seed(s), {len(opts)} optimizers")
    results: dict[str, Any] = {}
    for name, (grid, make) in opts.items():
        if args.quick:
            grid = [grid[len(grid) // 2]]
        sweep = []
        for lr in grid:  # tuned on a seed that is not reported
            r = train_run(make, lr, tune_seed, steps, corpus, cfg, batch, eval_every, eval_batches)
            sweep.append(r)
            print(f"  {name:12s} lr={lr:<8g} tuning seed {tune_seed}: final val {r['final_val']:.4f}", flush=True)
        choice = grid_choice({r["lr"]: r["final_val"] for r in sweep})
        runs = []
        for seed in report_seeds:
            r = train_run(make, choice["best"], seed, steps, corpus, cfg, batch, eval_every, eval_batches)
            runs.append(r)
            print(f"  {name:12s} lr={choice['best']:<8g} seed {seed}: final val {r['final_val']:.4f}", flush=True)
        results[name] = dict(best_lr=choice["best"], sweep=[dict(lr=r["lr"], final_val=r["final_val"]) for r in sweep],
                             runs=runs, final_val=median_spread([r["final_val"] for r in runs]),
                             lr_at_grid_edge=choice["at_edge"], grid_edge=choice["edge"], tuning_seed=tune_seed)
    table = []
    if "AdamW" in results:
        target = results["AdamW"]["final_val"]["median"]
        for res in results.values():
            reach = [steps_to_reach(r["curve"], target) for r in res["runs"]]
            # a run that never reaches the target counts as "more than the budget" in the median
            med = statistics.median([s if s is not None else math.inf for s in reach])
            res["steps_to_adamw_final"] = reach
            res["steps_to_adamw_final_median"] = med if math.isfinite(med) else None
            res["speedup_vs_adamw"] = steps / med if math.isfinite(med) else None
    for name, res in results.items():
        table.append(dict(optimizer=name, best_lr=res["best_lr"], final_val_median=res["final_val"]["median"],
                          final_val_min=res["final_val"]["min"], final_val_max=res["final_val"]["max"],
                          steps_to_adamw_final=res.get("steps_to_adamw_final_median"),
                          lr_at_grid_edge=res["lr_at_grid_edge"]))
    _plot(results, args.out, steps)
    summary = {"steps": steps, "seeds": seeds, "params": n_params,
               "final_val": {t["optimizer"]: round(t["final_val_median"], 4) for t in table},
               "steps_to_adamw_final": {t["optimizer"]: t["steps_to_adamw_final"] for t in table}}
    write_result(args, {"table": table, "runs": results, "config": cfg.__dict__, "batch": batch,
                        "eval_every": eval_every, "eval_batches": eval_batches}, summary)
    return summary


def _plot(results: dict[str, Any], out: str, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, res in results.items():
        runs = [r for r in res["runs"] if r["curve"]]
        if not runs:
            continue
        xs = [s for s, _ in runs[0]["curve"]]
        med = [statistics.median(r["curve"][i][1] for r in runs if len(r["curve"]) > i) for i in range(len(xs))]
        ax[0].plot(xs, med, marker=".", label=f"{name} (lr {res['best_lr']:g})")
        ax[1].plot([s["lr"] for s in res["sweep"]], [s["final_val"] for s in res["sweep"]], marker="o", label=name)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("validation loss (median over seeds)")
    ax[0].set_title(f"Tiny GPT on Shakespeare, {steps} steps, cosine decay")
    ax[0].legend(fontsize=8)
    ax[1].set_xscale("log")
    ax[1].set_xlabel("peak learning rate")
    ax[1].set_ylabel("final validation loss (tuning seed)")
    ax[1].set_title("LR sweep")
    save_plot(fig, out, "optim_quality.png")


if __name__ == "__main__":
    main()
