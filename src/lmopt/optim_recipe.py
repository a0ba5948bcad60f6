"""``kind: optim`` recipes for ``lmopt run``: optimizers compared on the tiny Shakespeare GPT.

Every optimizer trains the same model (same initial weights and batches for a given seed) for the same
number of steps with warm-up and cosine decay; the held-out validation loss (two plays never trained on)
is compared at the end, over several seeds, against a baseline optimizer.

.. code-block:: yaml

    name: optimizers-tiny-gpt
    kind: optim
    seeds: [0, 1, 2]
    steps: 300
    optimizers:                       # names from lmopt.tinygpt.optimizers(); the first is the baseline
      - {name: AdamW, lr: 3.0e-3}
      - {name: Muon, lr: 0.05}
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ._io import read_json, write_json_atomic, write_text_atomic
from ._report import save_figure
from .recipe import RecipeError, _pretty, _Strict, unique


class OptimizerSpec(_Strict):
    name: str
    lr: float = Field(gt=0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .tinygpt import optimizers

        if v not in optimizers():
            raise ValueError(f"unknown optimizer {v!r}; choose one of {sorted(optimizers())}")
        return v


class TinyGPTSpec(_Strict):
    n_layer: int = Field(2, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(64, ge=8)
    block_size: int = Field(32, ge=2)


class OptimRecipe(_Strict):
    name: str
    kind: Literal["optim"]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    steps: int = Field(300, ge=10)
    batch: int = Field(16, ge=1)
    model: TinyGPTSpec = Field(default_factory=TinyGPTSpec)
    max_train_chars: int = Field(1_000_000, ge=10_000)
    eval_every: int | None = Field(None, ge=1)
    eval_batches: int = Field(8, ge=1)
    threads: int = Field(1, ge=1)
    optimizers: list[OptimizerSpec] = Field(min_length=2)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        return unique(v, v, "seeds must be distinct")

    @field_validator("optimizers")
    @classmethod
    def _unique_names(cls, v: list[OptimizerSpec]) -> list[OptimizerSpec]:
        return unique(v, [o.name for o in v], "optimizer names must be unique")


def validate_optim_recipe(cfg: dict[str, Any], source: str = "recipe") -> OptimRecipe:
    try:
        r = OptimRecipe.model_validate(cfg)
    except ValidationError as exc:
        raise RecipeError(f"{source} is invalid:\n{_pretty(exc)}") from None
    if r.model.n_embd % r.model.n_head:
        raise RecipeError(f"{source} is invalid:\n  - model: n_embd {r.model.n_embd} must be a multiple of "
                          f"n_head {r.model.n_head}")
    return r


def compare_losses(baseline: list[float], candidate: list[float]) -> dict[str, Any]:
    """Per-seed losses of a candidate against the baseline's on the same seeds (lower is better).

    ``beyond_seed_spread``: the candidate's worst seed is better than the baseline's best seed, a win
    larger than the variation over seeds.
    """
    diffs = [b - c for b, c in zip(baseline, candidate)]  # > 0: lower loss than the baseline
    return {"paired_improvement": diffs, "wins": sum(d > 0 for d in diffs), "seeds": len(diffs),
            "beyond_seed_spread": max(candidate) < min(baseline)}


def run_optim_recipe(cfg: dict[str, Any], run_dir: Path, progress: Any = None) -> dict[str, Any]:
    """Train every (optimizer, seed) pair; each finished run is checkpointed, so a rerun resumes."""
    import torch

    from .tinygpt import GPT, GPTConfig, load_shakespeare, optimizers, train_run

    r = validate_optim_recipe(cfg)
    corpus = load_shakespeare(max_train_chars=r.max_train_chars)
    gcfg = GPTConfig(vocab_size=len(corpus.vocab), **r.model.model_dump())
    eval_every = r.eval_every or max(5, r.steps // 10)
    factories = optimizers()
    ckpt = run_dir / "checkpoint.json"
    done: dict[str, Any] = read_json(ckpt, {}).get("runs", {})
    total = len(r.optimizers) * len(r.seeds)
    bar = progress.add_task("training", total=total) if progress is not None else None
    threads = torch.get_num_threads()
    torch.set_num_threads(r.threads)  # the model is tiny: more threads only spin
    try:
        for spec in r.optimizers:
            for seed in r.seeds:
                key = f"{spec.name}/{seed}"
                if progress is not None:
                    progress.update(bar, description=f"{spec.name} seed {seed}")
                if key not in done:
                    run = train_run(factories[spec.name][1], spec.lr, seed, r.steps, corpus, gcfg, r.batch,
                                    eval_every, r.eval_batches)
                    done[key] = {k: run[k] for k in ("final_val", "curve", "diverged", "seconds") if k in run}
                    write_json_atomic(ckpt, {"runs": done})
                if progress is not None:
                    progress.advance(bar)
    finally:
        torch.set_num_threads(threads)
    rows = []
    for spec in r.optimizers:
        runs = [done[f"{spec.name}/{s}"] for s in r.seeds]
        finals = [x["final_val"] for x in runs]
        rows.append({"optimizer": spec.name, "lr": spec.lr, "final_val": finals,
                     "median": statistics.median(finals), "min": min(finals), "max": max(finals),
                     "curves": [x["curve"] for x in runs]})
    for row in rows[1:]:
        row["vs_baseline"] = compare_losses(rows[0]["final_val"], row["final_val"])
    n_params = sum(p.numel() for p in GPT(gcfg).parameters())
    results = {"kind": "optim", "name": r.name, "baseline": rows[0]["optimizer"], "rows": rows, "seeds": r.seeds,
               "steps": r.steps, "batch": r.batch, "model": {**gcfg.__dict__, "params": n_params},
               "train_chars": int(len(corpus.train)), "val_chars": int(len(corpus.val))}
    write_optim_report(cfg, results, run_dir)
    return results


def plot_optim_results(results: dict[str, Any], run_dir: Path) -> list[Path]:
    """``loss_curves.png``: validation loss per step (median over seeds, min–max band) per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in results["rows"]:
        steps = [s for s, _ in row["curves"][0]]
        vals = [[c[i][1] for c in row["curves"]] for i in range(len(steps))]
        med = [statistics.median(v) for v in vals]
        line, = ax.plot(steps, med, marker=".", label=f"{row['optimizer']} (lr {row['lr']:g})")
        ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out validation loss (nats/char)")
    ax.set_title(f"tiny GPT ({results['model']['params'] / 1e3:.0f}k params) on Shakespeare; "
                 f"median and range over {len(results['seeds'])} seeds", fontsize=9)
    ax.legend(fontsize=8)
    return [save_figure(fig, Path(run_dir) / "loss_curves.png")]


def write_optim_report(cfg: dict[str, Any], results: dict[str, Any], run_dir: Path) -> None:
    rows, base = results["rows"], results["rows"][0]
    lines = [f"# {cfg['name']}", "",
             f"Tiny GPT ({results['model']['params']:,} parameters, {results['model']['n_layer']} layers, "
             f"d={results['model']['n_embd']}) trained on {results['train_chars']:,} characters of Shakespeare for "
             f"{results['steps']} steps (batch {results['batch']}×{results['model']['block_size']}, warm-up + cosine "
             f"decay), seeds {results['seeds']}; validation loss on {results['val_chars']:,} characters of two "
             "plays never trained on. Same initial weights and batches for every optimizer of a seed.", "",
             "| optimizer | peak LR | final val loss, median (min–max) | wins vs baseline | beyond seed spread |",
             "|---|---|---|---|---|"]
    for row in rows:
        vs = row.get("vs_baseline")
        win = f"{vs['wins']}/{vs['seeds']}" if vs else "baseline"
        beyond = ("yes" if vs["beyond_seed_spread"] else "no") if vs else ""
        lines.append(f"| {row['optimizer']} | {row['lr']:g} | {row['median']:.4f} ({row['min']:.4f}–{row['max']:.4f}) "
                     f"| {win} | {beyond} |")
    lines += [""]
    for row in rows[1:]:
        vs = row["vs_baseline"]
        verdict = ("beats" if vs["beyond_seed_spread"] else
                   "is better on average than" if row["median"] < base["median"] else "does not beat")
        lines.append(f"- {row['optimizer']} {verdict} {base['optimizer']}: median validation loss "
                     f"{row['median']:.4f} vs {base['median']:.4f} (paired per-seed improvement "
                     f"{', '.join(f'{d:+.4f}' for d in vs['paired_improvement'])})"
                     + ("; its worst seed is better than the baseline's best." if vs["beyond_seed_spread"] else "."))
    lines += ["", "![loss curves](loss_curves.png)", ""]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))
