"""Shared plumbing of the benchmark contract (docs/benchmarks.md, "How the benchmarks are run").

Every benchmark module is run as ``python -m benchmarks.NAME [--quick] [--out DIR] [--seeds N]``; it writes
``DIR/NAME.json`` (all numbers, the machine, package versions, the command) plus PNG plots, and prints a
one-line JSON summary as the last line of stdout. This module holds the parts they all share.

Protocol: one benchmark at a time with nothing else heavy running. Every JSON records the load average
before and after the run and the torch thread count, so a noisy measurement shows; :func:`grid_choice`
flags a tuned hyper-parameter whose best value sits at the edge of its grid; :func:`tuning_and_report_seeds`
keeps the seed used to choose hyper-parameters out of the reported seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

_VERSIONED = ("torch", "numpy", "transformers", "trl", "lmopt", "pytorch_optimizer", "sentence-transformers")


def parse_args(name: str, description: str, default_seeds: int = 3, argv: Sequence[str] | None = None,
               extra: Any = None) -> argparse.Namespace:
    """Parse the contract's flags; ``extra(parser)`` may add benchmark-specific ones."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="reduced run (< 1 minute on 2 CPU cores); what CI runs")
    p.add_argument("--out", default="runs/benchmarks", help="directory for NAME.json and plots")
    p.add_argument("--seeds", type=int, default=None, help=f"number of seeds (default {default_seeds}, quick: fewer)")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be >= 1")
    args.name = name
    args.default_seeds = default_seeds
    args.load_before = load_average()
    return args


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


TUNING_SEED = 1000


def tuning_and_report_seeds(n: int) -> tuple[int, list[int]]:
    """The seed that chooses hyper-parameters and the ``n`` seeds that are reported (disjoint sets)."""
    return TUNING_SEED, list(range(n))


def grid_choice(scores: dict[Any, float], *, lower_is_better: bool = True) -> dict[str, Any]:
    """The best grid value and whether it sits at an edge of the (sorted) grid.

    An edge optimum means the grid may not contain the true optimum: the benchmark output flags it.
    """
    if not scores:
        raise ValueError("grid_choice needs at least one (value, score) pair")
    grid = sorted(scores)
    best = (min if lower_is_better else max)(grid, key=lambda v: scores[v])
    at_edge = len(grid) > 1 and best in (grid[0], grid[-1])
    return {"best": best, "grid": grid, "at_edge": at_edge,
            "edge": ("low" if best == grid[0] else "high") if at_edge else None}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    versions = {}
    for pkg in _VERSIONED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    info["versions"] = versions
    return info


def median_spread(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max, IQR-free for small n) of per-seed values."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("median_spread needs at least one value")
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def t_975(df: int) -> float:
    """The two-sided 95% Student-t quantile for ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_difference(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean of per-seed paired differences, the half-width ``ci95`` of its 95% t-interval (None for one seed)
    and ``beyond_noise``: whether the interval excludes 0."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n, "beyond_noise": None}
    half = t_975(n - 1) * statistics.stdev(diffs) / n ** 0.5
    return {"mean": mean, "ci95": half, "n": n, "beyond_noise": abs(mean) > half > 0}


def write_result(args: argparse.Namespace, results: dict[str, Any], summary: dict[str, Any]) -> Path:
    """Write ``OUT/NAME.json`` atomically and print the one-line JSON summary (last stdout line)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": args.name,
        "command": " ".join([sys.executable.split("/")[-1], "-m", f"benchmarks.{args.name}", *sys.argv[1:]]),
        "quick": bool(args.quick),
        "machine": machine_info(),
        "load_average": {"before": getattr(args, "load_before", None), "after": load_average()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
        "summary": summary,
    }
    path = out / f"{args.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, path)
    print(json.dumps({"benchmark": args.name, **summary}, default=float), flush=True)
    return path


def save_plot(fig: Any, out: str | Path, filename: str) -> Path:
    """Save a matplotlib figure as PNG under ``out`` (its data beside it as ``.plot.json``) and close it."""
    from lmopt._report import save_figure

    return save_figure(fig, Path(out) / filename)
