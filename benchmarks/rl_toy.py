"""GRPO toy benchmark: ReDit, MoPPS, COPO and dynamic reward weighting against their baselines.

Runs :func:`lmopt.rl.toy.run_toy` (a seeded pure-torch GRPO on a pool of short-answer prompts, see
``lmopt.rl.toy``) for every configuration of four sections on the same step budget and seeds:

* ``redit``: vanilla GRPO vs ReDit at several noise scales and schedules, plus the "batch"-scaled variant;
* ``mopps``: uniform (RepeatSampler-like) prompt order vs MoPPS Thompson sampling (two decays);
* ``copo``: GRPO vs COPO;
* ``weighting``: fixed vs gradient-based weights (per-group scaling, Adam) and fixed vs hypervolume-guided
  weights (``scale_rewards="none"``, SGD: the only setting where a common weight factor acts) on the
  two-objective toy (partial-credit correctness vs a conflicting style reward).

Reports per configuration the median and spread over seeds of final accuracy, steps to reach 90% of the
baseline's final median accuracy (partial credit in the weighting section), the fraction of zero-gradient
steps, the gradient-norm coefficient of variation, the fraction of zero-variance groups and the
hypervolume of the final (partial, style) point.

    python -m benchmarks.rl_toy [--quick] [--out DIR] [--seeds N] [--steps N]
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Any

import torch

from benchmarks._common import median_spread, parse_args, save_plot, write_result
from lmopt.rl.toy import ToyConfig, run_toy, steps_to_threshold

TWO = ("partial", "style")


def sections(quick: bool) -> dict[str, dict[str, dict[str, Any]]]:
    redit = {
        "vanilla": {},
        "redit_m0.02": {"redit_m": 0.02},
        "redit_m0.05": {"redit_m": 0.05},
        "redit_m0.2": {"redit_m": 0.2},
        "redit_m0.05_uniform": {"redit_m": 0.05, "redit_distribution": "uniform"},
        "redit_m0.05_sqrt": {"redit_m": 0.05, "redit_schedule": "sqrt"},
        "redit_m0.05_exp": {"redit_m": 0.05, "redit_schedule": "exp"},
        "redit_m0.05_step": {"redit_m": 0.05, "redit_schedule": "step"},
        "redit_cosine": {"redit_m": 0.05, "redit_schedule": "cosine"},
        "redit_m0.05_reverse_exp": {"redit_m": 0.05, "redit_schedule": "reverse_exp"},
        "vanilla_batch": {"scale_rewards": "batch"},
        "redit_m0.05_batch": {"redit_m": 0.05, "scale_rewards": "batch"},
        "redit_m0.2_batch": {"redit_m": 0.2, "scale_rewards": "batch"},
    }
    if quick:
        redit = {k: redit[k] for k in ("vanilla", "redit_m0.05", "redit_m0.05_sqrt", "redit_m0.05_batch")}
    out = {
        "redit": redit,
        "mopps": {"uniform": {}, "mopps_lam1.0": {"sampler": "mopps"},
                  "mopps_lam0.5": {"sampler": "mopps", "mopps_lam": 0.5}},
        "copo": {"grpo": {}, "copo": {"method": "copo"},
                 "copo_released": {"method": "copo", "copo_preset": "released"}},
        "weighting": {
            "fixed": {"objectives": TWO},
            "gradient": {"objectives": TWO, "weighting": "gradient", "weighting_lr": 0.05},
            "fixed_none_sgd": {"objectives": TWO, "scale_rewards": "none", "optimizer": "sgd", "lr": 1.0},
            "hypervolume_none_sgd": {"objectives": TWO, "weighting": "hypervolume", "scale_rewards": "none",
                                     "optimizer": "sgd", "lr": 1.0},
        },
    }
    if quick:
        out["mopps"].pop("mopps_lam0.5")
    return out


THRESHOLD_FRACTION = 0.9  # "steps to threshold": first step at 90% of the baseline's final median
BASELINE = {"redit": "vanilla", "mopps": "uniform", "copo": "grpo", "weighting": "fixed"}


def main(argv: list[str] | None = None) -> None:
    args = parse_args("rl_toy", __doc__.splitlines()[0], default_seeds=5, argv=argv,
                      extra=lambda p: p.add_argument("--steps", type=int, default=None,
                                                     help="GRPO steps per run (default 300, quick 80)"))
    # The toy's tensors are tiny: intra-op threads only add synchronisation (10-70x slower on a loaded
    # 2-core machine), so the benchmark runs single-threaded.
    torch.set_num_threads(1)
    n_seeds = args.seeds or (2 if args.quick else args.default_seeds)
    steps = args.steps or (80 if args.quick else 300)
    if steps < 2:
        raise SystemExit("--steps must be >= 2")
    common = {"policy": "shared", "reward": "binary", "steps": steps, "eval_every": 5, "batch_prompts": 8,
              "num_generations": 8, "lr": 0.1}
    plan = sections(args.quick)
    total = sum(len(v) for v in plan.values()) * n_seeds
    try:
        from rich.progress import Progress
    except ImportError:  # pragma: no cover - rich is a core dependency
        Progress = None  # noqa: N806
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {c: [] for c in cfgs} for s, cfgs in plan.items()}
    run_toy(ToyConfig(**{**common, "steps": 5}))  # warm-up, so that the first timed configuration is not penalised
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    # rich progress bar on a terminal, one line per configuration otherwise (CI logs)
    progress = Progress(transient=True) if Progress and sys.stderr.isatty() else None
    task = progress.add_task("rl_toy", total=total) if progress else None
    if progress:
        progress.start()
    try:
        for sec, cfgs in plan.items():
            for name, kw in cfgs.items():
                t = time.perf_counter()
                for seed in range(n_seeds):
                    runs[sec][name].append(run_toy(ToyConfig(**{**common, **kw, "seed": seed})))
                    if progress:
                        progress.advance(task)
                timing[f"{sec}/{name}"] = time.perf_counter() - t
                if not progress:
                    print(f"[rl_toy] {sec}/{name}: {n_seeds} seeds done ({time.perf_counter() - t0:.0f}s)",
                          file=sys.stderr, flush=True)
    finally:
        if progress:
            progress.stop()

    results: dict[str, Any] = {"config": {**common, "seeds": n_seeds}, "sections": {}}
    summary: dict[str, Any] = {"steps": steps, "seeds": n_seeds}
    for sec, cfgs in runs.items():
        base = cfgs[BASELINE[sec]]
        metric = "partial" if sec == "weighting" else "accuracy"
        base_final = statistics.median(r["curves"][metric][-1] for r in base)
        thr = THRESHOLD_FRACTION * base_final
        base_steps = statistics.median(
            steps_to_threshold(r["curves"]["step"], r["curves"][metric], thr) for r in base)
        table = {}
        for name, rs in cfgs.items():
            stt = [steps_to_threshold(r["curves"]["step"], r["curves"][metric], thr) for r in rs]
            row = {k: median_spread([r["summary"][k] for r in rs]) for k in
                   ("final_accuracy", "final_partial", "final_style", "zero_grad_frac", "grad_norm_cv",
                    "zero_var_group_frac", "hypervolume")}
            row["steps_to_threshold"] = median_spread(stt)
            row["seeds_reaching_threshold"] = sum(math.isfinite(s) for s in stt)
            row["steps_ratio_to_baseline"] = (statistics.median(stt) / base_steps
                                              if math.isfinite(statistics.median(stt)) and base_steps else None)
            row["time_ratio_to_baseline"] = timing[f"{sec}/{name}"] / max(timing[f"{sec}/{BASELINE[sec]}"], 1e-9)
            row["median_curve"] = {
                "step": rs[0]["curves"]["step"],
                metric: [statistics.median(r["curves"][metric][i] for r in rs)
                         for i in range(len(rs[0]["curves"]["step"]))],
            }
            if sec == "weighting":
                row["final_weights_median"] = [statistics.median(r["curves"]["weights"][-1][j] for r in rs)
                                               for j in range(2)]
            table[name] = row
        results["sections"][sec] = {"baseline": BASELINE[sec], "metric": metric, "threshold": thr,
                                    "baseline_final_median": base_final, "table": table}
        key = "hypervolume" if sec == "weighting" else "final_accuracy"
        summary[sec] = {name: round(row[key]["median"], 4) for name, row in table.items()}
    _plot(results, args.out)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args, results, summary)


def _plot(results: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = results["sections"]
    fig, axes = plt.subplots(1, len(secs), figsize=(5 * len(secs), 4))
    for ax, (sec, data) in zip(axes, secs.items()):
        metric = data["metric"]
        for name, row in data["table"].items():
            c = row["median_curve"]
            ax.plot(c["step"], c[metric], label=name, lw=2 if name == data["baseline"] else 1)
        ax.set_title(f"{sec} (median over seeds)")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(f"expected {metric}")
        ax.legend(fontsize=6)
    save_plot(fig, out, "rl_toy_curves.png")


if __name__ == "__main__":
    main()
