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

from ..recipe import ModelSpec, RecipeError, TaskSpec, _pretty, _Strict


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
    try:
        r = PromptRecipe.model_validate(cfg)
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
                "split": {"n_train": len(splits.train), "n_val": len(splits.validation), "n_test": len(splits.test)}})
    _write_report(r, out, run_dir)
    return out


def _write_report(r: PromptRecipe, out: dict[str, Any], run_dir: Path) -> None:
    from .._io import write_text_atomic

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    bp = out["best_prompt"]
    lines = [f"# {r.name}", "", f"Method `{out['method']}` ({out['config'].get('paper', '')}) on task "
             f"`{out['task']}` with model `{out['model']}`; {out['n_evaluations']} evaluations, stop: "
             f"{out['stop_reason']}.", "", "| prompt | validation | test |", "|---|---|---|",
             f"| seed | {f(out['seed_val_score'])} | {f(out['seed_test_score'])} |",
             f"| best | {f(out['val_score'])} | {f(out['test_score'])} |", "", "## Best prompt", "",
             "```", bp["instruction"], *[f"[exemplar] {e['input']} -> {e['target']}" for e in bp["exemplars"]],
             "```", "", "## Usage per role", "", "| role | calls | cached | prompt tokens | completion tokens |",
             "|---|---|---|---|---|"]
    for role, u in out["usage"].items():
        lines.append(f"| {role} | {u['calls']} | {u['cached_calls']} | {u['prompt_tokens']} "
                     f"| {u['completion_tokens']} |")
    lines += ["", "![progress](prompt_progress.png)", ""]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))


def plot_prompt_results(results: dict[str, Any], run_dir: Path) -> list[Path]:
    """``prompt_progress.png``: validation score per evaluation with the best so far, and seed vs best."""
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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    ax1.scatter(xs, ys, s=14, color="#4472c4", label="evaluated prompt")
    ax1.step(xs, best, where="post", color="#c00000", label="best so far")
    ax1.set_xlabel("evaluation")
    ax1.set_ylabel("validation score")
    ax1.set_title(f"{results['method']} on {results['task']}", fontsize=9)
    ax1.legend(fontsize=8)
    labels = ["seed", "best"]
    vals = [results.get("seed_test_score"), results.get("test_score")]
    ax2.bar(labels, [v or 0.0 for v in vals], color=["#a5a5a5", "#4472c4"])
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("test score")
    for i, v in enumerate(vals):
        ax2.text(i, (v or 0) + 0.02, "n/a" if v is None else f"{v:.2f}", ha="center", fontsize=8)
    path = Path(run_dir) / "prompt_progress.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]
