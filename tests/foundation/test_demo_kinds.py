"""The recipe kinds behind `lmopt demo`: `optim` (optimizers on the tiny GPT) and `prompt_compare`."""

import json

import pytest
import yaml

from lmopt import runner
from lmopt.lm import LM, ScriptedBackend
from lmopt.recipe import RecipeError

OPTIM = {"name": "o", "kind": "optim", "seeds": [0, 1], "steps": 12, "batch": 4, "eval_batches": 2,
         "max_train_chars": 20_000, "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
         "optimizers": [{"name": "AdamW", "lr": 1e-7}, {"name": "Muon", "lr": 0.05}]}


def test_optim_recipe_compares_against_the_first_optimizer_and_resumes(tmp_path, monkeypatch):
    run_dir = runner.run_recipe(OPTIM, tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    base, muon = res["rows"]
    assert base["optimizer"] == "AdamW" and len(base["final_val"]) == 2
    # AdamW at lr 1e-7 barely moves, Muon learns: every seed better, beyond the baseline's spread
    assert muon["vs_baseline"]["wins"] == 2 and muon["vs_baseline"]["beyond_seed_spread"]
    assert muon["median"] < base["median"] - 0.05
    assert [c[-1][0] for c in muon["curves"]] == [12, 12]
    report = (run_dir / "report.md").read_text()
    assert "- Muon beats AdamW" in report and "| Muon | 0.05 |" in report
    assert (run_dir / "loss_curves.png").stat().st_size > 1000
    (panel,) = json.loads((run_dir / "loss_curves.plot.json").read_text())["panels"]
    assert [ln["label"] for ln in panel["lines"]] == ["AdamW (lr 1e-07)", "Muon (lr 0.05)"]
    lo, hi = panel["bands"][1]["y_range"]  # Muon's band spans its seeds' curves
    assert lo == pytest.approx(min(v for c in muon["curves"] for _, v in c))
    assert hi == pytest.approx(max(v for c in muon["curves"] for _, v in c))

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("lmopt.tinygpt.train_run", no_training)
    again = json.loads((runner.run_recipe(OPTIM, tmp_path) / "results.json").read_text())
    assert again["rows"][1]["final_val"] == muon["final_val"]


def test_optim_recipe_reports_a_loss_honestly(tmp_path):
    cfg = {**OPTIM, "optimizers": [{"name": "Muon", "lr": 0.05}, {"name": "AdamW", "lr": 1e-7}]}
    res = json.loads((runner.run_recipe(cfg, tmp_path) / "results.json").read_text())
    assert res["rows"][1]["vs_baseline"]["wins"] == 0
    assert "- AdamW does not beat Muon" in (tmp_path / runner.recipe_id(cfg) / "report.md").read_text()


def test_a_win_counts_as_beyond_the_noise_only_when_the_seed_ranges_do_not_overlap():
    from lmopt.optim_recipe import compare_losses

    overlapping = compare_losses([2.0, 2.2, 2.4], [1.9, 2.1, 2.3])
    assert overlapping["wins"] == 3 and not overlapping["beyond_seed_spread"]
    assert overlapping["paired_improvement"] == pytest.approx([0.1, 0.1, 0.1])
    assert compare_losses([2.0, 2.2], [1.8, 1.95])["beyond_seed_spread"]
    assert compare_losses([2.0, 2.2], [2.1, 2.1])["wins"] == 1


@pytest.mark.parametrize("mutate,msg", [
    (lambda r: r["optimizers"].append({"name": "Adamw", "lr": 1e-3}), "unknown optimizer 'Adamw'"),
    (lambda r: r["optimizers"].append({"name": "Muon", "lr": 1e-3}), "optimizer names must be unique"),
    (lambda r: r["optimizers"].pop(), "at least 2 items"),
    (lambda r: r["model"].update(n_head=3), "multiple of n_head"),
    (lambda r: r.update(seeds=[1, 1]), "seeds must be distinct"),
    (lambda r: r["optimizers"][0].update(lr=0), "greater than 0"),
])
def test_invalid_optim_recipes_are_rejected(tmp_path, mutate, msg):
    bad = yaml.safe_load(yaml.safe_dump(OPTIM))
    mutate(bad)
    with pytest.raises(RecipeError, match=msg):
        runner.run_recipe(bad, tmp_path)


COMPARE = {"name": "c", "kind": "prompt_compare", "seeds": [0, 1], "cache": False,
           "budget": {"evaluations": 3},
           "task": {"name": "tweets", "kwargs": {"per_class": 10}, "split": {"n_train": 8, "n_val": 6, "n_test": 9}},
           "methods": [{"name": "random", "params": {"n_shots": 2}}]}


@pytest.fixture
def positive_lover(monkeypatch):
    """Answers right once a prompt shows a 'positive' exemplar, else always 'negative': exemplars matter."""
    from lmopt.data import load_task

    gold = {e.input: e.target for e in load_task("tweets", per_class=10).examples}

    def score(prompt, cont):
        answer = gold[prompt.rsplit("Tweet: ", 1)[1].split("\n")[0]] if "Sentiment: positive" in prompt else "negative"
        return -1.0 if cont == " " + answer else -2.0

    backend = ScriptedBackend(lambda p, c, j: "", score_fn=score)
    monkeypatch.setattr("lmopt.lm.factory.make_lm", lambda spec, cache=True, budget=None, meter=None: LM(backend))
    return backend


def test_prompt_compare_runs_each_method_and_seed_and_reports_against_the_seed_prompt(tmp_path, positive_lover):
    run_dir = runner.run_recipe(COMPARE, tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    (row,) = res["rows"]
    assert [x["seed"] for x in row["runs"]] == [0, 1]
    assert all((run_dir / f"random-seed{s}" / "checkpoint.json").exists() for s in (0, 1))
    assert all(x["n_evaluations"] == 3 for x in row["runs"])
    assert res["seed_prompt"]["test"] == pytest.approx(1 / 3)  # all "negative" on a balanced 3-class test set
    for x in row["runs"]:  # each test score belongs to the reported best prompt
        shows_positive = any(e["target"] == "positive" for e in x["best_prompt"]["exemplars"])
        assert x["test"] == pytest.approx(1.0 if shows_positive else 1 / 3)
    assert row["wins_vs_seed_prompt"] == sum(x["test"] > 0.5 for x in row["runs"])
    assert "| random |" in (run_dir / "report.md").read_text()
    assert (run_dir / "prompt_compare.png").stat().st_size > 1000
    (panel,) = json.loads((run_dir / "prompt_compare.plot.json").read_text())["panels"]
    assert panel["ylim"] == [0, 1] and panel["xticklabels"] == ["random"]
    (dots,) = panel["scatter"]  # the spread: one dot per seed
    assert sorted(y for _, y in dots["points"]) == pytest.approx(sorted(x["test"] for x in row["runs"]))
    lines = {ln["label"]: ln["y"] for ln in panel["lines"]}
    assert lines["seed prompt"] == pytest.approx(1 / 3)
    assert lines["chance (most common label)"] == pytest.approx(res["chance"]) and res["chance"] == pytest.approx(1 / 3)
    calls = positive_lover.calls
    runner.run_recipe(COMPARE, tmp_path)  # finished: answered from the checkpoints
    assert positive_lover.calls == calls


def test_a_prompt_beats_the_seed_prompt_only_beyond_two_standard_errors():
    from lmopt.prompt.recipe import beats_beyond_noise

    assert beats_beyond_noise(0.18, 0.06, 100)  # lead 0.12 > 2 x 0.045
    assert not beats_beyond_noise(0.08, 0.06, 100)  # two examples out of 100: noise
    assert not beats_beyond_noise(0.18, 0.06, 20)  # the same lead on 20 examples: noise
    assert not beats_beyond_noise(0.5, 0.6, 100)


def test_prompt_compare_refuses_to_report_without_a_test_score(tmp_path, positive_lover):
    cfg = {**COMPARE, "budget": {"evaluations": 3, "task": {"calls": 60}}}  # the search fits, the test does not
    with pytest.raises(RecipeError, match="stopped before its test evaluation .*raise the LM limits"):
        runner.run_recipe(cfg, tmp_path)


@pytest.mark.parametrize("change,msg", [
    ({"methods": [{"name": "random"}, {"name": "random"}]}, "method names must be unique"),
    ({"budget": {"evaluations": 0}}, "budget evaluations must be a positive int"),
    ({"seeds": [2, 2]}, "seeds must be distinct"),
    ({"methods": [{"name": "eaze"}]}, "unknown method 'eaze'"),
])
def test_invalid_prompt_compare_recipes_are_rejected(tmp_path, change, msg):
    with pytest.raises(RecipeError, match=msg):
        runner.run_recipe({**COMPARE, **change}, tmp_path)
