"""``lmopt run``: execute a recipe into ``runs/<id>/`` with progress, checkpoints and a report.

Every run directory holds ``recipe.yaml`` (what was run), ``checkpoint.json`` (progress, for resuming),
``results.json``, ``report.md`` and PNG plots, each with its data as ``NAME.plot.json`` (axes, lines, bars).
Running the same recipe again resumes an interrupted run (finished steps are not redone; with the call
cache, repeated LM calls are free).
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ._io import read_json, write_json_atomic, write_text_atomic
from ._report import chance_level, label_bars, noise_level, save_figure
from .recipe import RecipeError, load_recipe, recipe_id, validate_evaluate

# kind -> (module, run function, plot function, validator); runners take (cfg, run_dir, progress) -> results
# dict; validators take the cfg and raise RecipeError before anything is written or loaded.
KINDS: dict[str, tuple[str, str, str | None, str]] = {
    "evaluate": ("lmopt.runner", "run_evaluate", "plot_evaluate", "lmopt.recipe:validate_evaluate"),
    "prompt": ("lmopt.prompt.recipe", "run_prompt_recipe", "plot_prompt_results",
               "lmopt.prompt.recipe:validate_prompt_recipe"),
    "prompt_compare": ("lmopt.prompt.recipe", "run_prompt_compare", "plot_prompt_compare",
                       "lmopt.prompt.recipe:validate_prompt_compare"),
    "optim": ("lmopt.optim_recipe", "run_optim_recipe", "plot_optim_results",
              "lmopt.optim_recipe:validate_optim_recipe"),
    "finetune_paft": ("lmopt.finetune.recipe", "run_paft_recipe", "plot_paft_results",
                      "lmopt.finetune.recipe:validate_paft_recipe"),
    "finetune_flexora": ("lmopt.finetune.recipe", "run_flexora_recipe", "plot_flexora_results",
                         "lmopt.finetune.recipe:validate_flexora_recipe"),
}


def validate_recipe(cfg: dict[str, Any]) -> Any:
    """The validated recipe of ``cfg``'s kind; raises :class:`RecipeError` naming each field to fix."""
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise RecipeError(f"recipe kind {kind!r} is not known; choose one of {sorted(KINDS)}")
    module, fn = KINDS[kind][3].split(":")
    return getattr(importlib.import_module(module), fn)(cfg)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def run_recipe(recipe: str | Path | dict[str, Any], out_dir: str | Path = "runs", *, run_id: str | None = None,
               console: Console | None = None) -> Path:
    """Run (or resume) a recipe; returns the run directory."""
    console = console or Console(stderr=True, soft_wrap=True)
    cfg = load_recipe(recipe) if not isinstance(recipe, dict) else dict(recipe)
    validate_recipe(cfg)  # before the run directory exists: an invalid recipe leaves nothing behind
    kind = cfg["kind"]
    run_dir = Path(out_dir) / (run_id or recipe_id(cfg))
    saved = run_dir / "recipe.yaml"
    if saved.exists() and yaml.safe_load(saved.read_text()) != cfg:
        raise RecipeError(f"{run_dir} holds a run of a different recipe; choose another --id or out dir")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, yaml.safe_dump(cfg, sort_keys=False))
    module, fn_name, plot_name, _ = KINDS[kind]
    mod = importlib.import_module(module)
    run_fn: Callable[..., dict[str, Any]] = getattr(mod, fn_name)
    console.print(f"[bold]lmopt run[/] {cfg['name']} ({kind}) → {run_dir}")
    t0 = time.perf_counter()
    try:
        with _progress(console) as progress:
            results = run_fn(cfg, run_dir, progress)
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] == ["recipe.yaml"]:
            shutil.rmtree(run_dir)  # nothing done yet: no stale directory that blocks a corrected recipe
        raise
    results.setdefault("wall_time_s", round(time.perf_counter() - t0, 2))
    plots = [str(p.name) for p in getattr(mod, plot_name)(results, run_dir)] if plot_name else []
    results["plots"] = plots
    write_json_atomic(run_dir / "results.json", results)
    if kind == "evaluate":  # other kinds write their own report.md
        write_text_atomic(run_dir / "report.md", _report(cfg, results, plots))
    console.print(f"[green]done[/] in {time.perf_counter() - t0:.1f}s: {run_dir / 'report.md'}")
    return run_dir


# -- kind: evaluate ---------------------------------------------------------------------------------------
def run_evaluate(cfg: dict[str, Any], run_dir: Path, progress: Progress) -> dict[str, Any]:
    """Evaluate the model on a task under each prompt of the recipe; resumable per prompt."""
    from .data import load_task
    from .lm.factory import make_lm
    from .prompt.evaluator import Prompt, evaluate_prompt

    r = validate_evaluate(cfg)
    task = load_task(r.task.name, **r.task.kwargs)
    sp = r.task.split
    splits = task.split(sp.seed, sp.n_train, sp.n_val, sp.n_test)
    ckpt_path = run_dir / "checkpoint.json"
    saved = read_json(ckpt_path, {})
    done: dict[str, Any] = saved.get("prompts", {})
    bar = progress.add_task("loading model", total=len(r.prompts))
    lm = make_lm(r.model.model_dump(), cache=r.cache, budget=r.budget or None)
    lm.meter.load_state_dict(saved.get("usage", {}))  # a resumed run continues the budget already spent
    import random

    rng = random.Random(r.seed)
    rows = []
    for ps in r.prompts:
        progress.update(bar, description=f"prompt {ps.name}")
        if ps.n_exemplars > len(splits.train):
            raise RecipeError(f"prompt {ps.name!r} wants {ps.n_exemplars} exemplars but the train split has "
                              f"{len(splits.train)}; raise task.split.n_train")
        exemplars = tuple(rng.sample(splits.train, ps.n_exemplars)) if ps.n_exemplars else ()
        prompt = Prompt(ps.instruction if ps.instruction is not None else task.instruction, exemplars)
        if ps.name in done:
            rows.append(done[ps.name])
            progress.advance(bar)
            continue
        before = lm.usage()["total"]
        t0 = time.perf_counter()
        res = evaluate_prompt(lm, task, prompt, splits.test, mode=ps.mode, chat=ps.chat)
        after = lm.usage()["total"]
        row = {
            "name": ps.name, "prompt": prompt.to_dict(), "accuracy": res.score, "n": res.n, "mode": res.mode,
            "details": {k: v for k, v in res.details.items() if k != "raw"},
            "samples": _samples(splits.test, res),
            "calls": after["calls"] - before["calls"], "cached_calls": after["cached_calls"] - before["cached_calls"],
            "tokens": after["total_tokens"] - before["total_tokens"], "seconds": round(time.perf_counter() - t0, 2),
        }
        rows.append(row)
        done[ps.name] = row
        write_json_atomic(ckpt_path, {"prompts": done, "usage": lm.meter.state_dict()})
        progress.advance(bar)
    return {"kind": "evaluate", "name": r.name, "model": lm.name, "task": task.name, "n_test": len(splits.test),
            "chance": chance_level(task, splits.test), "prompts": rows, "usage": lm.usage()}


N_SAMPLES = 5


def _samples(examples: Any, res: Any) -> list[dict[str, Any]]:
    """The first few examples with the model's raw output (generate mode), the parsed prediction and the
    score, so that a low score can be diagnosed from results.json alone."""
    raw = res.details.get("raw") or [None] * res.n
    return [{"input": e.input[:300], "target": e.target, "output": None if o is None else o[:300],
             "prediction": p, "score": sc}
            for e, o, p, sc in list(zip(examples, raw, res.predictions, res.per_example))[:N_SAMPLES]]


def plot_evaluate(results: dict[str, Any], run_dir: Path) -> list[Path]:
    """``accuracy.png``: test accuracy per prompt on a 0–1 axis with its value written, chance drawn; and cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["prompts"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r["name"] for r in rows]
    accs = [r["accuracy"] for r in rows]
    ax1.bar(names, accs, color="#4472c4")
    ax1.set_ylim(0, 1)
    label_bars(ax1, range(len(rows)), accs, "{:.3f}")
    if results.get("chance") is not None:
        ax1.axhline(results["chance"], color="k", ls="--", lw=1, label="chance (most common label)")
        ax1.legend(fontsize=7)
    ax1.set_ylabel(f"test accuracy (n={results['n_test']})")
    ax1.set_title(f"{results['task']} — {results['model']}", fontsize=9)
    ax2.bar(names, [r["tokens"] for r in rows], color="#ed7d31")
    ax2.set_ylabel("tokens processed (this run)")
    ax2.set_title("cost", fontsize=9)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    return [save_figure(fig, run_dir / "accuracy.png")]


def _report(cfg: dict[str, Any], results: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# {cfg['name']}", "", f"kind: `{cfg['kind']}`  ", f"wall time: {results.get('wall_time_s')} s", ""]
    if results.get("kind") == "evaluate":
        lines += [f"Model `{results['model']}` on task `{results['task']}` ({results['n_test']} test examples).", "",
                  "| prompt | accuracy | mode | LM calls | cached | tokens | s |", "|---|---|---|---|---|---|---|"]
        for r in results["prompts"]:
            lines.append(f"| {r['name']} | {r['accuracy']:.3f} | {r['mode']} | {r['calls']} | {r['cached_calls']} "
                         f"| {r['tokens']} | {r['seconds']} |")
        lines.append("")
        n, accs = results["n_test"], [r["accuracy"] for r in results["prompts"]]
        if results.get("chance") is not None:
            lines.append(f"Chance level (always the most common test label): {results['chance']:.3f}.  ")
        else:
            lines.append(f"Chance level: none for open-ended answers ({results['task']} has no label set); "
                         "guessing scores about 0.  ")
        se = max(noise_level(a, n) for a in accs)
        # two accuracies on the same n examples: the SE of their difference is up to sqrt(2) times larger
        lines += [f"Noise: one binomial standard error at n={n} is up to ±{se:.3f}; differences between prompts "
                  f"smaller than about {2 * 2**0.5 * se:.3f} (two standard errors of a difference) are within it.",
                  ""]
        for r in results["prompts"]:
            counts = r["details"].get("prediction_counts")
            if counts:
                lines.append(f"- {r['name']}: predictions {counts}")
        for r in results["prompts"]:
            if r.get("samples") and r["mode"] == "generate":
                lines += ["", f"Samples of `{r['name']}` (target → parsed prediction ← raw output):", ""]
                lines += [f"- {s['target']!r} → {s['prediction']!r} ← {s['output']!r}" for s in r["samples"]]
    usage = results.get("usage", {})
    if usage:
        lines += ["", "## Usage per role", "", "| role | calls | cached | prompt tokens | completion tokens |",
                  "|---|---|---|---|---|"]
        for role, u in usage.items():
            lines.append(f"| {role} | {u['calls']} | {u['cached_calls']} | {u['prompt_tokens']} "
                         f"| {u['completion_tokens']} |")
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


DEMO_RECIPES = ("demo_optim.yaml", "demo_prompt.yaml")


def demo_recipes() -> list[Path]:
    """The packaged recipes that ``lmopt demo`` runs, in order."""
    root = Path(__file__).parent / "recipes"
    paths = [root / name for name in DEMO_RECIPES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise RecipeError(f"the installed lmopt package lacks its demo recipes {missing}; reinstall lmopt")
    return paths
