"""``kind: prompt`` recipes: validation errors, a resumable run through the runner's entry points, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import lmopt.data
import lmopt.lm.factory
from lmopt.lm import LM
from lmopt.prompt.recipe import plot_prompt_results, run_prompt_recipe, validate_prompt_recipe
from lmopt.recipe import RecipeError

from .conftest import ToyLM, make_task

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _cfg(**over):
    cfg = {"name": "t", "kind": "prompt", "seed": 0, "budget": {"evaluations": 5},
           "task": {"name": "toy", "split": {"seed": 0, "n_train": 30, "n_val": 10, "n_test": 10}},
           "method": {"name": "random", "params": {"n_shots": 2}}}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("path", sorted(RECIPES.glob("prompt_*.yaml")))
def test_shipped_recipes_validate(path):
    validate_prompt_recipe(yaml.safe_load(path.read_text()), str(path))


@pytest.mark.parametrize("over,msg", [
    ({"method": {"name": "magic"}}, "unknown method 'magic'"),
    ({"budget": {"evaluations": 0}}, "evaluations must be a positive int"),
    ({"budget": {"evaluations": 3, "task": {"callz": 3}}}, "unknown budget limit"),
    ({"task": {"name": "toy", "split": {"n_val": 0}}}, "n_val >= 1"),
    ({"extra": 1}, "extra"),
])
def test_recipe_errors_are_clear(over, msg):
    with pytest.raises(RecipeError, match=msg):
        validate_prompt_recipe(_cfg(**over))


def test_run_prompt_recipe_resumes_and_plots(tmp_path, monkeypatch):
    task = make_task()
    toy = ToyLM(task)
    monkeypatch.setattr(lmopt.data, "load_task", lambda name, **kw: task)
    monkeypatch.setattr(lmopt.lm.factory, "make_lm", lambda spec, **kw: LM(toy.backend))
    with pytest.raises(RecipeError, match="method.params"):
        run_prompt_recipe(_cfg(method={"name": "random", "params": {"n_shotz": 2}}), tmp_path)
    out = run_prompt_recipe(_cfg(), tmp_path)
    for key in ("best_prompt", "val_score", "test_score", "seed_prompt_test_score", "history", "usage"):
        assert key in out
    json.dumps(out)
    assert (tmp_path / "checkpoint.json").exists() and (tmp_path / "report.md").exists()
    n = toy.backend.calls
    again = run_prompt_recipe(_cfg(), tmp_path)
    assert toy.backend.calls == n and again["best_prompt"] == out["best_prompt"]
    paths = plot_prompt_results(out, tmp_path)
    assert paths and all(p.exists() and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    val, test = json.loads((tmp_path / "prompt_progress.plot.json").read_text())["panels"]
    assert val["ylim"] == [0, 1] and test["ylim"] == [0, 1]
    lines = {ln["label"]: ln.get("y") for ln in val["lines"]}
    assert lines["seed prompt"] == pytest.approx(out["seed_val_score"])
    assert lines["chance (most common label)"] == pytest.approx(out["chance"]["validation"])
    evals = [h["val_score"] for h in out["history"] if h["kind"] == "eval"]
    assert [y for _, y in val["scatter"][0]["points"]] == evals
    assert [b["height"] for b in test["bars"]] == pytest.approx([out["seed_test_score"], out["test_score"]])
    assert "within the noise" in (tmp_path / "report.md").read_text()
