"""``lmopt run`` with the finetune_paft / finetune_flexora kinds on the embedded SmolLM2 (tiny budgets)."""

import json
from pathlib import Path

import pytest
import yaml

from lmopt.recipe import RecipeError
from lmopt.runner import run_recipe, validate_recipe

TASK = {"name": "tweets", "per_class": 4, "n_val": 3, "n_test": 6}
TRAIN = {"epochs": 1, "batch": 2, "lr": 1e-3, "max_length": 96}
PAFT = {"name": "paft-tiny", "kind": "finetune_paft", "task": TASK, "train": TRAIN, "seeds": [0],
        "prompts": {"train": ["Classify the sentiment of this tweet.\nTweet: {input}\nSentiment:",
                              "Is the author negative, neutral or positive?\n{input}\nThe answer is"],
                    "held_out": ["Text: {input}\nWhat mood does the text express?\nAnswer:"]},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "layers": [28, 29]}}
FLEX = {"name": "flexora-tiny", "kind": "finetune_flexora", "task": TASK, "train": TRAIN, "seeds": [0],
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "layers": [26, 27, 28, 29]},
        "search": {"steps": 3, "alpha_lr": 0.05, "val_batches": 1}}


RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("finetune_*.yaml")))
def test_shipped_recipes_validate(path):
    r = validate_recipe(yaml.safe_load(path.read_text()))
    if r.kind == "finetune_paft":
        from lmopt.finetune import PromptPool

        pool = PromptPool(r.prompts.train, r.prompts.held_out)
        assert len(pool.held_out) >= 10


@pytest.mark.parametrize("change, match", [
    ({"epochs_typo": 1}, "epochs_typo"),
    ({"prompts": {"train": ["{input}"]}}, "both train and held_out"),
    ({"prompts": {"pool": "x.json", "generate": {}}}, "exactly one of"),
    ({"seeds": [0, 0]}, "distinct"),
])
def test_invalid_recipes_are_refused(change, match):
    with pytest.raises(RecipeError, match=match):
        validate_recipe({**PAFT, **change})


@pytest.mark.realmodel
def test_paft_recipe_resumes_to_the_same_result(tmp_path, monkeypatch):
    import lmopt.finetune.recipe as rec

    clean = json.loads((run_recipe(PAFT, tmp_path / "a") / "results.json").read_text())
    real, calls = rec._train, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(rec, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(PAFT, tmp_path / "b")
    monkeypatch.setattr(rec, "_train", real)
    ckpt = json.loads(next((tmp_path / "b").glob("*/checkpoint.json")).read_text())
    assert sorted(ckpt["runs"]) == ["base/0", "sft/0"]  # the finished runs were kept
    resumed = json.loads((run_recipe(PAFT, tmp_path / "b") / "results.json").read_text())
    assert resumed["rows"] == clean["rows"]
    run_dir = next((tmp_path / "b").glob("*/"))
    assert (run_dir / "prompt_accuracy.png").exists() and "held-out prompts" in (run_dir / "report.md").read_text()


@pytest.mark.realmodel
def test_flexora_recipe_selects_the_positive_alphas(tmp_path):
    run_dir = run_recipe(FLEX, tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    search = res["searches"]["0"]
    assert search["layers"] == [26, 27, 28, 29]
    assert search["selected"] == [layer for layer, a in zip(search["layers"], search["alpha"]) if a > 0]
    rows = res["rows"]
    if search["selected"]:
        assert rows["flexora"]["layers"] == [search["selected"]]
        assert rows["flexora"]["trained_params"][0] * 4 == rows["all"]["trained_params"][0] * len(search["selected"])
        assert len(rows["random"]["layers"][0]) == len(search["selected"])
    assert (run_dir / "alpha.png").exists() and "selected" in (run_dir / "report.md").read_text()


@pytest.mark.realmodel
def test_a_model_without_the_lora_targets_is_a_clear_error(tmp_path):
    bad = {**FLEX, "lora": {**FLEX["lora"], "target_modules": ["no_such_proj"]}}
    with pytest.raises(RecipeError, match="LoRA cannot be added"):
        run_recipe(bad, tmp_path)
