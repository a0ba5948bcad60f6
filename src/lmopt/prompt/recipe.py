"""``kind: prompt`` recipes for ``lmopt run``: validate, run (resumably) and plot a prompt optimisation.

.. code-block:: yaml

    name: tweets-ease
    kind: prompt
    seed: 0
    model: {backend: local, id: null, batch_size: 8}      # the task model (null id = embedded SmolLM2)
    optimizer_model: null                                 # proposer/judge; null = the task model
    cache: true
    budget: {evaluations: 30, task: {calls: 20000}}       # evaluations + optional LM limits per role
    task: {name: tweets, kwargs: {per_class: 100}, split: {seed: 0, n_train: 50, n_val: 20, n_test: 60}}
    method: {name: ease, params: {n_shots: 4, n_initial: 8, train_steps: 300}}
    eval: {mode: auto, chat: false}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from .._report import chance_level, label_bars, noise_level, save_figure, score_ylim
from ..recipe import ModelSpec, RecipeError, TaskSpec, _pretty, _Strict, unique


class MethodSpec(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from . import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {sorted(METHODS)}")
        return v


class EvalSpec(_Strict):
    mode: Literal["auto", "score", "generate"] = "auto"
    chat: bool = False


class PromptRecipe(_Strict):
    name: str
    kind: Literal["prompt"]
    seed: int = 0
    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer_model: ModelSpec | None = None
    cache: bool = True
    budget: dict[str, Any] = Field(default_factory=lambda: {"evaluations": 40})
    task: TaskSpec
    method: MethodSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: dict[str, Any]) -> dict[str, Any]:
        from .base import PromptBudget

        PromptBudget.from_any(v)  # raises with the reason
        return v


def validate_prompt_recipe(cfg: dict[str, Any], source: str = "recipe") -> PromptRecipe:
    return _validated(PromptRecipe, cfg, source)


def _validated(model: Any, cfg: dict[str, Any], source: str) -> Any:
    """``cfg`` validated as ``model`` (a prompt recipe kind), errors as RecipeError naming each field."""
    try:
        r = model.model_validate(cfg)
    except (ValidationError, ValueError, TypeError) as exc:
        msg = _pretty(exc) if isinstance(exc, ValidationError) else f"  - {exc}"
        raise RecipeError(f"{source} is invalid:\n{msg}") from None
    if r.task.split.n_val < 1:
        raise RecipeError(f"{source} is invalid:\n  - task.split.n_val: prompt optimisation needs a validation "
                          "split; set n_val >= 1 (papers use 20)")
    return r


def run_prompt_recipe(cfg: dict[str, Any], run_dir: Path, progress: Any = None) -> dict[str, Any]:
    """Run a ``kind: prompt`` recipe into ``run_dir`` (``checkpoint.json`` there makes it resumable)."""
    from ..data import load_task
    from ..lm.factory import make_lm
    from . import METHODS
    from .base import PromptBudget

    r = validate_prompt_recipe(cfg)
    try:
        method = METHODS[r.method.name](**r.method.params)
    except TypeError as exc:
        raise RecipeError(f"recipe is invalid:\n  - method.params: {exc}") from None
    except ValueError as exc:
        raise RecipeError(f"recipe is invalid:\n  - method.params: {exc}") from None
    task = load_task(r.task.name, **r.task.kwargs)
    sp = r.task.split
    splits = task.split(sp.seed, sp.n_train, sp.n_val, sp.n_test)
    bar = progress.add_task(f"{r.method.name}: loading model", total=PromptBudget.from_any(r.budget).evaluations) \
        if progress is not None else None
    lm = make_lm(r.model.model_dump(), cache=r.cache)
    opt_lm = make_lm(r.optimizer_model.model_dump(), cache=r.cache) if r.optimizer_model else None

    def tick(done: int, total: int, message: str) -> None:
        if progress is not None:
            progress.update(bar, completed=done, total=total, description=message[:70])

    res = method.run(task, lm, r.budget, optimizer_lm=opt_lm, seed=r.seed, splits=splits,
                     checkpoint_dir=run_dir, progress=tick, eval_mode=r.eval.mode, chat=r.eval.chat)
    out = res.to_dict()
    out.update({"kind": "prompt", "name": r.name, "model": lm.name, "seed_prompt_test_score": res.seed_test_score,
                "seed_prompt_val_score": res.seed_val_score,
                "chance": {"validation": chance_level(task, splits.validation),
                           "test": chance_level(task, splits.test)},
                "split": {"n_train": len(splits.train), "n_val": len(splits.validation), "n_test": len(splits.test)}})
    _write_report(r, out, run_dir)
    return out


def _noise_lines(out: dict[str, Any]) -> list[str]:
    """Chance level of each split and the binomial noise of a difference between two prompts on it."""
    lines = []
    for split, key, n_key in (("validation", "val_score", "n_val"), ("test", "test_score", "n_test")):
        n, score = out["split"][n_key], out.get(key)
        chance = (out.get("chance") or {}).get(split)
        if not n or score is None:
            continue
        text = f"On {split} (n={n}): " + (f"chance (always the most common label) {chance:.3f}; " if chance is not None
                                          else "no chance level (open-ended answers: guessing scores about 0); ")
        lines.append(text + f"differences below {2 * 2**0.5 * noise_level(score, n):.3f} (two standard errors of a "
                            "difference of accuracies) are within the noise.  ")
    return lines


def _write_report(r: PromptRecipe, out: dict[str, Any], run_dir: Path) -> None:
    from .._io import write_text_atomic

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    bp = out["best_prompt"]
    lines = [f"# {r.name}", "", f"Method `{out['method']}` ({out['config'].get('paper', '')}) on task "
             f"`{out['task']}` with model `{out['model']}`; {out['n_evaluations']} evaluations, stop: "
             f"{out['stop_reason']}.", "", "| prompt | validation | test |", "|---|---|---|",
             f"| seed | {f(out['seed_val_score'])} | {f(out['seed_test_score'])} |",
             f"| best | {f(out['val_score'])} | {f(out['test_score'])} |", "", *_noise_lines(out), "",
             "## Best prompt", "",
             "```", bp["instruction"], *[f"[exemplar] {e['input']} -> {e['target']}" for e in bp["exemplars"]],
             "```", "", "## Usage per role", "", "| role | calls | cached | prompt tokens | completion tokens |",
             "|---|---|---|---|---|"]
    for role, u in out["usage"].items():
        lines.append(f"| {role} | {u['calls']} | {u['cached_calls']} | {u['prompt_tokens']} "
                     f"| {u['completion_tokens']} |")
    lines += ["", "![progress](prompt_progress.png)", ""]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))


def plot_prompt_results(results: dict[str, Any], run_dir: Path) -> list[Path]:
    """``prompt_progress.png``: validation score per evaluation with the best so far, the seed prompt's score
    and chance drawn; test score of the seed and the best prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [h for h in results["history"] if h["kind"] == "eval"]
    xs = list(range(1, len(evals) + 1))
    ys = [h["val_score"] for h in evals]
    best, cur = [], float("-inf")
    for y in ys:
        cur = max(cur, y)
        best.append(cur)
    chance = results.get("chance") or {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    ax1.scatter(xs, ys, s=14, color="#4472c4", label="evaluated prompt")
    ax1.step(xs, best, where="post", color="#c00000", label="best so far")
    if results.get("seed_val_score") is not None:
        ax1.axhline(results["seed_val_score"], color="#a5a5a5", ls="--", label="seed prompt")
    if chance.get("validation") is not None:
        ax1.axhline(chance["validation"], color="k", ls=":", lw=1, label="chance (most common label)")
    score_ylim(ax1, ys)
    ax1.set_xlabel("evaluation")
    ax1.set_ylabel(f"validation score (n={results.get('split', {}).get('n_val', '?')})")
    ax1.set_title(f"{results['method']} on {results['task']}", fontsize=9)
    ax1.legend(fontsize=7)
    vals = [results.get("seed_test_score"), results.get("test_score")]
    ax2.bar(["seed", "best"], [v or 0.0 for v in vals], color=["#a5a5a5", "#4472c4"])
    score_ylim(ax2, vals)
    if chance.get("test") is not None:
        ax2.axhline(chance["test"], color="k", ls=":", lw=1, label="chance")
        ax2.legend(fontsize=7)
    label_bars(ax2, [0, 1], vals)
    ax2.set_ylabel(f"test score (n={results.get('split', {}).get('n_test', '?')})")
    return [save_figure(fig, Path(run_dir) / "prompt_progress.png")]


# -- kind: prompt_compare ---------------------------------------------------------------------------------
class PromptCompareRecipe(_Strict):
    """Several prompt optimisers on one task, each over several seeds, at the same evaluation budget."""

    name: str
    kind: Literal["prompt_compare"]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer_model: ModelSpec | None = None
    cache: bool = True
    budget: dict[str, Any] = Field(default_factory=lambda: {"evaluations": 40})
    task: TaskSpec
    methods: list[MethodSpec] = Field(min_length=1)
    eval: EvalSpec = Field(default_factory=EvalSpec)

    _budget = field_validator("budget")(PromptRecipe._budget.__func__)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        return unique(v, v, "seeds must be distinct")

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, v: list[MethodSpec]) -> list[MethodSpec]:
        return unique(v, [m.name for m in v], "method names must be unique")


def validate_prompt_compare(cfg: dict[str, Any], source: str = "recipe") -> PromptCompareRecipe:
    return _validated(PromptCompareRecipe, cfg, source)


def beats_beyond_noise(score: float, baseline: float, n: int) -> bool:
    """``score`` exceeds ``baseline`` (two accuracies on the same ``n`` test examples) by more than two
    binomial standard errors of their difference."""
    se = ((score * (1 - score) + baseline * (1 - baseline)) / n) ** 0.5
    return score - baseline > 2 * se


def run_prompt_compare(cfg: dict[str, Any], run_dir: Path, progress: Any = None) -> dict[str, Any]:
    """Run every (method, seed) into ``run_dir/<method>-seed<k>/`` (each resumable, with its own usage)."""
    import statistics

    from ..data import load_task
    from ..lm.factory import make_lm
    from . import METHODS
    from .base import PromptBudget

    r = validate_prompt_compare(cfg)
    methods = {}
    for spec in r.methods:
        try:
            methods[spec.name] = METHODS[spec.name](**spec.params)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"recipe is invalid:\n  - methods.{spec.name}.params: {exc}") from None
    task = load_task(r.task.name, **r.task.kwargs)
    sp = r.task.split
    splits = task.split(sp.seed, sp.n_train, sp.n_val, sp.n_test)
    evals = PromptBudget.from_any(r.budget).evaluations
    bar = progress.add_task("loading model", total=len(methods) * len(r.seeds) * evals) if progress else None
    lm = make_lm(r.model.model_dump(), cache=r.cache)
    opt_lm = make_lm(r.optimizer_model.model_dump(), cache=r.cache) if r.optimizer_model else None
    rows = []
    for k, (name, method) in enumerate(methods.items()):
        runs = []
        for j, seed in enumerate(r.seeds):
            offset = (k * len(r.seeds) + j) * evals

            def tick(done: int, total: int, message: str, offset: int = offset, seed: int = seed) -> None:
                if progress is not None:
                    progress.update(bar, completed=offset + done, description=f"seed {seed} {message}"[:70])

            sub = run_dir / f"{name}-seed{seed}"
            sub.mkdir(parents=True, exist_ok=True)
            res = method.run(task, lm, r.budget, optimizer_lm=opt_lm, seed=seed, splits=splits,
                             checkpoint_dir=sub, progress=tick, eval_mode=r.eval.mode, chat=r.eval.chat)
            if res.test_score is None or res.seed_test_score is None:
                raise RecipeError(f"{name} seed {seed} stopped before its test evaluation ({res.stop_reason}); "
                                  f"the comparison needs it: raise the LM limits in budget, or delete {sub} "
                                  "and rerun")
            runs.append({"seed": seed, "val": res.val_score, "test": res.test_score,
                         "seed_prompt_test": res.seed_test_score, "best_prompt": res.best_prompt.to_dict(),
                         "n_evaluations": res.n_evaluations, "stop_reason": res.stop_reason,
                         "usage": res.usage["total"], "wall_time_s": res.wall_time_s})
        tests = [x["test"] for x in runs]
        rows.append({"method": name, "paper": method.paper, "runs": runs, "test_median": statistics.median(tests),
                     "test_min": min(tests), "test_max": max(tests),
                     "val_median": statistics.median(x["val"] for x in runs)})
    seed_test = rows[0]["runs"][0]["seed_prompt_test"]
    for row in rows:
        row["wins_vs_seed_prompt"] = sum(x["test"] > seed_test for x in row["runs"])
        row["beyond_noise"] = beats_beyond_noise(row["test_min"], seed_test, len(splits.test))
    results = {"kind": "prompt_compare", "name": r.name, "model": lm.name, "task": task.name, "seeds": r.seeds,
               "evaluations": evals, "seed_prompt": {"instruction": task.instruction, "test": seed_test},
               "split": {"n_train": len(splits.train), "n_val": len(splits.validation), "n_test": len(splits.test)},
               "chance": chance_level(task, splits.test), "rows": rows}
    _write_compare_report(results, run_dir)
    return results


def _write_compare_report(res: dict[str, Any], run_dir: Path) -> None:
    from .._io import write_text_atomic

    sp, seed_test = res["split"], res["seed_prompt"]["test"]
    lines = [f"# {res['name']}", "",
             f"Task `{res['task']}` with model `{res['model']}`: each method searches prompts with "
             f"{res['evaluations']} validation evaluations ({sp['n_val']} examples) per run, seeds {res['seeds']}; "
             f"the best prompt found is scored on {sp['n_test']} held-out test examples.", "",
             "| prompt | test accuracy, median (min–max) over seeds | validation (median) | seeds above seed prompt |",
             "|---|---|---|---|",
             f"| seed prompt (\"{res['seed_prompt']['instruction']}\", no exemplars) | {seed_test:.3f} | | |"]
    for row in res["rows"]:
        lines.append(f"| {row['method']} | {row['test_median']:.3f} ({row['test_min']:.3f}–{row['test_max']:.3f}) "
                     f"| {row['val_median']:.3f} | {row['wins_vs_seed_prompt']}/{len(row['runs'])} seeds |")
    if res.get("chance") is not None:
        lines += ["", f"Chance level (always the most common test label): {res['chance']:.3f}."]
    else:
        lines += ["", "Chance level: none for open-ended answers (guessing scores about 0)."]
    lines += ["", "Beyond the noise: the method's worst seed leads the seed prompt by more than two binomial "
              "standard errors of the difference of two accuracies on this test set.", ""]
    for row in res["rows"]:
        if row["beyond_noise"]:
            verdict = "beats the seed prompt beyond the noise"
        elif row["test_median"] > seed_test:
            verdict = "scores above the seed prompt, but not beyond the noise"
        else:
            verdict = "does not beat the seed prompt"
        lines.append(f"- {row['method']} {verdict} on held-out data: its worst seed scores {row['test_min']:.3f} "
                     f"against {seed_test:.3f}.")
    if len(res["rows"]) > 1:
        a, b = res["rows"][0], res["rows"][1]
        paired = [x["test"] - y["test"] for x, y in zip(b["runs"], a["runs"])]
        lines.append(f"- {b['method']} − {a['method']} per seed (same seed, same budget): "
                     f"{', '.join(f'{d:+.3f}' for d in paired)}; a difference of one test example is "
                     f"{1 / sp['n_test']:.3f}.")
    lines += ["", "## Best prompts", ""]
    for row in res["rows"]:
        for x in row["runs"]:
            ex = "; ".join(f"{e['input']} -> {e['target']}" for e in x["best_prompt"]["exemplars"])
            lines.append(f"- {row['method']} seed {x['seed']} (test {x['test']:.3f}): {ex or '(no exemplars)'}")
    lines += ["", "![test accuracy](prompt_compare.png)", ""]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))


def plot_prompt_compare(results: dict[str, Any], run_dir: Path) -> list[Path]:
    """``prompt_compare.png``: test accuracy per seed and method (median bar, one dot per seed), with the seed
    prompt and chance drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    names = [row["method"] for row in results["rows"]]
    for i, row in enumerate(results["rows"]):
        tests = [x["test"] for x in row["runs"]]
        ax.bar(i, row["test_median"], color="#4472c4", alpha=0.6, label="median over seeds" if i == 0 else None)
        ax.scatter([i] * len(tests), tests, color="black", s=14, zorder=3, label="one seed" if i == 0 else None)
    ax.axhline(results["seed_prompt"]["test"], color="#c00000", ls="--", label="seed prompt")
    if results.get("chance") is not None:
        ax.axhline(results["chance"], color="gray", ls=":", label="chance (most common label)")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    label_bars(ax, range(len(names)), [row["test_median"] for row in results["rows"]])
    ax.set_ylabel(f"test accuracy (n={results['split']['n_test']})")
    ax.set_title(f"{results['task']}: best prompt found, {results['evaluations']} evaluations", fontsize=9)
    ax.legend(fontsize=8)
    return [save_figure(fig, Path(run_dir) / "prompt_compare.png")]
